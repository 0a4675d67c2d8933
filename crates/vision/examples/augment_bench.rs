//! Throughput of the augmentation (what `bench/augment` compares against numpy + scipy).
//!
//! `augment_bench study <dir> <per_class>`: decode `<dir>/<class>/*` at 48x48 gray, plan
//! the fill to `per_class` (Keep), time making the copies.
//! `augment_bench synthetic <n>`: `n` copies of 1,000 synthetic 48x48 faces.
//! Config = the one in bench/augment's Python reference. Threads: RAYON_NUM_THREADS.
//! Prints `ours <case> images <n> secs <s> ips <images per second>`.
use std::path::Path;
use std::time::Instant;

use pipeline_vision::augment::CopyJob;
use pipeline_vision::{augment_many, load_image, plan_balance, AugmentConfig, BalanceMode, FillMode, Image, CLASSES};

fn config() -> AugmentConfig {
    AugmentConfig {
        rotation_range: 20.0,
        width_shift_range: 0.1,
        height_shift_range: 0.1,
        shear_range: 10.0,
        zoom_range: AugmentConfig::zoom(0.1),
        horizontal_flip: true,
        brightness_range: Some([0.8, 1.2]),
        fill_mode: FillMode::Nearest,
        ..AugmentConfig::default()
    }
}

fn run(case: &str, images: &[Image], names: &[String], jobs: &[(usize, u32)]) {
    let cfg = config();
    let t = Instant::now();
    let mut checksum = 0u64;
    // Chunks keep memory flat for the 100k case; results are dropped after a checksum.
    for chunk in jobs.chunks(8192) {
        let js: Vec<CopyJob> =
            chunk.iter().map(|&(s, copy)| CopyJob { image: &images[s], source: &names[s], copy }).collect();
        for (img, _) in augment_many(&js, &cfg, 1) {
            checksum = checksum.wrapping_add(img.data.iter().map(|&v| v as u64).sum::<u64>());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "ours {case} images {} secs {secs:.4} ips {:.1} threads {} checksum {checksum}",
        jobs.len(),
        jobs.len() as f64 / secs,
        rayon::current_num_threads()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("study") if args.len() == 3 => {
            let dir = Path::new(&args[1]);
            let per_class: usize = args[2].parse().expect("per_class is a number");
            let t = Instant::now();
            let (mut images, mut names, mut labels) = (Vec::new(), Vec::new(), Vec::new());
            for (c, class) in CLASSES.iter().enumerate() {
                let mut files: Vec<_> = std::fs::read_dir(dir.join(class))
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.join(class).display()))
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                files.sort();
                for f in files {
                    images.push(load_image(&f, 48, 1).unwrap_or_else(|e| panic!("{e}")));
                    names.push(f.file_name().unwrap().to_string_lossy().into_owned());
                    labels.push(c);
                }
            }
            eprintln!("decoded {} images in {:.3}s", images.len(), t.elapsed().as_secs_f64());
            let plan = plan_balance(&labels, 7, per_class, BalanceMode::Keep, 0).expect("plan");
            let jobs: Vec<(usize, u32)> = plan.iter().filter_map(|p| p.copy.map(|c| (p.source, c))).collect();
            run("study", &images, &names, &jobs);
        }
        Some("synthetic") if args.len() == 2 => {
            let n: usize = args[1].parse().expect("n is a number");
            let base: Vec<Image> = (0..1000)
                .map(|i| {
                    let g = pipeline_vision::render_face(i % 7, i as u64, 48);
                    Image::from_raw(48, 48, 1, g.into_raw()).expect("48x48 gray")
                })
                .collect();
            let names: Vec<String> = (0..base.len()).map(|i| format!("synthetic_{i}")).collect();
            let jobs: Vec<(usize, u32)> = (0..n).map(|i| (i % base.len(), (i / base.len()) as u32)).collect();
            run("synthetic", &base, &names, &jobs);
        }
        _ => {
            eprintln!("usage: augment_bench study <dir> <per_class> | synthetic <n>");
            std::process::exit(2);
        }
    }
}
