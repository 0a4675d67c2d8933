//! Cron expressions (croner's syntax) and time zones: parsing with errors that name the
//! field, and the next tick in a zone.

use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Local, Utc};
use croner::Cron;

use super::ScheduleError;

#[derive(Debug, Clone)]
enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    zone: Zone,
}

/// Every field a 7-field expression has; 6 fields drop `year`, 5 also `second`.
pub(super) const FIELDS_7: [&str; 7] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
    "year",
];
const NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

fn field_names(n: usize) -> Option<&'static [&'static str]> {
    match n {
        5 => Some(&FIELDS_7[1..6]),
        6 => Some(&FIELDS_7[..6]),
        7 => Some(&FIELDS_7),
        _ => None,
    }
}

/// Parses a cron expression with croner; errors name the offending field.
pub fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    let err = |field, message: String| ScheduleError::Cron {
        expr: expr.to_string(),
        field,
        message,
    };
    let trimmed = expr.trim();
    if trimmed.starts_with('@') && !NICKNAMES.iter().any(|n| n.eq_ignore_ascii_case(trimmed)) {
        return Err(err(
            None,
            format!("unknown nickname (known: {})", NICKNAMES.join(", ")),
        ));
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if !trimmed.starts_with('@') && field_names(fields.len()).is_none() {
        return Err(err(
            None,
            format!(
                "{} fields; expected 5 (minute hour day-of-month month day-of-week), \
                 6 (a seconds field first) or 7 (and a year last)",
                fields.len()
            ),
        ));
    }
    match Cron::from_str(trimmed) {
        Ok(c) => Ok(c),
        Err(e) => {
            // croner's messages do not say which field failed: re-parse each field alone
            // (all others "*") to single it out.
            let names = field_names(fields.len()).unwrap_or(&[]);
            for (i, name) in names.iter().enumerate() {
                let alone: Vec<&str> = (0..fields.len())
                    .map(|j| if j == i { fields[i] } else { "*" })
                    .collect();
                if let Err(fe) = Cron::from_str(&alone.join(" ")) {
                    return Err(err(Some(name), format!("\"{}\": {fe}", fields[i])));
                }
            }
            Err(err(None, e.to_string()))
        }
    }
}

/// Parses an IANA time zone name, suggesting the closest known name on a typo.
pub fn parse_tz(name: &str) -> Result<chrono_tz::Tz, ScheduleError> {
    chrono_tz::Tz::from_str(name).map_err(|_| {
        let suggestion = chrono_tz::TZ_VARIANTS
            .iter()
            .map(|tz| {
                (
                    strsim::jaro_winkler(&name.to_lowercase(), &tz.name().to_lowercase()),
                    tz.name(),
                )
            })
            .filter(|(score, _)| *score > 0.85)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, n)| n.to_string());
        ScheduleError::UnknownTz {
            name: name.to_string(),
            suggestion,
        }
    })
}

impl CronSchedule {
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expr)?;
        let zone = match tz {
            Some(name) => Zone::Named(parse_tz(name)?),
            None => Zone::Local,
        };
        Ok(Self {
            expr: expr.trim().to_string(),
            cron,
            zone,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first tick strictly after `after`, in the schedule's zone; `None` when the
    /// expression never fires again (e.g. a year field in the past).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<FixedOffset>> {
        // Any croner error here means "no such time" (its search limit, invalid dates).
        match &self.zone {
            Zone::Local => self
                .cron
                .find_next_occurrence(&after.with_timezone(&Local), false)
                .ok()
                .map(|t| t.fixed_offset()),
            Zone::Named(tz) => self
                .cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.fixed_offset()),
        }
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse_cron("0 25 * * *").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid cron expression \"0 25 * * *\": hour field: \"25\""),
            "{e}"
        );
        let e = parse_cron("0 3 * * FOO").unwrap_err().to_string();
        assert!(e.contains("day-of-week field"), "{e}");
        let e = parse_cron("61 * * * * *").unwrap_err().to_string();
        assert!(e.contains("second field: \"61\""), "{e}");
        let e = parse_cron("* * * 13 *").unwrap_err().to_string();
        assert!(e.contains("month field"), "{e}");
        let e = parse_cron("0 3 * *").unwrap_err().to_string();
        assert!(e.contains("4 fields; expected 5"), "{e}");
        let e = parse_cron("@nightly").unwrap_err().to_string();
        assert!(e.contains("unknown nickname"), "{e}");
        assert!(parse_cron("").is_err());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
    }

    #[test]
    fn tz_errors_suggest_a_name() {
        let e = parse_tz("Asia/Tokio").unwrap_err().to_string();
        assert!(e.contains("did you mean Asia/Tokyo?"), "{e}");
        assert!(parse_tz("Europe/Paris").is_ok());
    }

    #[test]
    fn next_tick_in_a_time_zone() {
        let s = CronSchedule::parse("0 3 * * *", Some("Asia/Tokyo")).unwrap();
        // 00:00Z is 09:00 in Tokyo, so the next 03:00 JST is the next day, 18:00Z today.
        let next = s.next_after(utc("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-01-02T03:00:00+09:00");
        assert_eq!(next.with_timezone(&Utc), utc("2026-01-01T18:00:00Z"));
        // Across a DST change: Paris moves to UTC+2 on 2026-03-29.
        let s = CronSchedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        let next = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-03-29T03:00:00+02:00");
        // Strictly after: a tick exactly at `after` is not repeated.
        let s = CronSchedule::parse("*/10 * * * * *", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:10Z"))
                .unwrap()
                .with_timezone(&Utc),
            utc("2026-01-01T00:00:20Z")
        );
        // A year in the past never fires again.
        let s = CronSchedule::parse("0 0 0 1 1 * 2020", Some("UTC")).unwrap();
        assert!(s.next_after(utc("2026-01-01T00:00:00Z")).is_none());
    }
}
