//! The line chart PNG: one coloured line per series, with a legend.

use std::path::Path;

use plotters::prelude::*;

use crate::draw::{draw_err, render_png, to_msg, FONT};
use crate::ReportError;

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Size in pixels (width, height) of every line chart PNG.
pub const LINE_CHART_SIZE: (u32, u32) = (900, 600);

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


#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::check_png;

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
}
