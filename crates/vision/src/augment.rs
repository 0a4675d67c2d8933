//! Augmentation with Keras `ImageDataGenerator` semantics, plus torchvision-style extras.
//!
//! Keras (keras_preprocessing `get_random_transform` + `apply_transform`) draws, in order:
//! `theta` ~ U(-rotation_range, rotation_range) degrees; `tx` (rows) from
//! `height_shift_range`, `ty` (columns) from `width_shift_range` (a range below 1 is a
//! fraction of the image size, otherwise pixels); `shear` ~ U(-shear_range, shear_range)
//! degrees; `zx`, `zy` drawn independently from `zoom_range`; the flips with p = 0.5; a
//! channel shift; a brightness factor. The affine part is the product
//! `R(theta) . T(tx, ty) . Sh(shear) . Z(zx, zy)` in (row, col) coordinates, conjugated by a
//! translation to the centre (h/2 - 0.5, w/2 - 0.5), and handed to
//! `scipy.ndimage.affine_transform(order=1)`: output pixel `o` reads the input at `M . o`.
//! We do the same, including scipy's edge handling per fill mode (`reflect` is
//! half-sample symmetric, `wrap` has scipy's period of `len - 1`, `constant` gives `cval`
//! outside `[0, len - 1]`).
//!
//! Differences, on purpose: the flips, and an optional random resized crop (applied first,
//! as in torchvision), are folded into the same matrix so every pixel is sampled once;
//! the crop therefore reads real pixels beyond its window instead of filling them.
//! `brightness` multiplies and clips at 0..255 like PIL's `ImageEnhance.Brightness`, without
//! Keras' min-max rescale before it (identical for images that span 0..255).
//! Values are computed in f32/f64 and rounded half up to u8 once, at the end.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Image, VisionError};

/// How points outside the input are filled (Keras `fill_mode`, scipy `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FillMode {
    #[default]
    Nearest,
    Constant,
    Reflect,
    Wrap,
}

/// torchvision `RandomResizedCrop` parameters (the crop is resized back to the image size).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropConfig {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio (width / height), drawn log-uniformly.
    pub ratio: [f64; 2],
}

/// torchvision `RandomErasing` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErasingConfig {
    /// Probability that an image gets an erased rectangle.
    pub p: f64,
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
    /// Value written into the rectangle (0..255).
    pub value: f64,
}

/// The transform knobs; `Default` is the identity (every range zero), as in Keras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    pub rotation_range: f64,
    pub width_shift_range: f64,
    pub height_shift_range: f64,
    pub shear_range: f64,
    /// `[lo, hi]`; Keras' float `z` is `[1 - z, 1 + z]` (see [`AugmentConfig::zoom`]).
    pub zoom_range: [f64; 2],
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    pub channel_shift_range: f64,
    pub brightness_range: Option<[f64; 2]>,
    pub fill_mode: FillMode,
    pub cval: f64,
    /// Contrast factor range (torchvision `ColorJitter(contrast)`: blend with the mean gray).
    pub contrast_range: Option<[f64; 2]>,
    pub random_crop: Option<CropConfig>,
    pub random_erasing: Option<ErasingConfig>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            rotation_range: 0.0,
            width_shift_range: 0.0,
            height_shift_range: 0.0,
            shear_range: 0.0,
            zoom_range: [1.0, 1.0],
            horizontal_flip: false,
            vertical_flip: false,
            channel_shift_range: 0.0,
            brightness_range: None,
            fill_mode: FillMode::Nearest,
            cval: 0.0,
            contrast_range: None,
            random_crop: None,
            random_erasing: None,
        }
    }
}

/// Everything drawn for one output image; recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformParams {
    /// Rotation, degrees.
    pub theta: f64,
    /// Shift along rows (Keras `tx`, from `height_shift_range`), pixels.
    pub tx: f64,
    /// Shift along columns (Keras `ty`, from `width_shift_range`), pixels.
    pub ty: f64,
    /// Shear, degrees.
    pub shear: f64,
    pub zx: f64,
    pub zy: f64,
    pub flip_horizontal: bool,
    pub flip_vertical: bool,
    pub channel_shift: f64,
    /// Multiplicative brightness factor (1 = unchanged).
    pub brightness: f64,
    /// Contrast factor (1 = unchanged).
    pub contrast: f64,
    /// Random resized crop window `[top, left, height, width]` in source pixels.
    pub crop: Option<[u32; 4]>,
    /// Erased rectangle `[top, left, height, width]`.
    pub erase: Option<[u32; 4]>,
}

impl Default for TransformParams {
    fn default() -> Self {
        TransformParams {
            theta: 0.0,
            tx: 0.0,
            ty: 0.0,
            shear: 0.0,
            zx: 1.0,
            zy: 1.0,
            flip_horizontal: false,
            flip_vertical: false,
            channel_shift: 0.0,
            brightness: 1.0,
            contrast: 1.0,
            crop: None,
            erase: None,
        }
    }
}

fn bad(param: &'static str, message: impl Into<String>) -> VisionError {
    VisionError::BadParam { param, message: message.into() }
}

fn check_range(param: &'static str, r: [f64; 2], min: f64) -> Result<(), VisionError> {
    if !(r[0].is_finite() && r[1].is_finite() && r[0] >= min && r[0] <= r[1]) {
        return Err(bad(param, format!("[{}, {}] must be finite, >= {min} and ascending", r[0], r[1])));
    }
    Ok(())
}

impl AugmentConfig {
    /// Keras' float `zoom_range`: `z` -> `[1 - z, 1 + z]`.
    pub fn zoom(z: f64) -> [f64; 2] {
        [1.0 - z, 1.0 + z]
    }

    /// Reject values that would make NaNs or empty ranges; errors name the param.
    pub fn validate(&self) -> Result<(), VisionError> {
        for (name, v) in [
            ("rotation_range", self.rotation_range),
            ("width_shift_range", self.width_shift_range),
            ("height_shift_range", self.height_shift_range),
            ("shear_range", self.shear_range),
            ("channel_shift_range", self.channel_shift_range),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(name, format!("{v} must be a finite number >= 0")));
            }
            // found by a hostile pass: 1e308 passed and the sampler's range overflowed (a panic)
            let max = if name.ends_with("shift_range") { 1e6 } else { 360.0 };
            if v > max {
                return Err(bad(name, format!("{v} is above {max}")));
            }
        }
        check_range("zoom_range", self.zoom_range, 1e-6)?;
        if let Some(b) = self.brightness_range {
            check_range("brightness_range", b, 0.0)?;
        }
        if let Some(c) = self.contrast_range {
            check_range("contrast_range", c, 0.0)?;
        }
        if !self.cval.is_finite() {
            return Err(bad("cval", "must be finite"));
        }
        if let Some(c) = &self.random_crop {
            check_range("random_crop.scale", c.scale, 1e-6)?;
            if c.scale[1] > 1.0 {
                return Err(bad("random_crop.scale", "must be at most 1"));
            }
            check_range("random_crop.ratio", c.ratio, 1e-6)?;
        }
        if let Some(e) = &self.random_erasing {
            if !(0.0..=1.0).contains(&e.p) {
                return Err(bad("random_erasing.p", format!("{} is not a probability", e.p)));
            }
            check_range("random_erasing.scale", e.scale, 0.0)?;
            check_range("random_erasing.ratio", e.ratio, 1e-6)?;
            if !(0.0..=255.0).contains(&e.value) {
                return Err(bad("random_erasing.value", "must be in 0..255"));
            }
        }
        Ok(())
    }

    /// Draw one image's parameters for an `h` x `w` image, in Keras' order, then the extras.
    pub fn sample<R: Rng>(&self, rng: &mut R, h: u32, w: u32) -> TransformParams {
        let sym = |rng: &mut R, r: f64| if r > 0.0 { rng.gen_range(-r..=r) } else { 0.0 };
        let shift = |rng: &mut R, r: f64, len: u32| {
            let v = sym(rng, r);
            if r < 1.0 {
                v * len as f64
            } else {
                v
            }
        };
        let mut p = TransformParams { theta: sym(rng, self.rotation_range), ..TransformParams::default() };
        p.tx = shift(rng, self.height_shift_range, h);
        p.ty = shift(rng, self.width_shift_range, w);
        p.shear = sym(rng, self.shear_range);
        if self.zoom_range != [1.0, 1.0] {
            let [lo, hi] = self.zoom_range;
            p.zx = rng.gen_range(lo..=hi);
            p.zy = rng.gen_range(lo..=hi);
        }
        p.flip_horizontal = self.horizontal_flip && rng.gen::<f64>() < 0.5;
        p.flip_vertical = self.vertical_flip && rng.gen::<f64>() < 0.5;
        p.channel_shift = sym(rng, self.channel_shift_range);
        if let Some([lo, hi]) = self.brightness_range {
            p.brightness = rng.gen_range(lo..=hi);
        }
        if let Some([lo, hi]) = self.contrast_range {
            p.contrast = rng.gen_range(lo..=hi);
        }
        if let Some(c) = &self.random_crop {
            p.crop = Some(crop_window(rng, c.scale, c.ratio, h, w));
        }
        if let Some(e) = &self.random_erasing {
            if rng.gen::<f64>() < e.p {
                p.erase = erase_window(rng, e.scale, e.ratio, h, w);
            }
        }
        p
    }
}

fn log_uniform<R: Rng>(rng: &mut R, r: [f64; 2]) -> f64 {
    let (a, b) = (r[0].ln(), r[1].ln());
    if a < b {
        rng.gen_range(a..=b).exp()
    } else {
        r[0]
    }
}

fn uniform<R: Rng>(rng: &mut R, r: [f64; 2]) -> f64 {
    if r[0] < r[1] {
        rng.gen_range(r[0]..=r[1])
    } else {
        r[0]
    }
}

/// torchvision `RandomResizedCrop.get_params`: 10 tries, then a centre crop.
fn crop_window<R: Rng>(rng: &mut R, scale: [f64; 2], ratio: [f64; 2], h: u32, w: u32) -> [u32; 4] {
    let area = (h * w) as f64;
    for _ in 0..10 {
        let target = area * uniform(rng, scale);
        let aspect = log_uniform(rng, ratio);
        let cw = (target * aspect).sqrt().round() as u32;
        let ch = (target / aspect).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.gen_range(0..=h - ch);
            let left = rng.gen_range(0..=w - cw);
            return [top, left, ch, cw];
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, ((w as f64 / ratio[0]).round() as u32).clamp(1, h))
    } else if in_ratio > ratio[1] {
        (((h as f64 * ratio[1]).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    [(h - ch) / 2, (w - cw) / 2, ch, cw]
}

/// torchvision `RandomErasing.get_params`: 10 tries, else nothing erased.
fn erase_window<R: Rng>(rng: &mut R, scale: [f64; 2], ratio: [f64; 2], h: u32, w: u32) -> Option<[u32; 4]> {
    let area = (h * w) as f64;
    for _ in 0..10 {
        let target = area * uniform(rng, scale);
        let aspect = log_uniform(rng, ratio);
        let eh = (target * aspect).sqrt().round() as u32;
        let ew = (target / aspect).sqrt().round() as u32;
        if eh > 0 && ew > 0 && eh < h && ew < w {
            let top = rng.gen_range(0..=h - eh);
            let left = rng.gen_range(0..=w - ew);
            return Some([top, left, eh, ew]);
        }
    }
    None
}

/// A 3x3 homogeneous matrix in (row, col) coordinates.
pub type Mat3 = [[f64; 3]; 3];

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    c
}

const IDENTITY: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// Keras `apply_affine_transform`'s matrix (after `transform_matrix_offset_center`), in
/// (row, col) coordinates: output pixel `o` reads the input at `M . o`. `None` when Keras
/// would skip the transform (every parameter neutral).
pub fn keras_matrix(theta: f64, tx: f64, ty: f64, shear: f64, zx: f64, zy: f64, h: u32, w: u32) -> Option<Mat3> {
    let mut m: Option<Mat3> = None;
    let mut push = |x: Mat3| m = Some(match m { None => x, Some(prev) => matmul(&prev, &x) });
    if theta != 0.0 {
        let t = theta.to_radians();
        push([[t.cos(), -t.sin(), 0.0], [t.sin(), t.cos(), 0.0], [0.0, 0.0, 1.0]]);
    }
    if tx != 0.0 || ty != 0.0 {
        push([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]);
    }
    if shear != 0.0 {
        let s = shear.to_radians();
        push([[1.0, -s.sin(), 0.0], [0.0, s.cos(), 0.0], [0.0, 0.0, 1.0]]);
    }
    if zx != 1.0 || zy != 1.0 {
        push([[zx, 0.0, 0.0], [0.0, zy, 0.0], [0.0, 0.0, 1.0]]);
    }
    let m = m?;
    let (ox, oy) = (h as f64 / 2.0 - 0.5, w as f64 / 2.0 - 0.5);
    let offset = [[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]];
    let reset = [[1.0, 0.0, -ox], [0.0, 1.0, -oy], [0.0, 0.0, 1.0]];
    Some(matmul(&matmul(&offset, &m), &reset))
}

/// The full sampling matrix of `p` for an `h` x `w` image: crop . keras . flips, mapping
/// output (row, col) to input (row, col). `None` means "every pixel reads itself".
pub fn affine_matrix(p: &TransformParams, h: u32, w: u32) -> Option<Mat3> {
    let mut m = keras_matrix(p.theta, p.tx, p.ty, p.shear, p.zx, p.zy, h, w);
    // A flip of the output is a permutation applied before reading: M . F.
    let mut flip = IDENTITY;
    if p.flip_vertical {
        flip[0] = [-1.0, 0.0, h as f64 - 1.0];
    }
    if p.flip_horizontal {
        flip[1] = [0.0, -1.0, w as f64 - 1.0];
    }
    if flip != IDENTITY {
        m = Some(matmul(&m.unwrap_or(IDENTITY), &flip));
    }
    if let Some([top, left, ch, cw]) = p.crop {
        if (top, left, ch, cw) != (0, 0, h, w) {
            // Pixel centres of the resized crop map onto the crop window (align_corners=False).
            let (sy, sx) = (ch as f64 / h as f64, cw as f64 / w as f64);
            let crop = [
                [sy, 0.0, top as f64 + 0.5 * sy - 0.5],
                [0.0, sx, left as f64 + 0.5 * sx - 0.5],
                [0.0, 0.0, 1.0],
            ];
            m = Some(matmul(&crop, &m.unwrap_or(IDENTITY)));
        }
    }
    m
}

/// scipy `map_coordinate` for one axis: where a coordinate outside `[0, len-1]` reads.
/// `None` = the constant `cval`.
#[inline]
pub fn map_coordinate(x: f64, len: usize, mode: FillMode) -> Option<f64> {
    let lenf = len as f64;
    if x < 0.0 {
        if len <= 1 {
            return (mode != FillMode::Constant).then_some(0.0);
        }
        match mode {
            FillMode::Nearest => Some(0.0),
            FillMode::Constant => None,
            FillMode::Reflect => {
                let sz2 = 2.0 * lenf;
                let mut v = x;
                if v < -sz2 {
                    v += sz2 * (-v / sz2).trunc();
                }
                Some(if v < -lenf { v + sz2 } else { -v - 1.0 })
            }
            FillMode::Wrap => {
                let sz = lenf - 1.0;
                Some(x + sz * ((-x / sz).trunc() + 1.0))
            }
        }
    } else if x > lenf - 1.0 {
        if len <= 1 {
            return (mode != FillMode::Constant).then_some(0.0);
        }
        match mode {
            FillMode::Nearest => Some(lenf - 1.0),
            FillMode::Constant => None,
            FillMode::Reflect => {
                let sz2 = 2.0 * lenf;
                let mut v = x - sz2 * (x / sz2).trunc();
                if v >= lenf {
                    v = sz2 - v - 1.0;
                }
                Some(v)
            }
            FillMode::Wrap => {
                let sz = lenf - 1.0;
                Some(x - sz * (x / sz).trunc())
            }
        }
    } else {
        Some(x)
    }
}

/// scipy's whole-sample mirror for the interpolation neighbours of an edge point.
#[inline]
fn mirror_index(idx: i64, len: usize) -> usize {
    let len = len as i64;
    if (0..len).contains(&idx) {
        return idx as usize; // the common case: no division
    }
    if len <= 1 {
        return 0;
    }
    let s2 = 2 * len - 2;
    let mut i = idx;
    if i < 0 {
        i += s2 * (-i / s2);
        i = if i <= 1 - len { i + s2 } else { -i };
    } else if i >= len {
        i -= s2 * (i / s2);
        if i >= len {
            i = s2 - i;
        }
    }
    i as usize
}

/// Neighbours and weight along one axis, or `None` for the constant fill.
#[inline]
fn axis_taps(x: f64, len: usize, mode: FillMode) -> Option<(usize, usize, f64)> {
    let cc = map_coordinate(x, len, mode)?;
    if cc <= -1.0 {
        return None;
    }
    // floor without a libm call (baseline x86-64 has no SSE4.1 round).
    let t = cc as i64;
    let s = if (t as f64) > cc { t - 1 } else { t };
    Some((mirror_index(s, len), mirror_index(s + 1, len), cc - s as f64))
}

/// Round half up to u8, saturating (negative and NaN -> 0, above 255 -> 255).
#[inline(always)]
fn quantize(v: f32) -> u8 {
    // max/min also map NaN to 0 (f32::max ignores NaN).
    let x = (v + 0.5).max(0.0).min(255.0);
    // SAFETY: x is in [0, 255], so the truncating conversion is defined.
    unsafe { x.to_int_unchecked::<u8>() }
}

/// Bilinear resampling of `src` through `m`; `emit(i, v)` receives output sample `i` (HWC
/// order). `CH` is the channel count, a constant so the channel loop unrolls.
/// Columns `[j0, j1)` of a row where `lo <= a0 + a1 * j < hi` (a float estimate, later
/// checked pixel by pixel at the ends).
fn span(a0: f64, a1: f64, lo: f64, hi: f64, w: usize) -> (f64, f64) {
    if a1 == 0.0 {
        return if a0 >= lo && a0 < hi { (0.0, w as f64) } else { (0.0, 0.0) };
    }
    let (x, y) = ((lo - a0) / a1, (hi - a0) / a1);
    (x.min(y), x.max(y))
}

#[inline(always)]
fn sample_affine<const CH: usize>(src: &Image, m: &Mat3, mode: FillMode, cval: f32, mut emit: impl FnMut(usize, f32)) {
    let (h, w) = (src.height as usize, src.width as usize);
    let data = &src.data[..h * w * CH];
    // Coordinates in f32 (errors ~1e-5 px at these sizes); every test below is made in the
    // same f32 arithmetic as the reads it guards.
    let (hmax, wmax) = ((h - 1) as f32, (w - 1) as f32);
    let [[a, b, c], [d, e, f], _] = m.map(|row| row.map(|v| v as f32));
    let inside = |(r, cc): (f32, f32)| r >= 0.0 && r < hmax && cc >= 0.0 && cc < wmax;
    let edge = |(r, cc): (f32, f32)| -> [f32; CH] {
        match (axis_taps(r as f64, h, mode), axis_taps(cc as f64, w, mode)) {
            (Some((r0, r1, fr)), Some((c0, c1, fc))) => {
                let (fr, fc) = (fr as f32, fc as f32);
                std::array::from_fn(|k| {
                    let px = |y: usize, x: usize| data[(y * w + x) * CH + k] as f32;
                    let top = px(r0, c0) + (px(r0, c1) - px(r0, c0)) * fc;
                    let bot = px(r1, c0) + (px(r1, c1) - px(r1, c0)) * fc;
                    top + (bot - top) * fr
                })
            }
            _ => [cval; CH],
        }
    };
    // Per-image scratch (no allocation per pixel): column numbers as floats, and per row
    // the interior columns' weights and top-left neighbour index.
    let jf: Vec<f32> = (0..w as u32).map(|j| j as f32).collect();
    let (mut wr, mut wc, mut top_left) = (vec![0f32; w], vec![0f32; w], vec![0i32; w]);
    let mut fi = 0.0f32;
    for i in 0..h {
        // Row constants; column j adds b * j, e * j. Counters are floats kept exact (small
        // integers), avoiding int <-> float conversions in the loop.
        let (ri, ci) = (a * fi + c, d * fi + f);
        fi += 1.0;
        let coords = |fj: f32| (ri + b * fj, ci + e * fj);
        // The interior columns of this row form one interval (coordinates are monotone in
        // j); estimate it once, then settle its ends with the exact test.
        let (r_lo, r_hi) = span(ri as f64, b as f64, 0.0, hmax as f64, w);
        let (c_lo, c_hi) = span(ci as f64, e as f64, 0.0, wmax as f64, w);
        let lo = r_lo.max(c_lo).max(0.0).ceil().min(w as f64) as usize;
        let hi = (r_hi.min(c_hi).min(w as f64).floor().max(0.0) as usize + 1).min(w);
        let (mut j0, mut j1) = (lo.min(hi), hi);
        while j0 < j1 && !inside(coords(jf[j0])) {
            j0 += 1;
        }
        while j1 > j0 && !inside(coords(jf[j1 - 1])) {
            j1 -= 1;
        }
        let row = i * w * CH;
        for j in (0..j0).chain(j1..w) {
            let v = edge(coords(jf[j]));
            (0..CH).for_each(|k| emit(row + j * CH + k, v[k]));
        }
        // Pass 1 (vectorizes): neighbour index and weights of every interior column.
        for j in j0..j1 {
            let (r, cc) = coords(jf[j]);
            // SAFETY: inside() holds on j0..j1 (checked at both ends, coordinates are
            // monotone in j; same arithmetic as coords()): 0 <= r < h - 1, 0 <= cc < w - 1,
            // so the conversions are defined and truncation is floor.
            let (r0, c0) = unsafe { (r.to_int_unchecked::<i32>(), cc.to_int_unchecked::<i32>()) };
            wr[j] = r - r0 as f32;
            wc[j] = cc - c0 as f32;
            top_left[j] = r0 * w as i32 + c0;
        }
        // Pass 2: gather the four neighbours and blend.
        for j in j0..j1 {
            let (fr, fc) = (wr[j], wc[j]);
            let p00 = top_left[j] as usize * CH;
            let p10 = p00 + w * CH;
            debug_assert!(p10 + 2 * CH <= data.len());
            for k in 0..CH {
                // SAFETY: r0 <= h - 2 and c0 <= w - 2 (pass 1), so
                // p10 + CH + k < ((h - 1) * w + w - 1) * CH + CH = h * w * CH = data.len().
                let (v00, v01, v10, v11) = unsafe {
                    (
                        *data.get_unchecked(p00 + k) as f32,
                        *data.get_unchecked(p00 + CH + k) as f32,
                        *data.get_unchecked(p10 + k) as f32,
                        *data.get_unchecked(p10 + CH + k) as f32,
                    )
                };
                let top = v00 + (v01 - v00) * fc;
                let bot = v10 + (v11 - v10) * fc;
                emit(row + j * CH + k, top + (bot - top) * fr);
            }
        }
    }
}

fn sample_into(src: &Image, m: &Mat3, mode: FillMode, cval: f32, emit: impl FnMut(usize, f32)) {
    match src.channels {
        1 => sample_affine::<1>(src, m, mode, cval, emit),
        _ => sample_affine::<3>(src, m, mode, cval, emit),
    }
}

/// Apply drawn parameters to one image (fill settings from `cfg`). Output has the input's
/// size and channel count.
pub fn apply_transform(img: &Image, p: &TransformParams, cfg: &AugmentConfig) -> Image {
    let n = img.data.len();
    let m = affine_matrix(p, img.height, img.width);
    let (mode, cval) = (cfg.fill_mode, cfg.cval as f32);
    let wrap = |data: Vec<u8>| Image { width: img.width, height: img.height, channels: img.channels, data };
    if p.channel_shift == 0.0 && p.contrast == 1.0 && p.erase.is_none() {
        // Common case (Keras' geometric knobs + brightness): one pass straight to u8.
        // Same numbers as the general path: v >= 0, so clamp-then-round == round-saturate.
        let b = p.brightness as f32;
        return match m {
            None if b == 1.0 => img.clone(),
            None => wrap(img.data.iter().map(|&v| quantize(v as f32 * b)).collect()),
            Some(m) => {
                let mut out = vec![0u8; n];
                sample_into(img, &m, mode, cval, |i, v| out[i] = quantize(v * b));
                wrap(out)
            }
        };
    }
    let mut buf: Vec<f32> = Vec::with_capacity(n);
    match m {
        Some(m) => {
            buf.resize(n, 0.0);
            sample_into(img, &m, mode, cval, |i, v| buf[i] = v);
        }
        None => buf.extend(img.data.iter().map(|&v| v as f32)),
    }
    if p.channel_shift != 0.0 {
        // Keras apply_channel_shift: shift, then clip to the image's own min and max.
        let (lo, hi) = buf.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let s = p.channel_shift as f32;
        buf.iter_mut().for_each(|v| *v = (*v + s).clamp(lo, hi));
    }
    if p.brightness != 1.0 {
        let b = p.brightness as f32;
        buf.iter_mut().for_each(|v| *v = (*v * b).clamp(0.0, 255.0));
    }
    if p.contrast != 1.0 {
        let ch = img.channels as usize;
        let px = (n / ch) as f32;
        // torchvision: blend with the mean of the grayscale image.
        let mean = if ch == 3 {
            buf.chunks_exact(3).map(|c| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]).sum::<f32>() / px
        } else {
            buf.iter().sum::<f32>() / px
        };
        let f = p.contrast as f32;
        buf.iter_mut().for_each(|v| *v = (mean + f * (*v - mean)).clamp(0.0, 255.0));
    }
    if let Some([top, left, eh, ew]) = p.erase {
        let value = cfg.random_erasing.map(|e| e.value as f32).unwrap_or(0.0);
        let (w, ch) = (img.width as usize, img.channels as usize);
        for y in top as usize..(top + eh) as usize {
            let row = (y * w + left as usize) * ch;
            buf[row..row + ew as usize * ch].fill(value);
        }
    }
    wrap(buf.iter().map(|&v| quantize(v)).collect())
}

/// Stable 64-bit FNV-1a, so a source's stream does not depend on Rust's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The RNG of copy `copy` of source `source` (any stable name, e.g. the item id): a
/// function of (seed, source, copy) only, so results do not depend on order or threads.
pub fn copy_rng(seed: u64, source: &str, copy: u32) -> ChaCha8Rng {
    let k = splitmix(splitmix(seed ^ fnv1a(source.as_bytes())) ^ copy as u64);
    ChaCha8Rng::seed_from_u64(k)
}

/// Draw and apply one copy's transform.
pub fn augment_copy(img: &Image, cfg: &AugmentConfig, seed: u64, source: &str, copy: u32) -> (Image, TransformParams) {
    let mut rng = copy_rng(seed, source, copy);
    let p = cfg.sample(&mut rng, img.height, img.width);
    (apply_transform(img, &p, cfg), p)
}

/// One copy to make: the source image, its stable name, and the copy index.
#[derive(Debug, Clone, Copy)]
pub struct CopyJob<'a> {
    pub image: &'a Image,
    pub source: &'a str,
    pub copy: u32,
}

/// [`augment_copy`] for many jobs in parallel (rayon); results in job order, identical
/// for any thread count.
pub fn augment_many(jobs: &[CopyJob<'_>], cfg: &AugmentConfig, seed: u64) -> Vec<(Image, TransformParams)> {
    jobs.par_iter().map(|j| augment_copy(j.image, cfg, seed, j.source, j.copy)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ramp(h: u32, w: u32) -> Image {
        // value = 20 r + 3 c + 5: bilinear interpolation of it is exact inside the image.
        let data = (0..h).flat_map(|r| (0..w).map(move |c| (20 * r + 3 * c + 5) as u8)).collect();
        Image::from_raw(w, h, 1, data).unwrap()
    }

    fn arb_image() -> impl Strategy<Value = Image> {
        (1u32..12, 1u32..12, prop_oneof![Just(1u8), Just(3u8)]).prop_flat_map(|(w, h, c)| {
            proptest::collection::vec(any::<u8>(), (w * h * c as u32) as usize)
                .prop_map(move |d| Image::from_raw(w, h, c, d).unwrap())
        })
    }

    fn arb_config() -> impl Strategy<Value = AugmentConfig> {
        (
            0.0..180.0f64,
            0.0..0.5f64,
            0.0..3.0f64,
            0.0..45.0f64,
            0.0..0.5f64,
            any::<bool>(),
            prop_oneof![Just(FillMode::Nearest), Just(FillMode::Constant), Just(FillMode::Reflect), Just(FillMode::Wrap)],
            proptest::option::of((0.3..1.0f64, 1.0..1.7f64)),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(rot, ws, hs, sh, z, hf, fill, br, crop, erase)| AugmentConfig {
                rotation_range: rot,
                width_shift_range: ws,
                height_shift_range: hs,
                shear_range: sh,
                zoom_range: AugmentConfig::zoom(z),
                horizontal_flip: hf,
                fill_mode: fill,
                cval: 17.0,
                brightness_range: br.map(|(a, b)| [a, b]),
                contrast_range: Some([0.5, 1.5]),
                channel_shift_range: 10.0,
                random_crop: crop.then_some(CropConfig { scale: [0.5, 1.0], ratio: [0.75, 1.333] }),
                random_erasing: erase.then_some(ErasingConfig { p: 0.5, scale: [0.02, 0.2], ratio: [0.3, 3.3], value: 0.0 }),
                ..AugmentConfig::default()
            })
    }

    proptest! {
        #[test]
        fn zero_ranges_give_input_back(img in arb_image(), seed in any::<u64>(), copy in 0u32..100) {
            let cfg = AugmentConfig::default();
            let (out, p) = augment_copy(&img, &cfg, seed, "x", copy);
            prop_assert_eq!(out, img);
            prop_assert_eq!(p, TransformParams::default());
        }

        #[test]
        fn two_horizontal_flips_are_identity(img in arb_image()) {
            let p = TransformParams { flip_horizontal: true, ..TransformParams::default() };
            let cfg = AugmentConfig::default();
            let once = apply_transform(&img, &p, &cfg);
            let twice = apply_transform(&once, &p, &cfg);
            prop_assert_eq!(&twice, &img);
            if img.width > 1 {
                // Really flipped: first and last column swapped.
                let c = img.channels as usize;
                let last = (img.width as usize - 1) * c;
                prop_assert_eq!(&once.data[..c], &img.data[last..last + c]);
            }
        }

        #[test]
        fn output_shape_as_configured(img in arb_image(), cfg in arb_config(), seed in any::<u64>()) {
            prop_assert!(cfg.validate().is_ok());
            let (out, _) = augment_copy(&img, &cfg, seed, "src", 3);
            prop_assert_eq!((out.width, out.height, out.channels), (img.width, img.height, img.channels));
            prop_assert_eq!(out.data.len(), img.data.len());
        }

        #[test]
        fn deterministic_per_seed_source_copy(img in arb_image(), cfg in arb_config(), seed in any::<u64>()) {
            let a = augment_copy(&img, &cfg, seed, "a.jpg", 1);
            prop_assert_eq!(&a, &augment_copy(&img, &cfg, seed, "a.jpg", 1));
        }
    }

    #[test]
    fn rotation_by_90_moves_a_known_pattern() {
        // 5x5, centre (2, 2). Keras theta = 90: input = R . (o - c) + c with
        // R = [[0, -1], [1, 0]], so output (i, j) reads input (4 - j, i):
        // input pixel (r, c) lands at output (c, 4 - r).
        let mut img = Image::new(5, 5, 1);
        img.data[0 * 5 + 1] = 200; // (0, 1) -> (1, 4)
        img.data[3 * 5 + 4] = 90; // (3, 4) -> (4, 1)
        let p = TransformParams { theta: 90.0, ..TransformParams::default() };
        let out = apply_transform(&img, &p, &AugmentConfig::default());
        let mut expect = vec![0u8; 25];
        expect[1 * 5 + 4] = 200;
        expect[4 * 5 + 1] = 90;
        assert_eq!(out.data, expect);
    }

    // Reference numbers computed once, by hand-written Python (plain `math`, no code from
    // this crate) from the Keras formulas: M = R(theta) T(tx,ty) Sh(shear) Z(zx,zy), then
    // offset(o) . M . reset(-o) with o = (h/2 - 0.5, w/2 - 0.5); see the test body.
    #[test]
    fn matches_keras_reference_values() {
        // theta=30, tx=1, ty=-0.5, shear=10, zx=0.9, zy=1.2, h=w=8 (o = 3.5)
        let m = keras_matrix(30.0, 1.0, -0.5, 10.0, 0.9, 1.2, 8, 8).unwrap();
        let want = [
            [0.7794228634059949, -0.7713451316238471, 4.587753342546922],
            [0.44999999999999996, 0.9192533317427737, -1.2253993629919266],
        ];
        for (r, wr) in m.iter().zip(want.iter()) {
            for (a, b) in r.iter().zip(wr.iter()) {
                assert!((a - b).abs() < 1e-12, "{m:?}");
            }
        }
        assert_eq!(m[2], [0.0, 0.0, 1.0]);
        // Pure rotation by 15 degrees on 6x4 (o = (2.5, 1.5)).
        let m = keras_matrix(15.0, 0.0, 0.0, 0.0, 1.0, 1.0, 6, 4).unwrap();
        let want = [
            [0.9659258262890683, -0.25881904510252074, 0.4734140019311104],
            [0.25881904510252074, 0.9659258262890683, -0.5959363521899044],
        ];
        for (r, wr) in m.iter().zip(want.iter()) {
            for (a, b) in r.iter().zip(wr.iter()) {
                assert!((a - b).abs() < 1e-12, "{m:?}");
            }
        }
        // Pixel values on the ramp 20 r + 3 c + 5 at interior sample points of the first
        // matrix (the value there is exactly the ramp at M . o, rounded half up).
        let img = ramp(8, 8);
        let p = TransformParams { theta: 30.0, tx: 1.0, ty: -0.5, shear: 10.0, zx: 0.9, zy: 1.2, ..Default::default() };
        let out = apply_transform(&img, &p, &AugmentConfig::default());
        for (i, j, v) in [(2usize, 2usize, 102u8), (3, 4, 93), (4, 3, 123), (5, 5, 114)] {
            assert_eq!(out.data[i * 8 + j], v, "pixel ({i}, {j})");
        }
    }

    #[test]
    fn scipy_edge_mapping() {
        // Hand-derived from scipy's map_coordinate: reflect is half-sample symmetric,
        // wrap has period len - 1.
        assert_eq!(map_coordinate(-0.5, 48, FillMode::Wrap), Some(46.5));
        assert_eq!(map_coordinate(47.5, 48, FillMode::Wrap), Some(0.5));
        assert_eq!(map_coordinate(-1.0, 5, FillMode::Reflect), Some(0.0));
        assert_eq!(map_coordinate(5.0, 5, FillMode::Reflect), Some(4.0));
        assert_eq!(map_coordinate(6.5, 5, FillMode::Reflect), Some(2.5));
        assert_eq!(map_coordinate(-0.25, 5, FillMode::Constant), None);
        assert_eq!(map_coordinate(9.0, 5, FillMode::Nearest), Some(4.0));
        assert_eq!(mirror_index(-1, 5), 1);
        assert_eq!(mirror_index(5, 5), 3);
        // A shift by 2 columns with constant fill: the two leftmost columns read -2, -1.
        let img = ramp(3, 4);
        let p = TransformParams { ty: -2.0, ..Default::default() };
        let cfg = AugmentConfig { fill_mode: FillMode::Constant, cval: 7.0, ..Default::default() };
        let out = apply_transform(&img, &p, &cfg);
        assert_eq!(&out.data[0..4], &[7, 7, 5, 8]);
        let cfg = AugmentConfig { fill_mode: FillMode::Nearest, ..Default::default() };
        assert_eq!(&apply_transform(&img, &p, &cfg).data[0..4], &[5, 5, 5, 8]);
        // reflect: -2 -> 1, -1 -> 0
        let cfg = AugmentConfig { fill_mode: FillMode::Reflect, ..Default::default() };
        assert_eq!(&apply_transform(&img, &p, &cfg).data[0..4], &[8, 5, 5, 8]);
    }

    #[test]
    fn brightness_and_erasing() {
        let img = ramp(4, 4);
        let p = TransformParams { brightness: 2.0, erase: Some([1, 1, 2, 2]), ..Default::default() };
        let cfg = AugmentConfig {
            random_erasing: Some(ErasingConfig { p: 1.0, scale: [0.1, 0.2], ratio: [1.0, 1.0], value: 3.0 }),
            ..Default::default()
        };
        let out = apply_transform(&img, &p, &cfg);
        assert_eq!(out.data[0], 10);
        assert_eq!(out.data[15], 148); // 2 * (20*3 + 3*3 + 5)
        assert_eq!(out.data[5], 3);
    }

    #[test]
    fn parallel_equals_serial() {
        let img = ramp(8, 8);
        let cfg = AugmentConfig { rotation_range: 20.0, zoom_range: AugmentConfig::zoom(0.2), ..Default::default() };
        let names: Vec<String> = (0..50).map(|i| format!("s{i}")).collect();
        let jobs: Vec<CopyJob> = names.iter().enumerate().map(|(i, s)| CopyJob { image: &img, source: s, copy: i as u32 }).collect();
        let par = augment_many(&jobs, &cfg, 9);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let ser = one.install(|| augment_many(&jobs, &cfg, 9));
        assert_eq!(par, ser);
        assert_ne!(par[0].1, par[1].1);
    }

    #[test]
    fn validate_names_the_param() {
        let cfg = AugmentConfig { zoom_range: [1.2, 0.8], ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("zoom_range"));
        let cfg = AugmentConfig { rotation_range: f64::NAN, ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("rotation_range"));
    }
}
