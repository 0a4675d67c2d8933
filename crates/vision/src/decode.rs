//! Decoding: the one definition of "an image file as model input".
//!
//! Steps, in this order (training and evaluation rely on it being the same everywhere):
//! 1. decode the file (JPEG or PNG, format guessed from the content, not the extension);
//! 2. convert to the channel count: 1 -> `DynamicImage::to_luma8` (Rec. 709 weights of the
//!    `image` crate), 3 -> `to_rgb8` (a grayscale file is replicated into R, G and B);
//! 3. resize to `size` x `size` with `FilterType::Triangle` (bilinear), aspect ratio not
//!    kept, skipped when the image already has that size.
//!
//! Limits (found by a hostile pass: a 10 KB PNG of 10,000,000 x 1 pixels took 7.5 GB in the
//! resize, a FIFO hung `predict`, `/dev/zero` was read until memory ran out): a file is read
//! only when it is a regular file of at most [`MAX_IMAGE_FILE_BYTES`], opened non-blocking;
//! its header is checked against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_PIXELS`] before a pixel is
//! decoded.

use std::io::Read;
use std::path::Path;

use image::imageops::FilterType;
use image::DynamicImage;

use crate::VisionError;

/// An 8-bit image, rows top to bottom, channels interleaved (HWC), 1 or 3 channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

impl Image {
    pub fn new(width: u32, height: u32, channels: u8) -> Self {
        let len = width as usize * height as usize * channels as usize;
        Image { width, height, channels, data: vec![0; len] }
    }

    /// Wrap raw HWC bytes; `None` when the length does not match.
    pub fn from_raw(width: u32, height: u32, channels: u8, data: Vec<u8>) -> Option<Self> {
        (data.len() == width as usize * height as usize * channels as usize && matches!(channels, 1 | 3))
            .then_some(Image { width, height, channels, data })
    }

    pub fn to_dynamic(&self) -> DynamicImage {
        match self.channels {
            1 => DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(self.width, self.height, self.data.clone())
                    .expect("Image invariant: data length matches"),
            ),
            _ => DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(self.width, self.height, self.data.clone())
                    .expect("Image invariant: data length matches"),
            ),
        }
    }

    /// Encode as PNG bytes (deterministic: same pixels, same bytes).
    pub fn to_png(&self) -> Result<Vec<u8>, image::ImageError> {
        let mut out = std::io::Cursor::new(Vec::new());
        let color = if self.channels == 1 { image::ExtendedColorType::L8 } else { image::ExtendedColorType::Rgb8 };
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut out),
            &self.data,
            self.width,
            self.height,
            color,
        )?;
        Ok(out.into_inner())
    }

    pub fn save_png(&self, path: &Path) -> Result<(), VisionError> {
        let bytes = self
            .to_png()
            .map_err(|e| VisionError::Encode { path: path.to_path_buf(), message: e.to_string() })?;
        std::fs::write(path, bytes).map_err(|source| VisionError::Io { path: path.to_path_buf(), source })
    }
}

fn check_shape(size: u32, channels: u8) -> Result<(), VisionError> {
    if size == 0 || size > 4096 {
        return Err(VisionError::BadParam { param: "size", message: format!("{size} is not in 1..=4096") });
    }
    if !matches!(channels, 1 | 3) {
        return Err(VisionError::BadParam { param: "channels", message: format!("{channels} is not 1 or 3") });
    }
    Ok(())
}

/// Largest image file read: a face photo is a few KB, a camera JPEG a few MB.
pub const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;
/// Widest or tallest image decoded (a resize to 48 px keeps one side whole in between).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Most pixels decoded.
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;
/// Most bytes one decoded image may take (64 Mpx of 8-bit RGBA; a 16-bit RGBA image of
/// 8192 x 8192 passed the pixel count and took 613 MB: found by a hostile pass).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// The bytes of an image file: a regular file (a FIFO, device or directory is refused
/// before it is read; the open does not block) of at most [`MAX_IMAGE_FILE_BYTES`].
pub fn read_image_file(path: &Path) -> Result<Vec<u8>, VisionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| VisionError::Io { path: path.to_path_buf(), source };
    let refuse = |m: String| VisionError::Io { path: path.to_path_buf(), source: std::io::Error::other(m) };
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refuse(if meta.is_dir() {
            "is a directory, not an image".into()
        } else {
            "not a regular file (a FIFO, socket or device): its reading may never end".into()
        }));
    }
    if meta.len() > MAX_IMAGE_FILE_BYTES {
        return Err(refuse(format!("{} bytes: an image file may have at most {MAX_IMAGE_FILE_BYTES}", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_IMAGE_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE_BYTES {
        return Err(refuse(format!("grew past {MAX_IMAGE_FILE_BYTES} bytes while it was read")));
    }
    Ok(bytes)
}

/// Decodes JPEG or PNG bytes (format from the content) after checking the header's size
/// against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_PIXELS`]; the error is the message alone.
pub fn decode_bytes(bytes: &[u8]) -> Result<DynamicImage, String> {
    use image::ImageDecoder;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(format!(
            "{w} x {h} pixels: at most {MAX_IMAGE_SIDE} a side and {MAX_IMAGE_PIXELS} in all are decoded (scale it down first)"
        ));
    }
    if decoder.total_bytes() > MAX_IMAGE_BYTES {
        return Err(format!(
            "{w} x {h} pixels of {:?} take {} bytes decoded: at most {MAX_IMAGE_BYTES} (scale it down, or save it with 8 bits per channel)",
            decoder.color_type(),
            decoder.total_bytes()
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    decoder.set_limits(limits).map_err(|e| e.to_string())?;
    DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())
}

/// Read and decode `path` (JPEG/PNG, grayscale or colour) to `size` x `size` x `channels`.
/// See the module doc for the exact steps and limits; errors name the file.
pub fn load_image(path: &Path, size: u32, channels: u8) -> Result<Image, VisionError> {
    check_shape(size, channels)?;
    let bytes = read_image_file(path)?;
    decode_image(&bytes, path, size, channels)
}

/// [`load_image`] on bytes already in memory; `path` only names the source in errors.
pub fn decode_image(bytes: &[u8], path: &Path, size: u32, channels: u8) -> Result<Image, VisionError> {
    check_shape(size, channels)?;
    // The decoder fills in what a cut JPEG lacks, without an error: such an image reached
    // training as a clean PNG (found by a hostile pass). Data loaders refuse it; `predict`
    // warns instead (its own decoder).
    if truncated_jpeg(bytes) {
        return Err(VisionError::Decode { path: path.to_path_buf(), message: TRUNCATED.into() });
    }
    let img = decode_bytes(bytes).map_err(|message| VisionError::Decode { path: path.to_path_buf(), message })?;
    Ok(convert(&img, size, channels))
}

/// The refusal of a JPEG cut short, for data loaders.
pub const TRUNCATED: &str = "truncated JPEG (no end-of-image marker after its last scan): it would decode only partly, the missing part filled in; replace the file or leave it out";

/// Whether `bytes` are a JPEG cut short: it starts like one (SOI) but no end-of-image marker
/// (FF D9) follows its last start-of-scan (FF DA). The `image` crate (zune-jpeg) decodes such
/// a file without an error, filling what is missing (test `truncated_jpeg_decodes_partially`),
/// so callers that must not silently use half an image check this. Markers cannot occur
/// inside entropy-coded data (an FF there is stuffed as FF 00), so the scan is exact; an
/// embedded EXIF thumbnail's own EOI comes before the main image's scans.
pub fn truncated_jpeg(bytes: &[u8]) -> bool {
    if bytes.len() < 4 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return false;
    }
    // Walk the segments from the start to the first end-of-image marker: what follows it (a
    // phone's "motion photo" video, any trailer) is not the image, and an FF DA there made a
    // whole JPEG read as cut short (found by a hostile pass).
    let n = bytes.len();
    let mut i = 2;
    loop {
        // the next marker: FF (fill FFs allowed) then a marker byte
        if i < n && bytes[i] != 0xFF {
            // not a marker where one belongs: a layout this walk does not know; the decoder judges
            return false;
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        if i >= n {
            return true;
        }
        let m = bytes[i];
        i += 1;
        match m {
            0xD9 => return false,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {
                if i + 2 > n {
                    return true;
                }
                let len = u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
                if len < 2 {
                    return false;
                }
                i += len;
                if i > n {
                    return true;
                }
                if m == 0xDA {
                    // entropy-coded data: up to the next marker that is not a stuffed FF 00
                    // or a restart marker
                    loop {
                        while i < n && bytes[i] != 0xFF {
                            i += 1;
                        }
                        if i + 1 >= n {
                            return true;
                        }
                        match bytes[i + 1] {
                            0x00 | 0xD0..=0xD7 => i += 2,
                            0xFF => i += 1,
                            _ => break,
                        }
                    }
                }
            }
        }
    }
}

/// Channel conversion then Triangle resize: the tail of [`load_image`].
pub fn convert(img: &DynamicImage, size: u32, channels: u8) -> Image {
    let resize = |w: u32, h: u32| (w, h) != (size, size);
    if channels == 1 {
        let mut g = img.to_luma8();
        if resize(g.width(), g.height()) {
            g = image::imageops::resize(&g, size, size, FilterType::Triangle);
        }
        Image { width: size, height: size, channels: 1, data: g.into_raw() }
    } else {
        let mut c = img.to_rgb8();
        if resize(c.width(), c.height()) {
            c = image::imageops::resize(&c, size, size, FilterType::Triangle);
        }
        Image { width: size, height: size, channels: 3, data: c.into_raw() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUDY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/datasets/seed-study/images/results");

    #[test]
    fn decodes_study_images_to_configured_shape() {
        let dir = Path::new(STUDY).join("angry");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("skipping: {} not present", dir.display());
            return;
        };
        let mut n = 0;
        for e in entries.take(5) {
            let p = e.unwrap().path();
            for (size, ch) in [(48, 1), (32, 3), (64, 1)] {
                let img = load_image(&p, size, ch).unwrap();
                assert_eq!((img.width, img.height, img.channels), (size, size, ch));
                assert_eq!(img.data.len(), (size * size) as usize * ch as usize);
            }
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn grayscale_png_to_rgb_replicates_and_roundtrips() {
        let dir = tempdir();
        let p = dir.join("g.png");
        let g = Image::from_raw(4, 4, 1, (0..16).map(|v| v as u8 * 10).collect()).unwrap();
        g.save_png(&p).unwrap();
        let back = load_image(&p, 4, 1).unwrap();
        assert_eq!(back, g);
        let rgb = load_image(&p, 4, 3).unwrap();
        assert_eq!(rgb.data[3 * 5..3 * 5 + 3], [50, 50, 50]);
        let small = load_image(&p, 2, 1).unwrap();
        assert_eq!(small.data.len(), 4);
    }

    #[test]
    fn bad_file_error_names_it() {
        let dir = tempdir();
        let p = dir.join("broken.jpg");
        std::fs::write(&p, b"not an image").unwrap();
        let e = load_image(&p, 48, 1).unwrap_err().to_string();
        assert!(e.contains("broken.jpg"), "{e}");
        let e = load_image(&dir.join("missing.png"), 48, 1).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
        assert!(load_image(&p, 48, 2).unwrap_err().to_string().contains("channels"));
    }

    #[test]
    fn truncated_jpeg_decodes_partially() {
        let img = image::GrayImage::from_fn(48, 48, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 90)
            .encode(img.as_raw(), 48, 48, image::ExtendedColorType::L8)
            .unwrap();
        assert!(!truncated_jpeg(&buf));
        let cut = &buf[..buf.len() * 2 / 3];
        assert!(truncated_jpeg(cut));
        // What the decoder does with it: no error, a full-size image whose end is filled in.
        let partial = image::load_from_memory(cut);
        eprintln!("truncated JPEG: {:?}", partial.as_ref().map(|i| (i.width(), i.height())).map_err(|e| e.to_string()));
        let partial = partial.expect("the image crate decodes a truncated JPEG without an error");
        let full = image::load_from_memory(&buf).unwrap().to_luma8();
        assert_ne!(partial.to_luma8().as_raw(), full.as_raw(), "the missing part cannot be there");
        assert!(!truncated_jpeg(b"\x89PNG...."));
        assert!(!truncated_jpeg(&[]));
        // bytes after the end marker are not the image, an FF DA among them included
        let mut trailer = buf.clone();
        trailer.extend_from_slice(&[0, 1, 0xFF, 0xDA, 0, 8, 1, 2, 3, 4, 5, 6]);
        assert!(!truncated_jpeg(&trailer));
        // a cut file padded with zeros is still cut
        let mut padded = cut.to_vec();
        padded.extend(std::iter::repeat(0u8).take(4096));
        assert!(truncated_jpeg(&padded));
        assert!(truncated_jpeg(&buf[..buf.len() - 1]));
        // the data loader refuses it, naming the file; the whole file loads
        let e = decode_image(cut, Path::new("cut.jpg"), 48, 1).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
        assert!(decode_image(&buf, Path::new("whole.jpg"), 48, 1).is_ok());
    }

    #[test]
    fn huge_images_special_files_and_big_files_are_refused_before_decoding() {
        let dir = tempdir();
        // a 10,000,000 x 1 grayscale PNG of ~10 KB (was 7.5 GB resident in the resize)
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new_with_quality(&mut png, image::codecs::png::CompressionType::Best, image::codecs::png::FilterType::NoFilter),
            &vec![0u8; 10_000_000],
            10_000_000,
            1,
            image::ExtendedColorType::L8,
        )
        .unwrap();
        assert!(png.len() < 100_000, "{}", png.len());
        let wide = dir.join("wide.png");
        std::fs::write(&wide, &png).unwrap();
        let e = load_image(&wide, 48, 1).unwrap_err().to_string();
        assert!(e.contains("wide.png") && e.contains("10000000 x 1 pixels"), "{e}");
        let e = load_image(Path::new("/dev/zero"), 48, 1).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let fifo = dir.join("f.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = load_image(&fifo, 48, 1).unwrap_err().to_string();
        assert!(e.contains("f.png") && e.contains("FIFO"), "{e}");
        let big = dir.join("big.jpg");
        std::fs::File::create(&big).unwrap().set_len(MAX_IMAGE_FILE_BYTES + 1).unwrap();
        let e = load_image(&big, 48, 1).unwrap_err().to_string();
        assert!(e.contains("big.jpg") && e.contains("at most"), "{e}");
        // 16 bits per channel count double (second hostile pass: 613 MB for one 8192 x 8192 RGBA16)
        // (the header alone: the refusal comes before any pixel data is read)
        let deep = dir.join("deep.png");
        std::fs::write(&deep, png_header_only(8192, 8192, 16, 6)).unwrap();
        let e = load_image(&deep, 48, 1).unwrap_err().to_string();
        assert!(e.contains("deep.png") && e.contains("Rgba16"), "{e}");
        // a large but sane image still decodes
        let ok = dir.join("ok.png");
        image::GrayImage::new(4000, 3000).save(&ok).unwrap();
        assert_eq!(load_image(&ok, 48, 1).unwrap().data.len(), 48 * 48);
    }

    /// A PNG signature, IHDR (CRC included), an empty IDAT and IEND: enough for the header checks.
    fn png_header_only(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
        fn crc32(data: &[u8]) -> u32 {
            let mut c = 0xFFFF_FFFFu32;
            for &b in data {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                }
            }
            !c
        }
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut v = (data.len() as u32).to_be_bytes().to_vec();
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            v.extend_from_slice(&body);
            v.extend_from_slice(&crc32(&body).to_be_bytes());
            v
        };
        let mut ihdr = w.to_be_bytes().to_vec();
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &ihdr));
        png.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]));
        png.extend(chunk(b"IEND", &[]));
        png
    }

    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "pv-decode-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
