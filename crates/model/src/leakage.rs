//! The leakage guard's data side: hashes of a model's training images, kept in its artifact
//! (`training_images.csv`), and the check of validation or test images against them.
//!
//! An image is hashed as the model sees it: decoded by [`crate::data`]'s one rule (48x48
//! grayscale), back to 8-bit, then `pipeline_vision::dedup::hash_image` (blake3 of the
//! pixels for exact copies, DCT pHash and its mirrored variant for near ones). Only the
//! originals are recorded, not augmented copies: a copy of a test image in training
//! implies its original was there too.

use std::path::Path;

use pipeline_vision::dedup::{find_duplicates, hash_image, ImageHash, MatchKind, PHash};
use pipeline_vision::Image;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, IMAGE_SIZE, MEAN, PIXELS, STD};
use crate::error::{ModelError, Result};

pub use pipeline_vision::dedup::DEFAULT_NEAR_DISTANCE;

/// In a model directory: one row per training image (before augmentation).
pub const TRAINING_IMAGES: &str = "training_images.csv";

/// Examples named in messages and reports.
pub const EXAMPLES: usize = 5;

/// What a recorded image was to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Trained on (before augmentation).
    Train,
    /// Chose the model (early stopping, best epoch): scoring on it is optimistic too.
    Valid,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Valid => "valid",
        }
    }
    fn parse(s: &str) -> Option<Role> {
        match s.trim() {
            "train" => Some(Role::Train),
            "valid" => Some(Role::Valid),
            _ => None,
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Role::Train => "training image",
            Role::Valid => "validation image",
        }
    }
}

/// One image with its hashes, named as messages name it.
#[derive(Debug, Clone, PartialEq)]
pub struct HashedImage {
    pub name: String,
    pub role: Role,
    pub label: String,
    pub hash: ImageHash,
}

/// The 8-bit 48x48 grayscale image `i` of `ds`, undoing the input normalisation (exact:
/// every value came from an integer 0..=255).
pub fn dataset_image(ds: &Dataset, i: usize) -> Image {
    let data = ds.image(i).iter().map(|&v| ((v * STD + MEAN) * 255.0).round().clamp(0.0, 255.0) as u8).collect();
    Image { width: IMAGE_SIZE as u32, height: IMAGE_SIZE as u32, channels: 1, data }
}

/// Hashes of images `rows` of `ds` (in parallel).
pub fn hash_rows(ds: &Dataset, rows: &[usize]) -> Vec<ImageHash> {
    use rayon::prelude::*;
    debug_assert!(ds.pixels.len() == ds.len() * PIXELS);
    rows.par_iter().map(|&i| hash_image(&dataset_image(ds, i))).collect()
}

fn phash_hex(h: &PHash) -> String {
    h.iter().map(|w| format!("{w:016x}")).collect()
}

fn parse_phash(s: &str) -> Option<PHash> {
    let s = s.trim();
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u64; 4];
    for (i, w) in out.iter_mut().enumerate() {
        *w = u64::from_str_radix(&s[16 * i..16 * (i + 1)], 16).ok()?;
    }
    Some(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write `training_images.csv`: `image,role,label,exact,phash,phash_flip` (hashes in hex).
pub fn write_training_images(path: &Path, images: &[HashedImage]) -> Result<()> {
    let mut s = String::from("image,role,label,exact,phash,phash_flip\n");
    for im in images {
        s += &format!(
            "{},{},{},{},{},{}\n",
            csv_field(&im.name),
            im.role.name(),
            csv_field(&im.label),
            im.hash.exact_hex(),
            phash_hex(&im.hash.phash),
            phash_hex(&im.hash.phash_flip)
        );
    }
    std::fs::write(path, s).map_err(|e| ModelError::io(path, e))
}

/// Read a model directory's `training_images.csv`; `None` when the model has none (trained
/// before the guard existed).
pub fn read_training_images(model_dir: &Path) -> Result<Option<Vec<HashedImage>>> {
    let path = model_dir.join(TRAINING_IMAGES);
    if !path.is_file() {
        return Ok(None);
    }
    /// One row as [`write_training_images`] writes it (columns by name).
    #[derive(Deserialize)]
    struct Row {
        image: String,
        role: String,
        label: String,
        exact: String,
        phash: String,
        phash_flip: String,
    }
    let mut rdr = csv::Reader::from_path(&path).map_err(|e| ModelError::bad_file(&path, e))?;
    let mut out = Vec::new();
    for (n, row) in rdr.deserialize::<Row>().enumerate() {
        let row = row.map_err(|e| ModelError::bad_file(&path, e))?;
        let bad = || ModelError::bad_file(&path, format!("line {}: not image,role,label,exact,phash,phash_flip", n + 2));
        let role = Role::parse(&row.role).ok_or_else(bad)?;
        let exact = ImageHash::parse_exact(&row.exact).ok_or_else(bad)?;
        let phash = parse_phash(&row.phash).ok_or_else(bad)?;
        let phash_flip = parse_phash(&row.phash_flip).ok_or_else(bad)?;
        out.push(HashedImage { name: row.image, role, label: row.label, hash: ImageHash { exact, phash, phash_flip } });
    }
    Ok(Some(out))
}

/// What the guard found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Leakage {
    /// Images checked (validation or test).
    pub checked: usize,
    /// Training images compared against.
    pub reference: usize,
    /// Checked images with the same decoded pixels as a training image.
    pub exact: usize,
    /// Checked images within the pHash threshold of one (not exact).
    pub near: usize,
    /// The pHash threshold used (bits of 256).
    pub max_distance: u32,
    /// The first few, `valid/angry/angry_00.jpg == training image results/angry/angry_00.jpg`.
    pub examples: Vec<String>,
}

impl Leakage {
    pub fn total(&self) -> usize {
        self.exact + self.near
    }

    /// `210 of 210 valid images duplicate training images (210 exact, 0 near duplicates
    /// within 8 bits of pHash; 700 compared)`; `against`: what the reference images are.
    pub fn headline(&self, what: &str, against: &str) -> String {
        format!(
            "{} of {} {what} images duplicate {against} ({} exact, {} near duplicates within {} bits of pHash; {} compared)",
            self.total(),
            self.checked,
            self.exact,
            self.near,
            self.max_distance,
            self.reference
        )
    }
}

/// Bytes to cut from the front of each name for display: the names' common directory
/// prefix less its last directory, so items `https://host/bucket/results/angry/angry_00.jpg`
/// show as `results/angry/angry_00.jpg`.
pub fn common_dir_prefix(names: &[String]) -> usize {
    let Some(first) = names.first() else { return 0 };
    let mut len = first.len();
    for n in &names[1..] {
        len = len.min(first.bytes().zip(n.bytes()).take_while(|(a, b)| a == b).count());
    }
    let b = &first.as_bytes()[..len];
    let Some(last) = b.iter().rposition(|&c| c == b'/') else { return 0 };
    b[..last].iter().rposition(|&c| c == b'/').map(|i| i + 1).unwrap_or(0)
}

/// Compare `queries` with the training images `reference`; `max_distance` = `None` checks
/// exact copies only.
pub fn check_leakage(reference: &[HashedImage], queries: &[HashedImage], max_distance: Option<u32>) -> Leakage {
    let rh: Vec<ImageHash> = reference.iter().map(|r| r.hash).collect();
    let qh: Vec<ImageHash> = queries.iter().map(|q| q.hash).collect();
    let found = find_duplicates(&rh, &qh, max_distance);
    let names: Vec<String> = reference.iter().map(|r| r.name.clone()).collect();
    let cut = if names.len() > 1 { common_dir_prefix(&names) } else { 0 };
    let mut out = Leakage {
        checked: queries.len(),
        reference: reference.len(),
        max_distance: max_distance.unwrap_or(0),
        ..Default::default()
    };
    for m in &found {
        let q = &queries[m.query].name;
        let r = &reference[m.reference];
        let (noun, r) = (r.role.noun(), &r.name[cut..]);
        let line = match m.kind {
            MatchKind::Exact => {
                out.exact += 1;
                format!("{q} == {noun} {r}")
            }
            MatchKind::Near { distance, flipped } => {
                out.near += 1;
                let mirrored = if flipped { ", mirrored" } else { "" };
                format!("{q} ~ {noun} {r} (pHash {distance} bits apart{mirrored})")
            }
        };
        if out.examples.len() < EXAMPLES {
            out.examples.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(exact: u8, phash: u64) -> ImageHash {
        let p = [phash, phash.rotate_left(17), !phash, 0x5555_5555_5555_5555 ^ phash];
        ImageHash { exact: [exact; 32], phash: p, phash_flip: p.map(|w| !w) }
    }

    #[test]
    fn counts_names_and_roundtrips_the_file() {
        let reference = vec![
            HashedImage { name: "https://x/b/results/angry/angry_00.jpg".into(), role: Role::Train, label: "angry".into(), hash: h(1, 0xffff_0000) },
            HashedImage { name: "https://x/b/results/sad/sad_01.jpg".into(), role: Role::Valid, label: "sad".into(), hash: h(2, 0x1234_5678_9abc) },
        ];
        let queries = vec![
            HashedImage { name: "valid/angry/angry_00.jpg".into(), role: Role::Valid, label: "angry".into(), hash: h(1, 0xffff_0000) },
            HashedImage { name: "valid/sad/x.jpg".into(), role: Role::Valid, label: "sad".into(), hash: h(3, 0x1234_5678_9abc ^ 0b111) },
            HashedImage { name: "valid/sad/y.jpg".into(), role: Role::Valid, label: "sad".into(), hash: h(4, 0x0f0f_0f0f_0f0f_0f0f) },
        ];
        let l = check_leakage(&reference, &queries, Some(DEFAULT_NEAR_DISTANCE));
        assert_eq!((l.checked, l.exact, l.near), (3, 1, 1));
        assert_eq!(l.examples[0], "valid/angry/angry_00.jpg == training image results/angry/angry_00.jpg");
        assert!(l.examples[1].starts_with("valid/sad/x.jpg ~ validation image results/sad/sad_01.jpg (pHash 12 bits"), "{l:?}");
        assert!(l.headline("valid", "training images").starts_with("2 of 3 valid images duplicate training images (1 exact, 1 near"));
        let exact_only = check_leakage(&reference, &queries, None);
        assert_eq!((exact_only.exact, exact_only.near), (1, 0));

        let d = tempfile::tempdir().unwrap();
        write_training_images(&d.path().join(TRAINING_IMAGES), &reference).unwrap();
        assert_eq!(read_training_images(d.path()).unwrap().unwrap(), reference);
        assert_eq!(read_training_images(&d.path().join("none")).unwrap(), None);
    }

    #[test]
    fn dataset_pixels_map_back_to_bytes() {
        let bytes: Vec<u8> = (0..PIXELS).map(|i| (i * 7 % 256) as u8).collect();
        let pixels: Vec<f32> = bytes.iter().map(|&p| (p as f32 / 255.0 - MEAN) / STD).collect();
        let ds = Dataset { pixels, targets: vec![1.0], labels: vec![0], files: vec!["a".into()], classes: vec!["a".into()] };
        assert_eq!(dataset_image(&ds, 0).data, bytes);
    }
}
