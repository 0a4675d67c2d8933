//! Inline SVG drawn on the server: a run's DAG and the metrics-over-runs chart.

use std::collections::BTreeMap;

use super::html::esc;

/// One box of the DAG.
pub struct Node {
    pub name: String,
    /// `ran`, `cached`, `failed`, `skipped`, `not selected`.
    pub status: String,
    pub detail: String,
    pub href: Option<String>,
    pub tooltip: String,
}

fn colours(status: &str) -> (&'static str, &'static str) {
    match status {
        "ran" => ("#d7f5d7", "#2e7d32"),
        "cached" => ("#dbe9fb", "#1565c0"),
        "failed" => ("#fbd5d5", "#c62828"),
        "running" => ("#fff3c4", "#b58900"),
        _ => ("#f0f0f0", "#9e9e9e"),
    }
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Nodes in topological order; edges as (from, to) indices. Left to right by depth.
pub fn dag(nodes: &[Node], edges: &[(usize, usize)]) -> String {
    const W: usize = 190;
    const H: usize = 50;
    const GX: usize = 60;
    const GY: usize = 20;
    let mut depth = vec![0usize; nodes.len()];
    // Nodes come in topological order, but a loop over edges to a fixed point is safe for any order.
    for _ in 0..nodes.len() {
        let mut changed = false;
        for &(a, b) in edges {
            if a < nodes.len() && b < nodes.len() && depth[b] < depth[a] + 1 && depth[a] < nodes.len() {
                depth[b] = depth[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut row_of = vec![0usize; nodes.len()];
    let mut per_col: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, d) in depth.iter().enumerate() {
        let r = per_col.entry(*d).or_default();
        row_of[i] = *r;
        *r += 1;
    }
    let cols = depth.iter().max().map(|d| d + 1).unwrap_or(1);
    let rows = per_col.values().max().copied().unwrap_or(1);
    let (width, height) = (cols * (W + GX) - GX + 20, rows * (H + GY) - GY + 20);
    let pos = |i: usize| (10 + depth[i] * (W + GX), 10 + row_of[i] * (H + GY));
    let mut s = format!(
        r##"<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="pipeline graph"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#666"/></marker></defs>"##
    );
    for &(a, b) in edges {
        if a >= nodes.len() || b >= nodes.len() {
            continue;
        }
        let ((ax, ay), (bx, by)) = (pos(a), pos(b));
        let (x1, y1, x2, y2) = (ax + W, ay + H / 2, bx, by + H / 2);
        let mx = (x1 + x2) / 2;
        s.push_str(&format!(r##"<path d="M {x1} {y1} C {mx} {y1}, {mx} {y2}, {x2} {y2}" fill="none" stroke="#666" stroke-width="1.5" marker-end="url(#arrow)"/>"##));
    }
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = pos(i);
        let (fill, stroke) = colours(&n.status);
        let dash = if n.status == "not selected" || n.status == "skipped" { r#" stroke-dasharray="4 3""# } else { "" };
        let body = format!(
            r##"<g class="stage {cls}"><title>{tip}</title><rect x="{x}" y="{y}" width="{W}" height="{H}" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="2"{dash}/><text x="{tx}" y="{ty1}" font-size="13" font-weight="bold">{name}</text><text x="{tx}" y="{ty2}" font-size="11" fill="#333">{detail}</text></g>"##,
            cls = esc(&n.status.replace(' ', "-")),
            tip = esc(&n.tooltip),
            tx = x + 8,
            ty1 = y + 20,
            ty2 = y + 38,
            name = esc(&short(&n.name, 24)),
            detail = esc(&short(&n.detail, 30)),
        );
        match &n.href {
            Some(h) => s.push_str(&format!(r#"<a href="{}">{body}</a>"#, esc(h))),
            None => s.push_str(&body),
        }
    }
    s.push_str("</svg>");
    s
}

const SERIES: [&str; 6] = ["#1565c0", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f"];

/// A line per series over runs (oldest left); `x` labels are run ids. Values may be missing.
pub fn chart(x: &[u64], series: &[(String, Vec<Option<f64>>)]) -> String {
    let (w, h, left, bottom, top) = (640.0, 200.0, 44.0, 24.0, 10.0);
    let vals: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().flatten().copied()).filter(|v| v.is_finite()).collect();
    if x.is_empty() || vals.is_empty() {
        return String::new();
    }
    let (mut lo, mut hi) = (vals.iter().cloned().fold(f64::MAX, f64::min), vals.iter().cloned().fold(f64::MIN, f64::max));
    if lo >= 0.0 && hi <= 1.0 {
        (lo, hi) = (0.0, 1.0);
    } else if (hi - lo).abs() < 1e-12 {
        (lo, hi) = (lo - 1.0, hi + 1.0);
    }
    let plot_w = w - left - 10.0;
    let plot_h = h - bottom - top;
    let px = |i: usize| left + if x.len() == 1 { plot_w / 2.0 } else { i as f64 * plot_w / (x.len() - 1) as f64 };
    let py = |v: f64| top + plot_h - (v - lo) / (hi - lo) * plot_h;
    let legend_h = 18.0 * series.len() as f64;
    let total_h = h + legend_h;
    let mut s = format!(r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{total_h}" viewBox="0 0 {w} {total_h}" role="img" aria-label="metrics over runs">"#);
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let y = py(v);
        s.push_str(&format!(r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##, w - 10.0, left - 4.0, y + 3.0, esc(&crate::fmt::fmt_num((v * 1000.0).round() / 1000.0))));
    }
    let step = (x.len() / 12).max(1);
    for (i, id) in x.iter().enumerate().filter(|(i, _)| i % step == 0) {
        s.push_str(&format!(r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{id}</text>"#, px(i), h - 8.0));
    }
    for (k, (name, v)) in series.iter().enumerate() {
        let c = SERIES[k % SERIES.len()];
        let pts: Vec<String> = v.iter().enumerate().filter_map(|(i, y)| y.filter(|y| y.is_finite()).map(|y| format!("{:.1},{:.1}", px(i), py(y)))).collect();
        s.push_str(&format!(r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, pts.join(" ")));
        for (i, y) in v.iter().enumerate() {
            if let Some(y) = y.filter(|y| y.is_finite()) {
                s.push_str(&format!(r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>run {}: {} = {}</title></circle>"#, px(i), py(y), x[i], esc(name), crate::fmt::fmt_num(y)));
            }
        }
        let ly = h + 12.0 + 18.0 * k as f64;
        s.push_str(&format!(r#"<rect x="{left}" y="{:.1}" width="12" height="4" fill="{c}"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#, ly - 4.0, left + 18.0, ly, esc(name)));
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_escapes_names_and_draws_every_box_and_edge() {
        let n = |name: &str, st: &str| Node { name: name.into(), status: st.into(), detail: "1.0 s".into(), href: None, tooltip: String::new() };
        let svg = dag(&[n("<a>", "ran"), n("b", "cached"), n("c", "failed")], &[(0, 1), (1, 2), (0, 2)]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert_eq!(svg.matches("marker-end").count(), 3);
        assert!(svg.contains("&lt;a&gt;") && !svg.contains("<a>"));
        assert!(svg.contains("#c62828"), "failed is red");
    }

    #[test]
    fn chart_skips_missing_values_and_needs_some_data() {
        assert_eq!(chart(&[1, 2], &[("a".into(), vec![None, None])]), "");
        let svg = chart(&[1, 2, 3], &[("acc".into(), vec![Some(0.5), None, Some(0.7)])]);
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
