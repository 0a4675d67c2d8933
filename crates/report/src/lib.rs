//! pipeline-report: tables and PNG plots shared by every stage's report.
//!
//! Plots are drawn with plotters into an in-memory RGB buffer and then encoded as PNG, so a
//! failed plot never leaves a half-written file. Text uses DejaVu Sans embedded in the binary
//! (`fonts/`, Bitstream Vera licence): no system font or fontconfig is needed at run time.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Size in pixels (width, height) of every heatmap PNG.
pub const HEATMAP_SIZE: (u32, u32) = (900, 800);
/// Size in pixels (width, height) of every line chart PNG.
pub const LINE_CHART_SIZE: (u32, u32) = (900, 600);

/// The font family every text style in this crate uses; registered on first use.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Registers the embedded font once per process. plotters' ab_glyph backend only knows
/// fonts registered this way, so without it every text draw fails.
fn ensure_font(path: &Path) -> Result<(), ReportError> {
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

fn draw_err(path: &Path, message: impl Into<String>) -> ReportError {
    ReportError::Draw {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Renders with `draw` into a white `size` canvas, then writes the PNG to `path`.
fn render_png(
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
fn format_value(v: f64) -> String {
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
fn viridis(t: f64) -> RGBColor {
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
fn text_colour_on(c: RGBColor) -> RGBColor {
    let luma = 0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64;
    if luma > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

fn to_msg<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Shortens `text` with an ellipsis until it fits in `max_px` at `style`.
fn fit_text(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    text: &str,
    style: &TextStyle,
    max_px: u32,
) -> Result<String, String> {
    if area.estimate_text_size(text, style).map_err(to_msg)?.0 <= max_px {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (1..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().collect::<String>() + "…";
        if area
            .estimate_text_size(&candidate, style)
            .map_err(to_msg)?
            .0
            <= max_px
        {
            return Ok(candidate);
        }
    }
    Ok("…".to_string())
}

/// A heatmap of `matrix[row][col]` with each cell's value written in it.
/// `row_axis`/`col_axis` name the axes ("predicted", "true") so no report leaves them implicit.
///
/// Rows run top to bottom (labelled on the left, axis name `row_axis`), columns left to
/// right (labelled underneath, axis name `col_axis`); a colour bar on the right maps values
/// to colours. Non-finite cells are grey and read "n/a". The image is [`HEATMAP_SIZE`].
pub fn heatmap_png(
    path: &Path,
    title: &str,
    matrix: &[Vec<f64>],
    row_labels: &[String],
    col_labels: &[String],
    row_axis: &str,
    col_axis: &str,
) -> Result<(), ReportError> {
    let n_rows = matrix.len();
    if n_rows == 0 {
        return Err(draw_err(path, "heatmap matrix has no rows"));
    }
    let n_cols = matrix[0].len();
    if n_cols == 0 {
        return Err(draw_err(path, "heatmap matrix has no columns"));
    }
    if let Some((i, r)) = matrix.iter().enumerate().find(|(_, r)| r.len() != n_cols) {
        return Err(draw_err(
            path,
            format!("heatmap row {i} has {} values, row 0 has {n_cols}", r.len()),
        ));
    }
    if row_labels.len() != n_rows {
        return Err(draw_err(
            path,
            format!("{} row labels for {n_rows} matrix rows", row_labels.len()),
        ));
    }
    if col_labels.len() != n_cols {
        return Err(draw_err(
            path,
            format!(
                "{} column labels for {n_cols} matrix columns",
                col_labels.len()
            ),
        ));
    }
    let finite = matrix.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // All-NaN or constant matrices still get a valid, non-degenerate scale.
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let norm = |v: f64| (v - lo) / (hi - lo);

    render_png(path, HEATMAP_SIZE, |root| {
        let (w, h) = (HEATMAP_SIZE.0 as i32, HEATMAP_SIZE.1 as i32);
        let title_style =
            TextStyle::from((FONT, 26).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        let axis_style =
            TextStyle::from((FONT, 20).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        let tick_px = 16;

        // Layout: title band, then [row axis name | row ticks | grid | colour bar | bar ticks],
        // with column ticks and the column axis name underneath the grid.
        let title_h = 50;
        let pad = 12;
        let axis_name_band = 34;
        let max_row_tick = 160; // longer class names are shortened with an ellipsis
        let row_tick_style =
            TextStyle::from((FONT, tick_px).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        let mut row_tick_w = 0;
        for l in row_labels {
            row_tick_w = row_tick_w.max(
                root.estimate_text_size(l, &row_tick_style)
                    .map_err(to_msg)?
                    .0,
            );
        }
        let row_tick_w = row_tick_w.min(max_row_tick) as i32;
        let bar_w = 24;
        let bar_ticks_w = 80;
        let grid_x0 = pad + axis_name_band + row_tick_w + 8;
        let grid_x1 = w - pad - bar_ticks_w - bar_w - 24;
        let grid_y0 = title_h + 10;
        let cell_w = (grid_x1 - grid_x0) / n_cols as i32;

        // Column labels go vertical when any is wider than its cell.
        let col_tick_flat =
            TextStyle::from((FONT, tick_px).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        let mut col_tick_w = 0;
        for l in col_labels {
            col_tick_w = col_tick_w.max(
                root.estimate_text_size(l, &col_tick_flat)
                    .map_err(to_msg)?
                    .0,
            );
        }
        let vertical_cols = col_tick_w as i32 > cell_w - 4;
        let col_tick_band = if vertical_cols {
            (col_tick_w as i32).min(max_row_tick as i32) + 8
        } else {
            tick_px + 12
        };
        let grid_y1 = h - pad - axis_name_band - col_tick_band;
        let cell_h = (grid_y1 - grid_y0) / n_rows as i32;
        if cell_w < 2 || cell_h < 2 {
            return Err(format!(
                "{n_rows}x{n_cols} matrix is too large for a {}x{} heatmap",
                w, h
            ));
        }
        // Grid uses whole cells so every cell has the same size.
        let grid_x1 = grid_x0 + cell_w * n_cols as i32;
        let grid_y1 = grid_y0 + cell_h * n_rows as i32;

        root.draw_text(title, &title_style, (w / 2, 12))
            .map_err(to_msg)?;

        // Cells and their values; the value font shrinks with the cell and is skipped when unreadable.
        let value_px = ((cell_h as f64 * 0.35).min(cell_w as f64 * 0.22)).min(22.0) as i32;
        for (r, row) in matrix.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let x0 = grid_x0 + c as i32 * cell_w;
                let y0 = grid_y0 + r as i32 * cell_h;
                let fill = if v.is_finite() {
                    viridis(norm(v))
                } else {
                    RGBColor(190, 190, 190)
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cell_w, y0 + cell_h)],
                    fill.filled(),
                ))
                .map_err(to_msg)?;
                if value_px >= 8 {
                    let ink = text_colour_on(fill);
                    let style = TextStyle::from((FONT, value_px).into_font())
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    let text =
                        fit_text(root, &format_value(v), &style, (cell_w - 4).max(1) as u32)?;
                    root.draw_text(&text, &style, (x0 + cell_w / 2, y0 + cell_h / 2))
                        .map_err(to_msg)?;
                }
            }
        }
        // Thin white separators keep neighbouring cells of similar colour apart.
        for c in 1..n_cols as i32 {
            let x = grid_x0 + c * cell_w;
            root.draw(&PathElement::new(vec![(x, grid_y0), (x, grid_y1)], WHITE))
                .map_err(to_msg)?;
        }
        for r in 1..n_rows as i32 {
            let y = grid_y0 + r * cell_h;
            root.draw(&PathElement::new(vec![(grid_x0, y), (grid_x1, y)], WHITE))
                .map_err(to_msg)?;
        }
        root.draw(&Rectangle::new(
            [(grid_x0, grid_y0), (grid_x1, grid_y1)],
            BLACK.stroke_width(1),
        ))
        .map_err(to_msg)?;

        // Row ticks (left) and column ticks (below).
        for (r, l) in row_labels.iter().enumerate() {
            let text = fit_text(root, l, &row_tick_style, max_row_tick)?;
            let y = grid_y0 + r as i32 * cell_h + cell_h / 2;
            root.draw_text(&text, &row_tick_style, (grid_x0 - 8, y))
                .map_err(to_msg)?;
        }
        for (c, l) in col_labels.iter().enumerate() {
            let x = grid_x0 + c as i32 * cell_w + cell_w / 2;
            if vertical_cols {
                // Rotated 270 degrees: reads bottom-to-top, its end against the grid.
                let style = TextStyle::from((FONT, tick_px).into_font())
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                let text = fit_text(root, l, &col_tick_flat, max_row_tick)?;
                root.draw_text(&text, &style, (x, grid_y1 + 6))
                    .map_err(to_msg)?;
            } else {
                root.draw_text(l, &col_tick_flat, (x, grid_y1 + 6))
                    .map_err(to_msg)?;
            }
        }

        // Axis names: columns under their ticks, rows rotated along the left edge.
        let grid_cx = (grid_x0 + grid_x1) / 2;
        let grid_cy = (grid_y0 + grid_y1) / 2;
        root.draw_text(
            col_axis,
            &axis_style,
            (grid_cx, grid_y1 + col_tick_band + axis_name_band / 2),
        )
        .map_err(to_msg)?;
        let row_axis_style = axis_style.transform(FontTransform::Rotate270);
        root.draw_text(
            row_axis,
            &row_axis_style,
            (pad + axis_name_band / 2, grid_cy),
        )
        .map_err(to_msg)?;

        // Colour bar: a vertical gradient from `hi` (top) to `lo` (bottom) with 5 ticks.
        let bar_x0 = grid_x1 + 24;
        let bar_x1 = bar_x0 + bar_w;
        let bar_h = grid_y1 - grid_y0;
        for i in 0..bar_h {
            let t = 1.0 - i as f64 / (bar_h - 1).max(1) as f64;
            let y = grid_y0 + i;
            root.draw(&Rectangle::new(
                [(bar_x0, y), (bar_x1, y + 1)],
                viridis(t).filled(),
            ))
            .map_err(to_msg)?;
        }
        root.draw(&Rectangle::new(
            [(bar_x0, grid_y0), (bar_x1, grid_y1)],
            BLACK.stroke_width(1),
        ))
        .map_err(to_msg)?;
        let bar_tick_style =
            TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for k in 0..5 {
            let t = k as f64 / 4.0;
            let v = lo + (hi - lo) * t;
            let y = grid_y1 - (t * (bar_h - 1) as f64).round() as i32;
            root.draw(&PathElement::new(vec![(bar_x1, y), (bar_x1 + 5, y)], BLACK))
                .map_err(to_msg)?;
            root.draw_text(&format_value(v), &bar_tick_style, (bar_x1 + 8, y))
                .map_err(to_msg)?;
        }
        Ok(())
    })
}

/// Ten distinct colours (Tableau 10) for series; they repeat past ten series.
const SERIES_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Lines over x (training curves, log-likelihood per EM iteration).
///
/// Each series gets its own colour and a legend entry; points are drawn in the given order,
/// non-finite points are left out. A series with a single point shows as a dot. The image
/// is [`LINE_CHART_SIZE`].
pub fn line_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), ReportError> {
    let clean: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect(),
            )
        })
        .collect();
    let all = clean.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(draw_err(path, "line chart has no finite points to plot"));
    }
    // Degenerate ranges (one point, a flat line) are widened so the axes stay drawable.
    if x0 == x1 {
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let y_pad = if y0 == y1 {
        0.5f64.max(y0.abs() * 0.05)
    } else {
        (y1 - y0) * 0.05
    };
    let (y0, y1) = (y0 - y_pad, y1 + y_pad);

    render_png(path, LINE_CHART_SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 26))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(to_msg)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 14))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(to_msg)?;
        for (i, (name, points)) in clean.iter().enumerate() {
            let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
            let style = colour.stroke_width(2);
            let anno = if points.len() == 1 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                    .map_err(to_msg)?
            } else {
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), style))
                    .map_err(to_msg)?
            };
            anno.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(to_msg)?;
        Ok(())
    })
}

/// One cell: `|` escaped so it does not end the cell, line breaks as `<br>` so they do
/// not end the row.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace("\r\n", "<br>")
        .replace(['\n', '\r'], "<br>")
}

/// A GitHub-flavoured Markdown table.
///
/// Rows shorter than the header are padded with empty cells; a row longer than the header
/// widens the table with unnamed columns (GFM would silently drop the extra cells).
/// Returns an empty string when there are neither headers nor rows.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = rows
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(headers.len());
    if n == 0 {
        return String::new();
    }
    let line = |cells: &mut dyn Iterator<Item = String>| -> String {
        let mut out = String::from("|");
        for c in cells {
            out.push(' ');
            out.push_str(&c);
            out.push_str(" |");
        }
        out.push('\n');
        out
    };
    let mut out = line(&mut (0..n).map(|i| headers.get(i).map(|h| md_cell(h)).unwrap_or_default()));
    out += &line(&mut (0..n).map(|_| "---".to_string()));
    for r in rows {
        out += &line(&mut (0..n).map(|i| r.get(i).map(|c| md_cell(c)).unwrap_or_default()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Decodes the PNG and checks its size and that it holds more than a blank canvas.
    fn check_png(path: &Path, size: (u32, u32)) -> image::RgbImage {
        let img = image::open(path).expect("decodes as an image").to_rgb8();
        assert_eq!(img.dimensions(), size);
        let first = *img.get_pixel(0, 0);
        let differing = img.pixels().filter(|p| **p != first).count();
        assert!(
            differing > 1000,
            "only {differing} pixels differ from the background"
        );
        img
    }

    #[test]
    fn heatmap_decodes_with_expected_size_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confusion.png");
        let m = vec![
            vec![50.0, 2.0, 0.0],
            vec![3.0, 41.0, 6.0],
            vec![0.0, 9.0, 38.0],
        ];
        let names = labels(&["cat", "dog", "bird"]);
        heatmap_png(
            &path,
            "Confusion matrix",
            &m,
            &names,
            &names,
            "true",
            "predicted",
        )
        .unwrap();
        let img = check_png(&path, HEATMAP_SIZE);
        // The highest value is drawn in viridis yellow, the lowest in viridis purple.
        let has = |c: RGBColor| img.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(viridis(1.0)) && has(viridis(0.0)));
    }

    #[test]
    fn heatmap_handles_fractions_long_labels_and_nan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rates.png");
        let m = vec![vec![0.91, 0.09], vec![f64::NAN, 0.5]];
        let names = labels(&["a very long class name indeed", "short"]);
        heatmap_png(&path, "Rates", &m, &names, &names, "true", "predicted").unwrap();
        check_png(&path, HEATMAP_SIZE);
    }

    #[test]
    fn heatmap_rejects_bad_shapes_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let names = labels(&["a", "b"]);
        let ragged = vec![vec![1.0, 2.0], vec![3.0]];
        let err = heatmap_png(&path, "t", &ragged, &names, &names, "r", "c").unwrap_err();
        assert!(err.to_string().contains("row 1 has 1 values"), "{err}");
        let err = heatmap_png(&path, "t", &[vec![1.0, 2.0]], &names, &names, "r", "c").unwrap_err();
        assert!(
            err.to_string().contains("2 row labels for 1 matrix rows"),
            "{err}"
        );
        assert!(heatmap_png(&path, "t", &[], &[], &[], "r", "c").is_err());
        assert!(!path.exists());
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let path = Path::new("/nonexistent-dir-for-report-test/x.png");
        let err = heatmap_png(
            path,
            "t",
            &[vec![1.0]],
            &labels(&["a"]),
            &labels(&["a"]),
            "r",
            "c",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent-dir-for-report-test/x.png: writing PNG"),
            "{err}"
        );
    }

    #[test]
    fn line_chart_decodes_with_expected_size_and_series_colours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let train = Series {
            name: "train loss".into(),
            points: (0..20)
                .map(|i| (i as f64, 2.0 / (1.0 + i as f64)))
                .collect(),
        };
        let val = Series {
            name: "val loss".into(),
            points: (0..20)
                .map(|i| (i as f64, 2.2 / (1.0 + 0.8 * i as f64)))
                .collect(),
        };
        let single = Series {
            name: "best".into(),
            points: vec![(12.0, 0.3), (f64::NAN, 1.0)],
        };
        line_chart_png(&path, "Training", "epoch", "loss", &[train, val, single]).unwrap();
        let img = check_png(&path, LINE_CHART_SIZE);
        for c in &SERIES_COLOURS[..3] {
            assert!(
                img.pixels().any(|p| p.0 == [c.0, c.1, c.2]),
                "series colour {c:?} missing"
            );
        }
    }

    #[test]
    fn line_chart_without_points_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.png");
        let s = Series {
            name: "nothing".into(),
            points: vec![(f64::NAN, 0.0)],
        };
        let err = line_chart_png(&path, "t", "x", "y", &[s]).unwrap_err();
        assert!(err.to_string().contains("no finite points"), "{err}");
        assert!(line_chart_png(&path, "t", "x", "y", &[]).is_err());
    }

    #[test]
    fn flat_single_point_chart_still_draws() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flat.png");
        line_chart_png(
            &path,
            "t",
            "x",
            "y",
            &[Series {
                name: "one".into(),
                points: vec![(1.0, 1.0)],
            }],
        )
        .unwrap();
        check_png(&path, LINE_CHART_SIZE);
    }

    #[test]
    fn value_format_integers_and_fractions() {
        assert_eq!(format_value(12.0), "12");
        assert_eq!(format_value(-3.0), "-3");
        assert_eq!(format_value(0.8333), "0.83");
        assert_eq!(format_value(f64::NAN), "n/a");
    }

    #[test]
    fn markdown_table_exact() {
        let rows = vec![
            vec!["cat".to_string(), "0.91".to_string()],
            vec!["a|b".to_string(), "line1\nline2".to_string()],
        ];
        assert_eq!(
            markdown_table(&["class", "accuracy"], &rows),
            "| class | accuracy |\n| --- | --- |\n| cat | 0.91 |\n| a\\|b | line1<br>line2 |\n"
        );
    }

    #[test]
    fn markdown_table_pads_and_widens_ragged_rows() {
        let rows = vec![
            vec!["1".to_string()],
            vec!["1".to_string(), "2".to_string(), "3".to_string()],
        ];
        assert_eq!(
            markdown_table(&["a", "b"], &rows),
            "| a | b |  |\n| --- | --- | --- |\n| 1 |  |  |\n| 1 | 2 | 3 |\n"
        );
        assert_eq!(markdown_table(&[], &[]), "");
    }
}
