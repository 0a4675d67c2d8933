//! Look at the transforms: row 0 = originals, rows 1.. = copies, one column per source.
//! `cargo run --release -p pipeline-vision --example augment_preview -- <class dir> /tmp/aug.png`
use pipeline_vision::{augment_copy, contact_sheet, load_image, AugmentConfig, FillMode, Image};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, out) = (args.first().expect("class dir"), args.get(1).map(String::as_str).unwrap_or("/tmp/aug.png"));
    let mut files: Vec<_> = std::fs::read_dir(dir).expect("read dir").filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    files.truncate(8);
    let cfg = AugmentConfig {
        rotation_range: 30.0,
        width_shift_range: 0.15,
        height_shift_range: 0.15,
        shear_range: 15.0,
        zoom_range: AugmentConfig::zoom(0.2),
        horizontal_flip: true,
        brightness_range: Some([0.7, 1.3]),
        fill_mode: FillMode::Reflect,
        ..AugmentConfig::default()
    };
    let (size, rows) = (48u32, 6u32);
    let sources: Vec<_> = files.iter().map(|f| load_image(f, size, 1).expect("decode")).collect();
    // Row r: copy r of every source (row 0: the originals).
    let grid: Vec<Vec<Image>> = (0..rows)
        .map(|r| {
            sources
                .iter()
                .zip(&files)
                .map(|(src, f)| if r == 0 { src.clone() } else { augment_copy(src, &cfg, 0, &f.display().to_string(), r).0 })
                .collect()
        })
        .collect();
    let refs: Vec<Vec<&Image>> = grid.iter().map(|r| r.iter().collect()).collect();
    let sheet = contact_sheet(&refs, files.len(), size, 1, 1);
    sheet.save_png(std::path::Path::new(out)).expect("write");
    println!("{out}");
}
