//! Crontab schedules read in a time zone: when a heartbeat is due, when a
//! maintenance window opens. One parser, so both accept the same lines.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A crontab line's five fields (minute, hour, day of month, month, day of
/// week; `@daily` and the like too) in an IANA time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Box<Cron>,
    zone: Tz,
}

impl Schedule {
    /// `zone` defaults to UTC; refused with the reason (naming `text`)
    /// when the line is malformed or never fires.
    pub fn parse(text: &str, zone: Option<&str>) -> Result<Schedule, ScheduleProblem> {
        let zone = zone.unwrap_or("UTC").parse::<Tz>().map_err(|_| {
            ScheduleProblem::Zone(
                "unknown time zone: expected an IANA name, such as \"Europe/Berlin\" or \"UTC\""
                    .into(),
            )
        })?;
        let parser =
            CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(text).map_err(|error| {
            ScheduleProblem::Line(format!("{text:?} is not a crontab schedule: {error}"))
        })?;
        if cron.find_next_occurrence(&Utc::now().with_timezone(&zone), false).is_err() {
            return Err(ScheduleProblem::Line(format!("{text:?} never fires")));
        }
        Ok(Schedule { cron: Box::new(cron), zone })
    }

    /// The first time after `reference`; the end of time when it no longer fires.
    pub fn next_after(&self, reference: DateTime<Utc>) -> DateTime<Utc> {
        self.cron
            .find_next_occurrence(&reference.with_timezone(&self.zone), false)
            .map_or(DateTime::<Utc>::MAX_UTC, |next| next.with_timezone(&Utc))
    }

    /// The latest time at or before `reference`, if it ever fired.
    pub fn latest_at_or_before(&self, reference: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&reference.with_timezone(&self.zone), true)
            .ok()
            .map(|time| time.with_timezone(&Utc))
    }
}

/// What is wrong, and with which key: the line or the time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleProblem {
    Line(String),
    Zone(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_line_is_read_in_its_time_zone() {
        let schedule = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:00 in Berlin in December is 01:00 UTC.
        assert_eq!(schedule.next_after(at("2026-12-04T12:00:00Z")), at("2026-12-05T01:00:00Z"));
        assert_eq!(
            schedule.latest_at_or_before(at("2026-12-04T12:00:00Z")),
            Some(at("2026-12-04T01:00:00Z"))
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-12-04T01:00:00Z")),
            Some(at("2026-12-04T01:00:00Z"))
        );
    }

    #[test]
    fn bad_lines_and_zones_are_refused_with_their_reason() {
        assert!(matches!(Schedule::parse("61 * * * *", None), Err(ScheduleProblem::Line(_))));
        assert!(
            matches!(Schedule::parse("0 0 31 2 *", None), Err(ScheduleProblem::Line(r)) if r.contains("never fires"))
        );
        assert!(matches!(
            Schedule::parse("@daily", Some("Mars/Olympus")),
            Err(ScheduleProblem::Zone(_))
        ));
    }
}
