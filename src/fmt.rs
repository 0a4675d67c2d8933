//! Formatting shared by the CLI, `runs` and the web view: tables, durations, sizes, numbers.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Table};

pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(headers.iter().map(Cell::new).collect::<Vec<_>>());
    t
}

pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// A metric value: counts as integers (`2078`, not `2078.000`), fractions to 3 decimals.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn human_age(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_as_integers_and_fractions_with_three_decimals() {
        assert_eq!(fmt_num(2078.0), "2078");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-3.0), "-3");
        assert_eq!(fmt_num(0.71428), "0.714");
        assert_eq!(fmt_num(1234.5678), "1234.6");
        assert_eq!(fmt_num(f64::NAN), "NaN");
    }
}
