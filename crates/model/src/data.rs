//! Images in, one contiguous `f32` buffer out.
//!
//! Every image is decoded once, up front and in parallel, into `[n, 1, 48, 48]` row-major
//! `f32`; a training step only copies the rows of its batch out of that buffer, so decoding
//! never sits on the critical path of an epoch.
//!
//! Decoding rule (the same for training, evaluation and prediction, and the same as the
//! vision crate's): decode any format the `image` crate knows from its content, resize to
//! 48x48 with `FilterType::Triangle` when the size differs, then `to_luma8` (gray or RGB or
//! RGBA in, one channel out), then `(p / 255 - MEAN) / STD`.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Side of the square network input.
pub const IMAGE_SIZE: usize = 48;
/// Pixels per image (one channel).
pub const PIXELS: usize = IMAGE_SIZE * IMAGE_SIZE;
/// Input normalization: ImageNet's mean/std averaged over RGB, so pretrained VGG16
/// weights (summed over their RGB input channels) see inputs on the scale they expect.
pub const MEAN: f32 = 0.449;
pub const STD: f32 = 0.226;

/// Extensions taken from image folders (lower-cased).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "jfif", "png"];

/// Decode one image file into 48x48 normalized grayscale (`PIXELS` values).
/// The file is read and decoded within `pipeline_vision`'s limits (a regular file, its size
/// and pixel count bounded), so a FIFO or a decompression bomb is an error naming it.
pub fn decode_image(path: &Path) -> Result<Vec<f32>> {
    let bytes = pipeline_vision::read_image_file(path).map_err(|e| ModelError::Image { path: path.to_path_buf(), message: strip_path(&e.to_string(), path) })?;
    decode_image_bytes(&bytes).map_err(|message| ModelError::Image { path: path.to_path_buf(), message })
}

/// [`decode_image`] for a data set: a JPEG cut short is an error (it decodes only partly,
/// and was trained and scored on silently; found by a hostile pass). `predict` decodes with
/// [`decode_image`] and warns instead.
pub fn decode_dataset_image(path: &Path) -> Result<Vec<f32>> {
    let bytes = pipeline_vision::read_image_file(path).map_err(|e| ModelError::Image { path: path.to_path_buf(), message: strip_path(&e.to_string(), path) })?;
    if pipeline_vision::truncated_jpeg(&bytes) {
        return Err(ModelError::Image { path: path.to_path_buf(), message: pipeline_vision::TRUNCATED.into() });
    }
    decode_image_bytes(&bytes).map_err(|message| ModelError::Image { path: path.to_path_buf(), message })
}

/// A vision error's message without the path it starts with (the caller's error names it).
fn strip_path(message: &str, path: &Path) -> String {
    message.strip_prefix(&format!("{}: ", path.display())).unwrap_or(message).to_string()
}

/// Same as [`decode_image`], from bytes in memory.
pub fn decode_image_bytes(bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let img = pipeline_vision::decode_bytes(bytes)?;
    let img = if img.width() as usize != IMAGE_SIZE || img.height() as usize != IMAGE_SIZE {
        img.resize_exact(IMAGE_SIZE as u32, IMAGE_SIZE as u32, FilterType::Triangle)
    } else {
        img
    };
    let gray = img.to_luma8();
    Ok(gray.as_raw().iter().map(|&p| (p as f32 / 255.0 - MEAN) / STD).collect())
}

/// Decoded images with their targets, all in flat buffers.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// `[n, 1, 48, 48]` normalized pixels, row-major.
    pub pixels: Vec<f32>,
    /// `[n, classes]` target distribution per image (one-hot for hard labels).
    pub targets: Vec<f32>,
    /// Hard label per image (the given label, or the argmax of the soft target).
    pub labels: Vec<usize>,
    /// Source file per image (reports name images by file).
    pub files: Vec<PathBuf>,
    /// Class names, in target-column order.
    pub classes: Vec<String>,
}

/// Per-image standardisation: `(x - mean) / max(std, 1/sqrt(n))`, as TensorFlow's
/// `per_image_standardization` (the floor keeps a flat image finite). Removes each photo's
/// brightness and contrast, which in face photos from many sources say more about the
/// camera than the expression.
pub fn standardize_image(px: &mut [f32]) {
    if px.is_empty() {
        return;
    }
    let n = px.len() as f64;
    let mean = px.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = px.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / var.sqrt().max(1.0 / n.sqrt());
    px.iter_mut().for_each(|v| *v = ((*v as f64 - mean) * scale) as f32);
}

/// [`standardize_image`] on every image of a pixel buffer (`PIXELS` values each).
pub fn standardize_images(pixels: &mut [f32]) {
    pixels.chunks_mut(PIXELS).for_each(standardize_image);
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }
    /// Copy the images and targets at `idx` into `x` and `y` (cleared first), the only
    /// per-step data work in training.
    pub fn gather(&self, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<f32>) {
        let k = self.num_classes();
        x.clear();
        y.clear();
        for &i in idx {
            x.extend_from_slice(self.image(i));
            y.extend_from_slice(&self.targets[i * k..(i + 1) * k]);
        }
    }
    /// Replace soft targets by one-hot rows of `labels` (`targets: "hard"`).
    pub fn to_hard_targets(&mut self) {
        let k = self.num_classes();
        self.targets = one_hot(&self.labels, k);
    }

    /// The images at `idx`, in that order (a train/validation split).
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let k = self.num_classes();
        let mut out = Dataset { classes: self.classes.clone(), ..Default::default() };
        out.pixels.reserve(idx.len() * PIXELS);
        for &i in idx {
            out.pixels.extend_from_slice(self.image(i));
            out.targets.extend_from_slice(&self.targets[i * k..(i + 1) * k]);
            out.labels.push(self.labels[i]);
            out.files.push(self.files[i].clone());
        }
        out
    }

    /// Build from files and per-image targets, decoding in parallel.
    pub fn from_files(files: Vec<PathBuf>, targets: Vec<f32>, labels: Vec<usize>, classes: Vec<String>) -> Result<Self> {
        let decoded: Vec<Vec<f32>> = files.par_iter().map(|p| decode_dataset_image(p)).collect::<Result<_>>()?;
        let mut pixels = Vec::with_capacity(decoded.len() * PIXELS);
        for d in decoded {
            pixels.extend_from_slice(&d);
        }
        Ok(Dataset { pixels, targets, labels, files, classes })
    }
}

fn one_hot(labels: &[usize], k: usize) -> Vec<f32> {
    let mut t = vec![0.0; labels.len() * k];
    for (i, &l) in labels.iter().enumerate() {
        t[i * k + l] = 1.0;
    }
    t
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Image formats people keep beside JPEG and PNG: a file of one of these in a class
/// directory is an error (it was dropped unnoticed, and the test set shrank; found by a
/// hostile pass), other files (notes, `.DS_Store`) are ignored.
const UNSUPPORTED_IMAGES: &[&str] = &["webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif", "jxl", "svg", "ico", "dng", "cr2", "nef", "raw", "psd"];

fn unsupported_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| UNSUPPORTED_IMAGES.contains(&e.to_ascii_lowercase().as_str()))
}

/// The images of one class directory, its sub-directories included (as torchvision's
/// ImageFolder: `test/happy/more/*.png` were dropped); hidden entries skipped; a linked
/// sub-directory is followed once (a directory already read, a loop, is not read again); at
/// most 16 levels.
fn class_images_in(dir: &Path, depth: usize, out: &mut Vec<PathBuf>, seen: &mut std::collections::HashSet<PathBuf>) -> Result<()> {
    for f in sorted_dir(dir)? {
        if f.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if f.is_dir() {
            // read each directory once: a link back up is a loop, not more images
            let Ok(c) = std::fs::canonicalize(&f) else { continue };
            if !seen.insert(c) {
                continue;
            }
            if depth >= 16 {
                return Err(ModelError::bad_file(&f, "more than 16 directory levels below a class directory"));
            }
            class_images_in(&f, depth + 1, out, seen)?;
        } else if f.is_file() && is_image(&f) {
            out.push(f);
        } else if unsupported_image(&f) {
            return Err(ModelError::bad_file(&f, format!("not a format this loader reads ({}): convert it to PNG or JPEG, or move it out", IMAGE_EXTENSIONS.join(", "))));
        }
    }
    Ok(())
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))? {
        out.push(entry.map_err(|e| ModelError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// An ImageFolder directory: `<root>/<class>/*.{jpg,jpeg,png}` with hard labels.
/// A sub-directory that is not one of `classes` is an error (a typo would otherwise
/// silently drop a class); a class without a directory simply has no images.
pub fn load_image_folder(root: &Path, classes: &[String]) -> Result<Dataset> {
    let mut files = Vec::new();
    // the root and every class directory count as read: a link inside a class directory back
    // up (or into another class) must not read other classes' images under this label
    let mut seen: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for d in std::iter::once(root.to_path_buf()).chain(classes.iter().map(|c| root.join(c))) {
        if let Ok(c) = std::fs::canonicalize(&d) {
            seen.insert(c);
        }
    }
    let mut labels = Vec::new();
    for entry in sorted_dir(root)? {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.starts_with('.') {
            continue;
        }
        if !entry.is_dir() {
            // an image beside the class directories has no class: it was dropped unnoticed
            if is_image(&entry) || unsupported_image(&entry) {
                return Err(ModelError::bad_file(&entry, format!("an image outside the class directories (expected <root>/<class>/...; classes: {})", classes.join(", "))));
            }
            continue;
        }
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(ModelError::bad_file(
                &entry,
                format!("directory is not a class (expected one of {})", classes.join(", ")),
            ));
        };
        let before = files.len();
        class_images_in(&entry, 0, &mut files, &mut seen)?;
        labels.resize(labels.len() + files.len() - before, label);
    }
    if files.is_empty() {
        return Err(ModelError::bad_file(root, "no images found under <root>/<class>/*.{jpg,jpeg,png}"));
    }
    let targets = one_hot(&labels, classes.len());
    Dataset::from_files(files, targets, labels, classes.to_vec())
}

/// The `augment` stage's output: `manifest.csv` with columns
/// `file,source,label,<one soft-label column per class>,...` (extra columns ignored).
/// `file` is relative to `dir` (or to `dir/images/<label>/`). Without soft columns the
/// targets are one-hot from `label`.
pub fn load_manifest(dir: &Path, classes: &[String]) -> Result<Dataset> {
    load_manifest_rows(dir, classes).map(|(ds, _)| ds)
}

/// The classes an `augment` manifest was written for: its soft-label columns, the ones
/// between `label` and `copy`, in order. `None` when the header has no such columns (a
/// hand-made manifest with hard labels only).
pub fn manifest_classes(dir: &Path) -> Result<Option<Vec<String>>> {
    let path = dir.join("manifest.csv");
    let mut rdr = csv::Reader::from_path(&path).map_err(|e| ModelError::bad_file(&path, e))?;
    let headers: Vec<String> = rdr.headers().map_err(|e| ModelError::bad_file(&path, e))?.iter().map(|h| h.trim().to_string()).collect();
    let (Some(l), Some(c)) = (headers.iter().position(|h| h == "label"), headers.iter().position(|h| h == "copy")) else {
        return Ok(None);
    };
    if c <= l + 2 {
        // none, or a single column: a class list needs two
        return Ok(None);
    }
    Ok(Some(headers[l + 1..c].to_vec()))
}

/// Where a manifest row came from: its source item, and which augmented copy it is
/// (`None`: the original).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRow {
    pub source: String,
    pub copy: Option<u32>,
}

/// [`load_manifest`], with each row's source item and copy number (columns `source` and
/// `copy`; without `source` every row is its own item, without `copy` every row an
/// original).
pub fn load_manifest_rows(dir: &Path, classes: &[String]) -> Result<(Dataset, Vec<ManifestRow>)> {
    let path = dir.join("manifest.csv");
    let mut rdr = csv::Reader::from_path(&path).map_err(|e| ModelError::bad_file(&path, e))?;
    let headers = rdr.headers().map_err(|e| ModelError::bad_file(&path, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let file_col = col("file").ok_or_else(|| ModelError::bad_file(&path, "no column \"file\""))?;
    let label_col = col("label").ok_or_else(|| ModelError::bad_file(&path, "no column \"label\""))?;
    let (source_col, copy_col) = (col("source"), col("copy"));
    let mut rows = Vec::new();
    let soft_cols: Vec<Option<usize>> = classes.iter().map(|c| col(c)).collect();
    let has_soft = soft_cols.iter().all(|c| c.is_some());
    if !has_soft && soft_cols.iter().any(|c| c.is_some()) {
        let missing: Vec<&str> =
            classes.iter().zip(&soft_cols).filter(|(_, c)| c.is_none()).map(|(n, _)| n.as_str()).collect();
        return Err(ModelError::bad_file(&path, format!("soft-label columns missing: {}", missing.join(", "))));
    }
    let k = classes.len();
    let (mut files, mut labels, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for (row, rec) in rdr.records().enumerate() {
        let line = row + 2;
        let rec = rec.map_err(|e| ModelError::bad_file(&path, e))?;
        let file = rec.get(file_col).unwrap_or_default().trim();
        let label_name = rec.get(label_col).unwrap_or_default().trim();
        let label = classes.iter().position(|c| c == label_name).ok_or_else(|| {
            ModelError::bad_file(&path, format!("line {line}: label \"{label_name}\" is not a class"))
        })?;
        let mut resolved = dir.join(file);
        if !resolved.is_file() {
            let alt = dir.join("images").join(label_name).join(file);
            if alt.is_file() {
                resolved = alt;
            } else {
                return Err(ModelError::bad_file(&path, format!("line {line}: image \"{file}\" not found")));
            }
        }
        if has_soft {
            let mut q = Vec::with_capacity(k);
            for (c, sc) in classes.iter().zip(&soft_cols) {
                let raw = rec.get(sc.unwrap()).unwrap_or_default().trim();
                let v: f32 = raw.parse().map_err(|_| {
                    ModelError::bad_file(&path, format!("line {line}: column \"{c}\": \"{raw}\" is not a number"))
                })?;
                if !(v.is_finite() && v >= 0.0) {
                    return Err(ModelError::bad_file(&path, format!("line {line}: column \"{c}\": {v} is not a probability")));
                }
                q.push(v);
            }
            let s: f32 = q.iter().sum();
            if s <= 0.0 {
                return Err(ModelError::bad_file(&path, format!("line {line}: soft labels sum to 0")));
            }
            // Renormalize: CSV rounding leaves sums like 0.9999.
            targets.extend(q.iter().map(|v| v / s));
        } else {
            let mut q = vec![0.0; k];
            q[label] = 1.0;
            targets.extend(q);
        }
        let source = source_col.and_then(|c| rec.get(c)).map(str::trim).filter(|s| !s.is_empty()).unwrap_or(file);
        let copy_raw = copy_col.and_then(|c| rec.get(c)).map(str::trim).unwrap_or("");
        let copy = if copy_raw.is_empty() {
            None
        } else {
            Some(copy_raw.parse::<u32>().map_err(|_| {
                ModelError::bad_file(&path, format!("line {line}: column \"copy\": \"{copy_raw}\" is not a copy number"))
            })?)
        };
        rows.push(ManifestRow { source: source.to_string(), copy });
        files.push(resolved);
        labels.push(label);
    }
    if files.is_empty() {
        return Err(ModelError::bad_file(&path, "no rows"));
    }
    Ok((Dataset::from_files(files, targets, labels, classes.to_vec())?, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_classes_are_the_columns_between_label_and_copy() {
        let d = tempfile::tempdir().unwrap();
        let classes = |header: &str| {
            std::fs::write(d.path().join("manifest.csv"), format!("{header}\n")).unwrap();
            manifest_classes(d.path()).unwrap()
        };
        assert_eq!(classes("file,source,label,cat,dog,copy,theta"), Some(vec!["cat".to_string(), "dog".to_string()]));
        assert_eq!(classes("file,label"), None);
        assert_eq!(classes("file,source,label,copy"), None);
        assert_eq!(classes("file,source,label,cat,copy"), None);
        assert!(manifest_classes(&d.path().join("missing")).unwrap_err().to_string().contains("manifest.csv"));
    }

    pub(crate) fn write_png(path: &Path, w: u32, h: u32, rgb: bool, seed: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        if rgb {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed])
            });
            img.save(path).unwrap();
        } else {
            let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x as u8 ^ y as u8).wrapping_add(seed)]));
            img.save(path).unwrap();
        }
    }

    #[test]
    fn decodes_any_size_and_channels_to_48x48_gray() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.png");
        let b = d.path().join("b.png");
        write_png(&a, 100, 60, true, 7);
        write_png(&b, 48, 48, false, 3);
        let va = decode_image(&a).unwrap();
        let vb = decode_image(&b).unwrap();
        assert_eq!(va.len(), PIXELS);
        assert_eq!(vb.len(), PIXELS);
        // 48x48 gray passes through unresized: pixel (0,0) is 0^0+3 = 3.
        assert!((vb[0] - (3.0 / 255.0 - MEAN) / STD).abs() < 1e-6);
        let bad = d.path().join("bad.png");
        std::fs::write(&bad, b"not an image").unwrap();
        let err = decode_image(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.png"), "{err}");
    }

    /// Found by a hostile pass: nested class folders, images beside the class folders and
    /// other formats were dropped unnoticed (22 test images scored of 30), and a JPEG cut
    /// short was trained and scored on.
    #[test]
    fn an_image_folder_drops_nothing_unnoticed() {
        let classes = crate::default_classes();
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("test");
        write_png(&root.join("happy/a.png"), 48, 48, false, 1);
        write_png(&root.join("happy/more/b.png"), 48, 48, false, 2);
        write_png(&root.join("sad/.hidden/c.png"), 48, 48, false, 3);
        std::fs::write(root.join("sad/notes.txt"), "not an image").unwrap();
        std::fs::write(root.join("README.md"), "about this set").unwrap();
        std::os::unix::fs::symlink(&root, root.join("happy/loop")).unwrap();
        // a linked sub-directory is read (once), a loop is not read again
        write_png(&d.path().join("elsewhere/e.png"), 48, 48, false, 5);
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("sad/linked")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("sad/linked-again")).unwrap();
        std::fs::write(root.join("happy/j.jfif"), std::fs::read(root.join("happy/a.png")).unwrap()).unwrap();
        let ds = load_image_folder(&root, &classes).unwrap();
        assert_eq!(ds.files.len(), 4, "{:?}", ds.files);
        write_png(&root.join("x.png"), 48, 48, false, 4);
        let e = load_image_folder(&root, &classes).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("outside the class directories"), "{e}");
        std::fs::remove_file(root.join("x.png")).unwrap();
        std::fs::write(root.join("happy/c.webp"), "webp").unwrap();
        let e = load_image_folder(&root, &classes).unwrap_err().to_string();
        assert!(e.contains("c.webp") && e.contains("convert it"), "{e}");
        std::fs::remove_file(root.join("happy/c.webp")).unwrap();
        // a JPEG cut short
        let img = image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90).encode(img.as_raw(), 48, 48, image::ExtendedColorType::L8).unwrap();
        std::fs::write(root.join("happy/cut.jpg"), &buf[..buf.len() * 2 / 3]).unwrap();
        let e = load_image_folder(&root, &classes).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
        // predict's decoder still reads it (and predict warns)
        assert!(decode_image(&root.join("happy/cut.jpg")).is_ok());
    }

    #[test]
    fn image_folder_and_manifest() {
        let classes = crate::default_classes();
        let d = tempfile::tempdir().unwrap();
        write_png(&d.path().join("valid/fear/x.png"), 48, 48, false, 1);
        write_png(&d.path().join("valid/happy/y.png"), 30, 30, true, 2);
        let ds = load_image_folder(&d.path().join("valid"), &classes).unwrap();
        assert_eq!(ds.labels, vec![2, 3]);
        assert_eq!(ds.pixels.len(), 2 * PIXELS);
        assert_eq!(&ds.targets[7..14], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);

        write_png(&d.path().join("valid/happpy/z.png"), 48, 48, false, 2);
        let err = load_image_folder(&d.path().join("valid"), &classes).unwrap_err().to_string();
        assert!(err.contains("happpy"), "{err}");

        let aug = d.path().join("aug");
        write_png(&aug.join("images/sad/s0.png"), 48, 48, false, 5);
        write_png(&aug.join("images/angry/a0.png"), 48, 48, false, 6);
        std::fs::write(
            aug.join("manifest.csv"),
            "file,source,label,angry,disgust,fear,happy,neutral,sad,surprise,extra\n\
             images/sad/s0.png,s.jpg,sad,0.1,0,0,0,0,0.7,0.2,x\n\
             a0.png,a.jpg,angry,0.5,0.5,0,0,0,0,0,y\n",
        )
        .unwrap();
        let m = load_manifest(&aug, &classes).unwrap();
        assert_eq!(m.labels, vec![5, 0]);
        assert!((m.targets[5] - 0.7).abs() < 1e-6 && (m.targets[7] - 0.5).abs() < 1e-6);
        let mut hard = m.clone();
        hard.to_hard_targets();
        assert_eq!(&hard.targets[0..7], &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);

        std::fs::write(aug.join("manifest.csv"), "file,source,label\nmissing.png,m,fear\n").unwrap();
        let err = load_manifest(&aug, &classes).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("missing.png"), "{err}");
    }
}
