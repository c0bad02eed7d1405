//! `kind = "heartbeat"`: a job that cannot be polled (a cron job, a backup,
//! a batch import) reports in by HTTP pings, and the check fails when a
//! ping is late. Pings say success, start, fail or an exit status (0 is
//! success); the api layer takes them in (`Heartbeat::record`), and each
//! run of the check judges what they said against the clock
//! (`judge`), so the engine runs it like any other kind.
//!
//! A ping is due `period` after the last one, or at the next time of a
//! crontab `schedule` (in `timezone`); it is late `grace` after that. A
//! start must be followed by its end within `max_runtime` (or `grace`).
//! Before the first ping, the clock starts when healthd starts watching:
//! a fresh heartbeat passes (it does not hold readiness back), and fails
//! if its first ping is late as any other would be.
//!
//! What the pings said is one plain struct, `PingState`: with a store, each
//! ping hands it to the saver set by `Heartbeat::save_with` (which only
//! queues it for the store's writer), and a restart gives it back through
//! `Heartbeat::restore`.

use std::any::Any;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use healthd_models::ComponentType;
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::base::schedule::{Schedule, ScheduleProblem};
use crate::base::secret::{digests_match, parse_sha256_hex};
use crate::base::units::{show_duration, DurationText};
use crate::checks::{BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind = Kind::new(
    "heartbeat",
    &["period", "schedule", "timezone", "grace", "max_runtime", "ping_key_sha256"],
    parse,
);

/// The most bytes of a ping's body kept (the rest is dropped).
pub const MAX_PING_BODY: usize = 10 * 1024;
/// Pings a check takes at once before its rate applies.
pub const PING_BURST: u32 = 10;
/// Pings a check takes per second, on average, past its burst.
pub const PINGS_PER_SECOND: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatFields {
    period: Option<DurationText>,
    schedule: Option<String>,
    timezone: Option<String>,
    grace: Option<DurationText>,
    max_runtime: Option<DurationText>,
    ping_key_sha256: Option<String>,
}

/// When the next ping is due.
#[derive(Debug, Clone)]
enum Due {
    /// `period` after the last one.
    Every(Duration),
    /// At the next time of a crontab line, read in a time zone.
    Schedule(Schedule),
}

/// What a heartbeat is judged by.
#[derive(Debug, Clone)]
struct Rules {
    due: Due,
    grace: Duration,
    max_runtime: Option<Duration>,
}

#[derive(Debug)]
struct HeartbeatSettings {
    rules: Rules,
    ping_key: Option<[u8; 32]>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: HeartbeatFields = input.fields()?;
    let grace = input.required("grace", fields.grace)?.0;
    if grace.is_zero() {
        input.report_at("grace", "must be more than 0");
        return None;
    }
    let due = match (fields.period, fields.schedule) {
        (Some(period), None) => {
            if fields.timezone.is_some() {
                input.report_at("timezone", "applies only to schedule");
                return None;
            }
            if period.0.is_zero() {
                input.report_at("period", "must be more than 0");
                return None;
            }
            Due::Every(period.0)
        }
        (None, Some(text)) => match Schedule::parse(&text, fields.timezone.as_deref()) {
            Ok(schedule) => Due::Schedule(schedule),
            Err(ScheduleProblem::Zone(reason)) => {
                input.report_at("timezone", reason);
                return None;
            }
            Err(ScheduleProblem::Line(reason)) => {
                input.report_at("schedule", reason);
                return None;
            }
        },
        (Some(_), Some(_)) => {
            input.report_at("period", "set period or schedule, not both");
            return None;
        }
        (None, None) => {
            input.report_at(
                "period",
                "period (a duration) or schedule (a crontab line) is required for kind \"heartbeat\"",
            );
            return None;
        }
    };
    let max_runtime = fields.max_runtime.map(|runtime| runtime.0);
    if max_runtime.is_some_and(|runtime| runtime.is_zero()) {
        input.report_at("max_runtime", "must be more than 0");
        return None;
    }
    let ping_key = match fields.ping_key_sha256.as_deref().map(parse_sha256_hex) {
        Some(Err(reason)) => {
            input.report_at("ping_key_sha256", reason);
            return None;
        }
        Some(Ok(digest)) => Some(digest),
        None => None,
    };
    // Lateness is seen by a run: at most one interval after it begins.
    let tightest = max_runtime.map_or(grace, |runtime| runtime.min(grace));
    if input.policy.interval > tightest {
        input.report_at(
            "interval",
            format!(
                "{} is longer than {} = {}: a late heartbeat would be seen up to an interval late; set interval to at most that",
                show_duration(input.policy.interval),
                if tightest == grace { "grace" } else { "max_runtime" },
                show_duration(tightest),
            ),
        );
        return None;
    }
    Some(Arc::new(HeartbeatSettings { rules: Rules { due, grace, max_runtime }, ping_key }))
}

impl KindSettings for HeartbeatSettings {
    fn descriptors(&self) -> usize {
        0
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let heartbeat =
            Heartbeat::new(self.rules.clone(), self.ping_key, Utc::now(), Instant::now());
        Ok(Arc::new(HeartbeatCheck { heartbeat }))
    }
}

/// What a ping says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Success,
    /// The job has started; its end (success, fail, exit status) is due
    /// within `max_runtime` (or `grace`).
    Start,
    Fail,
    /// The job's exit status: 0 is success, any other a failure.
    Exit(u8),
}

impl Signal {
    /// Whether the ping's body is kept: what the job said when it ended,
    /// not when it started.
    pub fn keeps_body(self) -> bool {
        self != Signal::Start
    }
}

/// How a run of the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Fail,
    /// A failure with its exit status (never 0, which is `Success`).
    Exit(u8),
}

/// What the pings have said, as the store keeps it: a plain struct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingState {
    /// When the last ping that ended a run came (success, fail, exit status).
    pub last_ping: Option<DateTime<Utc>>,
    /// How that run ended.
    pub last_outcome: Option<Outcome>,
    /// A start that no end has followed yet.
    pub last_start: Option<DateTime<Utc>>,
    /// From start to end of the last run, when it pinged its start.
    pub last_duration: Option<Duration>,
    /// The body of the last ping that ended a run, at most `MAX_PING_BODY` bytes.
    pub body: Option<String>,
}

impl PingState {
    /// Takes a ping that came `at` in (`Signal::keeps_body` says whether
    /// its body is kept).
    pub fn record(&mut self, signal: Signal, body: Option<String>, at: DateTime<Utc>) {
        let outcome = match signal {
            Signal::Start => {
                self.last_start = Some(at);
                return;
            }
            Signal::Success | Signal::Exit(0) => Outcome::Success,
            Signal::Fail => Outcome::Fail,
            Signal::Exit(status) => Outcome::Exit(status),
        };
        self.last_duration =
            self.last_start.take().and_then(|started| (at - started).to_std().ok());
        self.last_ping = Some(at);
        self.last_outcome = Some(outcome);
        self.body = body;
    }
}

/// The body of a ping as kept: its first `MAX_PING_BODY` bytes as text
/// (bytes that are not UTF-8 shown as U+FFFD), `None` when empty.
pub fn kept_body(bytes: &[u8]) -> Option<String> {
    let bytes = &bytes[..bytes.len().min(MAX_PING_BODY)];
    let mut text = String::from_utf8_lossy(bytes).into_owned();
    // A replacement character is longer than the byte it replaces.
    if text.len() > MAX_PING_BODY {
        let mut end = MAX_PING_BODY;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    (!text.is_empty()).then_some(text)
}

/// A heartbeat check's live part: its rules, its ping key, what the pings
/// said and the rate they may come at. Shared by the check's runs and the
/// api layer that takes pings in.
#[derive(Debug)]
pub struct Heartbeat {
    rules: Rules,
    ping_key: Option<[u8; 32]>,
    /// When healthd began to watch: the clock of a heartbeat never pinged.
    watching_since: DateTime<Utc>,
    inner: Mutex<Inner>,
    /// Where each ping's new state goes, when there is a store.
    saver: OnceLock<PingSaver>,
}

/// Takes a heartbeat's whole ping state after each ping. It is called with
/// the heartbeat's lock held, so that states are saved in the pings'
/// order: it must not wait (the store's only queues it).
pub struct PingSaver(Box<dyn Fn(&PingState) + Send + Sync>);

impl std::fmt::Debug for PingSaver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PingSaver")
    }
}

#[derive(Debug)]
struct Inner {
    pings: PingState,
    bucket: PingBucket,
}

impl Heartbeat {
    fn new(
        rules: Rules,
        ping_key: Option<[u8; 32]>,
        watching_since: DateTime<Utc>,
        now: Instant,
    ) -> Heartbeat {
        Heartbeat {
            rules,
            ping_key,
            watching_since,
            inner: Mutex::new(Inner { pings: PingState::default(), bucket: PingBucket::full(now) }),
            saver: OnceLock::new(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `digest` (a presented key's SHA-256) is this check's ping key.
    pub fn accepts_key(&self, digest: &[u8; 32]) -> bool {
        self.ping_key.as_ref().is_some_and(|key| digests_match(key, digest))
    }

    /// Takes one ping's share of the rate (`PING_BURST` at once, then
    /// `PINGS_PER_SECOND`), or says how long until there is one.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        self.inner().bucket.take(now)
    }

    /// Takes a ping in; its effect is seen by the check's next run.
    pub fn record(&self, signal: Signal, body: Option<String>, at: DateTime<Utc>) {
        let mut inner = self.inner();
        inner.pings.record(signal, body, at);
        if let Some(saver) = self.saver.get() {
            (saver.0)(&inner.pings);
        }
    }

    /// What the pings have said.
    #[allow(dead_code)] // For tests: the store is handed it by the saver.
    pub fn state(&self) -> PingState {
        self.inner().pings.clone()
    }

    /// Puts back what the store saved, as if those pings had just been
    /// taken in: the entry point for a restart with a store.
    pub fn restore(&self, state: PingState) {
        self.inner().pings = state;
    }

    /// Hands the state to `saver` after each ping from now on (the first
    /// saver set stays).
    pub fn save_with(&self, saver: impl Fn(&PingState) + Send + Sync + 'static) {
        let _ = self.saver.set(PingSaver(Box::new(saver)));
    }

    /// The reading at `now`.
    pub fn judge(&self, now: DateTime<Utc>) -> Observation {
        judge(&self.rules, &self.inner().pings, self.watching_since, now)
    }
}

/// The reading of a heartbeat at `now`, from what its pings said: pure, so
/// that tests hold the clock.
fn judge(
    rules: &Rules,
    pings: &PingState,
    watching_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Observation {
    let since_last_ping = pings.last_ping.map(|at| seconds(now - at));
    let values = vec![since_last_ping, pings.last_duration.map(|run| run.as_secs_f64())];
    if let Some(started) = pings.last_start {
        let limit = rules.max_runtime.unwrap_or(rules.grace);
        if now > after(started, limit) {
            return Observation::fail_with(
                format!(
                    "started at {} and not finished within {}",
                    show(started),
                    show_duration(limit)
                ),
                values,
            );
        }
    }
    let with_body = |reason: String| match &pings.body {
        Some(body) => format!("{reason}\n{body}"),
        None => reason,
    };
    match pings.last_outcome {
        Some(Outcome::Fail) => {
            return Observation::fail_with(with_body("the job reported failure".into()), values)
        }
        Some(Outcome::Exit(status)) => {
            return Observation::fail_with(with_body(format!("exit status {status}")), values)
        }
        Some(Outcome::Success) | None => {}
    }
    // A job that has started is judged by its runtime, not by the period.
    if pings.last_start.is_none() {
        let reference = pings.last_ping.unwrap_or(watching_since);
        let due = next_due(&rules.due, reference);
        if now > after(due, rules.grace) {
            let since = match pings.last_ping {
                Some(at) => format!("the last ping came at {}", show(at)),
                None => format!("no ping since healthd started at {}", show(watching_since)),
            };
            return Observation::fail_with(
                format!(
                    "late: {since}; the next was due at {} (grace {})",
                    show(due),
                    show_duration(rules.grace)
                ),
                values,
            );
        }
    }
    // Pass: the body is the output the history keeps (reports show none on pass).
    Observation { output: pings.body.clone(), ..Observation::pass(values) }
}

/// When the ping after one at `reference` is due. A schedule that no
/// longer fires (checked at load, so only past the end of time) is never due.
fn next_due(due: &Due, reference: DateTime<Utc>) -> DateTime<Utc> {
    match due {
        Due::Every(period) => after(reference, *period),
        Due::Schedule(schedule) => schedule.next_after(reference),
    }
}

fn after(time: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(duration)
        .ok()
        .and_then(|delta| time.checked_add_signed(delta))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn seconds(delta: TimeDelta) -> f64 {
    (delta.num_milliseconds().max(0) as f64) / 1000.0
}

/// Times in outputs: to the second, so an output stays the same from run to
/// run until a ping changes it (the log hears of changes only).
fn show(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A token bucket: `PING_BURST` pings at once, refilled at `PINGS_PER_SECOND`.
#[derive(Debug)]
struct PingBucket {
    tokens: f64,
    refilled: Instant,
}

impl PingBucket {
    fn full(now: Instant) -> PingBucket {
        PingBucket { tokens: f64::from(PING_BURST), refilled: now }
    }

    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(PINGS_PER_SECOND);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(PING_BURST));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

struct HeartbeatCheck {
    heartbeat: Heartbeat,
}

impl Check for HeartbeatCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("sinceLastPing", "s"), ("duration", "s")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let observation = self.heartbeat.judge(Utc::now());
        Box::pin(async move { observation })
    }
}

/// The heartbeat a running check is, when it is one.
pub fn of(check: &dyn Check) -> Option<&Heartbeat> {
    let check: &dyn Any = check;
    check.downcast_ref::<HeartbeatCheck>().map(|check| &check.heartbeat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::test_support::TEST_POLICY;
    use healthd_models::HealthStatus::{Fail, Pass};

    /// A clock the tests hold: seconds after a fixed start.
    fn at(second: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z").unwrap().with_timezone(&Utc)
            + TimeDelta::seconds(second)
    }

    /// Every 60 s, with 10 s of grace.
    fn every_minute() -> Rules {
        Rules {
            due: Due::Every(Duration::from_secs(60)),
            grace: Duration::from_secs(10),
            max_runtime: None,
        }
    }

    fn judged(rules: &Rules, pings: &[(i64, Signal, Option<&str>)], now: i64) -> Observation {
        let mut state = PingState::default();
        for (second, signal, body) in pings {
            state.record(*signal, body.map(str::to_string), at(*second));
        }
        judge(rules, &state, at(0), at(now))
    }

    #[test]
    fn a_ping_on_time_passes_until_period_and_grace_have_gone_by() {
        let rules = every_minute();
        let pings = [(5, Signal::Success, None)];
        let on_time = judged(&rules, &pings, 75);
        assert_eq!(on_time.status, Pass);
        assert_eq!(on_time.values[0], Some(70.0));
        let late = judged(&rules, &pings, 76);
        assert_eq!(late.status, Fail);
        assert_eq!(
            late.output.as_deref(),
            Some("late: the last ping came at 2026-12-04T12:00:05Z; the next was due at 2026-12-04T12:01:05Z (grace 10s)")
        );
        // A later ping puts it right.
        let pings = [(5, Signal::Success, None), (70, Signal::Success, None)];
        assert_eq!(judged(&rules, &pings, 76).status, Pass);
    }

    #[test]
    fn a_heartbeat_never_pinged_passes_until_its_first_ping_is_late() {
        let rules = every_minute();
        assert_eq!(judged(&rules, &[], 0).status, Pass);
        assert_eq!(judged(&rules, &[], 70).status, Pass);
        let late = judged(&rules, &[], 71);
        assert_eq!(late.status, Fail);
        assert!(late
            .output
            .unwrap()
            .starts_with("late: no ping since healthd started at 2026-12-04T12:00:00Z"));
        assert_eq!(late.values, vec![None, None]);
    }

    #[test]
    fn a_start_with_no_end_fails_after_grace_or_max_runtime() {
        let rules = every_minute();
        let pings = [(5, Signal::Success, None), (60, Signal::Start, None)];
        // Running: the period's deadline does not apply.
        assert_eq!(judged(&rules, &pings, 70).status, Pass);
        let stuck = judged(&rules, &pings, 71);
        assert_eq!(stuck.status, Fail);
        assert_eq!(
            stuck.output.as_deref(),
            Some("started at 2026-12-04T12:01:00Z and not finished within 10s")
        );
        let long_jobs = Rules { max_runtime: Some(Duration::from_secs(300)), ..every_minute() };
        assert_eq!(judged(&long_jobs, &pings, 360).status, Pass);
        assert_eq!(judged(&long_jobs, &pings, 361).status, Fail);
    }

    #[test]
    fn the_time_from_start_to_success_is_the_duration() {
        let rules = every_minute();
        let pings = [(60, Signal::Start, None), (64, Signal::Success, Some("42 rows"))];
        let done = judged(&rules, &pings, 65);
        assert_eq!(done.status, Pass);
        assert_eq!(done.values, vec![Some(1.0), Some(4.0)]);
        // The body is the output the history keeps.
        assert_eq!(done.output.as_deref(), Some("42 rows"));
    }

    #[test]
    fn a_fail_ping_fails_with_its_body_until_a_success() {
        let rules = every_minute();
        let pings = [(5, Signal::Fail, Some("disk full"))];
        let failed = judged(&rules, &pings, 6);
        assert_eq!(failed.status, Fail);
        assert_eq!(failed.output.as_deref(), Some("the job reported failure\ndisk full"));
        // A start does not clear it; the next success does.
        let retried = [(5, Signal::Fail, None), (30, Signal::Start, None)];
        assert_eq!(judged(&rules, &retried, 31).status, Fail);
        let fixed = [(5, Signal::Fail, None), (30, Signal::Success, None)];
        assert_eq!(judged(&rules, &fixed, 31).status, Pass);
    }

    #[test]
    fn exit_status_3_fails_and_0_succeeds() {
        let rules = every_minute();
        let three = judged(&rules, &[(5, Signal::Exit(3), None)], 6);
        assert_eq!(three.status, Fail);
        assert_eq!(three.output.as_deref(), Some("exit status 3"));
        assert_eq!(judged(&rules, &[(5, Signal::Exit(0), None)], 6).status, Pass);
    }

    #[test]
    fn a_schedule_is_due_at_its_next_time_in_its_time_zone() {
        // Daily at 03:00 in Berlin: 02:00 UTC in winter.
        let rules = Rules {
            due: Due::Schedule(Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap()),
            grace: Duration::from_secs(600),
            max_runtime: None,
        };
        // at(0) is 12:00 UTC; the next run is tomorrow 02:00 UTC, 14 h later.
        let next = 14 * 3600;
        assert_eq!(judged(&rules, &[(0, Signal::Success, None)], next + 600).status, Pass);
        let late = judged(&rules, &[(0, Signal::Success, None)], next + 601);
        assert_eq!(late.status, Fail);
        assert!(late.output.unwrap().contains("the next was due at 2026-12-05T02:00:00Z"));
        // Its ping on time keeps it passing for another day.
        let pings = [(0, Signal::Success, None), (next + 30, Signal::Success, None)];
        assert_eq!(judged(&rules, &pings, next + 86_400).status, Pass);
    }

    #[test]
    fn pings_beyond_the_burst_wait_for_the_rate() {
        let start = Instant::now();
        let mut bucket = PingBucket::full(start);
        for _ in 0..PING_BURST {
            assert!(bucket.take(start).is_ok());
        }
        let wait = bucket.take(start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(bucket.take(start + Duration::from_millis(500)).is_err());
        assert!(bucket.take(start + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn a_body_is_kept_up_to_its_limit_as_text() {
        assert_eq!(kept_body(b""), None);
        assert_eq!(kept_body(b"ok\n").as_deref(), Some("ok\n"));
        assert_eq!(kept_body(&vec![b'x'; 50_000]).unwrap().len(), MAX_PING_BODY);
        let invalid = kept_body(&vec![0xff; MAX_PING_BODY + 5]).unwrap();
        assert!(invalid.len() <= MAX_PING_BODY && invalid.starts_with('\u{fffd}'));
    }

    fn problems(table: &str) -> Vec<String> {
        let policy = Policy { interval: Duration::from_secs(10), ..TEST_POLICY };
        let env = std::collections::BTreeMap::<String, String>::new();
        let mut problems = Vec::new();
        let table: toml::Table = toml::from_str(table).unwrap();
        let mut input =
            KindInput::new("checks[0]", "heartbeat", &policy, table, &env, &mut problems);
        let _ = parse(&mut input);
        problems.iter().map(|problem| format!("{}: {}", problem.key, problem.reason)).collect()
    }

    #[test]
    fn settings_name_their_problems() {
        assert!(problems("period = \"1m\"\ngrace = \"30s\"").is_empty());
        assert!(problems(
            "schedule = \"*/5 * * * *\"\ntimezone = \"Europe/Berlin\"\ngrace = \"1m\""
        )
        .is_empty());
        let cases = [
            ("grace = \"1m\"", "checks[0].period: period (a duration) or schedule"),
            ("period = \"1m\"", "checks[0].grace: is required for kind \"heartbeat\""),
            (
                "period = \"1m\"\nschedule = \"* * * * *\"\ngrace = \"1m\"",
                "checks[0].period: set period or schedule, not both",
            ),
            (
                "schedule = \"0 3 * *\"\ngrace = \"1m\"",
                "checks[0].schedule: \"0 3 * *\" is not a crontab schedule",
            ),
            (
                "schedule = \"0 0 30 2 *\"\ngrace = \"1m\"",
                "checks[0].schedule: \"0 0 30 2 *\" never fires",
            ),
            (
                "schedule = \"0 3 * * *\"\ntimezone = \"Mars/Olympus\"\ngrace = \"1m\"",
                "checks[0].timezone: unknown time zone",
            ),
            (
                "period = \"1m\"\ntimezone = \"UTC\"\ngrace = \"1m\"",
                "checks[0].timezone: applies only to schedule",
            ),
            (
                "period = \"1m\"\ngrace = \"5s\"",
                "checks[0].interval: 10s is longer than grace = 5s",
            ),
            (
                "period = \"1m\"\ngrace = \"1m\"\nmax_runtime = \"5s\"",
                "checks[0].interval: 10s is longer than max_runtime = 5s",
            ),
            (
                "period = \"1m\"\ngrace = \"1m\"\nping_key_sha256 = \"abc\"",
                "checks[0].ping_key_sha256: expected 64 hex digits",
            ),
            (
                "period = \"1m\"\ngrace = \"1m\"\nperiode = \"1m\"",
                "checks[0].periode: unknown field",
            ),
        ];
        for (table, wanted) in cases {
            let problems = problems(table);
            assert_eq!(problems.len(), 1, "{table}: {problems:?}");
            assert!(problems[0].starts_with(wanted), "{table}: {problems:?}");
        }
    }

    #[test]
    fn a_running_heartbeat_is_found_behind_its_check_and_only_a_heartbeat_is() {
        let heartbeat = Heartbeat::new(
            every_minute(),
            Some(crate::base::secret::sha256(b"k")),
            at(0),
            Instant::now(),
        );
        let check: Arc<dyn Check> = Arc::new(HeartbeatCheck { heartbeat });
        let found = of(check.as_ref()).expect("a heartbeat");
        assert!(found.accepts_key(&crate::base::secret::sha256(b"k")));
        assert!(!found.accepts_key(&crate::base::secret::sha256(b"K")));
        assert!(of(&crate::checks::test_support::Nothing).is_none());
        // What the store saves comes back whole.
        found.record(Signal::Exit(3), Some("x".into()), at(5));
        let saved = found.state();
        found.restore(PingState::default());
        assert_eq!(found.state(), PingState::default());
        found.restore(saved.clone());
        assert_eq!(found.state().last_outcome, Some(Outcome::Exit(3)));
        assert_eq!(found.judge(at(6)).status, Fail);
        // With a saver, each ping hands it the whole state.
        let saved = Arc::new(Mutex::new(Vec::new()));
        let into = saved.clone();
        found.save_with(move |state| into.lock().unwrap().push(state.clone()));
        found.record(Signal::Start, None, at(10));
        found.record(Signal::Success, Some("ok".into()), at(12));
        let saved = saved.lock().unwrap();
        assert_eq!(saved.len(), 2);
        assert_eq!(saved[0].last_start, Some(at(10)));
        assert_eq!(saved[1], found.state());
        assert_eq!(saved[1].last_duration, Some(Duration::from_secs(2)));
    }
}
