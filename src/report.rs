//! Snapshot -> contract models: status aggregation, and every body a probe
//! can ask for, serialised once per change so a probe only copies bytes.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use healthd_models::{CheckResult, HealthReport, HealthStatus};

use crate::monitor::CheckState;

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

/// Everything a probe can be answered with, at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub states: Vec<CheckState>,
    /// `/health` for callers who may see details.
    pub health: Rendered,
    /// `/health` for everyone else: status and identity only.
    pub health_anonymous: Rendered,
    pub liveness: Rendered,
    /// Readiness apart from draining, which the server knows.
    pub readiness: Rendered,
    pub draining: Rendered,
    pub startup: Rendered,
    pub checks: HashMap<String, Rendered>,
    /// When the oldest reading turns stale, so the snapshot must be rendered again.
    stale_at: Option<Instant>,
}

/// A check's status as reported now: its reading's, unless there is none
/// yet or it has gone stale.
struct Effective<'a> {
    status: HealthStatus,
    output: Option<String>,
    state: &'a CheckState,
}

fn effective(state: &CheckState, now: Instant) -> Effective<'_> {
    let Some(reading) = &state.reading else {
        return Effective {
            status: HealthStatus::Fail,
            output: Some("no reading yet".into()),
            state,
        };
    };
    let age = now.saturating_duration_since(reading.observed_instant);
    if age > state.policy.stale_after() {
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
    /// One `CheckResult` per measurement; measurements after the first are
    /// left out when this run could not take them.
    fn results(&self, started_at: DateTime<Utc>) -> BTreeMap<String, Vec<CheckResult>> {
        let state = self.state;
        let time = state.reading.as_ref().map_or(started_at, |reading| reading.observed_at);
        let values = state
            .reading
            .as_ref()
            .map(|reading| reading.observation.values.as_slice())
            .unwrap_or_default();
        state
            .measurements
            .iter()
            .enumerate()
            .filter_map(|(index, (measurement, unit))| {
                let value = values.get(index).copied().flatten();
                if index > 0 && value.is_none() {
                    return None;
                }
                let result = CheckResult {
                    component_id: state.name.clone(),
                    component_type: state.component_type,
                    observed_value: value,
                    observed_unit: Some((*unit).to_string()),
                    status: self.status,
                    time,
                    output: self.output.clone(),
                    affected_endpoints: Vec::new(),
                    critical: Some(state.critical),
                    consecutive_failures: Some(state.consecutive_failures),
                };
                Some((format!("{}:{}", state.name, measurement), vec![result]))
            })
            .collect()
    }
}

/// fail if a critical check fails; warn if a non-critical one fails or any
/// warns; pass otherwise.
fn aggregate(checks: &[Effective<'_>]) -> HealthStatus {
    let mut status = HealthStatus::Pass;
    for check in checks {
        match (check.status, check.state.critical) {
            (HealthStatus::Fail, true) => return HealthStatus::Fail,
            (HealthStatus::Pass, _) => {}
            _ => status = HealthStatus::Warn,
        }
    }
    status
}

impl Snapshot {
    /// Renders every body from the checks' states.
    pub fn render(service: &ServiceInfo, states: Vec<CheckState>, now: Instant) -> Snapshot {
        let effective: Vec<Effective<'_>> =
            states.iter().map(|state| effective(state, now)).collect();
        let overall = aggregate(&effective);

        let mut full = service.report(overall);
        full.version = Some(service.version.clone());
        full.checks =
            effective.iter().flat_map(|check| check.results(service.started_at)).collect();

        let checks = effective
            .iter()
            .map(|check| {
                let mut report = service.report(check.status);
                report.checks = check.results(service.started_at);
                (check.state.name.clone(), Rendered::new(&report))
            })
            .collect();

        let starting = states.iter().any(|state| state.reading.is_none());
        let critical_failing = effective
            .iter()
            .any(|check| check.state.critical && check.status == HealthStatus::Fail);
        let with_output = |status, output: Option<&str>| {
            let mut report = service.report(status);
            report.output = output.map(str::to_string);
            Rendered::new(&report)
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

        // The next moment a reading turns stale; readings already stale are
        // rendered as such here and need no new rendering until a run ends.
        let stale_at = states
            .iter()
            .filter_map(|state| {
                state
                    .reading
                    .as_ref()
                    .map(|reading| reading.observed_instant + state.policy.stale_after())
            })
            .filter(|stale_at| *stale_at >= now)
            .min();

        Snapshot {
            health: Rendered::new(&full),
            health_anonymous: Rendered::new(&service.report(overall)),
            liveness: with_output(HealthStatus::Pass, None),
            readiness,
            draining: with_output(HealthStatus::Fail, Some("draining")),
            startup,
            checks,
            stale_at,
            states,
        }
    }

    /// Whether some reading has aged past staleness since this was rendered.
    pub fn is_stale(&self, now: Instant) -> bool {
        self.stale_at.is_some_and(|stale_at| now > stale_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::Observation;
    use crate::config::Policy;
    use crate::monitor::{Counters, Reading};
    use healthd_models::ComponentType;
    use std::time::Duration;

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
            policy: Policy {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                retries: 0,
                backoff: Duration::from_millis(100),
                failure_threshold: 1,
                success_threshold: 1,
                history: 120,
            },
            measurements: &[("responseTime", "ms"), ("connections", "connections")],
            reading: status.map(|status| Reading {
                status,
                observation,
                observed_at: Utc::now(),
                observed_instant: Instant::now(),
                duration: Duration::from_millis(2),
            }),
            consecutive_failures: 0,
            consecutive_successes: 0,
            counters: Counters::default(),
            history: crate::history::SharedHistory::new(120),
        }
    }

    fn render(states: Vec<CheckState>) -> Snapshot {
        Snapshot::render(&ServiceInfo::new("svc".into(), None), states, Instant::now())
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
    fn a_snapshot_is_rendered_again_only_when_another_reading_turns_stale() {
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
}
