//! Contact sheet of synthetic faces: rows = classes, columns = seeds, scaled 3x.
//! `cargo run --release -p pipeline-vision --example face_sheet -- /tmp/faces.png [cols] [seed0]`
use pipeline_vision::render_face;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).cloned().unwrap_or_else(|| "/tmp/faces.png".into());
    let cols: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(12);
    let seed0: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (size, zoom) = (48u32, 3u32);
    let mut sheet = image::GrayImage::new(cols * size * zoom, 7 * size * zoom);
    for c in 0..7u32 {
        for k in 0..cols {
            let f = render_face(c as usize, seed0 + k as u64, size);
            for (x, y, p) in f.enumerate_pixels() {
                for dy in 0..zoom {
                    for dx in 0..zoom {
                        sheet.put_pixel((k * size + x) * zoom + dx, (c * size + y) * zoom + dy, *p);
                    }
                }
            }
        }
    }
    sheet.save(&out).expect("write sheet");
    println!("{out}");
}
