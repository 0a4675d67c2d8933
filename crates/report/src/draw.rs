//! What the plots share: the embedded font, rendering into a buffer then PNG, value
//! formatting, the colour map and fitting text.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::ReportError;

/// The font family every text style in this crate uses; registered on first use.
pub(crate) const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Registers the embedded font once per process. plotters' ab_glyph backend only knows
/// fonts registered this way, so without it every text draw fails.
pub(crate) fn ensure_font(path: &Path) -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(draw_err(
            path,
            "embedded font DejaVuSans.ttf could not be loaded",
        ))
    }
}

pub(crate) fn draw_err(path: &Path, message: impl Into<String>) -> ReportError {
    ReportError::Draw {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Renders with `draw` into a white `size` canvas, then writes the PNG to `path`.
pub(crate) fn render_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), ReportError> {
    ensure_font(path)?;
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(&root).map_err(|m| draw_err(path, m))?;
        root.present().map_err(|e| draw_err(path, e.to_string()))?;
    }
    image::save_buffer_with_format(
        path,
        &buf,
        size.0,
        size.1,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| draw_err(path, format!("writing PNG: {e}")))
}

/// Integers as integers ("12"), everything else with two decimals ("0.83").
pub(crate) fn format_value(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Viridis, approximated by linear interpolation between 9 of its anchor colours:
/// perceptually ordered and readable in greyscale and by colour-blind readers.
pub(crate) fn viridis(t: f64) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 9] = [
        (68, 1, 84),
        (71, 44, 122),
        (59, 81, 139),
        (44, 113, 142),
        (33, 144, 141),
        (39, 173, 129),
        (92, 200, 99),
        (170, 220, 50),
        (253, 231, 37),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let scaled = t * (ANCHORS.len() - 1) as f64;
    let i = (scaled.floor() as usize).min(ANCHORS.len() - 2);
    let f = scaled - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Black text on light cells, white on dark ones.
pub(crate) fn text_colour_on(c: RGBColor) -> RGBColor {
    let luma = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if luma > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

pub(crate) fn to_msg<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Shortens `text` with an ellipsis until it fits in `max_px` at `style`.
pub(crate) fn fit_text(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    text: &str,
    style: &TextStyle,
    max_px: u32,
) -> Result<String, String> {
    if area.estimate_text_size(text, style).map_err(to_msg)?.0 <= max_px {
        return Ok(text.to_string());
    }
    // A glyph is at least a pixel wide: no more than `max_px` characters can fit. The width
    // grows with the prefix, so the longest prefix that fits is found by bisection (a linear
    // scan over a 10,000-character class name took 20 s).
    let chars: Vec<char> = text.chars().take(max_px as usize + 1).collect();
    let with_ellipsis = |keep: usize| chars[..keep].iter().collect::<String>() + "…";
    let fits = |keep: usize| -> Result<bool, String> { Ok(area.estimate_text_size(&with_ellipsis(keep), style).map_err(to_msg)?.0 <= max_px) };
    let mut hi = chars.len().saturating_sub(1); // hi + 1 characters do not fit
    if hi == 0 || !fits(1)? {
        return Ok("…".to_string());
    }
    let mut lo = 1; // fits
    while lo < hi {
        let mid = (lo + hi + 1) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(with_ellipsis(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_format_integers_and_fractions() {
        assert_eq!(format_value(12.0), "12");
        assert_eq!(format_value(-3.0), "-3");
        assert_eq!(format_value(0.8333), "0.83");
        assert_eq!(format_value(f64::NAN), "n/a");
    }
}
