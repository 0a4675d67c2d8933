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

/// Sorted values as their runs of consecutive numbers, `(first, last)` each.
fn runs_of(values: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some((_, last)) if v == *last + 1 => *last = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// Values as systemd writes them: `*` for all, else a comma list with `a..b` runs.
fn systemd_list(values: &[u32], min: u32, max: u32, fmt: impl Fn(u32) -> String) -> String {
    if values.len() as u64 == (max - min) as u64 + 1 {
        return "*".to_string();
    }
    let mut parts = Vec::new();
    for (a, b) in runs_of(values) {
        if b - a >= 2 {
            parts.push(format!("{}..{}", fmt(a), fmt(b)));
        } else {
            parts.extend((a..=b).map(&fmt));
        }
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

/// What a printed entry runs at each tick: `bin --cache CACHE run FILE --trigger schedule
/// ARGS...`. Every path absolute: cron and systemd start elsewhere, in another environment,
/// and a nightly run must use the cache, overrides and remote of the runs it continues.
pub struct ScheduledRun<'a> {
    pub bin: &'a Path,
    pub file: &'a Path,
    pub cache: &'a Path,
    /// More `run` arguments, one string each (`--set`, `a.b=1`, `-j`, `2`, ...).
    pub args: Vec<String>,
}

impl ScheduledRun<'_> {
    /// The command line, `bin` first. Refused: a string that is not UTF-8 (printing it lossily
    /// would run another file) or holds a control character (a newline starts a new crontab
    /// line or unit directive: a directory name could install a command of its own).
    fn argv(&self) -> Result<Vec<String>, ScheduleError> {
        let text = |what: &str, p: &Path| -> Result<String, ScheduleError> {
            let t = p.to_str().ok_or_else(|| ScheduleError::Unprintable {
                what: what.to_string(),
                value: p.display().to_string(),
                reason: "it is not UTF-8".into(),
            })?;
            printable(what, t)?;
            Ok(t.to_string())
        };
        let bin = text("the pipeline binary", self.bin)?;
        // systemd takes the executable's path without `$` expansion and refuses quotes and
        // backslashes in it (found by a hostile pass): printed as is, it would not start
        if bin.contains(['$', '\\', '"', '\'']) {
            return Err(ScheduleError::Unprintable {
                what: "the pipeline binary".into(),
                value: bin,
                reason: "systemd and cron lines need an executable path without $, quotes or backslashes; install the binary elsewhere".into(),
            });
        }
        let mut v = vec![
            bin,
            "--cache".into(),
            text("the cache directory", self.cache)?,
            "run".into(),
            text("the pipeline file", self.file)?,
            "--trigger".into(),
            "schedule".into(),
        ];
        for a in &self.args {
            printable("the argument", a)?;
            v.push(a.clone());
        }
        Ok(v)
    }

    fn workdir(&self) -> Option<String> {
        self.file.parent().filter(|p| !p.as_os_str().is_empty()).and_then(|p| p.to_str()).map(str::to_string)
    }
}

/// Everything printed into a crontab or unit is refused with a control character in it: a
/// newline would start a new crontab line or unit directive (found by hostile passes: a
/// directory name installed a command of its own, a newline in `--cron` added a line).
fn printable(what: &str, v: &str) -> Result<(), ScheduleError> {
    if v.chars().any(char::is_control) {
        return Err(ScheduleError::Unprintable {
            what: what.into(),
            value: v.to_string(),
            reason: "it holds a control character (a newline would start a new line of the crontab or unit); rename it".into(),
        });
    }
    Ok(())
}

/// The cron expression and time zone go into the printed files as text too; and an
/// expression that never fires (Feb 30, a year gone) is refused as `pipeline schedule`
/// refuses it (found by a hostile pass: a timer or crontab line that never runs was printed).
fn check_expression(cron: &str, tz: Option<&str>) -> Result<(), ScheduleError> {
    printable("the cron expression", cron)?;
    tz.map_or(Ok(()), |tz| printable("the time zone", tz))?;
    let sched = super::cron::CronSchedule::parse(cron, tz)?;
    let now = chrono::Utc::now();
    if sched.next_after(now).is_none() {
        return Err(ScheduleError::NoNextTick { expr: cron.trim().to_string(), after: now.to_rfc3339() });
    }
    Ok(())
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
    // The file's directory is part of the name: `a/p.json` and `b/p.json` were both
    // `pipeline-p`, and installing the second overwrote the first's schedule (a hostile pass).
    let dir = pipeline_file.parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = &blake3::hash(dir.as_bytes()).to_hex()[..8];
    if clean.is_empty() {
        format!("pipeline-{tag}")
    } else {
        format!("pipeline-{clean}-{tag}")
    }
}

/// A systemd service + timer pair running the command at each tick. Paths should be
/// absolute (systemd requires it for ExecStart); the CLI passes `std::env::current_exe()`,
/// the canonicalised pipeline file and the absolute cache directory.
pub fn print_systemd(run: &ScheduledRun<'_>, cron: &str, tz: Option<&str>) -> Result<String, ScheduleError> {
    check_expression(cron, tz)?;
    let calendars = systemd_on_calendar(cron, tz)?;
    let argv = run.argv()?;
    let name = unit_name(run.file);
    let mut s = String::new();
    s += &format!("# /etc/systemd/system/{name}.service (or ~/.config/systemd/user/)\n");
    s += "[Unit]\n";
    // `%` is a specifier in every value, `Description=` and `WorkingDirectory=` included.
    s += &format!("Description=pipeline run {}\n", argv[4].replace('%', "%%"));
    s += "Wants=network-online.target\nAfter=network-online.target\n\n";
    s += "[Service]\nType=oneshot\n";
    // A backslash ends a unit line's value with a continuation (`Description=` or
    // `WorkingDirectory=` swallowed the next directive: found by a hostile pass).
    if argv[4].contains('\\') {
        return Err(ScheduleError::Unprintable {
            what: "the pipeline file".into(),
            value: argv[4].clone(),
            reason: "a backslash in a unit's Description= or WorkingDirectory= continues the line; rename it".into(),
        });
    }
    if let Some(dir) = run.workdir() {
        // Taken verbatim (no quotes, no `$`), only stripped of surrounding whitespace.
        if dir.trim() != dir {
            return Err(ScheduleError::Unprintable {
                what: "the pipeline's directory".into(),
                value: dir,
                reason: "it ends or begins with whitespace, which systemd strips from WorkingDirectory=".into(),
            });
        }
        s += &format!("WorkingDirectory={}\n", dir.replace('%', "%%"));
    }
    let exec: Vec<String> = argv.iter().map(|a| systemd_quote(a)).collect();
    s += &format!("ExecStart={}\n", exec.join(" "));
    s += "\n";
    s += &format!(
        "# /etc/systemd/system/{name}.timer; enable with: systemctl enable --now {name}.timer\n"
    );
    s += "[Unit]\n";
    s += &format!(
        "Description=Schedule for {name} (cron \"{}\"{})\n\n",
        cron.trim().replace('%', "%%"),
        tz.map(|z| format!(", {}", z.replace('%', "%%"))).unwrap_or_default()
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

/// Quotes for /bin/sh as cron passes it on: cron turns an unescaped `%` into a newline and
/// `\%` into `%`, so each `%` is written as `\%` between single-quoted parts. It then always
/// follows a closing quote, never a backslash of the string, which would escape cron's.
fn sh_quote(s: &str) -> String {
    s.split('%')
        .map(|part| format!("'{}'", part.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join("\\%")
}

/// Values as crontab writes them: a comma list with `a-b` runs (numbers only: names,
/// ranges of names, `L`, `W`, `#` and `?` are not in every cron).
fn cron_list(values: &[u32]) -> String {
    runs_of(values).into_iter().map(|(a, b)| if b > a { format!("{a}-{b}") } else { a.to_string() }).collect::<Vec<_>>().join(",")
}

/// A crontab entry running the command at each tick. crontab has no seconds or year field,
/// so expressions using them are refused; the fields are written out as numbers, which
/// every cron reads the same way; a time zone becomes a `CRON_TZ=` line (cronie and
/// systemd-cron honour it, Debian's cron does not).
pub fn print_cron(run: &ScheduledRun<'_>, cron: &str, tz: Option<&str>) -> Result<String, ScheduleError> {
    check_expression(cron, tz)?;
    parse_cron(cron)?;
    if let Some(tz) = tz {
        parse_tz(tz)?;
    }
    let argv = run.argv()?;
    let f = seven_fields(cron);
    let untranslatable = |reason: String| ScheduleError::Untranslatable {
        expr: cron.to_string(),
        target: "crontab",
        reason,
    };
    let field = |i: usize, min, max, names: &[(&str, u32)]| {
        expand_field(&f[i], min, max, names).map_err(|e| untranslatable(format!("{} field {e}", FIELDS_7[i])))
    };
    if field(0, 0, 59, &[])? != [0] {
        return Err(untranslatable("crontab has no seconds field (use --print-systemd, or pipeline schedule)".into()));
    }
    if f[6] != "*" {
        return Err(untranslatable("crontab has no year field".into()));
    }
    // cron's day rule: with both day fields restricted (not `*`) a day matching either runs.
    let and_days = f[5].starts_with('+');
    let dow_text = f[5].trim_start_matches('+').to_string();
    let dom_all = matches!(f[3].as_str(), "*" | "?");
    let dow_all = matches!(dow_text.as_str(), "*" | "?");
    if and_days && !dom_all && !dow_all {
        return Err(untranslatable("crontab runs on a day matching either day field, never only on days matching both (`+`)".into()));
    }
    let mut dow = expand_field(&dow_text, 0, 7, &WEEKDAYS).map_err(|e| untranslatable(format!("day-of-week field {e}")))?;
    for d in dow.iter_mut() {
        *d %= 7;
    }
    dow.sort_unstable();
    dow.dedup();
    let fields = [
        cron_list(&field(1, 0, 59, &[])?),
        cron_list(&field(2, 0, 23, &[])?),
        if dom_all { "*".into() } else { cron_list(&field(3, 1, 31, &[])?) },
        cron_list(&field(4, 1, 12, &MONTHS)?),
        if dow_all { "*".into() } else { cron_list(&dow) },
    ];
    // A field of every value reads best as `*` (the day fields keep what was written: `*`
    // there changes which days run).
    let fields: Vec<String> = fields
        .iter()
        .enumerate()
        .map(|(i, v)| match i {
            0 if *v == "0-59" => "*".into(),
            1 if *v == "0-23" => "*".into(),
            3 if *v == "1-12" => "*".into(),
            _ => v.clone(),
        })
        .collect();
    let mut s = format!("# pipeline: run {} at cron \"{}\"\n", argv[4], cron.trim());
    if let Some(tz) = tz {
        s += "# CRON_TZ is honoured by cronie and systemd-cron; Debian's cron ignores it (its daemon's zone applies)\n";
        s += &format!("CRON_TZ={tz}\n");
    }
    let cd = run.workdir().map(|d| format!("cd {} && ", sh_quote(&d))).unwrap_or_default();
    let cmd: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
    s += &format!("{} {cd}{}\n", fields.join(" "), cmd.join(" "));
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

    fn run<'a>(file: &'a str, bin: &'a str, args: &[&str]) -> ScheduledRun<'a> {
        ScheduledRun {
            bin: Path::new(bin),
            file: Path::new(file),
            cache: Path::new("/srv/cache"),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn units_of_two_directories_differ_and_a_schedule_that_never_fires_is_refused() {
        let a = print_systemd(&run("/srv/a/p.json", "/bin/pipeline", &[]), "0 3 * * *", None).unwrap();
        let b = print_systemd(&run("/srv/b/p.json", "/bin/pipeline", &[]), "0 3 * * *", None).unwrap();
        let name = |u: &str| u.lines().next().unwrap().to_string();
        assert_ne!(name(&a), name(&b));
        for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 0 1 1 * 2000"] {
            let e = print_systemd(&run("/srv/a/p.json", "/bin/pipeline", &[]), never, None).unwrap_err().to_string();
            assert!(e.contains("has no tick"), "{never}: {e}");
            if never.split(' ').count() == 5 {
                let e = print_cron(&run("/srv/a/p.json", "/bin/pipeline", &[]), never, None).unwrap_err().to_string();
                assert!(e.contains("has no tick"), "{never}: {e}");
            }
        }
    }

    #[test]
    fn systemd_units_run_pipeline_run() {
        let out = print_systemd(&run("/srv/study/nightly.yaml", "/usr/local/bin/pipeline", &[]), "0 3 * * *", Some("Asia/Tokyo")).unwrap();
        let expected = "\
# /etc/systemd/system/pipeline-nightly-8211c430.service (or ~/.config/systemd/user/)
[Unit]
Description=pipeline run /srv/study/nightly.yaml
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
WorkingDirectory=/srv/study
ExecStart=/usr/local/bin/pipeline --cache /srv/cache run /srv/study/nightly.yaml --trigger schedule

# /etc/systemd/system/pipeline-nightly-8211c430.timer; enable with: systemctl enable --now pipeline-nightly-8211c430.timer
[Unit]
Description=Schedule for pipeline-nightly-8211c430 (cron \"0 3 * * *\", Asia/Tokyo)

[Timer]
OnCalendar=*-*-* 03:00:00 Asia/Tokyo
AccuracySec=1s
Persistent=true

[Install]
WantedBy=timers.target
";
        assert_eq!(out, expected);
        // found by a hostile pass: WorkingDirectory= takes no quotes (a quoted path is "not
        // absolute" and the unit never starts) and `%` is a specifier there and in Description=
        let out = print_systemd(&run("/my data/a%b$c/x.yaml", "/bin/pipeline", &["--set", "a.b=it's 5%"]), "0 3 * * *", None).unwrap();
        assert!(out.contains("\nWorkingDirectory=/my data/a%%b$c\n"), "{out}");
        assert!(out.contains("\nDescription=pipeline run /my data/a%%b$c/x.yaml\n"), "{out}");
        assert!(
            out.contains("ExecStart=/bin/pipeline --cache /srv/cache run \"/my data/a%%b$$c/x.yaml\" --trigger schedule --set \"a.b=it's 5%%\"\n"),
            "{out}"
        );
        assert!(print_systemd(&run("/a.yaml", "/bin/pipeline", &[]), "0 3 * *", None).is_err());
    }

    #[test]
    fn a_control_character_is_never_printed_into_a_crontab_or_unit() {
        // found by a hostile pass: a directory named "a\nExecStartPre=/evil" added a directive
        // to the unit, and a file named "x\n* * * * * touch PWNED" a crontab line
        for (file, what) in [
            ("/tmp/a\nExecStartPre=/evil/x.json", "the pipeline file"),
            ("/tmp/x\n* * * * * touch PWNED\n.json", "the pipeline file"),
            ("/tmp/tab\there.json", "the pipeline file"),
        ] {
            for e in [
                print_systemd(&run(file, "/bin/pipeline", &[]), "0 3 * * *", None).unwrap_err().to_string(),
                print_cron(&run(file, "/bin/pipeline", &[]), "0 3 * * *", None).unwrap_err().to_string(),
            ] {
                assert!(e.contains(what) && e.contains("control character"), "{e}");
            }
        }
        let e = print_cron(&run("/a.json", "/bin/pipeline", &["--set", "a.b=1\n* * * * * evil"]), "0 3 * * *", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the argument") && e.contains("control character"), "{e}");
        let e = print_systemd(&run("/a /x.json", "/bin/pipeline", &[]), "0 3 * * *", None).unwrap_err().to_string();
        assert!(e.contains("whitespace"), "{e}");
        // second hostile pass: a newline in --cron, a backslash continuing a unit line, and a
        // binary path systemd will not execute
        let e = print_cron(&run("/a.json", "/bin/pipeline", &[]), "0\n* * * * * *", None).unwrap_err().to_string();
        assert!(e.contains("the cron expression") && e.contains("control character"), "{e}");
        let e = print_systemd(&run("/d/tail\\/p.json", "/bin/pipeline", &[]), "0 3 * * *", None).unwrap_err().to_string();
        assert!(e.contains("backslash"), "{e}");
        for bin in ["/a$b/pipeline", "/a\"b/pipeline", "/a\\b/pipeline"] {
            let e = print_systemd(&run("/a.json", bin, &[]), "0 3 * * *", None).unwrap_err().to_string();
            assert!(e.contains("the pipeline binary"), "{bin}: {e}");
        }
    }

    #[test]
    fn crontab_line() {
        let out = print_cron(&run("/srv/study/nightly.yaml", "/usr/local/bin/pipeline", &["-j", "2"]), "0 3 * * *", Some("Asia/Tokyo")).unwrap();
        assert_eq!(
            out,
            "# pipeline: run /srv/study/nightly.yaml at cron \"0 3 * * *\"\n\
             # CRON_TZ is honoured by cronie and systemd-cron; Debian's cron ignores it (its daemon's zone applies)\nCRON_TZ=Asia/Tokyo\n\
             0 3 * * * cd '/srv/study' && '/usr/local/bin/pipeline' '--cache' '/srv/cache' 'run' '/srv/study/nightly.yaml' '--trigger' 'schedule' '-j' '2'\n"
        );
        let out = print_cron(&run("/it's/50%.yaml", "/bin/pipeline", &[]), "@daily", None).unwrap();
        assert!(
            out.ends_with("0 0 * * * cd '/it'\\''s' && '/bin/pipeline' '--cache' '/srv/cache' 'run' '/it'\\''s/50'\\%'.yaml' '--trigger' 'schedule'\n"),
            "{out}"
        );
        let e = print_cron(&run("/a.yaml", "/bin/pipeline", &[]), "*/10 * * * * *", None).unwrap_err().to_string();
        assert!(e.contains("crontab has no seconds field"), "{e}");
    }

    #[test]
    fn crontab_fields_are_written_as_numbers_every_cron_reads_alike() {
        let line = |e: &str| {
            let out = print_cron(&run("/a.yaml", "/bin/pipeline", &[]), e, None).map_err(|e| e.to_string())?;
            Ok::<String, String>(out.lines().last().unwrap().split(" cd ").next().unwrap().to_string())
        };
        assert_eq!(line("0 9 * JAN-MAR MON-FRI").unwrap(), "0 9 * 1-3 1-5");
        assert_eq!(line("*/15 9-17 * * *").unwrap(), "0,15,30,45 9-17 * * *");
        assert_eq!(line("0 12 * * 7").unwrap(), "0 12 * * 0");
        assert_eq!(line("0 0 ? * SUN,SAT").unwrap(), "0 0 * * 0,6");
        assert_eq!(line("0 0 1 */3 *").unwrap(), "0 0 1 1,4,7,10 *");
        // found by a hostile pass: these were printed as given, and cron rejects or misreads them
        for bad in ["0 3 L * *", "0 3 15W * *", "0 3 * * 1#2", "0 3 1 * +MON"] {
            let e = line(bad).unwrap_err();
            assert!(e.contains("cannot be written for crontab"), "{bad}: {e}");
        }
    }

    #[test]
    fn crontab_percent_after_a_backslash_stays_escaped() {
        // found by a hostile pass: `x\%y` was printed as `'x\\%y'`: cron read `\\` as an escaped
        // backslash and ended the command at the `%`
        let out = print_cron(&run("/d/x\\%y.json", "/bin/pipeline", &[]), "0 3 * * *", None).unwrap();
        assert!(out.contains(" 'run' '/d/x\\'\\%'y.json' "), "{out}");
        // cron's own pass over the command: `\%` -> `%`, any other `%` ends it
        let cmd = out.lines().last().unwrap();
        let (mut after_cron, mut esc) = (String::new(), false);
        for c in cmd.chars() {
            if esc {
                if c == '%' {
                    after_cron.pop();
                }
                esc = false;
                after_cron.push(c);
                continue;
            }
            assert!(c != '%', "an unescaped % in {cmd}");
            esc = c == '\\';
            after_cron.push(c);
        }
        assert!(after_cron.contains("'/d/x\\'%'y.json'"), "{after_cron}");
    }
}
