//! Time intervals (a Tocsin extension of the ANS document, after Alertmanager's
//! `time_intervals`): named, recurring windows of wall-clock time in an IANA time zone, which a
//! subscription names in `muteTimeIntervals` or `activeTimeIntervals`.
//!
//! Data flows as: the configuration document carries [`TimeInterval`]s as written (so an export
//! shows them as imported); [`TimeInterval::compile`] checks one and turns it into a
//! [`CompiledTimeInterval`] of numeric ranges and a resolved time zone, once per configuration
//! change; the router asks [`CompiledTimeInterval::contains`] about each event's acceptance time.
//!
//! Semantics follow Alertmanager: within one window the fields are ANDed and the elements of a
//! field ORed, an omitted field matches everything, and an interval contains an instant when any
//! of its windows does. Times compare wall-clock `HH:MM` (start inclusive, end exclusive, `24:00`
//! allowed as an end), so a window keeps its local meaning across DST changes.

use crate::config::ConfigurationError;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// A named set of windows, as written in the configuration's `timeIntervals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeInterval {
    pub name: String,
    #[serde(default)]
    pub intervals: Vec<TimeWindow>,
}

/// One recurring window; every field is optional and an omitted one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub times: Vec<TimeRange>,
    /// `monday`, `monday:friday` (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weekdays: Vec<String>,
    /// `1`, `1:5`, `-3:-1` (`-1` is the last day of the month).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days_of_month: Vec<String>,
    /// `march`, `1:3`, `may:august`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub months: Vec<String>,
    /// `2026`, `2026:2028`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub years: Vec<String>,
    /// An IANA time zone, `UTC` or `Local`; UTC when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Wall-clock `HH:MM` bounds: the start is inside, the end is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeRange {
    pub start_time: String,
    pub end_time: String,
}

/// A checked [`TimeInterval`], ready to be asked about instants.
#[derive(Debug, Clone)]
pub struct CompiledTimeInterval {
    pub name: String,
    windows: Vec<CompiledWindow>,
}

/// Inclusive ranges, except `times` in minutes after midnight whose end is exclusive. An empty
/// list matches everything.
#[derive(Debug, Clone)]
struct CompiledWindow {
    times: Vec<(u16, u16)>,
    weekdays: Vec<(i8, i8)>,
    days_of_month: Vec<(i8, i8)>,
    months: Vec<(i8, i8)>,
    years: Vec<(i16, i16)>,
    zone: TimeZone,
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Splits `a:b` (or `a`, meaning `a:a`) and parses both ends with `one`.
fn range<T: Copy>(text: &str, one: impl Fn(&str) -> Option<T>) -> Option<(T, T)> {
    let (start, end) = text.split_once(':').unwrap_or((text, text));
    Some((one(start.trim())?, one(end.trim())?))
}

fn minutes(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    if hours.len() != 2 || minutes.len() != 2 {
        return None;
    }
    let hours: u16 = hours.parse().ok()?;
    let minutes: u16 = minutes.parse().ok()?;
    match (hours, minutes) {
        (24, 0) => Some(24 * 60),
        (0..=23, 0..=59) => Some(hours * 60 + minutes),
        _ => None,
    }
}

fn named_or_number(text: &str, names: &[&str], first: i8) -> Option<i8> {
    let lower = text.to_ascii_lowercase();
    if let Some(index) = names.iter().position(|n| *n == lower) {
        return Some(index as i8 + first);
    }
    let number: i8 = text.parse().ok()?;
    (first..first + names.len() as i8)
        .contains(&number)
        .then_some(number)
}

impl TimeInterval {
    /// Checks the interval and resolves its time zones; the error names the offending field.
    pub fn compile(&self) -> Result<CompiledTimeInterval, ConfigurationError> {
        let invalid = |field: String, problem: String| {
            ConfigurationError::invalid("time interval", &self.name, field, problem)
        };
        crate::config::check_name("time interval", &self.name)?;
        let mut windows = Vec::with_capacity(self.intervals.len());
        for (w, window) in self.intervals.iter().enumerate() {
            let at = |field: &str, i: usize| format!("intervals[{w}].{field}[{i}]");
            let mut times = Vec::new();
            for (i, time) in window.times.iter().enumerate() {
                let start = minutes(&time.start_time).filter(|m| *m < 24 * 60);
                let start = start.ok_or_else(|| {
                    invalid(
                        format!("{}.startTime", at("times", i)),
                        format!("`{}` is not a time HH:MM", time.start_time),
                    )
                })?;
                let end = minutes(&time.end_time).ok_or_else(|| {
                    invalid(
                        format!("{}.endTime", at("times", i)),
                        format!("`{}` is not a time HH:MM (or 24:00)", time.end_time),
                    )
                })?;
                if end <= start {
                    return Err(invalid(
                        format!("{}.endTime", at("times", i)),
                        format!("`{}` is not after `{}`", time.end_time, time.start_time),
                    ));
                }
                times.push((start, end));
            }
            let mut weekdays = Vec::new();
            for (i, text) in window.weekdays.iter().enumerate() {
                let parsed = range(text, |t| named_or_number(t, &WEEKDAYS, 0))
                    .filter(|(a, b)| a <= b)
                    .ok_or_else(|| {
                        invalid(
                            at("weekdays", i),
                            format!(
                                "`{text}` is not a weekday or a range of them, sunday to saturday"
                            ),
                        )
                    })?;
                weekdays.push(parsed);
            }
            let mut days_of_month = Vec::new();
            for (i, text) in window.days_of_month.iter().enumerate() {
                let parsed = range(text, |t| {
                    t.parse::<i8>()
                        .ok()
                        .filter(|d| *d != 0 && (-31..=31).contains(d))
                })
                .filter(|&(a, b)| match (a > 0, b > 0) {
                    (true, true) | (false, false) => a <= b,
                    // A positive start and a negative end: refused when even the longest
                    // reading, in a 28-day month, would be empty.
                    (true, false) => a <= 28 + 1 + b,
                    (false, true) => false,
                })
                .ok_or_else(|| {
                    invalid(
                        at("daysOfMonth", i),
                        format!("`{text}` is not a day of month (1 to 31, or -31 to -1 from the end) or a range of them"),
                    )
                })?;
                days_of_month.push(parsed);
            }
            let mut months = Vec::new();
            for (i, text) in window.months.iter().enumerate() {
                let parsed = range(text, |t| named_or_number(t, &MONTHS, 1))
                    .filter(|(a, b)| a <= b)
                    .ok_or_else(|| {
                        invalid(
                            at("months", i),
                            format!("`{text}` is not a month or a range of them"),
                        )
                    })?;
                months.push(parsed);
            }
            let mut years = Vec::new();
            for (i, text) in window.years.iter().enumerate() {
                let parsed = range(text, |t| {
                    t.parse::<i16>().ok().filter(|y| (1..=9999).contains(y))
                })
                .filter(|(a, b)| a <= b)
                .ok_or_else(|| {
                    invalid(
                        at("years", i),
                        format!("`{text}` is not a year or a range of them"),
                    )
                })?;
                years.push(parsed);
            }
            let zone = match window.location.as_deref() {
                None | Some("UTC") => TimeZone::UTC,
                Some("Local") => TimeZone::system(),
                Some(name) => TimeZone::get(name).map_err(|_| {
                    invalid(
                        format!("intervals[{w}].location"),
                        format!("`{name}` is not a time zone of the IANA database"),
                    )
                })?,
            };
            windows.push(CompiledWindow {
                times,
                weekdays,
                days_of_month,
                months,
                years,
                zone,
            });
        }
        Ok(CompiledTimeInterval {
            name: self.name.clone(),
            windows,
        })
    }
}

impl CompiledTimeInterval {
    /// Whether the instant, in milliseconds since the epoch, falls in any of the windows.
    pub fn contains(&self, epoch_ms: i64) -> bool {
        let Ok(instant) = Timestamp::from_millisecond(epoch_ms) else {
            return false;
        };
        self.windows.iter().any(|w| w.contains(instant))
    }
}

impl CompiledWindow {
    fn contains(&self, instant: Timestamp) -> bool {
        fn any<T: PartialOrd + Copy>(ranges: &[(T, T)], value: T) -> bool {
            ranges.is_empty() || ranges.iter().any(|&(a, b)| a <= value && value <= b)
        }
        let local = instant.to_zoned(self.zone.clone());
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let days = local.days_in_month();
        // Negative days count from the month's end; a range reaching past it is clamped.
        let day_of_month = |d: i8| if d < 0 { days + 1 + d } else { d.min(days) };
        (self.times.is_empty() || self.times.iter().any(|&(a, b)| a <= minute && minute < b))
            && any(&self.weekdays, local.weekday().to_sunday_zero_offset())
            && (self.days_of_month.is_empty()
                || self.days_of_month.iter().any(|&(a, b)| {
                    (day_of_month(a).max(1)..=day_of_month(b)).contains(&local.day())
                }))
            && any(&self.months, local.month())
            && any(&self.years, local.year())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(window: serde_json::Value) -> CompiledTimeInterval {
        try_interval(window).unwrap()
    }

    fn try_interval(window: serde_json::Value) -> Result<CompiledTimeInterval, ConfigurationError> {
        let interval: TimeInterval =
            serde_json::from_value(serde_json::json!({"name": "w", "intervals": [window]}))
                .unwrap();
        interval.compile()
    }

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn times_are_start_inclusive_end_exclusive_and_24_00_ends_the_day() {
        let evening =
            interval(serde_json::json!({"times": [{"startTime": "17:00", "endTime": "24:00"}]}));
        assert!(!evening.contains(at("2026-06-01T16:59:59Z")));
        assert!(evening.contains(at("2026-06-01T17:00:00Z")));
        assert!(evening.contains(at("2026-06-01T23:59:59Z")));
        assert!(!evening.contains(at("2026-06-02T00:00:00Z")));
        let morning =
            interval(serde_json::json!({"times": [{"startTime": "08:00", "endTime": "09:30"}]}));
        assert!(morning.contains(at("2026-06-01T09:29:00Z")));
        assert!(!morning.contains(at("2026-06-01T09:30:00Z")));
    }

    #[test]
    fn weekdays_months_and_years_are_inclusive_ranges_in_the_zone() {
        let office = interval(serde_json::json!({
            "weekdays": ["Monday:friday"],
            "months": ["may:august", "12"],
            "years": ["2026:2027"],
            "location": "Europe/Berlin",
        }));
        // Friday 2026-06-05 23:30 UTC is already Saturday in Berlin.
        assert!(office.contains(at("2026-06-05T21:30:00Z")));
        assert!(!office.contains(at("2026-06-05T23:30:00Z")));
        // Sunday 2026-06-07 22:30 UTC is Monday in Berlin.
        assert!(office.contains(at("2026-06-07T22:30:00Z")));
        assert!(office.contains(at("2026-12-01T12:00:00Z")));
        assert!(!office.contains(at("2026-09-01T12:00:00Z")));
        assert!(!office.contains(at("2028-06-05T12:00:00Z")));
    }

    #[test]
    fn negative_days_count_from_the_end_of_each_month() {
        let last_three = interval(serde_json::json!({"daysOfMonth": ["-3:-1"]}));
        assert!(!last_three.contains(at("2026-02-25T12:00:00Z")));
        assert!(last_three.contains(at("2026-02-26T12:00:00Z")));
        assert!(last_three.contains(at("2026-02-28T12:00:00Z")));
        assert!(!last_three.contains(at("2026-01-28T12:00:00Z")));
        assert!(last_three.contains(at("2026-01-29T12:00:00Z")));
        // 2028 is a leap year: February has a 29th.
        assert!(!last_three.contains(at("2028-02-26T12:00:00Z")));
        assert!(last_three.contains(at("2028-02-29T12:00:00Z")));
        let from_tenth = interval(serde_json::json!({"daysOfMonth": ["10:-1", "1"]}));
        assert!(from_tenth.contains(at("2026-04-30T12:00:00Z")));
        assert!(from_tenth.contains(at("2026-04-01T12:00:00Z")));
        assert!(!from_tenth.contains(at("2026-04-09T12:00:00Z")));
        let to_31st = interval(serde_json::json!({"daysOfMonth": ["29:31"]}));
        assert!(to_31st.contains(at("2026-04-30T12:00:00Z")));
    }

    #[test]
    fn wall_clock_times_hold_across_berlin_dst_changes() {
        let night = interval(serde_json::json!({
            "times": [{"startTime": "01:00", "endTime": "04:00"}],
            "location": "Europe/Berlin",
        }));
        // Spring forward, 2026-03-29: 02:00 CET becomes 03:00 CEST, so 01:00–04:00 local is
        // 00:00Z–02:00Z, two hours.
        assert!(!night.contains(at("2026-03-28T23:59:00Z")));
        assert!(night.contains(at("2026-03-29T00:00:00Z")));
        assert!(night.contains(at("2026-03-29T01:59:00Z")));
        assert!(!night.contains(at("2026-03-29T02:00:00Z")));
        // Fall back, 2026-10-25: 03:00 CEST becomes 02:00 CET, so 01:00–04:00 local is
        // 23:00Z–03:00Z, four hours.
        assert!(!night.contains(at("2026-10-24T22:59:00Z")));
        assert!(night.contains(at("2026-10-24T23:00:00Z")));
        assert!(night.contains(at("2026-10-25T02:59:00Z")));
        assert!(!night.contains(at("2026-10-25T03:00:00Z")));
        // The day before each change, the same window is three hours long at +01:00 or +02:00.
        assert!(!night.contains(at("2026-03-28T03:00:00Z")));
        assert!(night.contains(at("2026-03-28T02:59:00Z")));
        assert!(!night.contains(at("2026-10-24T02:00:00Z")));
        assert!(night.contains(at("2026-10-24T01:59:00Z")));
    }

    #[test]
    fn bad_fields_are_named() {
        let field_of = |window: serde_json::Value| match try_interval(window).unwrap_err() {
            ConfigurationError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        let time = |start: &str, end: &str| serde_json::json!({"times": [{"startTime": start, "endTime": end}]});
        assert_eq!(
            field_of(time("9:00", "10:00")),
            "intervals[0].times[0].startTime"
        );
        assert_eq!(
            field_of(time("24:00", "24:00")),
            "intervals[0].times[0].startTime"
        );
        assert_eq!(
            field_of(time("09:00", "24:01")),
            "intervals[0].times[0].endTime"
        );
        assert_eq!(
            field_of(time("10:00", "10:00")),
            "intervals[0].times[0].endTime"
        );
        assert_eq!(
            field_of(serde_json::json!({"weekdays": ["monday", "funday"]})),
            "intervals[0].weekdays[1]"
        );
        assert_eq!(
            field_of(serde_json::json!({"weekdays": ["friday:monday"]})),
            "intervals[0].weekdays[0]"
        );
        assert_eq!(
            field_of(serde_json::json!({"months": ["smarch"]})),
            "intervals[0].months[0]"
        );
        for days in ["0", "32", "-1:3", "5:1", "30:-1"] {
            assert_eq!(
                field_of(serde_json::json!({"daysOfMonth": [days]})),
                "intervals[0].daysOfMonth[0]",
                "{days}"
            );
        }
        assert_eq!(
            field_of(serde_json::json!({"years": ["2027:2026"]})),
            "intervals[0].years[0]"
        );
        assert_eq!(
            field_of(serde_json::json!({"location": "Europe/Atlantis"})),
            "intervals[0].location"
        );
    }
}
