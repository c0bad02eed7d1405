//! Snapshot -> contract models: status aggregation, and every body a probe
//! can ask for, serialised ahead of time so that a probe only copies bytes.
//!
//! A run renders only its own check: a `Piece` holds the check's own body
//! (`/health/checks/{name}`) and its entries of `/health`'s `checks` map as
//! JSON text. The bodies over all checks are assembled from the pieces by
//! concatenation, inside envelopes rendered once per status, so that a
//! run's cost does not grow with the number of checks. The tests render
//! everything through serde at once, as a reference, and compare bytes.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use healthd_models::{CheckResult, HealthReport, HealthStatus};

use crate::base::severity::{self, rank};
use crate::engine::state::CheckState;

/// Who this service is, as reports say it.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    pub service_id: String,
    pub description: Option<String>,
    pub version: String,
    /// The `time` of a check that has not reported yet: it tells how long
    /// the check has been waiting, never a fresh observation.
    pub started_at: DateTime<Utc>,
}

impl ServiceInfo {
    pub fn new(service_id: String, description: Option<String>) -> Self {
        ServiceInfo {
            service_id,
            description,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: Utc::now(),
        }
    }

    /// A report with the identity filled in and nothing else.
    fn report(&self, status: HealthStatus) -> HealthReport {
        HealthReport {
            status,
            service_id: Some(self.service_id.clone()),
            description: self.description.clone(),
            version: None,
            release_id: None,
            output: None,
            notes: Vec::new(),
            links: BTreeMap::new(),
            checks: BTreeMap::new(),
        }
    }

    fn with_output(&self, status: HealthStatus, output: Option<&str>) -> Rendered {
        let mut report = self.report(status);
        report.output = output.map(str::to_string);
        Rendered::new(&report)
    }
}

/// A ready-to-send body and the status it reports.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub status: HealthStatus,
    pub body: Bytes,
}

impl Rendered {
    fn new(report: &HealthReport) -> Self {
        let body = serde_json::to_vec(report).expect("a report always serialises");
        Rendered { status: report.status, body: Bytes::from(body) }
    }

    /// pass and warn answer 200, fail answers 503.
    pub fn http_status(&self) -> StatusCode {
        if self.status == HealthStatus::Fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    }
}

/// The index of a status's variant in the per-status arrays below.
fn status_index(status: HealthStatus) -> usize {
    usize::from(rank(status))
}

/// The detailed `/health` of one status around its `checks` map: the
/// text before the map's first entry and after its last, and the whole
/// body for when there is no entry at all (serde leaves an empty map out).
struct Envelope {
    empty: Rendered,
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl Envelope {
    fn new(mut report: HealthReport) -> Envelope {
        let empty = Rendered::new(&report);
        // A key no check can have (serde writes the NUL as \u0000, and
        // any quote inside a string is escaped) marks where entries go.
        report.checks = BTreeMap::from([("\0".to_string(), Vec::new())]);
        let marked = serde_json::to_vec(&report).expect("a report always serialises");
        let marker = br#""\u0000":[]"#;
        let at = marked
            .windows(marker.len())
            .position(|window| window == marker)
            .expect("the marker is in the report");
        Envelope {
            empty,
            prefix: marked[..at].to_vec(),
            suffix: marked[at + marker.len()..].to_vec(),
        }
    }
}

/// Renders pieces and assembles snapshots for one identity of the service.
/// The bodies that depend on nothing but a status are rendered here, once.
pub struct Renderer {
    service: ServiceInfo,
    /// Tells pieces rendered for another identity (before a reload changed
    /// `service_id` or `description`) from those rendered for this one.
    epoch: u64,
    full: [Envelope; 3],
    /// `/health/checks/{name}`: no `version`, as before pieces.
    check: [Envelope; 3],
    anonymous: [Rendered; 3],
    pass: Rendered,
    starting: Rendered,
    critical_failing: Rendered,
    draining: Rendered,
}

impl Renderer {
    pub fn new(service: ServiceInfo, epoch: u64) -> Renderer {
        let full = severity::ALL.map(|status| {
            let mut report = service.report(status);
            report.version = Some(service.version.clone());
            Envelope::new(report)
        });
        Renderer {
            full,
            check: severity::ALL.map(|status| Envelope::new(service.report(status))),
            anonymous: severity::ALL.map(|status| Rendered::new(&service.report(status))),
            pass: service.with_output(HealthStatus::Pass, None),
            starting: service.with_output(HealthStatus::Fail, Some("starting")),
            critical_failing: service
                .with_output(HealthStatus::Fail, Some("a critical check fails")),
            draining: service.with_output(HealthStatus::Fail, Some("draining")),
            service,
            epoch,
        }
    }

    pub fn service(&self) -> &ServiceInfo {
        &self.service
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Renders one check as it reads at `now`: its own body, which holds
    /// its entries of `/health` as they are to be copied there.
    pub fn piece(&self, state: CheckState, now: Instant) -> Piece {
        let effective = effective(&state, now);
        let mut taken: Vec<(String, usize, CheckResult)> = (0..state.measurements.len())
            .filter_map(|index| {
                let (key, result) = effective.result(index, self.service.started_at)?;
                Some((key, index, result))
            })
            .collect();
        // In the order of the body's map; of two measurements of one name
        // (a check from code may have them), the map keeps the last.
        taken.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ranges = vec![None; state.measurements.len()];
        let envelope = &self.check[status_index(effective.status)];
        let body = if taken.is_empty() {
            envelope.empty.body.clone()
        } else {
            let mut body = Vec::with_capacity(envelope.prefix.len() + 256 + envelope.suffix.len());
            body.extend_from_slice(&envelope.prefix);
            for (position, (key, index, result)) in taken.iter().enumerate() {
                if taken.get(position + 1).is_some_and(|next| next.0 == *key) {
                    continue;
                }
                if body.len() > envelope.prefix.len() {
                    body.push(b',');
                }
                let start = body.len();
                // Exactly what serde writes for one entry of a map.
                serde_json::to_writer(&mut body, key).expect("a key always serialises");
                body.push(b':');
                serde_json::to_writer(&mut body, std::slice::from_ref(result))
                    .expect("a result always serialises");
                ranges[*index] = Some(start..body.len());
            }
            body.extend_from_slice(&envelope.suffix);
            Bytes::from(body)
        };
        Piece {
            status: effective.status,
            stale: is_stale(&state, now),
            body: Rendered { status: effective.status, body },
            ranges,
            epoch: self.epoch,
            state,
        }
    }

    /// Assembles every body from the pieces, which must be current (see
    /// `Piece::is_current`) and follow `layout`'s checks. `started` is true
    /// once every check has reported at least once: `/health/startup` then
    /// stays 200, even for checks a reload adds.
    pub fn assemble(
        &self,
        layout: Arc<Layout>,
        pieces: Vec<Arc<Piece>>,
        now: Instant,
        started: bool,
    ) -> Snapshot {
        debug_assert!(pieces.iter().all(|piece| piece.is_current(self, now)));
        let mut critical_failing = false;
        let mut concerns = false;
        let mut waiting = false;
        let mut stale_at: Option<Instant> = None;
        let mut length = 0;
        for piece in &pieces {
            match (piece.status, piece.state.critical) {
                (HealthStatus::Fail, true) => critical_failing = true,
                (HealthStatus::Pass, _) => {}
                _ => concerns = true,
            }
            waiting |= piece.state.reading.is_none();
            // The next moment a reading turns stale; readings already stale
            // are rendered as such and need nothing until a run ends.
            if let Some(at) = piece.stale_at().filter(|at| *at >= now) {
                stale_at = Some(stale_at.map_or(at, |earliest| earliest.min(at)));
            }
            length += piece.body.body.len();
        }
        let overall = if critical_failing {
            HealthStatus::Fail
        } else if concerns {
            HealthStatus::Warn
        } else {
            HealthStatus::Pass
        };
        let starting = waiting && !started;
        let readiness = if starting {
            &self.starting
        } else if critical_failing {
            &self.critical_failing
        } else {
            &self.pass
        };
        Snapshot {
            health: self.health(&layout, &pieces, overall, length),
            health_anonymous: self.anonymous[status_index(overall)].clone(),
            liveness: self.pass.clone(),
            readiness: readiness.clone(),
            draining: self.draining.clone(),
            startup: if starting { self.starting.clone() } else { self.pass.clone() },
            starting: waiting,
            stale_at,
            layout,
            pieces,
        }
    }

    /// The detailed `/health`: the pieces' entries in the order of their keys.
    fn health(
        &self,
        layout: &Layout,
        pieces: &[Arc<Piece>],
        overall: HealthStatus,
        length: usize,
    ) -> Rendered {
        let envelope = &self.full[status_index(overall)];
        let mut body = Vec::with_capacity(envelope.prefix.len() + length + envelope.suffix.len());
        body.extend_from_slice(&envelope.prefix);
        let mut empty = true;
        for candidates in &layout.keys {
            let entry = candidates
                .iter()
                .find_map(|&(check, measurement)| pieces[check].entry(measurement));
            if let Some(entry) = entry {
                if !empty {
                    body.push(b',');
                }
                body.extend_from_slice(entry);
                empty = false;
            }
        }
        if empty {
            return envelope.empty.clone();
        }
        body.extend_from_slice(&envelope.suffix);
        Rendered { status: overall, body: Bytes::from(body) }
    }
}

/// One check, rendered as it read when its latest run ended (or when it
/// turned stale).
#[derive(Debug)]
pub struct Piece {
    pub state: CheckState,
    /// What the check reports: its reading's status, or fail when it has
    /// none or the reading went stale.
    pub status: HealthStatus,
    /// `/health/checks/{name}`.
    pub body: Rendered,
    /// Where in `body` each measurement's entry (`"name:measurement":[{...}]`) is, if taken.
    ranges: Vec<Option<Range<usize>>>,
    /// Rendered as stale.
    stale: bool,
    epoch: u64,
}

impl Piece {
    /// Whether this rendering still says what a rendering at `now` would:
    /// the reading has not turned stale since, and the identity is the same.
    pub fn is_current(&self, renderer: &Renderer, now: Instant) -> bool {
        self.epoch == renderer.epoch && self.stale == is_stale(&self.state, now)
    }

    /// The output this piece was rendered with: what `/health` says of it.
    pub fn output(&self) -> Option<String> {
        effective_as(&self.state, self.stale).output
    }

    fn stale_at(&self) -> Option<Instant> {
        let reading = self.state.reading.as_ref()?;
        Some(reading.observed_instant + self.state.policy.stale_after())
    }

    fn entry(&self, measurement: usize) -> Option<&[u8]> {
        let range = self.ranges.get(measurement)?.clone()?;
        Some(&self.body.body[range])
    }
}

/// Where each check's entries go in `/health`, and which check a name
/// means: fixed for a set of checks, so that it is worked out when the set
/// changes (at start and on reload), not on every run.
#[derive(Debug)]
pub struct Layout {
    /// Every `name:measurement` key in the order of `/health`'s map, each
    /// with the (check, measurement) pairs that bear it, the one that wins
    /// first. Two pairs bear one key only when checks share a name (checks
    /// from code may): like a map built from all entries, the last one taken wins.
    keys: Vec<Vec<(usize, usize)>>,
    names: HashMap<String, usize>,
}

impl Layout {
    /// `checks` in the order of the pieces: each check's name and measurements.
    pub fn new<'a>(
        checks: impl IntoIterator<Item = (&'a str, &'a [(&'static str, &'static str)])>,
    ) -> Layout {
        let mut keyed = Vec::new();
        let mut names = HashMap::new();
        for (check, (name, measurements)) in checks.into_iter().enumerate() {
            names.insert(name.to_string(), check);
            for (measurement, (label, _)) in measurements.iter().enumerate() {
                keyed.push((format!("{name}:{label}"), check, measurement));
            }
        }
        // Stable, so that pairs bearing one key stay in the order they came.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut keys: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut previous: Option<String> = None;
        for (key, check, measurement) in keyed {
            match keys.last_mut() {
                Some(candidates) if previous.as_deref() == Some(key.as_str()) => {
                    candidates.insert(0, (check, measurement));
                }
                _ => keys.push(vec![(check, measurement)]),
            }
            previous = Some(key);
        }
        Layout { keys, names }
    }
}

/// Everything a probe can be answered with, at one moment.
#[derive(Debug)]
pub struct Snapshot {
    /// `/health` for callers who may see details.
    pub health: Rendered,
    /// `/health` for everyone else: status and identity only.
    pub health_anonymous: Rendered,
    pub liveness: Rendered,
    /// Readiness apart from draining, which the server knows.
    pub readiness: Rendered,
    pub draining: Rendered,
    pub startup: Rendered,
    /// Some check has not reported yet.
    pub starting: bool,
    layout: Arc<Layout>,
    pieces: Vec<Arc<Piece>>,
    /// When the oldest reading turns stale, so the snapshot must be assembled again.
    stale_at: Option<Instant>,
}

impl Snapshot {
    /// Every check, in the configured order.
    pub fn checks(&self) -> impl ExactSizeIterator<Item = &Piece> {
        self.pieces.iter().map(|piece| piece.as_ref())
    }

    /// The check of that name.
    pub fn check(&self, name: &str) -> Option<&Piece> {
        self.layout.names.get(name).map(|&index| self.pieces[index].as_ref())
    }

    /// Whether some reading has aged past staleness since this was assembled.
    pub fn is_stale(&self, now: Instant) -> bool {
        self.stale_at.is_some_and(|stale_at| now > stale_at)
    }

    /// What `/health/ready` answers: 503 while draining, else readiness.
    #[inline]
    pub fn readiness_answer(&self, draining: bool) -> &Rendered {
        if draining {
            &self.draining
        } else {
            &self.readiness
        }
    }

    /// The one "ready" rule: `/health/ready` answers 200 (every critical
    /// check passes or warns, startup is over, and healthd is not draining).
    #[inline]
    pub fn is_ready(&self, draining: bool) -> bool {
        self.readiness_answer(draining).status != HealthStatus::Fail
    }
}

fn is_stale(state: &CheckState, now: Instant) -> bool {
    state.reading.as_ref().is_some_and(|reading| {
        now.saturating_duration_since(reading.observed_instant) > state.policy.stale_after()
    })
}

/// A check's status as reported now: its reading's, unless there is none
/// yet or it has gone stale.
struct Effective<'a> {
    status: HealthStatus,
    output: Option<String>,
    state: &'a CheckState,
}

fn effective(state: &CheckState, now: Instant) -> Effective<'_> {
    effective_as(state, is_stale(state, now))
}

/// As `effective`, for a reading known to be `stale` or not.
fn effective_as(state: &CheckState, stale: bool) -> Effective<'_> {
    let Some(reading) = &state.reading else {
        return Effective {
            status: HealthStatus::Fail,
            output: Some("no reading yet".into()),
            state,
        };
    };
    if stale {
        // Rendered once when it turns stale, so it names the limit passed
        // rather than an age that would be wrong a moment later.
        let output = format!(
            "stale: no reading for more than {} ms (3 intervals)",
            state.policy.stale_after().as_millis()
        );
        return Effective { status: HealthStatus::Fail, output: Some(output), state };
    }
    let output = match (reading.status, reading.observation.status) {
        (HealthStatus::Pass, _) => None,
        (HealthStatus::Fail, observed) if observed != HealthStatus::Fail => Some(format!(
            "recovering: {} of {} good runs",
            state.consecutive_successes, state.policy.success_threshold
        )),
        _ => reading.observation.output.clone(),
    };
    Effective { status: reading.status, output, state }
}

impl Effective<'_> {
    /// The `CheckResult` of measurement `index` and its key; measurements
    /// after the first are left out when this run could not take them.
    fn result(&self, index: usize, started_at: DateTime<Utc>) -> Option<(String, CheckResult)> {
        let state = self.state;
        let (measurement, unit) = state.measurements.get(index)?;
        let value = state
            .reading
            .as_ref()
            .and_then(|reading| reading.observation.values.get(index).copied().flatten());
        if index > 0 && value.is_none() {
            return None;
        }
        let result = CheckResult {
            component_id: state.name.clone(),
            component_type: state.component_type,
            observed_value: value,
            observed_unit: Some((*unit).to_string()),
            status: self.status,
            time: state.reading.as_ref().map_or(started_at, |reading| reading.observed_at),
            output: self.output.clone(),
            affected_endpoints: Vec::new(),
            critical: Some(state.critical),
            consecutive_failures: Some(state.consecutive_failures),
            flapping: state.log.flapping.then_some(true),
        };
        Some((format!("{}:{}", state.name, measurement), result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Observation;
    use crate::engine::state::{Counters, Reading};
    use healthd_models::ComponentType;
    use std::time::Duration;

    const POSTGRES: &[(&str, &str)] = &[("responseTime", "ms"), ("connections", "connections")];

    fn state(name: &str, critical: bool, status: Option<HealthStatus>) -> CheckState {
        let observation = match status {
            Some(HealthStatus::Fail) => Observation::fail("connection refused"),
            Some(HealthStatus::Warn) => Observation::warn("free space below 10%", vec![Some(8.0)]),
            _ => Observation::pass(vec![Some(1.5), Some(1.0)]),
        };
        CheckState {
            name: name.into(),
            kind: "postgres",
            component_type: ComponentType::Datastore,
            critical,
            policy: crate::checks::test_support::TEST_POLICY,
            measurements: POSTGRES,
            reading: status.map(|status| Reading {
                status,
                observation,
                observed_at: Utc::now(),
                observed_instant: Instant::now(),
                duration: Duration::from_millis(2),
            }),
            remembered_status: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            counters: Counters::default(),
            log: Default::default(),
            history: crate::engine::history::SharedHistory::new(120),
        }
    }

    fn assemble(renderer: &Renderer, states: Vec<CheckState>, now: Instant) -> Snapshot {
        let layout = Arc::new(Layout::new(
            states.iter().map(|state| (state.name.as_str(), state.measurements)),
        ));
        let pieces = states.into_iter().map(|state| Arc::new(renderer.piece(state, now))).collect();
        renderer.assemble(layout, pieces, now, false)
    }

    fn render(states: Vec<CheckState>) -> Snapshot {
        let renderer = Renderer::new(ServiceInfo::new("svc".into(), None), 0);
        assemble(&renderer, states, Instant::now())
    }

    fn body(rendered: &Rendered) -> serde_json::Value {
        serde_json::from_slice(&rendered.body).unwrap()
    }

    #[test]
    fn a_failing_critical_check_fails_the_service() {
        let snapshot = render(vec![
            state("db", true, Some(HealthStatus::Fail)),
            state("x", true, Some(HealthStatus::Pass)),
        ]);
        assert_eq!(snapshot.health.status, HealthStatus::Fail);
        assert_eq!(snapshot.readiness.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body(&snapshot.health)["checks"]["db:responseTime"][0]["output"],
            "connection refused"
        );
    }

    #[test]
    fn a_failing_non_critical_check_warns_and_stays_ready() {
        let snapshot = render(vec![
            state("cache", false, Some(HealthStatus::Fail)),
            state("db", true, Some(HealthStatus::Pass)),
        ]);
        assert_eq!(snapshot.health.status, HealthStatus::Warn);
        assert_eq!(snapshot.health.http_status(), StatusCode::OK);
        assert_eq!(snapshot.readiness.status, HealthStatus::Pass);
    }

    #[test]
    fn a_check_without_a_reading_keeps_startup_and_readiness_down() {
        let snapshot =
            render(vec![state("db", true, None), state("disk", true, Some(HealthStatus::Pass))]);
        assert_eq!(snapshot.startup.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(&snapshot.readiness)["output"], "starting");
        let snapshot = render(vec![state("db", true, Some(HealthStatus::Pass))]);
        assert_eq!(snapshot.startup.http_status(), StatusCode::OK);
    }

    #[test]
    fn once_started_a_check_without_a_reading_does_not_make_startup_fail_again() {
        let renderer = Renderer::new(ServiceInfo::new("svc".into(), None), 0);
        let now = Instant::now();
        let piece = Arc::new(renderer.piece(state("new", false, None), now));
        let layout = Arc::new(Layout::new([("new", POSTGRES)]));
        let snapshot = renderer.assemble(layout, vec![piece], now, true);
        assert_eq!(snapshot.startup.http_status(), StatusCode::OK);
        assert_eq!(snapshot.readiness.http_status(), StatusCode::OK);
        assert!(snapshot.starting);
    }

    #[test]
    fn anonymous_reports_hold_no_checks() {
        let snapshot = render(vec![state("db", true, Some(HealthStatus::Warn))]);
        let anonymous = body(&snapshot.health_anonymous);
        assert_eq!(anonymous["status"], "warn");
        assert!(anonymous.get("checks").is_none());
        assert!(anonymous.get("output").is_none());
    }

    #[test]
    fn a_stale_reading_is_fail() {
        let mut old = state("db", true, Some(HealthStatus::Pass));
        let reading = old.reading.as_mut().unwrap();
        reading.observed_instant = Instant::now() - Duration::from_secs(31);
        let snapshot = render(vec![old]);
        assert_eq!(snapshot.health.status, HealthStatus::Fail);
        let output = body(&snapshot.health)["checks"]["db:responseTime"][0]["output"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(output.starts_with("stale"), "{output}");
    }

    #[test]
    fn a_piece_is_current_until_its_reading_turns_stale_or_the_identity_changes() {
        let renderer = Renderer::new(ServiceInfo::new("svc".into(), None), 0);
        let now = Instant::now();
        let piece = renderer.piece(state("db", true, Some(HealthStatus::Pass)), now);
        assert!(piece.is_current(&renderer, now + Duration::from_secs(29)));
        assert!(!piece.is_current(&renderer, now + Duration::from_secs(31)));
        let reloaded = Renderer::new(ServiceInfo::new("other".into(), None), 1);
        assert!(!piece.is_current(&reloaded, now));
    }

    #[test]
    fn a_snapshot_is_assembled_again_only_when_another_reading_turns_stale() {
        let mut old = state("db", true, Some(HealthStatus::Pass));
        old.reading.as_mut().unwrap().observed_instant = Instant::now() - Duration::from_secs(31);
        let fresh = state("api", true, Some(HealthStatus::Pass));
        let now = Instant::now();
        let snapshot = render(vec![old, fresh]);
        // The stale one is already shown as such; the fresh one turns stale later.
        assert!(!snapshot.is_stale(now + Duration::from_secs(29)));
        assert!(snapshot.is_stale(now + Duration::from_secs(31)));
        let mut only_old = state("db", true, Some(HealthStatus::Pass));
        only_old.reading.as_mut().unwrap().observed_instant =
            Instant::now() - Duration::from_secs(31);
        let snapshot = render(vec![only_old]);
        assert!(!snapshot.is_stale(Instant::now() + Duration::from_secs(3600)));
    }

    #[test]
    fn measurements_become_component_keys() {
        let snapshot = render(vec![state("db", true, Some(HealthStatus::Pass))]);
        let checks = body(&snapshot.health)["checks"].clone();
        assert_eq!(checks["db:responseTime"][0]["observedValue"], 1.5);
        assert_eq!(checks["db:connections"][0]["observedUnit"], "connections");
        assert!(checks["db:responseTime"][0].get("output").is_none());
    }

    #[test]
    fn no_checks_at_all_is_a_passing_report_without_a_checks_map() {
        let snapshot = render(Vec::new());
        let health = body(&snapshot.health);
        assert_eq!(health["status"], "pass");
        assert!(health.get("checks").is_none());
        assert_eq!(snapshot.startup.http_status(), StatusCode::OK);
    }

    /// Every body as rendered all at once through serde: how bodies were
    /// made before pieces, kept as the reference the assembly must match.
    fn full_render(
        service: &ServiceInfo,
        states: &[CheckState],
        now: Instant,
    ) -> Vec<(String, Bytes)> {
        let effective: Vec<Effective<'_>> =
            states.iter().map(|state| effective(state, now)).collect();
        let mut overall = HealthStatus::Pass;
        for check in &effective {
            match (check.status, check.state.critical) {
                (HealthStatus::Fail, true) => {
                    overall = HealthStatus::Fail;
                    break;
                }
                (HealthStatus::Pass, _) => {}
                _ => overall = HealthStatus::Warn,
            }
        }
        let results = |check: &Effective<'_>| -> BTreeMap<String, Vec<CheckResult>> {
            (0..check.state.measurements.len())
                .filter_map(|index| check.result(index, service.started_at))
                .map(|(key, result)| (key, vec![result]))
                .collect()
        };
        let serialise = |report: &HealthReport| Bytes::from(serde_json::to_vec(report).unwrap());
        let mut full = service.report(overall);
        full.version = Some(service.version.clone());
        full.checks = effective.iter().flat_map(results).collect();
        let starting = states.iter().any(|state| state.reading.is_none());
        let critical_failing = effective
            .iter()
            .any(|check| check.state.critical && check.status == HealthStatus::Fail);
        let with_output = |status, output: Option<&str>| {
            let mut report = service.report(status);
            report.output = output.map(str::to_string);
            serialise(&report)
        };
        let readiness = if starting {
            with_output(HealthStatus::Fail, Some("starting"))
        } else if critical_failing {
            with_output(HealthStatus::Fail, Some("a critical check fails"))
        } else {
            with_output(HealthStatus::Pass, None)
        };
        let startup = if starting {
            with_output(HealthStatus::Fail, Some("starting"))
        } else {
            with_output(HealthStatus::Pass, None)
        };
        let mut bodies = vec![
            ("health".to_string(), serialise(&full)),
            ("anonymous".to_string(), serialise(&service.report(overall))),
            ("liveness".to_string(), with_output(HealthStatus::Pass, None)),
            ("readiness".to_string(), readiness),
            ("startup".to_string(), startup),
            ("draining".to_string(), with_output(HealthStatus::Fail, Some("draining"))),
        ];
        let by_name: HashMap<&str, Bytes> = effective
            .iter()
            .map(|check| {
                let mut report = service.report(check.status);
                report.checks = results(check);
                (check.state.name.as_str(), serialise(&report))
            })
            .collect();
        let mut names: Vec<&&str> = by_name.keys().collect();
        names.sort();
        for name in names {
            bodies.push((format!("check {name}"), by_name[*name].clone()));
        }
        bodies
    }

    /// The same bodies, from an assembled snapshot.
    fn assembled_bodies(snapshot: &Snapshot) -> Vec<(String, Bytes)> {
        let mut bodies = vec![
            ("health".to_string(), snapshot.health.body.clone()),
            ("anonymous".to_string(), snapshot.health_anonymous.body.clone()),
            ("liveness".to_string(), snapshot.liveness.body.clone()),
            ("readiness".to_string(), snapshot.readiness.body.clone()),
            ("startup".to_string(), snapshot.startup.body.clone()),
            ("draining".to_string(), snapshot.draining.body.clone()),
        ];
        let mut names: Vec<&str> =
            snapshot.checks().map(|piece| piece.state.name.as_str()).collect();
        names.sort();
        names.dedup();
        for name in names {
            bodies.push((format!("check {name}"), snapshot.check(name).unwrap().body.body.clone()));
        }
        bodies
    }

    const MEASUREMENT_SETS: [&[(&str, &str)]; 4] = [
        &[("responseTime", "ms")],
        POSTGRES,
        &[("responseTime", "ms"), ("messages", "messages"), ("consumers", "consumers")],
        &[("freeSpace", "%")],
    ];

    /// A random check: names share prefixes and sort around `:` (`a`, `a-b`,
    /// `a.b`, `a_b`, `b0`), and sometimes repeat, as checks from code may.
    fn random_state(rng: &mut fastrand::Rng) -> CheckState {
        const NAMES: [&str; 12] =
            ["a", "a-b", "a.b", "a_b", "ab", "b0", "b", "db", "db-2", "Z", "x.y-z", "a0"];
        let mut state = state(NAMES[rng.usize(..NAMES.len())], rng.bool(), None);
        if rng.u8(..8) == 0 {
            state.name.push('é');
        }
        state.measurements = MEASUREMENT_SETS[rng.usize(..MEASUREMENT_SETS.len())];
        state.component_type = [ComponentType::Component, ComponentType::Datastore][rng.usize(..2)];
        state.policy.interval = Duration::from_secs(rng.u64(1..=5));
        state.policy.success_threshold = rng.u32(1..=3);
        state
    }

    /// A random run's reading: pass, warn or fail, values taken or not,
    /// observed at some moment up to 20 s before `now`.
    fn random_run(rng: &mut fastrand::Rng, state: &mut CheckState, now: Instant) {
        let values: Vec<Option<f64>> = (0..state.measurements.len())
            .map(|_| rng.bool().then(|| (rng.f64() * 1000.0).round() / 8.0))
            .collect();
        let outputs = ["connection refused", "HTTP 500", "timed out after 2000 ms", "\"quoted\"\n"];
        let output = outputs[rng.usize(..outputs.len())];
        let observation = match rng.u8(..3) {
            0 => Observation::pass(values),
            1 => Observation::warn(output, values),
            _ => Observation::fail_with(output, values),
        };
        // The status after thresholds may differ from the run's own.
        let status = severity::ALL[rng.usize(..3)];
        state.consecutive_failures = rng.u32(..5);
        state.consecutive_successes = rng.u32(..5);
        state.counters.runs += 1;
        let age = Duration::from_millis(rng.u64(..20_000));
        state.reading = Some(Reading {
            status,
            observation,
            observed_at: DateTime::from_timestamp_millis(rng.i64(0..4_000_000_000_000)).unwrap(),
            observed_instant: now.checked_sub(age).unwrap_or(now),
            duration: Duration::from_millis(rng.u64(..2000)),
        });
    }

    /// Random check sets and runs: after each burst of runs, the snapshot
    /// assembled from the pieces (each run having rendered only its own,
    /// the others re-rendered only when they turned stale) is byte for byte
    /// what rendering everything at once gives.
    #[test]
    fn assembled_bodies_are_byte_identical_to_a_full_render() {
        let seed = std::env::var("HEALTHD_PROPTEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        let mut rng = fastrand::Rng::with_seed(seed);
        let started = Instant::now() + Duration::from_secs(60);
        for case in 0..200 {
            let service = ServiceInfo::new(
                ["svc", "orders \"api\"", "ünïcode"][rng.usize(..3)].into(),
                rng.bool().then(|| "a <description>".to_string()),
            );
            let renderer = Renderer::new(service.clone(), 0);
            let count = [0, 1, 2, 5, 20, 60][rng.usize(..6)];
            let mut states: Vec<CheckState> = (0..count).map(|_| random_state(&mut rng)).collect();
            let layout = Arc::new(Layout::new(
                states.iter().map(|state| (state.name.as_str(), state.measurements)),
            ));
            let mut now = started;
            let mut pieces: Vec<Arc<Piece>> =
                states.iter().map(|state| Arc::new(renderer.piece(state.clone(), now))).collect();
            for _burst in 0..8 {
                now += Duration::from_millis(rng.u64(..8_000));
                for _ in 0..rng.usize(..=count.max(1)) {
                    if count == 0 {
                        break;
                    }
                    let index = rng.usize(..count);
                    random_run(&mut rng, &mut states[index], now);
                    pieces[index] = Arc::new(renderer.piece(states[index].clone(), now));
                }
                // What the monitor does before assembling: pieces whose
                // reading turned stale are rendered again, nothing else.
                for piece in pieces.iter_mut() {
                    if !piece.is_current(&renderer, now) {
                        *piece = Arc::new(renderer.piece(piece.state.clone(), now));
                    }
                }
                let snapshot = renderer.assemble(layout.clone(), pieces.clone(), now, false);
                let expected = full_render(&service, &states, now);
                let assembled = assembled_bodies(&snapshot);
                for ((label, want), (_, got)) in expected.iter().zip(&assembled) {
                    assert_eq!(
                        String::from_utf8_lossy(got),
                        String::from_utf8_lossy(want),
                        "seed {seed} (HEALTHD_PROPTEST_SEED), case {case}: {label} differs"
                    );
                }
                assert_eq!(expected.len(), assembled.len(), "seed {seed}, case {case}");
                assert_eq!(
                    snapshot.health.status.to_string(),
                    body(&snapshot.health)["status"].as_str().unwrap(),
                    "seed {seed}, case {case}"
                );
            }
        }
    }
}
