//! Printers for the system scheduler: a systemd service + timer, or a crontab line, that run
//! `pipeline run` at each tick of the expression.

use std::path::Path;

use super::cron::{parse_cron, parse_tz, FIELDS_7};
use super::ScheduleError;

/// One cron field expanded to its values (for translation to other syntaxes).
fn expand_field(text: &str, min: u32, max: u32, names: &[(&str, u32)]) -> Result<Vec<u32>, String> {
    let value = |s: &str| -> Result<u32, String> {
        let up = s.to_ascii_uppercase();
        if let Some((_, v)) = names.iter().find(|(n, _)| *n == up) {
            return Ok(*v);
        }
        let v: u32 = s.parse().map_err(|_| {
            if up.contains(['L', 'W', '#']) {
                format!("\"{s}\" (L, W and # have no equivalent)")
            } else {
                format!("\"{s}\" is not a number")
            }
        })?;
        if v < min || v > max {
            return Err(format!("{v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in \"{part}\""))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(r)?, max),
                None => (value(r)?, value(r)?),
            },
        };
        if lo > hi {
            return Err(format!("range \"{range}\" runs backwards"));
        }
        out.extend((lo..=hi).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Values as systemd writes them: `*` for all, else a comma list with `a..b` runs.
fn systemd_list(values: &[u32], min: u32, max: u32, fmt: impl Fn(u32) -> String) -> String {
    if values.len() as u64 == (max - min) as u64 + 1 {
        return "*".to_string();
    }
    let mut parts = Vec::new();
    let mut i = 0;
    while i < values.len() {
        let mut j = i;
        while j + 1 < values.len() && values[j + 1] == values[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}..{}", fmt(values[i]), fmt(values[j])));
        } else {
            parts.extend(values[i..=j].iter().map(|&v| fmt(v)));
        }
        i = j + 1;
    }
    parts.join(",")
}

const MONTHS: [(&str, u32); 12] = [
    ("JAN", 1),
    ("FEB", 2),
    ("MAR", 3),
    ("APR", 4),
    ("MAY", 5),
    ("JUN", 6),
    ("JUL", 7),
    ("AUG", 8),
    ("SEP", 9),
    ("OCT", 10),
    ("NOV", 11),
    ("DEC", 12),
];
const WEEKDAYS: [(&str, u32); 7] = [
    ("SUN", 0),
    ("MON", 1),
    ("TUE", 2),
    ("WED", 3),
    ("THU", 4),
    ("FRI", 5),
    ("SAT", 6),
];

/// The cron expression as 7 fields (second .. year), nicknames expanded.
fn seven_fields(expr: &str) -> Vec<String> {
    let t = expr.trim().to_ascii_lowercase();
    let base = match t.as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => expr.trim(),
    };
    let mut f: Vec<String> = base.split_whitespace().map(str::to_string).collect();
    if f.len() == 5 {
        f.insert(0, "0".into());
    }
    if f.len() == 6 {
        f.push("*".into());
    }
    f
}

/// `OnCalendar=` values equivalent to the cron expression (several when cron's "day of
/// month OR day of week" rule applies, since systemd ANDs them).
pub fn systemd_on_calendar(expr: &str, tz: Option<&str>) -> Result<Vec<String>, ScheduleError> {
    parse_cron(expr)?;
    if let Some(tz) = tz {
        parse_tz(tz)?;
    }
    let untranslatable = |reason: String| ScheduleError::Untranslatable {
        expr: expr.to_string(),
        target: "systemd OnCalendar",
        reason,
    };
    let f = seven_fields(expr);
    let two = |v: u32| format!("{v:02}");
    let field = |i: usize, min, max, names: &[(&str, u32)]| {
        expand_field(&f[i], min, max, names)
            .map_err(|e| untranslatable(format!("{} field {e}", FIELDS_7[i])))
    };
    let sec = systemd_list(&field(0, 0, 59, &[])?, 0, 59, two);
    let min = systemd_list(&field(1, 0, 59, &[])?, 0, 59, two);
    let hour = systemd_list(&field(2, 0, 23, &[])?, 0, 23, two);
    let dom_all = matches!(f[3].as_str(), "*" | "?");
    let dom = systemd_list(&field(3, 1, 31, &[])?, 1, 31, two);
    let month = systemd_list(&field(4, 1, 12, &MONTHS)?, 1, 12, two);
    let and_days = f[5].starts_with('+');
    let dow_text = f[5].trim_start_matches('+').to_string();
    let dow_all = matches!(dow_text.as_str(), "*" | "?");
    let dow_vals = expand_field(&dow_text, 0, 7, &WEEKDAYS)
        .map_err(|e| untranslatable(format!("day-of-week field {e}")))?;
    // systemd weeks start on Monday; cron's Sunday is 0 or 7.
    let mut mon_first: Vec<u32> = dow_vals.iter().map(|&d| (d + 6) % 7).collect();
    mon_first.sort_unstable();
    mon_first.dedup();
    const SD_DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let dow = systemd_list(&mon_first, 0, 6, |d| SD_DAYS[d as usize].to_string());
    let year = if f[6] == "*" {
        "*".to_string()
    } else {
        let years = field(6, 1970, 2199, &[])?;
        systemd_list(&years, 1970, 2199, |y| y.to_string())
    };
    let zone = tz.map(|z| format!(" {z}")).unwrap_or_default();
    let line = |dow: &str, dom: &str| {
        let prefix = if dow == "*" {
            String::new()
        } else {
            format!("{dow} ")
        };
        format!("{prefix}{year}-{month}-{dom} {hour}:{min}:{sec}{zone}")
    };
    Ok(if dom_all || dow_all || and_days {
        vec![line(if dow_all { "*" } else { &dow }, &dom)]
    } else {
        vec![line("*", &dom), line(&dow, "*")]
    })
}

/// Quotes one ExecStart= argument: `%` and `$` are systemd specifiers/variables.
fn systemd_quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    if escaped.contains([' ', '\t', '\'', '"', ';']) || escaped.is_empty() {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

fn unit_name(pipeline_file: &Path) -> String {
    let stem = pipeline_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "pipeline".to_string()
    } else {
        format!("pipeline-{clean}")
    }
}

/// A systemd service + timer pair running `pipeline_bin run pipeline_file` at each tick.
/// Paths should be absolute (systemd requires it for ExecStart); the CLI passes
/// `std::env::current_exe()` and the canonicalised pipeline file.
pub fn print_systemd(
    pipeline_file: &Path,
    cron: &str,
    tz: Option<&str>,
    pipeline_bin: &Path,
) -> Result<String, ScheduleError> {
    let calendars = systemd_on_calendar(cron, tz)?;
    let name = unit_name(pipeline_file);
    let file = pipeline_file.display().to_string();
    let workdir = pipeline_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.display().to_string());
    let mut s = String::new();
    s += &format!("# /etc/systemd/system/{name}.service (or ~/.config/systemd/user/)\n");
    s += "[Unit]\n";
    s += &format!("Description=pipeline run {file}\n");
    s += "Wants=network-online.target\nAfter=network-online.target\n\n";
    s += "[Service]\nType=oneshot\n";
    if let Some(dir) = workdir {
        s += &format!("WorkingDirectory={}\n", systemd_quote(&dir));
    }
    s += &format!(
        "ExecStart={} run {}\n",
        systemd_quote(&pipeline_bin.display().to_string()),
        systemd_quote(&file)
    );
    s += "\n";
    s += &format!(
        "# /etc/systemd/system/{name}.timer; enable with: systemctl enable --now {name}.timer\n"
    );
    s += "[Unit]\n";
    s += &format!(
        "Description=Schedule for {name} (cron \"{}\"{})\n\n",
        cron.trim(),
        tz.map(|z| format!(", {z}")).unwrap_or_default()
    );
    s += "[Timer]\n";
    for c in &calendars {
        s += &format!("OnCalendar={c}\n");
    }
    // systemd's default accuracy is one minute; cron users expect the stated time.
    s += "AccuracySec=1s\n";
    // A tick missed while the machine was off runs at the next boot, like anacron.
    s += "Persistent=true\n\n";
    s += "[Install]\nWantedBy=timers.target\n";
    Ok(s)
}

/// Single-quotes for /bin/sh; `%` is a newline to cron, so it is escaped too.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''")).replace('%', "\\%")
}

/// A crontab entry running `pipeline_bin run pipeline_file` at each tick. crontab has no
/// seconds or year field, so expressions using them are refused; a time zone becomes a
/// `CRON_TZ=` line (cronie and systemd-cron honour it, Debian's cron does not).
pub fn print_cron(
    pipeline_file: &Path,
    cron: &str,
    tz: Option<&str>,
    pipeline_bin: &Path,
) -> Result<String, ScheduleError> {
    parse_cron(cron)?;
    if let Some(tz) = tz {
        parse_tz(tz)?;
    }
    let f = seven_fields(cron);
    let untranslatable = |reason: &str| ScheduleError::Untranslatable {
        expr: cron.to_string(),
        target: "crontab",
        reason: reason.to_string(),
    };
    if f[0] != "0" {
        return Err(untranslatable(
            "crontab has no seconds field (use --print-systemd, or pipeline schedule)",
        ));
    }
    if f[6] != "*" {
        return Err(untranslatable("crontab has no year field"));
    }
    let mut s = format!(
        "# pipeline: run {} at cron \"{}\"\n",
        pipeline_file.display(),
        cron.trim()
    );
    if let Some(tz) = tz {
        s += &format!("CRON_TZ={tz}\n");
    }
    let cd = pipeline_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| format!("cd {} && ", sh_quote(&p.display().to_string())))
        .unwrap_or_default();
    s += &format!(
        "{} {cd}{} run {}\n",
        f[1..6].join(" "),
        sh_quote(&pipeline_bin.display().to_string()),
        sh_quote(&pipeline_file.display().to_string())
    );
    Ok(s)
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_calendar_translation() {
        let t = |e: &str, tz: Option<&str>| systemd_on_calendar(e, tz).unwrap();
        assert_eq!(
            t("0 3 * * *", Some("Asia/Tokyo")),
            vec!["*-*-* 03:00:00 Asia/Tokyo"]
        );
        assert_eq!(
            t("*/15 9-17 * * MON-FRI", None),
            vec!["Mon..Fri *-*-* 09..17:00,15,30,45:00"]
        );
        assert_eq!(t("*/20 * * * * *", None), vec!["*-*-* *:*:00,20,40"]);
        assert_eq!(
            t("0 0 1 */3 0,6", None),
            vec![
                "*-01,04,07,10-01 00:00:00",
                "Sat,Sun *-01,04,07,10-* 00:00:00"
            ]
        );
        assert_eq!(t("0 12 * * 7", None), vec!["Sun *-*-* 12:00:00"]);
        assert_eq!(t("@daily", None), vec!["*-*-* 00:00:00"]);
        let e = systemd_on_calendar("0 0 L * *", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot be written for systemd OnCalendar: day-of-month field"),
            "{e}"
        );
    }

    #[test]
    fn systemd_units_run_pipeline_run() {
        let out = print_systemd(
            Path::new("/srv/study/nightly.yaml"),
            "0 3 * * *",
            Some("Asia/Tokyo"),
            Path::new("/usr/local/bin/pipeline"),
        )
        .unwrap();
        let expected = "\
# /etc/systemd/system/pipeline-nightly.service (or ~/.config/systemd/user/)
[Unit]
Description=pipeline run /srv/study/nightly.yaml
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory=/srv/study
ExecStart=/usr/local/bin/pipeline run /srv/study/nightly.yaml

# /etc/systemd/system/pipeline-nightly.timer; enable with: systemctl enable --now pipeline-nightly.timer
[Unit]
Description=Schedule for pipeline-nightly (cron \"0 3 * * *\", Asia/Tokyo)

[Timer]
OnCalendar=*-*-* 03:00:00 Asia/Tokyo
AccuracySec=1s
Persistent=true

[Install]
WantedBy=timers.target
";
        assert_eq!(out, expected);
        let out = print_systemd(
            Path::new("/my data/a%b.yaml"),
            "0 3 * * *",
            None,
            Path::new("/bin/pipeline"),
        )
        .unwrap();
        assert!(
            out.contains("ExecStart=/bin/pipeline run \"/my data/a%%b.yaml\"\n"),
            "{out}"
        );
        assert!(print_systemd(
            Path::new("/a.yaml"),
            "0 3 * *",
            None,
            Path::new("/bin/pipeline")
        )
        .is_err());
    }

    #[test]
    fn crontab_line() {
        let out = print_cron(
            Path::new("/srv/study/nightly.yaml"),
            "0 3 * * *",
            Some("Asia/Tokyo"),
            Path::new("/usr/local/bin/pipeline"),
        )
        .unwrap();
        assert_eq!(
            out,
            "# pipeline: run /srv/study/nightly.yaml at cron \"0 3 * * *\"\nCRON_TZ=Asia/Tokyo\n\
             0 3 * * * cd '/srv/study' && '/usr/local/bin/pipeline' run '/srv/study/nightly.yaml'\n"
        );
        let out = print_cron(
            Path::new("/it's/50%.yaml"),
            "@daily",
            None,
            Path::new("/bin/pipeline"),
        )
        .unwrap();
        assert!(
            out.ends_with(
                "0 0 * * * cd '/it'\\''s' && '/bin/pipeline' run '/it'\\''s/50\\%.yaml'\n"
            ),
            "{out}"
        );
        let e = print_cron(
            Path::new("/a.yaml"),
            "*/10 * * * * *",
            None,
            Path::new("/bin/pipeline"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("crontab has no seconds field"), "{e}");
    }
}
