//! The augment job as pipeline files write it: balancing, decoding size, the Keras
//! `ImageDataGenerator` knobs under their Keras names (flat), the torchvision extras, the
//! preview. The `augment` stage's params are this struct; [`AugmentParams::to_config`]
//! turns it into the [`AugmentConfig`] the transforms take.
//!
//! With the `schema` feature it also derives `schemars::JsonSchema` (what `pipeline schema`
//! prints), so the docs below are the params' docs.

use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, CropConfig, ErasingConfig, FillMode};
use crate::balance::BalanceMode;
use crate::VisionError;

/// Keras `zoom_range`: a float `z` means `[1 - z, 1 + z]`, or an explicit `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum Zoom {
    Symmetric(f64),
    Range([f64; 2]),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct AugmentParams {
    /// Images per class after balancing: originals plus transformed copies (the study: 300).
    pub per_class: usize,
    /// Classes already above `per_class`: `keep` all originals or `sample_down` to exactly N.
    pub mode: BalanceMode,
    /// Output side in pixels (images are decoded and resized to size x size).
    pub size: u32,
    /// Output channels: 1 (grayscale) or 3 (RGB).
    pub channels: u8,
    /// Seed of every random draw; same inputs, params and seed give byte-identical output.
    pub seed: u64,
    /// Keras: rotation in degrees, uniform in [-r, r].
    pub rotation_range: f64,
    /// Keras: horizontal shift; below 1 a fraction of the width, from 1 up pixels.
    pub width_shift_range: f64,
    /// Keras: vertical shift; below 1 a fraction of the height, from 1 up pixels.
    pub height_shift_range: f64,
    /// Keras: shear angle in degrees, uniform in [-s, s].
    pub shear_range: f64,
    /// Keras: zoom factors zx, zy drawn independently; `z` means [1-z, 1+z]; above 1 shrinks.
    pub zoom_range: Zoom,
    /// Keras: flip left-right with probability 0.5.
    pub horizontal_flip: bool,
    /// Keras: flip upside down with probability 0.5.
    pub vertical_flip: bool,
    /// Keras: add a uniform value in [-c, c] to all channels (clipped to the image's range).
    pub channel_shift_range: f64,
    /// Keras: brightness factor range [lo, hi] (1 = unchanged); null = off.
    pub brightness_range: Option<[f64; 2]>,
    /// Keras: fill for points outside the image: nearest, constant (with `cval`), reflect, wrap.
    pub fill_mode: FillMode,
    /// Keras: value for `fill_mode: constant` (0..255).
    pub cval: f64,
    /// torchvision ColorJitter: contrast factor range [lo, hi]; null = off.
    pub contrast_range: Option<[f64; 2]>,
    /// torchvision RandomResizedCrop: area fraction range [lo, hi]; null = off.
    pub random_crop_scale: Option<[f64; 2]>,
    /// torchvision RandomResizedCrop: aspect ratio range (width / height).
    pub random_crop_ratio: [f64; 2],
    /// torchvision RandomErasing: probability of erasing a rectangle (0 = off).
    pub random_erasing: f64,
    /// torchvision RandomErasing: area fraction range of the rectangle.
    pub random_erasing_scale: [f64; 2],
    /// torchvision RandomErasing: aspect ratio range of the rectangle.
    pub random_erasing_ratio: [f64; 2],
    /// torchvision RandomErasing: value written into the rectangle (0..255).
    pub random_erasing_value: f64,
    /// Images per class shown in preview.png.
    pub preview_per_class: usize,
}

impl Default for AugmentParams {
    fn default() -> Self {
        Self {
            per_class: 300,
            mode: BalanceMode::Keep,
            size: 48,
            channels: 1,
            seed: 0,
            rotation_range: 15.0,
            width_shift_range: 0.1,
            height_shift_range: 0.1,
            shear_range: 0.0,
            zoom_range: Zoom::Symmetric(0.1),
            horizontal_flip: true,
            vertical_flip: false,
            channel_shift_range: 0.0,
            brightness_range: None,
            fill_mode: FillMode::Nearest,
            cval: 0.0,
            contrast_range: None,
            random_crop_scale: None,
            random_crop_ratio: [0.75, 4.0 / 3.0],
            random_erasing: 0.0,
            random_erasing_scale: [0.02, 0.33],
            random_erasing_ratio: [0.3, 3.3],
            random_erasing_value: 0.0,
            preview_per_class: 8,
        }
    }
}

impl AugmentParams {
    pub fn to_config(&self) -> AugmentConfig {
        AugmentConfig {
            rotation_range: self.rotation_range,
            width_shift_range: self.width_shift_range,
            height_shift_range: self.height_shift_range,
            shear_range: self.shear_range,
            zoom_range: match self.zoom_range {
                Zoom::Symmetric(z) => AugmentConfig::zoom(z),
                Zoom::Range(r) => r,
            },
            horizontal_flip: self.horizontal_flip,
            vertical_flip: self.vertical_flip,
            channel_shift_range: self.channel_shift_range,
            brightness_range: self.brightness_range,
            fill_mode: self.fill_mode,
            cval: self.cval,
            contrast_range: self.contrast_range,
            random_crop: self.random_crop_scale.map(|scale| CropConfig { scale, ratio: self.random_crop_ratio }),
            random_erasing: (self.random_erasing > 0.0).then_some(ErasingConfig {
                p: self.random_erasing,
                scale: self.random_erasing_scale,
                ratio: self.random_erasing_ratio,
                value: self.random_erasing_value,
            }),
        }
    }

    /// Everything [`AugmentConfig::validate`] checks, plus balancing and size; errors name
    /// the param as written here (flat names for the torchvision knobs).
    pub fn validate(&self) -> Result<(), VisionError> {
        let bad = |param, message: &str| Err(VisionError::BadParam { param, message: message.into() });
        if self.per_class == 0 {
            return bad("per_class", "must be at least 1");
        }
        // found by a hostile pass: 1e12 aborted the process allocating its plan
        if self.per_class > 1_000_000 {
            return bad("per_class", "at most 1,000,000 images per class");
        }
        if !(8..=1024).contains(&self.size) {
            return bad("size", "between 8 and 1024 pixels");
        }
        if !matches!(self.channels, 1 | 3) {
            return bad("channels", "1 (grayscale) or 3 (RGB)");
        }
        self.to_config().validate().map_err(|e| match e {
            VisionError::BadParam { param, message } => {
                let param = match param {
                    "random_crop.scale" => "random_crop_scale",
                    "random_crop.ratio" => "random_crop_ratio",
                    "random_erasing.p" => "random_erasing",
                    "random_erasing.scale" => "random_erasing_scale",
                    "random_erasing.ratio" => "random_erasing_ratio",
                    "random_erasing.value" => "random_erasing_value",
                    other => other,
                };
                VisionError::BadParam { param, message }
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_forms_fill_and_flat_names() {
        let p: AugmentParams = serde_json::from_value(serde_json::json!({"zoom_range": [0.8, 1.3], "fill_mode": "reflect"})).unwrap();
        assert_eq!(p.to_config().zoom_range, [0.8, 1.3]);
        assert_eq!(p.to_config().fill_mode, FillMode::Reflect);
        let p: AugmentParams = serde_json::from_value(serde_json::json!({"zoom_range": 0.2})).unwrap();
        assert_eq!(p.to_config().zoom_range, [0.8, 1.2]);
        assert!(serde_json::from_value::<AugmentParams>(serde_json::json!({"rotaton_range": 3})).is_err());
        let e = AugmentParams { random_erasing: 2.0, ..Default::default() }.validate().unwrap_err();
        assert!(matches!(e, VisionError::BadParam { param: "random_erasing", .. }), "{e}");
        let e = AugmentParams { channels: 2, ..Default::default() }.validate().unwrap_err();
        assert!(matches!(e, VisionError::BadParam { param: "channels", .. }), "{e}");
        assert!(AugmentParams::default().validate().is_ok());
        let e = AugmentParams { per_class: 1_000_000_000_000, ..Default::default() }.validate().unwrap_err();
        assert!(matches!(e, VisionError::BadParam { param: "per_class", .. }), "{e}");
        for (p, bad) in [
            (AugmentParams { width_shift_range: 1e308, ..Default::default() }, "width_shift_range"),
            (AugmentParams { rotation_range: 1e308, ..Default::default() }, "rotation_range"),
            (AugmentParams { shear_range: 361.0, ..Default::default() }, "shear_range"),
            (AugmentParams { channel_shift_range: 1e300, ..Default::default() }, "channel_shift_range"),
        ] {
            let e = p.validate().unwrap_err();
            assert!(matches!(e, VisionError::BadParam { param, .. } if param == bad), "{e}");
        }
    }
}
