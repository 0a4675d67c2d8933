//! Stage kind `augment`: balance classes with Keras `ImageDataGenerator`-style copies.
//!
//! Input `labels`: the output directory of `dawid-skene`, holding
//! - `labels.csv`: `item,label,image` (label = class name or index; image = path relative
//!   to that directory, e.g. `images/angry_00.jpg`);
//! - `posteriors.csv`: `item,<class>...` (optional: without it, soft labels are one-hot of
//!   the hard label);
//! - `summary.json` (optional): its `classes`, in order, are the classes; without it, the
//!   study's seven (`pipeline_vision::CLASSES`).
//!
//! Output:
//! - `images/<class>/<name>.png`: every original kept (or a sampled subset with
//!   `mode: sample_down`), then copies `<name>_aug<k>.png` until each class has `per_class`;
//! - `manifest.csv`: `file,source,label,<one soft-label column per class>,copy,<transform params>`;
//!   the soft label of a copy is its source's posterior;
//! - `preview.png`: one row per class, the first `preview_per_class` images of it.
//!
//! Decoding is `pipeline_vision::load_image` (the same as training and evaluation). The
//! random stream of each copy depends only on (`seed`, source item, copy index), so the
//! output is byte-identical for any thread count.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use pipeline_vision::{
    augment_copy, contact_sheet, load_image, plan_balance, Image, TransformParams, CLASSES,
};
use rayon::prelude::*;

use super::{InputDecl, Stage, StageContext, StageError, StageOutcome};

// The params are the vision crate's: one definition, with the docs `pipeline schema` shows.
pub use pipeline_vision::params::AugmentParams;

pub struct Augment;

/// One labelled input item.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    label: usize,
    image: PathBuf,
    soft: Vec<f64>,
}

/// The classes of the input: `summary.json`'s (what dawid-skene writes), else the study's.
fn read_classes(dir: &Path) -> Result<Vec<String>, StageError> {
    let path = dir.join("summary.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CLASSES.iter().map(|c| c.to_string()).collect()),
        Err(e) => return Err(StageError::io(&path, e)),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| StageError::bad_file(&path, e))?;
    match v.get("classes") {
        None => Ok(CLASSES.iter().map(|c| c.to_string()).collect()),
        Some(c) => match serde_json::from_value::<Vec<String>>(c.clone()) {
            // names become directories here: checked again, whatever wrote the file
            Ok(c) if !c.is_empty() => pipeline_classes::check_classes(&c).map(|()| c).map_err(|e| StageError::bad_file(&path, format!("\"classes\": {e}"))),
            _ => Err(StageError::bad_file(&path, "\"classes\" is not a list of class names")),
        },
    }
}

fn class_index(s: &str, classes: &[String]) -> Option<usize> {
    let s = s.trim();
    classes.iter().position(|c| c.eq_ignore_ascii_case(s)).or_else(|| s.parse::<usize>().ok().filter(|&i| i < classes.len()))
}

fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, StageError> {
    let f = std::fs::File::open(path).map_err(|e| StageError::io(path, e))?;
    Ok(csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(f))
}

fn column(headers: &csv::StringRecord, name: &str, path: &Path) -> Result<usize, StageError> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| StageError::bad_file(path, format!("no column \"{name}\" (columns: {})", headers.iter().collect::<Vec<_>>().join(","))))
}

fn read_items(dir: &Path, classes: &[String]) -> Result<Vec<Item>, StageError> {
    let path = dir.join("labels.csv");
    let mut rd = csv_reader(&path)?;
    let headers = rd.headers().map_err(|e| StageError::bad_file(&path, e))?.clone();
    // Checked up front for an error that lists the columns; the rows are then typed (by
    // header name, extra columns ignored).
    for name in ["item", "label", "image"] {
        column(&headers, name, &path)?;
    }
    #[derive(serde::Deserialize)]
    struct LabelRow {
        item: String,
        label: String,
        image: String,
    }
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    for (n, rec) in rd.deserialize::<LabelRow>().enumerate() {
        let line = n + 2;
        let LabelRow { item: id, label, image } = rec.map_err(|e| StageError::bad_file(&path, format!("line {line}: {e}")))?;
        if !seen.insert(id.clone()) {
            return Err(StageError::bad_file(&path, format!("line {line}: item \"{id}\" appears twice")));
        }
        let label = class_index(&label, classes).ok_or_else(|| {
            StageError::bad_file(&path, format!("line {line}: label \"{label}\" is not one of {}", classes.join(", ")))
        })?;
        if image.is_empty() {
            return Err(StageError::bad_file(&path, format!("line {line}: item \"{id}\" has no image")));
        }
        let mut soft = vec![0.0; classes.len()];
        soft[label] = 1.0;
        items.push(Item { id, label, image: dir.join(&image), soft });
    }
    let ppath = dir.join("posteriors.csv");
    if ppath.exists() {
        let mut rd = csv_reader(&ppath)?;
        let headers = rd.headers().map_err(|e| StageError::bad_file(&ppath, e))?.clone();
        let ci = column(&headers, "item", &ppath)?;
        let cols: Vec<usize> = classes.iter().map(|c| column(&headers, c, &ppath)).collect::<Result<_, _>>()?;
        let mut post: HashMap<String, Vec<f64>> = HashMap::new();
        for (n, rec) in rd.records().enumerate() {
            let line = n + 2;
            let rec = rec.map_err(|e| StageError::bad_file(&ppath, format!("line {line}: {e}")))?;
            let mut p = vec![0.0; classes.len()];
            for (k, &c) in cols.iter().enumerate() {
                let v = rec.get(c).unwrap_or("");
                p[k] = v.parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
                    StageError::bad_file(&ppath, format!("line {line}: {} = \"{v}\" is not a probability", classes[k]))
                })?;
            }
            post.insert(rec.get(ci).unwrap_or("").to_string(), p);
        }
        for it in &mut items {
            it.soft = post.get(&it.id).cloned().ok_or_else(|| {
                StageError::bad_file(&ppath, format!("no row for item \"{}\" of labels.csv", it.id))
            })?;
        }
    }
    Ok(items)
}

/// File-name-safe stem of an item id (its last path/URL segment without extension).
fn stem(id: &str) -> String {
    let last = id.rsplit(['/', '\\']).next().unwrap_or(id);
    let base = match last.rfind('.') {
        Some(i) if i > 0 => &last[..i],
        _ => last,
    };
    // at most 100 characters (all ASCII here): a 251-character image name failed with "name
    // too long" once `_aug<k>.png` was added (found by a hostile pass)
    let s: String = base.chars().take(100).map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() {
        "item".into()
    } else {
        s
    }
}

fn fmt_opt4(v: Option<[u32; 4]>) -> String {
    v.map(|a| format!("{} {} {} {}", a[0], a[1], a[2], a[3])).unwrap_or_default()
}

fn write_preview(path: &Path, rows: &[Vec<&Image>], size: u32, channels: u8, cols: usize) -> Result<(), StageError> {
    // Small images drawn twice as large, so the preview is readable.
    let zoom = if size <= 64 { 2 } else { 1 };
    contact_sheet(rows, cols, size, channels, zoom).save_png(path).map_err(|e| StageError::bad_file(path, e))
}

impl Stage for Augment {
    type Params = AugmentParams;
    const KIND: &'static str = "augment";
    // 2: copies' names reserved beside the originals', long names cut (an output of version 1
    // could have lost an original to a copy of the same name)
    const VERSION: u32 = 2;
    const DESCRIPTION: &'static str =
        "Balance classes to per_class images with Keras ImageDataGenerator-style transformed copies (deterministic)";
    const INPUTS: &'static [InputDecl] = &[InputDecl {
        name: "labels",
        required: true,
        doc: "output of dawid-skene: labels.csv (item,label,image) and posteriors.csv",
    }];

    fn check_params(p: &AugmentParams) -> Result<(), StageError> {
        p.validate().map_err(|e| match e {
            pipeline_vision::VisionError::BadParam { param, message } => StageError::bad_param(param, message),
            other => StageError::Failed(other.to_string()),
        })
    }

    fn run(p: &AugmentParams, ctx: &StageContext<'_>) -> Result<StageOutcome, StageError> {
        Self::check_params(p)?;
        let cfg = p.to_config();
        let dir = ctx.input("labels")?;
        let classes = read_classes(dir)?;
        let items = read_items(dir, &classes)?;
        if items.is_empty() {
            return Err(StageError::bad_file(dir.join("labels.csv"), "no items"));
        }
        let labels: Vec<usize> = items.iter().map(|i| i.label).collect();
        let plan = plan_balance(&labels, classes.len(), p.per_class, p.mode, p.seed).map_err(|e| match e {
            pipeline_vision::VisionError::EmptyClass { class, .. } => StageError::bad_file(
                dir.join("labels.csv"),
                format!("no item is labelled {}, so that class cannot be filled to {}", classes[class], p.per_class),
            ),
            other => StageError::Failed(other.to_string()),
        })?;
        ctx.progress.set_length((items.len() + plan.len()) as u64);
        ctx.progress.set_message("decoding");

        // Decode every source once (only the ones the plan uses).
        let mut used = vec![false; items.len()];
        plan.iter().for_each(|pi| used[pi.source] = true);
        let mut decoded: Vec<Option<Image>> = vec![None; items.len()];
        const CHUNK: usize = 256;
        for (ci, chunk) in items.chunks(CHUNK).enumerate() {
            ctx.cancel.check()?;
            let out: Vec<Option<Image>> = chunk
                .par_iter()
                .enumerate()
                .map(|(k, it)| {
                    if used[ci * CHUNK + k] {
                        load_image(&it.image, p.size, p.channels).map(Some).map_err(|e| {
                            // the path once, and the item it came from (an AMT image URL)
                            let m = e.to_string();
                            let m = m.strip_prefix(&format!("{}: ", it.image.display())).unwrap_or(&m).to_string();
                            StageError::bad_file(&it.image, format!("{m} (item {})", it.id))
                        })
                    } else {
                        Ok(None)
                    }
                })
                .collect::<Result<_, _>>()?;
            decoded[ci * CHUNK..ci * CHUNK + out.len()].clone_from_slice(&out);
            ctx.progress.inc(chunk.len() as u64);
        }

        // Output names: unique per class directory, copies suffixed `_aug<k>`.
        let mut taken: HashSet<String> = HashSet::new();
        let mut base_name: Vec<String> = Vec::with_capacity(items.len());
        for it in &items {
            let s = stem(&it.id);
            let mut name = s.clone();
            let mut n = 1;
            while !taken.insert(format!("{}/{name}", it.label)) {
                n += 1;
                name = format!("{s}_{n}");
            }
            base_name.push(name);
        }
        // Copies' names, reserved in the same set: an original named `x_aug0` and the first
        // copy of `x` had the same file, and one of them was lost without a word (found by a
        // hostile pass). Named in plan order, before the parallel writes.
        let mut copy_name: HashMap<(usize, u32), String> = HashMap::new();
        for pi in &plan {
            if let Some(k) = pi.copy {
                let s = format!("{}_aug{k}", base_name[pi.source]);
                let mut name = s.clone();
                let mut n = 1;
                while !taken.insert(format!("{}/{name}", pi.class)) {
                    n += 1;
                    name = format!("{s}_{n}");
                }
                copy_name.insert((pi.source, k), name);
            }
        }
        for class in &classes {
            let d = ctx.out_dir.join("images").join(class);
            std::fs::create_dir_all(&d).map_err(|e| StageError::io(&d, e))?;
        }

        ctx.progress.set_message("augmenting");
        let mut rows: Vec<(String, usize, Option<u32>, Option<TransformParams>)> = Vec::with_capacity(plan.len());
        let mut preview: Vec<Vec<Image>> = vec![Vec::new(); classes.len()];
        for chunk in plan.chunks(CHUNK) {
            ctx.cancel.check()?;
            let made: Vec<(String, Option<TransformParams>, Image)> = chunk
                .par_iter()
                .map(|pi| {
                    let it = &items[pi.source];
                    let src = decoded[pi.source].as_ref().ok_or_else(|| StageError::Failed("source not decoded".into()))?;
                    let (img, params, name) = match pi.copy {
                        None => (src.clone(), None, format!("{}.png", base_name[pi.source])),
                        Some(k) => {
                            let (img, tp) = augment_copy(src, &cfg, p.seed, &it.id, k);
                            (img, Some(tp), format!("{}.png", copy_name[&(pi.source, k)]))
                        }
                    };
                    let rel = format!("images/{}/{name}", classes[pi.class]);
                    let path = ctx.out_dir.join(&rel);
                    img.save_png(&path).map_err(|e| StageError::bad_file(&path, e))?;
                    Ok((rel, params, img))
                })
                .collect::<Result<_, StageError>>()?;
            for (pi, (rel, params, img)) in chunk.iter().zip(made) {
                if preview[pi.class].len() < p.preview_per_class {
                    preview[pi.class].push(img);
                }
                rows.push((rel, pi.source, pi.copy, params));
            }
            ctx.progress.inc(chunk.len() as u64);
        }

        let mpath = ctx.out_dir.join("manifest.csv");
        let f = std::fs::File::create(&mpath).map_err(|e| StageError::io(&mpath, e))?;
        let mut wr = csv::Writer::from_writer(std::io::BufWriter::new(f));
        let mut header: Vec<&str> = vec!["file", "source", "label"];
        header.extend(classes.iter().map(|c| c.as_str()));
        header.extend([
            "copy", "theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical", "channel_shift",
            "brightness", "contrast", "crop", "erase",
        ]);
        let werr = |e: csv::Error| StageError::bad_file(&mpath, e);
        wr.write_record(&header).map_err(werr)?;
        for (rel, source, copy, params) in &rows {
            let it = &items[*source];
            let mut rec: Vec<String> = vec![rel.clone(), it.id.clone(), classes[it.label].clone()];
            rec.extend(it.soft.iter().map(|v| v.to_string()));
            match (copy, params) {
                (Some(k), Some(t)) => rec.extend([
                    k.to_string(),
                    t.theta.to_string(),
                    t.tx.to_string(),
                    t.ty.to_string(),
                    t.shear.to_string(),
                    t.zx.to_string(),
                    t.zy.to_string(),
                    t.flip_horizontal.to_string(),
                    t.flip_vertical.to_string(),
                    t.channel_shift.to_string(),
                    t.brightness.to_string(),
                    t.contrast.to_string(),
                    fmt_opt4(t.crop),
                    fmt_opt4(t.erase),
                ]),
                _ => rec.extend(std::iter::repeat_n(String::new(), 14)),
            }
            wr.write_record(&rec).map_err(werr)?;
        }
        wr.flush().map_err(|e| StageError::io(&mpath, e))?;

        let prev_rows: Vec<Vec<&Image>> = preview.iter().map(|r| r.iter().collect()).collect();
        if p.preview_per_class > 0 {
            write_preview(&ctx.out_dir.join("preview.png"), &prev_rows, p.size, p.channels, p.preview_per_class)?;
        }

        let generated = rows.iter().filter(|r| r.2.is_some()).count();
        let mut per_class = vec![0usize; classes.len()];
        rows.iter().for_each(|r| per_class[items[r.1].label] += 1);
        let mut o = StageOutcome::default();
        o.metrics.insert("images".into(), rows.len() as f64);
        o.metrics.insert("generated".into(), generated as f64);
        o.provenance.insert("threads".into(), rayon::current_num_threads().into());
        o.summary.push(format!(
            "{} images ({} generated) from {} items; per class: {}",
            rows.len(),
            generated,
            items.len(),
            classes.iter().zip(per_class).map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ")
        ));
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn labels_csv_rows_are_typed_and_bad_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let classes: Vec<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let read = |text: &str| {
            std::fs::write(d.path().join("labels.csv"), text).unwrap();
            read_items(d.path(), &classes).map_err(|e| e.to_string())
        };
        // extra columns and surrounding spaces are fine; columns found by name in any order
        let items = read("image, extra ,item,label\nx.png,1, i1 ,b\n").unwrap();
        assert_eq!((items[0].id.as_str(), items[0].label), ("i1", 1));
        assert!(items[0].image.ends_with("x.png"));
        let e = read("item,label\ni1,a\n").unwrap_err();
        assert!(e.contains("labels.csv") && e.contains("no column \"image\" (columns: item,label)"), "{e}");
        let e = read("item,label,image\ni1,a,x.png\ni2,c,y.png\n").unwrap_err();
        assert!(e.contains("line 3: label \"c\" is not one of a, b"), "{e}");
        let e = read("item,label,image\ni1,a,x.png\ni1,b,y.png\n").unwrap_err();
        assert!(e.contains("line 3: item \"i1\" appears twice"), "{e}");
        let e = read("item,label,image\ni1,a\n").unwrap_err();
        assert!(e.contains("labels.csv") && e.contains("line 2"), "{e}");
        let e = read("item,label,image\ni1,a,\n").unwrap_err();
        assert!(e.contains("line 2: item \"i1\" has no image"), "{e}");
    }

    /// A dawid-skene-shaped fixture: `n[c]` items of class c, PNG faces, posteriors.
    fn fixture(dir: &Path, n: [usize; 7]) {
        std::fs::create_dir_all(dir.join("images")).unwrap();
        let mut labels = String::from("item,label,image\n");
        let mut post = String::from("item,angry,disgust,fear,happy,neutral,sad,surprise\n");
        for (c, &k) in n.iter().enumerate() {
            for i in 0..k {
                let name = format!("{}_{i:02}.png", CLASSES[c]);
                // Mixed sizes and channel counts, like the study's images.
                let face = pipeline_vision::render_face(c, (c * 100 + i) as u64, if i % 2 == 0 { 48 } else { 60 });
                if i % 3 == 0 {
                    image::DynamicImage::ImageLuma8(face).to_rgb8().save(dir.join("images").join(&name)).unwrap();
                } else {
                    face.save(dir.join("images").join(&name)).unwrap();
                }
                labels.push_str(&format!("{name},{},images/{name}\n", CLASSES[c]));
                let mut p = [0.05f64; 7];
                p[c] = 0.7;
                post.push_str(&format!("{name},{}\n", p.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")));
            }
        }
        std::fs::write(dir.join("labels.csv"), labels).unwrap();
        std::fs::write(dir.join("posteriors.csv"), post).unwrap();
    }

    fn run(p: &AugmentParams, input: &Path, out: &Path) -> Result<StageOutcome, StageError> {
        std::fs::create_dir_all(out).unwrap();
        let inputs: BTreeMap<String, PathBuf> = [("labels".to_string(), input.to_path_buf())].into();
        crate::stages::test_run::<Augment>(p, &inputs, out, input, None)
    }

    fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    m.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
                }
            }
        }
        m
    }

    #[test]
    fn balances_writes_manifest_and_is_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ds");
        fixture(&input, [3, 1, 2, 5, 12, 2, 4]);
        let p = AugmentParams { per_class: 10, rotation_range: 20.0, brightness_range: Some([0.8, 1.2]), ..Default::default() };
        let o = run(&p, &input, &tmp.path().join("a")).unwrap();
        assert_eq!(o.metrics["images"], 72.0); // 6 classes x 10 + neutral keeps 12
        assert_eq!(o.metrics["generated"], (7 + 9 + 8 + 5 + 8 + 6) as f64);
        for (c, want) in CLASSES.iter().zip([10, 10, 10, 10, 12, 10, 10]) {
            let n = std::fs::read_dir(tmp.path().join("a/images").join(c)).unwrap().count();
            assert_eq!(n, want, "{c}");
        }
        let img = load_image(&tmp.path().join("a/images/disgust/disgust_00_aug3.png"), 48, 1).unwrap();
        assert_eq!(img.data.len(), 48 * 48);
        let manifest = std::fs::read_to_string(tmp.path().join("a/manifest.csv")).unwrap();
        let lines: Vec<&str> = manifest.lines().collect();
        assert_eq!(lines.len(), 73);
        assert!(lines[0].starts_with("file,source,label,angry,disgust,fear,happy,neutral,sad,surprise,copy,theta"));
        let copy = lines.iter().find(|l| l.starts_with("images/disgust/disgust_00_aug3.png")).unwrap();
        // Soft label of a copy = the source's posterior.
        assert!(copy.contains(",disgust_00.png,disgust,0.05,0.7,0.05,"), "{copy}");
        assert!(tmp.path().join("a/preview.png").exists());

        // Same params and seed: byte-identical, also on one thread; another seed differs.
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        one.install(|| run(&p, &input, &tmp.path().join("b"))).unwrap();
        assert_eq!(files(&tmp.path().join("a")), files(&tmp.path().join("b")));
        run(&AugmentParams { seed: 1, ..p.clone() }, &input, &tmp.path().join("c")).unwrap();
        assert_ne!(files(&tmp.path().join("a")), files(&tmp.path().join("c")));

        // sample_down caps the big class; channels = 3 gives RGB.
        let p3 = AugmentParams { mode: pipeline_vision::BalanceMode::SampleDown, channels: 3, size: 32, ..p.clone() };
        let o = run(&p3, &input, &tmp.path().join("d")).unwrap();
        assert_eq!(o.metrics["images"], 70.0);
        assert_eq!(load_image(&tmp.path().join("d/images/angry/angry_00.png"), 32, 3).unwrap().data.len(), 32 * 32 * 3);
    }

    /// Found by a hostile pass: an original named `x_aug0` and the first copy of `x` were one
    /// file (one original lost, two manifest rows naming it); a class named `../x` wrote
    /// outside the output; a long name failed with "name too long".
    #[test]
    fn no_name_clash_no_escape_and_long_names_are_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ds");
        std::fs::create_dir_all(input.join("images")).unwrap();
        let long = "y".repeat(251);
        let mut labels = String::from("item,label,image\n");
        for (i, (name, class)) in [("x", "cat"), ("x_aug0", "cat"), (long.as_str(), "dog"), ("d", "dog")].iter().enumerate() {
            pipeline_vision::render_face(i, i as u64, 48).save(input.join(format!("images/{i}.png"))).unwrap();
            labels.push_str(&format!("{name}.jpg,{class},images/{i}.png\n"));
        }
        std::fs::write(input.join("labels.csv"), &labels).unwrap();
        std::fs::write(input.join("summary.json"), r#"{"classes": ["cat", "dog"]}"#).unwrap();
        run(&AugmentParams { per_class: 6, ..Default::default() }, &input, &tmp.path().join("o")).unwrap();
        let manifest = std::fs::read_to_string(tmp.path().join("o/manifest.csv")).unwrap();
        // copy 0 of `x` is made (its name is the one the original `x_aug0` has)
        assert!(manifest.lines().any(|l| l.contains(",x.jpg,cat,") && l.split(',').nth(5) == Some("0")), "{manifest}");
        let rows: Vec<&str> = manifest.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
        let unique: std::collections::HashSet<&&str> = rows.iter().collect();
        assert_eq!(rows.len(), 12, "{manifest}");
        assert_eq!(unique.len(), 12, "two rows name one file: {manifest}");
        for r in &rows {
            assert!(tmp.path().join("o").join(r).is_file(), "{r}");
        }
        assert_eq!(std::fs::read_dir(tmp.path().join("o/images/cat")).unwrap().count(), 6);
        // a class that is a path
        std::fs::write(input.join("summary.json"), r#"{"classes": ["cat", "../../escaped"]}"#).unwrap();
        std::fs::write(input.join("labels.csv"), labels.replace(",dog,", ",../../escaped,")).unwrap();
        let e = run(&AugmentParams { per_class: 3, ..Default::default() }, &input, &tmp.path().join("p")).unwrap_err().to_string();
        assert!(e.contains("summary.json") && e.contains("not a plain name"), "{e}");
        assert!(!tmp.path().join("escaped").exists());
        // a JPEG cut short: refused, naming the file once and the item it came from
        std::fs::write(input.join("summary.json"), r#"{"classes": ["cat", "dog"]}"#).unwrap();
        std::fs::write(input.join("labels.csv"), &labels).unwrap();
        let mut jpg = Vec::new();
        pipeline_vision::render_face(0, 9, 48).write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg).unwrap();
        std::fs::write(input.join("images/1.png"), &jpg[..jpg.len() / 2]).unwrap();
        let e = run(&AugmentParams { per_class: 3, ..Default::default() }, &input, &tmp.path().join("q")).unwrap_err().to_string();
        assert!(e.contains("truncated JPEG") && e.contains("(item x_aug0.jpg)"), "{e}");
        assert_eq!(e.matches("images/1.png").count(), 1, "{e}");
    }

    #[test]
    fn classes_come_from_the_input() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ds");
        std::fs::create_dir_all(input.join("images")).unwrap();
        let mut labels = String::from("item,label,image\n");
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            for i in 0..2 {
                pipeline_vision::render_face(c, i, 48).save(input.join(format!("images/{class}{i}.png"))).unwrap();
                labels.push_str(&format!("{class}{i},{class},images/{class}{i}.png\n"));
            }
        }
        std::fs::write(input.join("labels.csv"), labels).unwrap();
        std::fs::write(input.join("summary.json"), r#"{"classes": ["cat", "dog"]}"#).unwrap();
        let o = run(&AugmentParams { per_class: 3, ..Default::default() }, &input, &tmp.path().join("o")).unwrap();
        assert_eq!(o.metrics["images"], 6.0);
        let manifest = std::fs::read_to_string(tmp.path().join("o/manifest.csv")).unwrap();
        assert!(manifest.starts_with("file,source,label,cat,dog,copy,"), "{manifest}");
        assert!(tmp.path().join("o/images/dog/dog0_aug0.png").exists());
        // train takes the classes from the manifest: a two-class model (was: the study's seven,
        // and "label cat is not a class")
        trains_with_the_manifest_classes(tmp.path(), &["cat", "dog"]);
    }

    #[cfg(feature = "ml")]
    fn trains_with_the_manifest_classes(tmp: &Path, classes: &[&str]) {
        use crate::stages::train::{Train, TrainParams};
        let mut tp = TrainParams::default();
        tp.train.epochs = 1;
        tp.valid_fraction = 0.5;
        let inputs = BTreeMap::from([("images".to_string(), tmp.join("o"))]);
        let t = tmp.join("t");
        std::fs::create_dir_all(&t).unwrap();
        crate::stages::test_run::<Train>(&tp, &inputs, &t, tmp, None).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(t.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["model"]["classes"], serde_json::json!(classes), "{cfg}");
        assert_eq!(cfg["classes"], serde_json::json!(classes), "{cfg}");
    }
    #[cfg(not(feature = "ml"))]
    fn trains_with_the_manifest_classes(_: &Path, _: &[&str]) {}

    #[test]
    fn bad_image_and_missing_class_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("ds");
        fixture(&input, [1; 7]);
        std::fs::write(input.join("images/fear_00.png"), b"garbage").unwrap();
        let e = run(&AugmentParams { per_class: 2, ..Default::default() }, &input, &tmp.path().join("o")).unwrap_err();
        assert!(e.to_string().contains("fear_00.png"), "{e}");

        let input2 = tmp.path().join("ds2");
        fixture(&input2, [1, 1, 1, 1, 1, 1, 0]);
        let e = run(&AugmentParams { per_class: 2, ..Default::default() }, &input2, &tmp.path().join("o2")).unwrap_err();
        assert!(e.to_string().contains("surprise"), "{e}");
    }

    #[test]
    fn params_validation_names_the_param() {
        let e = Augment::check_params(&AugmentParams { random_erasing: 2.0, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("random_erasing"), "{e}");
        let e = Augment::check_params(&AugmentParams { channels: 2, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("channels"), "{e}");
    }
}
