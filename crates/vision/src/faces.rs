//! Deterministic synthetic faces for the embedded demo: 7 emotions drawn from facial
//! geometry, with identity, pose, scale, lighting and noise varying per seed.
//!
//! Each emotion is a prototype of action-unit-like parameters (brow height and tilt,
//! eye opening, lower-lid raise, mouth curve / opening / width, jaw drop, nose wrinkle,
//! upper-lip raise). A face blends neutral -> prototype by a random intensity and adds
//! per-face jitter, so weak expressions overlap where people confuse them: fear and
//! surprise share raised brows and wide eyes (fear: brows pulled in, wide flat mouth;
//! surprise: arched brows, round open mouth, dropped jaw); angry and disgust share lowered
//! brows (angry: strong V and pressed lips; disgust: nose wrinkle, raised upper lip);
//! a weak sad is close to neutral. Shapes are signed-distance fields with analytic
//! antialiasing (coverage = distance / pixel size), so features 1-3 px wide stay legible
//! at 48x48. Identity (face shape, eye spacing, hair, skin, background) depends only on
//! the seed: `render_face(c, s, n)` for c in 0..7 is one person showing seven emotions.

use image::GrayImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Expression parameters (face units; y grows downwards).
#[derive(Debug, Clone, Copy)]
struct Expr {
    brow_raise: f32,
    brow_tilt: f32, // > 0: inner ends up (sad, fear); < 0: inner ends down (angry)
    brow_arch: f32,
    eye_open: f32,
    lid_raise: f32, // lower lid pushed up (cheeks, squint)
    mouth_curve: f32,
    mouth_open: f32,
    mouth_width: f32,
    jaw_drop: f32,
    nose_wrinkle: f32,
    lip_raise: f32,
    teeth: f32,
    fold: f32, // nasolabial fold strength
}

const NEUTRAL: Expr = Expr {
    brow_raise: 0.0,
    brow_tilt: 0.0,
    brow_arch: 0.0,
    eye_open: 1.0,
    lid_raise: 0.0,
    mouth_curve: 0.0,
    mouth_open: 0.0,
    mouth_width: 1.0,
    jaw_drop: 0.0,
    nose_wrinkle: 0.0,
    lip_raise: 0.0,
    teeth: 0.0,
    fold: 0.0,
};

fn prototype(class: usize) -> Expr {
    match class {
        // angry: brows down and pulled into a V, glaring narrowed eyes, pressed lips
        0 => Expr { brow_raise: -0.55, brow_tilt: -1.0, eye_open: 0.8, lid_raise: 0.25, mouth_curve: -0.25, mouth_width: 0.8, ..NEUTRAL },
        // disgust: brows down (less V), nose wrinkle, upper lip raised on one side
        1 => Expr {
            brow_raise: -0.35,
            brow_tilt: -0.35,
            eye_open: 0.7,
            lid_raise: 0.45,
            mouth_curve: -0.45,
            mouth_open: 0.12,
            lip_raise: 1.0,
            nose_wrinkle: 1.0,
            fold: 0.9,
            ..NEUTRAL
        },
        // fear: raised brows pulled together (inner up, flat), wide eyes, stretched open mouth
        2 => Expr {
            brow_raise: 0.6,
            brow_tilt: 0.7,
            brow_arch: -0.3,
            eye_open: 1.5,
            mouth_curve: -0.3,
            mouth_open: 0.4,
            mouth_width: 1.3,
            jaw_drop: 0.2,
            teeth: 0.7,
            ..NEUTRAL
        },
        // happy: smile, open mouth with teeth, cheeks push the lower lids up
        3 => Expr {
            eye_open: 0.85,
            lid_raise: 0.45,
            mouth_curve: 1.0,
            mouth_open: 0.35,
            mouth_width: 1.3,
            teeth: 1.0,
            fold: 0.7,
            ..NEUTRAL
        },
        4 => NEUTRAL,
        // sad: inner brows up, slightly lowered lids, mouth corners down
        5 => Expr { brow_raise: 0.1, brow_tilt: 0.9, eye_open: 0.75, mouth_curve: -0.75, mouth_width: 0.9, ..NEUTRAL },
        // surprise: high arched brows, very wide eyes, round open mouth, jaw dropped
        _ => Expr {
            brow_raise: 0.9,
            brow_arch: 0.8,
            eye_open: 1.6,
            mouth_open: 0.9,
            mouth_width: 0.7,
            jaw_drop: 0.7,
            ..NEUTRAL
        },
    }
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn sat(x: f32) -> f32 {
    x.clamp(0.0, 1.0)
}

/// Distance from p to segment ab.
fn seg_dist(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (pax, pay) = (p.0 - a.0, p.1 - a.1);
    let (bax, bay) = (b.0 - a.0, b.1 - a.1);
    let h = sat((pax * bax + pay * bay) / (bax * bax + bay * bay).max(1e-9));
    ((pax - bax * h).powi(2) + (pay - bay * h).powi(2)).sqrt()
}

/// Approximate signed distance to an axis-aligned ellipse (negative inside).
fn ellipse_sd(p: (f32, f32), c: (f32, f32), rx: f32, ry: f32) -> f32 {
    let (x, y) = ((p.0 - c.0) / rx, (p.1 - c.1) / ry);
    let k0 = (x * x + y * y).sqrt();
    let k1 = ((x / rx).powi(2) + (y / ry).powi(2)).sqrt();
    if k1 < 1e-6 {
        -rx.min(ry)
    } else {
        k0 * (k0 - 1.0) / k1
    }
}

struct Face {
    // identity
    face_rx: f32,
    face_ry: f32,
    eye_sep: f32,
    eye_y: f32,
    eye_rx: f32,
    brow_th: f32,
    mouth_y: f32,
    mouth_hw: f32,
    nose_y: f32,
    skin: f32,
    hair: Option<(f32, f32)>, // (tone, hairline y)
    background: f32,
    iris: f32,
    // pose and imaging
    cx: f32,
    cy: f32,
    unit: f32,
    roll: f32,
    yaw: f32,
    light_dir: (f32, f32),
    light: f32,
    lo: f32,
    hi: f32,
    noise: f32,
    e: Expr,
}

fn sample_face(class: usize, seed: u64, size: u32) -> Face {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xface_0000_0000_0000);
    let s = size as f32;
    let mut u = |a: f32, b: f32| rng.gen_range(a..=b);
    let face_rx = u(0.85, 1.0);
    let face_ry = u(1.15, 1.32);
    let eye_sep = u(0.34, 0.42);
    let eye_y = u(-0.26, -0.14);
    let eye_rx = u(0.13, 0.17);
    let brow_th = u(0.05, 0.075);
    let mouth_y = u(0.5, 0.6);
    let mouth_hw = u(0.28, 0.36);
    let nose_y = u(0.2, 0.3);
    let skin = u(0.45, 0.8);
    let hair_p = u(0.0, 1.0);
    let hair_tone = u(0.03, 0.35);
    let hairline = u(-0.9, -0.62);
    let background = u(0.05, 0.95);
    let iris = u(0.02, 0.25);
    let cx = s / 2.0 + u(-0.06, 0.06) * s;
    let cy = s / 2.0 + u(-0.05, 0.07) * s;
    let unit = s * u(0.31, 0.37);
    let roll = u(-12.0, 12.0).to_radians();
    let yaw = u(-0.22, 0.22);
    let la = u(0.0, std::f32::consts::TAU);
    let light = u(0.0, 0.35);
    let lo = u(0.0, 0.15);
    let hi = u(0.8, 1.0);
    let noise = u(0.005, 0.045);
    let intensity = u(0.5, 1.0);
    let mut jit = |x: f32, sd: f32| x + u(-sd, sd);
    let n = NEUTRAL;
    let p = prototype(class % 7);
    let t = intensity;
    let e = Expr {
        brow_raise: jit(lerp(n.brow_raise, p.brow_raise, t), 0.12),
        brow_tilt: jit(lerp(n.brow_tilt, p.brow_tilt, t), 0.15),
        brow_arch: jit(lerp(n.brow_arch, p.brow_arch, t), 0.15),
        eye_open: jit(lerp(n.eye_open, p.eye_open, t), 0.1),
        lid_raise: jit(lerp(n.lid_raise, p.lid_raise, t), 0.08).max(0.0),
        mouth_curve: jit(lerp(n.mouth_curve, p.mouth_curve, t), 0.12),
        mouth_open: jit(lerp(n.mouth_open, p.mouth_open, t), 0.05).max(0.0),
        mouth_width: jit(lerp(n.mouth_width, p.mouth_width, t), 0.08),
        jaw_drop: jit(lerp(n.jaw_drop, p.jaw_drop, t), 0.05).max(0.0),
        nose_wrinkle: lerp(n.nose_wrinkle, p.nose_wrinkle, t),
        lip_raise: lerp(n.lip_raise, p.lip_raise, t),
        teeth: lerp(n.teeth, p.teeth, t),
        fold: lerp(n.fold, p.fold, t),
    };
    Face {
        face_rx,
        face_ry,
        eye_sep,
        eye_y,
        eye_rx,
        brow_th,
        mouth_y,
        mouth_hw,
        nose_y,
        skin,
        hair: (hair_p < 0.75).then_some((hair_tone, hairline)),
        background,
        iris,
        cx,
        cy,
        unit,
        roll,
        yaw,
        light_dir: (la.cos(), la.sin()),
        light,
        lo,
        hi,
        noise,
        e,
    }
}

impl Face {
    /// Gray value in 0..1 at face-frame point p; `aa` is one pixel in face units.
    fn shade(&self, p: (f32, f32), aa: f32) -> f32 {
        let e = &self.e;
        let cover = |d: f32| sat(0.5 - d / aa);
        let (x, y) = p;
        let lit = 1.0 + self.light * (x * self.light_dir.0 + y * self.light_dir.1) * 0.5;
        let mut v = self.background * (1.0 + self.light * 0.3 * x * self.light_dir.0);

        // Head outline; the jaw drop lengthens the lower half.
        let ry = if y > 0.0 { self.face_ry + e.jaw_drop * 0.14 } else { self.face_ry };
        let head = ellipse_sd(p, (0.0, 0.0), self.face_rx, ry);
        if let Some((tone, hairline)) = self.hair {
            let hair_d = ellipse_sd(p, (0.0, -0.1), self.face_rx * 1.12, self.face_ry * 1.08);
            v = lerp(v, tone, cover(hair_d) * sat((0.15 - y) / 0.3));
            let skin_c = cover(head) * sat((y - hairline) / aa + 0.5);
            v = lerp(v, self.skin * lit, skin_c);
        } else {
            v = lerp(v, self.skin * lit, cover(head));
        }
        let skin = self.skin * lit;
        let dark = |amount: f32| skin * (1.0 - amount);

        // Features move with the yaw (a cheap turn of the head).
        let fx = x - self.yaw * 0.25;
        let q = (fx, y);

        // Forehead lines when brows go up.
        let fl = sat(e.brow_raise - 0.35) * 0.5;
        if fl > 0.0 {
            for k in 0..2 {
                let ly = self.eye_y - 0.5 - 0.09 * k as f32;
                let d = seg_dist(q, (-0.35, ly), (0.35, ly)) - 0.012;
                v = lerp(v, dark(0.25), cover(d) * fl);
            }
        }

        for side in [-1.0f32, 1.0] {
            let scale = 1.0 - side * self.yaw * 0.5; // far eye looks smaller
            let ex = side * self.eye_sep;
            let erx = self.eye_rx * scale;
            let ery = (self.eye_rx * 0.55 * e.eye_open).max(0.015);
            let ec = (ex, self.eye_y);
            // Lower lid raised: clip the eye from below.
            let bottom = self.eye_y + ery * (1.0 - e.lid_raise);
            let d_eye = ellipse_sd(q, ec, erx, ery).max(q.1 - bottom);
            let c_eye = cover(d_eye);
            if c_eye > 0.0 {
                let sclera = (skin + 0.3).min(1.0);
                v = lerp(v, sclera, c_eye);
                let d_iris = ((q.0 - ex).powi(2) + (q.1 - self.eye_y).powi(2)).sqrt() - erx * 0.5;
                v = lerp(v, self.iris, cover(d_iris.max(d_eye)));
            }
            // Upper lid line.
            let d_lid = ellipse_sd(q, ec, erx, ery).abs() - 0.02;
            let upper = sat((self.eye_y - q.1) / (ery + aa) + 0.3);
            v = lerp(v, dark(0.6), cover(d_lid) * upper);

            // Brow: inner -> mid -> outer, raised/tilted/arched.
            let base = self.eye_y - 0.2 - e.brow_raise * 0.17;
            let inner = (side * 0.11, base - e.brow_tilt * 0.09 + 0.02);
            let outer = (side * (self.eye_sep + self.eye_rx + 0.06), base + e.brow_tilt * 0.03 + 0.03);
            let mid = (
                (inner.0 + outer.0) * 0.5,
                (inner.1 + outer.1) * 0.5 - 0.03 - e.brow_arch * 0.06,
            );
            let d_brow = seg_dist(q, inner, mid).min(seg_dist(q, mid, outer)) - self.brow_th * 0.5;
            v = lerp(v, dark(0.7), cover(d_brow));
        }

        // Nose: nostrils, wrinkle lines across the bridge, nasolabial folds.
        for side in [-1.0f32, 1.0] {
            let d = ((q.0 - side * 0.07).powi(2) + (q.1 - self.nose_y).powi(2)).sqrt() - 0.035;
            v = lerp(v, dark(0.45), cover(d));
            if e.fold > 0.0 {
                let a = (side * 0.14, self.nose_y - 0.02);
                let b = (side * (self.mouth_hw * e.mouth_width + 0.06), self.mouth_y + 0.02);
                let d = seg_dist(q, a, b) - 0.014;
                v = lerp(v, dark(0.3), cover(d) * sat(e.fold));
            }
        }
        if e.nose_wrinkle > 0.0 {
            for k in 0..3 {
                let ly = self.eye_y + 0.06 + 0.06 * k as f32;
                let d = seg_dist(q, (-0.07, ly), (0.07, ly)) - 0.014;
                v = lerp(v, dark(0.45), cover(d) * sat(e.nose_wrinkle));
            }
        }

        // Mouth: lip line y_u(x), opening down to y_l(x).
        let my = self.mouth_y + e.jaw_drop * 0.12;
        let hw = self.mouth_hw * e.mouth_width;
        let t = (q.0 / hw).clamp(-1.0, 1.0);
        let curve = e.mouth_curve * 0.16;
        let raise = e.lip_raise * 0.07 * sat((1.0 + t) * 0.5 + 0.1); // right side higher
        let y_u = my - curve * t * t + curve * 0.35 - raise;
        let open = (e.mouth_open * 0.4 + raise * 0.6) * (1.0 - t * t).max(0.0).powf(0.6);
        let y_l = y_u + open;
        let slope = -2.0 * curve * t / hw;
        let inside_x = hw - q.0.abs();
        if open > 0.0 {
            let c = sat((q.1 - y_u) / aa + 0.5) * sat((y_l - q.1) / aa + 0.5) * sat(inside_x / aa + 0.5);
            if c > 0.0 {
                // Teeth: a light band under the upper lip.
                let tooth = e.teeth * sat((y_u + 0.06 - q.1) / aa + 0.5);
                let inner = lerp(0.08, 0.85, sat(tooth));
                v = lerp(v, inner, c);
            }
        }
        // Lips: the upper contour (always) and the lower one (when open).
        let lip_th = if e.mouth_open < 0.05 && e.mouth_curve < 0.0 { 0.022 } else { 0.03 };
        let vert = |yc: f32| (q.1 - yc).abs() / (1.0 + slope * slope).sqrt();
        let d_up = if inside_x >= 0.0 { vert(y_u) } else { -inside_x + vert(y_u).max(0.0) * 0.0 + (q.1 - y_u).abs() };
        v = lerp(v, dark(0.55), cover(d_up - lip_th));
        if open > 0.01 {
            let d_lo = if inside_x >= 0.0 { vert(y_l) } else { f32::MAX };
            v = lerp(v, dark(0.35), cover(d_lo - lip_th * 0.8));
        }
        v
    }
}

/// A `size` x `size` grayscale face showing emotion `class` (index into
/// [`crate::CLASSES`], taken modulo 7). Pure: the same arguments give the same pixels.
pub fn render_face(class: usize, seed: u64, size: u32) -> GrayImage {
    let f = sample_face(class, seed, size);
    let mut noise_rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ class as u64);
    let normal = Normal::new(0.0f32, f.noise).unwrap_or_else(|_| Normal::new(0.0, 0.01).expect("valid sigma"));
    let (sr, cr) = f.roll.sin_cos();
    let aa = 1.0 / f.unit;
    let mut img = GrayImage::new(size, size);
    for (px, py, out) in img.enumerate_pixels_mut() {
        let (dx, dy) = ((px as f32 + 0.5 - f.cx) / f.unit, (py as f32 + 0.5 - f.cy) / f.unit);
        // Into the face frame: undo the roll.
        let p = (cr * dx + sr * dy, -sr * dx + cr * dy);
        let v = f.shade(p, aa);
        let v = f.lo + (f.hi - f.lo) * v + normal.sample(&mut noise_rng);
        out.0[0] = (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sized() {
        let a = render_face(3, 42, 48);
        assert_eq!(a.dimensions(), (48, 48));
        assert_eq!(a, render_face(3, 42, 48));
        assert_ne!(a, render_face(3, 43, 48));
        assert_ne!(a, render_face(4, 42, 48));
        assert_eq!(render_face(6, 1, 96).dimensions(), (96, 96));
    }

    #[test]
    fn not_blank_and_uses_range() {
        for c in 0..7 {
            let img = render_face(c, 7, 48);
            let (lo, hi) = img.pixels().fold((255u8, 0u8), |(l, h), p| (l.min(p.0[0]), h.max(p.0[0])));
            assert!(hi - lo > 60, "class {c}: range {lo}..{hi}");
        }
    }

    /// Same person, neutral vs surprise: some 4x4 block (mouth, eyes) changes far more than
    /// noise alone changes any block (a guard against prototypes silently collapsing).
    #[test]
    fn expressions_differ_beyond_noise() {
        let max_block = |a: &GrayImage, b: &GrayImage| {
            let mut best = 0f32;
            for by in 0..12 {
                for bx in 0..12 {
                    let mut d = 0f32;
                    for y in 0..4 {
                        for x in 0..4 {
                            let (px, py) = (bx * 4 + x, by * 4 + y);
                            d += a.get_pixel(px, py).0[0] as f32 - b.get_pixel(px, py).0[0] as f32;
                        }
                    }
                    best = best.max((d / 16.0).abs());
                }
            }
            best
        };
        for s in 0..20 {
            let expr = max_block(&render_face(4, s, 48), &render_face(6, s, 48));
            // Class 11 is class 4 with another noise draw: same person, same expression.
            let noise = max_block(&render_face(4, s, 48), &render_face(4 + 7, s, 48));
            assert!(expr > 3.0 * noise && expr > 25.0, "seed {s}: expression {expr} vs noise-only {noise}");
        }
    }
}
