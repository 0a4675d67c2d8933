//! The heatmap PNG: a matrix with named axes, values in the cells, a colour bar.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use crate::draw::{draw_err, fit_text, format_value, render_png, text_colour_on, to_msg, viridis, FONT};
use crate::ReportError;

/// Size in pixels (width, height) of every heatmap PNG.
pub const HEATMAP_SIZE: (u32, u32) = (900, 800);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{check_png, labels};

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
    fn a_class_name_of_100000_characters_is_cut_to_fit_without_a_quadratic_search() {
        // It took 20 s at 10,000 characters (hostile pass): every prefix was measured.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.png");
        let m = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let names = vec!["x".repeat(100_000), "b".to_string()];
        heatmap_png(&path, "Rates", &m, &names, &names, "true", "predicted").unwrap();
        check_png(&path, HEATMAP_SIZE);
    }

    #[test]
    fn fit_text_keeps_the_longest_prefix_that_fits() {
        crate::draw::ensure_font(Path::new("test")).unwrap();
        let mut buf = vec![0u8; 200 * 50 * 3];
        let root = BitMapBackend::with_buffer(&mut buf, (200, 50)).into_drawing_area();
        let style = TextStyle::from((FONT, 14).into_font());
        for text in ["short", "a much longer label that cannot fit in the room given", "ééééééééééééééééééééééééééé"] {
            for max in [1u32, 10, 40, 80, 500] {
                let got = fit_text(&root, text, &style, max).unwrap();
                // the linear search it replaced
                let chars: Vec<char> = text.chars().collect();
                let width = |s: &str| root.estimate_text_size(s, &style).unwrap().0;
                let want = if width(text) <= max {
                    text.to_string()
                } else {
                    (1..chars.len()).rev().map(|k| chars[..k].iter().collect::<String>() + "…").find(|c| width(c) <= max).unwrap_or_else(|| "…".into())
                };
                assert_eq!(got, want, "{text:?} in {max} px");
            }
        }
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
}
