//! Snapshot -> contract models: status aggregation, and every body a probe
//! can ask for, serialised ahead of time so that a probe only copies bytes.
//!
//! A run renders only its own check: a `Piece` holds the check's own body
//! (`/health/checks/{name}`) and its entries of `/health`'s `checks` map as
//! JSON text. The bodies over all checks (and over each group's members)
//! are assembled from the pieces by concatenation, inside envelopes
//! rendered once per status, so that a run's cost does not grow with the
//! number of checks. The tests render everything through serde at once, as
//! a reference, and compare bytes.
//!
//! A probe with `?exclude=` or `?verbose` is answered from the same pieces
//! per request: one pass over the checks and one copy of the entries kept
//! (see `Snapshot::health_without` and `Snapshot::verbose`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use healthd_models::{CheckResult, HealthReport, HealthStatus};

use crate::base::severity::{self, rank};
use crate::config::{Details, GroupSettings, WarnStatus};
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

/// A ready-to-send body, the status it reports and the HTTP status it
/// answers with.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub status: HealthStatus,
    pub body: Bytes,
    code: StatusCode,
}

impl Rendered {
    fn new(report: &HealthReport) -> Self {
        let body = serde_json::to_vec(report).expect("a report always serialises");
        Rendered::of(report.status, Bytes::from(body), WarnStatus::Ok)
    }

    fn of(status: HealthStatus, body: Bytes, warn: WarnStatus) -> Self {
        Rendered { status, body, code: answer_code(status, warn) }
    }

    /// The same body, answering `warn` as `warn` says.
    fn answering(&self, warn: WarnStatus) -> Rendered {
        Rendered::of(self.status, self.body.clone(), warn)
    }

    /// The same report with `notes` (which healthd's reports otherwise
    /// leave out), spliced in as the first member so that the body is not
    /// rendered again.
    pub fn with_notes(&self, notes: &[String]) -> Rendered {
        if notes.is_empty() {
            return self.clone();
        }
        let notes = serde_json::to_vec(notes).expect("strings always serialise");
        let mut body = Vec::with_capacity(self.body.len() + notes.len() + 10);
        body.extend_from_slice(b"{\"notes\":");
        body.extend_from_slice(&notes);
        body.push(b',');
        // Every report has a `status`, so the object is never empty.
        body.extend_from_slice(&self.body[1..]);
        Rendered { status: self.status, body: Bytes::from(body), code: self.code }
    }

    /// pass answers 200 and fail 503; warn answers 200 unless this body
    /// was made for a `warn_status = 503` (`/health`, a group).
    pub fn http_status(&self) -> StatusCode {
        self.code
    }
}

/// The one mapping of a report's status to an HTTP status.
fn answer_code(status: HealthStatus, warn: WarnStatus) -> StatusCode {
    match (status, warn) {
        (HealthStatus::Pass, _) | (HealthStatus::Warn, WarnStatus::Ok) => StatusCode::OK,
        (HealthStatus::Fail, _) | (HealthStatus::Warn, WarnStatus::Unavailable) => {
            StatusCode::SERVICE_UNAVAILABLE
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
#[derive(Debug)]
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

/// The bodies and envelopes that depend on nothing but a status: rendered
/// once per identity, and shared by every snapshot, which assembles the
/// per-request answers (`?exclude=`) from them.
#[derive(Debug)]
struct Frames {
    full: [Envelope; 3],
    anonymous: [Rendered; 3],
    pass: Rendered,
    starting: Rendered,
    critical_failing: Rendered,
    draining: Rendered,
}

/// Renders pieces and assembles snapshots for one identity of the service.
/// The bodies that depend on nothing but a status are rendered here, once.
pub struct Renderer {
    service: ServiceInfo,
    /// Tells pieces rendered for another identity (before a reload changed
    /// `service_id` or `description`) from those rendered for this one.
    epoch: u64,
    /// `/health/checks/{name}`: no `version`, as before pieces.
    check: [Envelope; 3],
    frames: Arc<Frames>,
}

/// The one rule for the status of a report over some checks: `fail` when
/// a critical one fails, `warn` when any other does not pass, else `pass`;
/// and what readiness needs besides.
#[derive(Debug, Default)]
struct Tally {
    critical_failing: bool,
    concerns: bool,
    /// Some check has no reading yet.
    waiting: bool,
}

impl Tally {
    fn add(&mut self, piece: &Piece) {
        match (piece.status, piece.state.critical) {
            (HealthStatus::Fail, true) => self.critical_failing = true,
            (HealthStatus::Pass, _) => {}
            _ => self.concerns = true,
        }
        self.waiting |= piece.state.reading.is_none();
    }

    fn status(&self) -> HealthStatus {
        if self.critical_failing {
            HealthStatus::Fail
        } else if self.concerns {
            HealthStatus::Warn
        } else {
            HealthStatus::Pass
        }
    }

    /// The one "ready" rule: not draining, startup over (or `started`
    /// already), and no critical check failing.
    fn readiness(&self, started: bool, draining: bool) -> Readiness {
        if draining {
            Readiness::Draining
        } else if self.waiting && !started {
            Readiness::Starting
        } else if self.critical_failing {
            Readiness::CriticalFailing
        } else {
            Readiness::Ready
        }
    }
}

/// What readiness says, and why not when it is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Ready,
    Starting,
    CriticalFailing,
    Draining,
}

impl Readiness {
    /// The readiness body's `output`, which every caller sees.
    fn output(self) -> Option<&'static str> {
        match self {
            Readiness::Ready => None,
            Readiness::Starting => Some("starting"),
            Readiness::CriticalFailing => Some("a critical check fails"),
            Readiness::Draining => Some("draining"),
        }
    }

    fn rendered(self, frames: &Frames) -> &Rendered {
        match self {
            Readiness::Ready => &frames.pass,
            Readiness::Starting => &frames.starting,
            Readiness::CriticalFailing => &frames.critical_failing,
            Readiness::Draining => &frames.draining,
        }
    }
}

impl Renderer {
    pub fn new(service: ServiceInfo, epoch: u64) -> Renderer {
        let full = severity::ALL.map(|status| {
            let mut report = service.report(status);
            report.version = Some(service.version.clone());
            Envelope::new(report)
        });
        let frames = Frames {
            full,
            anonymous: severity::ALL.map(|status| Rendered::new(&service.report(status))),
            pass: service.with_output(HealthStatus::Pass, Readiness::Ready.output()),
            starting: service.with_output(HealthStatus::Fail, Readiness::Starting.output()),
            critical_failing: service
                .with_output(HealthStatus::Fail, Readiness::CriticalFailing.output()),
            draining: service.with_output(HealthStatus::Fail, Readiness::Draining.output()),
        };
        Renderer {
            check: severity::ALL.map(|status| Envelope::new(service.report(status))),
            frames: Arc::new(frames),
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
            output: effective.output.clone(),
            stale: is_stale(&state, now),
            body: Rendered::of(effective.status, body, WarnStatus::Ok),
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
        let mut tally = Tally::default();
        let mut stale_at: Option<Instant> = None;
        let mut length = 0;
        for piece in &pieces {
            tally.add(piece);
            // The next moment a reading turns stale; readings already stale
            // are rendered as such and need nothing until a run ends.
            if let Some(at) = piece.stale_at().filter(|at| *at >= now) {
                stale_at = Some(stale_at.map_or(at, |earliest| earliest.min(at)));
            }
            length += piece.body.body.len();
        }
        let overall = tally.status();
        let frames = &self.frames;
        let starting = tally.waiting && !started;
        let health = report(frames, &layout.keys, &pieces, |_| true, overall, length);
        let groups = layout
            .groups
            .iter()
            .map(|group| {
                let mut tally = Tally::default();
                group.members.iter().for_each(|&member| tally.add(&pieces[member]));
                let status = tally.status();
                let detailed = report(frames, &group.keys, &pieces, |_| true, status, 0);
                GroupBodies {
                    detailed: detailed.answering(group.warn_status),
                    anonymous: frames.anonymous[status_index(status)].answering(group.warn_status),
                }
            })
            .collect();
        Snapshot {
            health: health.answering(layout.warn_status),
            health_anonymous: frames.anonymous[status_index(overall)].answering(layout.warn_status),
            liveness: frames.pass.clone(),
            readiness: tally.readiness(started, false).rendered(frames).clone(),
            draining: frames.draining.clone(),
            startup: if starting { frames.starting.clone() } else { frames.pass.clone() },
            starting: tally.waiting,
            started,
            groups,
            frames: frames.clone(),
            stale_at,
            layout,
            pieces,
        }
    }
}

/// A detailed report of `status`: the entries of `keys` (in their order)
/// from the pieces `keep` admits, in the envelope of `status`.
fn report(
    frames: &Frames,
    keys: &[Vec<(usize, usize)>],
    pieces: &[Arc<Piece>],
    keep: impl Fn(usize) -> bool,
    status: HealthStatus,
    length: usize,
) -> Rendered {
    let envelope = &frames.full[status_index(status)];
    let mut body = Vec::with_capacity(envelope.prefix.len() + length + envelope.suffix.len());
    body.extend_from_slice(&envelope.prefix);
    let mut empty = true;
    for candidates in keys {
        let entry = candidates
            .iter()
            .filter(|&&(check, _)| keep(check))
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
    Rendered::of(status, Bytes::from(body), WarnStatus::Ok)
}

/// One check, rendered as it read when its latest run ended (or when it
/// turned stale).
#[derive(Debug)]
pub struct Piece {
    pub state: CheckState,
    /// What the check reports: its reading's status, or fail when it has
    /// none or the reading went stale.
    pub status: HealthStatus,
    /// The output its entries show (`?verbose` lines show it too).
    output: Option<String>,
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

/// Where each check's entries go in `/health`, which check a name means,
/// and the groups: fixed for a set of checks and groups, so that it is
/// worked out when the set changes (at start and on reload), not on every
/// run.
#[derive(Debug)]
pub struct Layout {
    /// Every `name:measurement` key in the order of `/health`'s map, each
    /// with the (check, measurement) pairs that bear it, the one that wins
    /// first. Two pairs bear one key only when checks share a name (checks
    /// from code may): like a map built from all entries, the last one taken wins.
    keys: Vec<Vec<(usize, usize)>>,
    names: HashMap<String, usize>,
    groups: Vec<GroupLayout>,
    group_names: HashMap<String, usize>,
    /// What `warn` answers on `/health`.
    warn_status: WarnStatus,
}

/// One `[[groups]]` entry over the checks of a layout.
#[derive(Debug)]
struct GroupLayout {
    members: Vec<usize>,
    /// `Layout::keys`, kept to the members' pairs.
    keys: Vec<Vec<(usize, usize)>>,
    details: Option<Details>,
    warn_status: WarnStatus,
}

impl Layout {
    /// Where the check of that name is among the pieces.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.get(name).copied()
    }

    /// `checks` in the order of the pieces: each check's name and measurements.
    #[cfg(test)]
    pub fn new<'a>(
        checks: impl IntoIterator<Item = (&'a str, &'a [(&'static str, &'static str)])>,
    ) -> Layout {
        Layout::with_groups(checks, &[], WarnStatus::Ok)
    }

    /// As `new`, with `[[groups]]` (members named by check names) and what
    /// `warn` answers on `/health`. A member name no check has is left out
    /// (the config refuses it).
    pub fn with_groups<'a>(
        checks: impl IntoIterator<Item = (&'a str, &'a [(&'static str, &'static str)])>,
        groups: &[GroupSettings],
        warn_status: WarnStatus,
    ) -> Layout {
        let mut keyed = Vec::new();
        let mut names = HashMap::new();
        let mut check_names = Vec::new();
        for (check, (name, measurements)) in checks.into_iter().enumerate() {
            names.insert(name.to_string(), check);
            check_names.push(name);
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
        let mut group_names = HashMap::new();
        let groups = groups
            .iter()
            .enumerate()
            .map(|(index, group)| {
                group_names.insert(group.name.clone(), index);
                let members: Vec<usize> = (0..check_names.len())
                    .filter(|&check| group.members.iter().any(|name| name == check_names[check]))
                    .collect();
                let keys = keys
                    .iter()
                    .map(|candidates| {
                        candidates
                            .iter()
                            .filter(|(check, _)| members.contains(check))
                            .copied()
                            .collect::<Vec<_>>()
                    })
                    .filter(|candidates| !candidates.is_empty())
                    .collect();
                GroupLayout {
                    members,
                    keys,
                    details: group.details,
                    warn_status: group.warn_status,
                }
            })
            .collect();
        Layout { keys, names, groups, group_names, warn_status }
    }
}

/// A group's bodies, per disclosure tier.
#[derive(Debug)]
struct GroupBodies {
    detailed: Rendered,
    anonymous: Rendered,
}

/// What `/health/groups/{name}` answers with.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    /// The group's own `details`: it may show less than `[access]`.
    pub details: Option<Details>,
    /// For callers who see details: the members' readings.
    pub detailed: &'a Rendered,
    /// For everyone else: status and identity only.
    pub anonymous: &'a Rendered,
}

/// Checks a probe's `?exclude=` leaves out, as indexes into the pieces,
/// sorted: a long `?exclude=` list costs a probe a binary search per check.
#[derive(Debug, Default)]
pub struct Excluded(Vec<usize>);

impl Excluded {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, check: usize) -> bool {
        self.0.binary_search(&check).is_ok()
    }
}

/// The probes that take `?exclude=` and `?verbose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Health,
    Ready,
    Live,
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
    /// Every check had reported once before this snapshot.
    started: bool,
    /// Each group's bodies, in the order of `layout.groups`.
    groups: Vec<GroupBodies>,
    frames: Arc<Frames>,
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

    /// The group of that name.
    pub fn group(&self, name: &str) -> Option<Group<'_>> {
        let &index = self.layout.group_names.get(name)?;
        let bodies = &self.groups[index];
        Some(Group {
            details: self.layout.groups[index].details,
            detailed: &bodies.detailed,
            anonymous: &bodies.anonymous,
        })
    }

    /// The checks `names` (`?exclude=`) leaves out; the first name no check
    /// has is the error.
    pub fn excluded<'n>(
        &self,
        names: impl IntoIterator<Item = &'n str>,
    ) -> Result<Excluded, &'n str> {
        let mut excluded = Vec::new();
        for name in names {
            excluded.push(*self.layout.names.get(name).ok_or(name)?);
        }
        excluded.sort_unstable();
        excluded.dedup();
        Ok(Excluded(excluded))
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

    /// `/health/ready?exclude=...`: readiness by the same rule, over the
    /// checks not excluded.
    pub fn readiness_without(&self, draining: bool, excluded: &Excluded) -> &Rendered {
        if excluded.is_empty() {
            return self.readiness_answer(draining);
        }
        self.tally(excluded).readiness(self.started, draining).rendered(&self.frames)
    }

    /// `/health?exclude=...`: the report over the checks not excluded,
    /// with their entries for callers who see details. Costs one pass over
    /// the checks and, with details, one copy of the entries kept.
    pub fn health_without(&self, excluded: &Excluded, details: bool) -> Rendered {
        let status = self.tally(excluded).status();
        let warn = self.layout.warn_status;
        if !details {
            return self.frames.anonymous[status_index(status)].answering(warn);
        }
        let keep = |check| !excluded.contains(check);
        let length = self.health.body.len();
        report(&self.frames, &self.layout.keys, &self.pieces, keep, status, length).answering(warn)
    }

    fn tally(&self, excluded: &Excluded) -> Tally {
        let mut tally = Tally::default();
        for (check, piece) in self.pieces.iter().enumerate() {
            if !excluded.contains(check) {
                tally.add(piece);
            }
        }
        tally
    }

    /// `?verbose`: one line per check the probe counts, as kube-apiserver
    /// writes them (`[+]db ok`, `[-]cache failed: connection refused`,
    /// `[+]search excluded: ok`), then whether the probe passed. Callers
    /// who do not see details read `reason withheld` for each output.
    /// Answers with the status code the probe answers without it.
    pub fn verbose(
        &self,
        probe: Probe,
        excluded: &Excluded,
        details: bool,
        draining: bool,
    ) -> (StatusCode, String) {
        let (label, code, reason) = match probe {
            Probe::Health => {
                let status = self.tally(excluded).status();
                ("health", answer_code(status, self.layout.warn_status), None)
            }
            Probe::Ready => {
                let readiness = self.tally(excluded).readiness(self.started, draining);
                ("ready", readiness.rendered(&self.frames).http_status(), readiness.output())
            }
            Probe::Live => ("live", self.liveness.http_status(), None),
        };
        let mut text = String::with_capacity(32 * self.pieces.len() + 32);
        for (check, piece) in self.pieces.iter().enumerate() {
            let counts = match probe {
                Probe::Health => true,
                Probe::Ready => piece.state.critical,
                Probe::Live => false,
            };
            if !counts {
                continue;
            }
            let name = &piece.state.name;
            if excluded.contains(check) {
                let _ = writeln!(text, "[+]{name} excluded: ok");
                continue;
            }
            let reason = || {
                if details {
                    one_line(piece.output.as_deref().unwrap_or("no output"))
                } else {
                    "reason withheld".to_string()
                }
            };
            let _ = match piece.status {
                HealthStatus::Pass => writeln!(text, "[+]{name} ok"),
                HealthStatus::Warn => writeln!(text, "[+]{name} warn: {}", reason()),
                HealthStatus::Fail => writeln!(text, "[-]{name} failed: {}", reason()),
            };
        }
        // Readiness' own reasons (starting, draining, a critical check
        // fails) are in every caller's readiness body already.
        let _ = match (code == StatusCode::OK, reason) {
            (true, _) => writeln!(text, "{label} check passed"),
            (false, Some(reason)) => writeln!(text, "{label} check failed: {reason}"),
            (false, None) => writeln!(text, "{label} check failed"),
        };
        (code, text)
    }
}

/// An output on one line of `?verbose` text: control characters become spaces.
fn one_line(output: &str) -> String {
    output.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
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

    fn group(name: &str, members: &[&str], warn_status: WarnStatus) -> GroupSettings {
        GroupSettings {
            name: name.into(),
            members: members.iter().map(|member| member.to_string()).collect(),
            details: None,
            warn_status,
        }
    }

    fn render_grouped(
        states: Vec<CheckState>,
        groups: &[GroupSettings],
        warn_status: WarnStatus,
    ) -> Snapshot {
        let renderer = Renderer::new(ServiceInfo::new("svc".into(), None), 0);
        let now = Instant::now();
        let layout = Arc::new(Layout::with_groups(
            states.iter().map(|state| (state.name.as_str(), state.measurements)),
            groups,
            warn_status,
        ));
        let pieces = states.into_iter().map(|state| Arc::new(renderer.piece(state, now))).collect();
        renderer.assemble(layout, pieces, now, false)
    }

    #[test]
    fn a_group_reports_only_its_members_and_maps_warn_as_it_says() {
        let states = vec![
            state("db", true, Some(HealthStatus::Pass)),
            state("disk", true, Some(HealthStatus::Warn)),
            state("cache", true, Some(HealthStatus::Fail)),
        ];
        let groups = [
            group("core", &["db", "disk"], WarnStatus::Unavailable),
            group("lenient", &["disk"], WarnStatus::Ok),
            group("cache", &["cache"], WarnStatus::Ok),
        ];
        let snapshot = render_grouped(states, &groups, WarnStatus::Ok);
        let core = snapshot.group("core").unwrap();
        assert_eq!(core.detailed.status, HealthStatus::Warn);
        assert_eq!(core.detailed.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(core.anonymous.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let keys: Vec<String> =
            body(core.detailed)["checks"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["db:connections", "db:responseTime", "disk:responseTime"]);
        assert!(body(core.anonymous).get("checks").is_none());
        let lenient = snapshot.group("lenient").unwrap();
        assert_eq!(lenient.detailed.http_status(), StatusCode::OK);
        let cache = snapshot.group("cache").unwrap();
        assert_eq!(cache.detailed.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(snapshot.group("nope").is_none());
        // The service as a whole: a critical check fails.
        assert_eq!(snapshot.health.http_status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn the_service_maps_warn_to_503_when_told() {
        let states = vec![state("disk", true, Some(HealthStatus::Warn))];
        let snapshot = render_grouped(states.clone(), &[], WarnStatus::Unavailable);
        assert_eq!(snapshot.health.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(snapshot.health_anonymous.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        // Readiness follows its own rule: a critical check that warns is ready.
        assert!(snapshot.is_ready(false));
        let snapshot = render_grouped(states, &[], WarnStatus::Ok);
        assert_eq!(snapshot.health.http_status(), StatusCode::OK);
    }

    #[test]
    fn excluding_checks_answers_as_if_they_were_not_configured() {
        let all = vec![
            state("db", true, Some(HealthStatus::Pass)),
            state("cache", true, Some(HealthStatus::Fail)),
            state("disk", false, Some(HealthStatus::Warn)),
        ];
        let snapshot = render(all.clone());
        let excluded = snapshot.excluded(["cache", "cache"]).unwrap();
        let without = snapshot.health_without(&excluded, true);
        let reference = render(vec![all[0].clone(), all[2].clone()]);
        assert_eq!(without.body, reference.health.body);
        assert_eq!(without.http_status(), StatusCode::OK);
        let anonymous = snapshot.health_without(&excluded, false);
        assert_eq!(anonymous.body, reference.health_anonymous.body);
        assert_eq!(snapshot.readiness_without(false, &excluded).http_status(), StatusCode::OK);
        assert!(!snapshot.is_ready(false));
        assert_eq!(
            snapshot.readiness_without(true, &excluded).http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(snapshot.excluded(["db", "nope"]).unwrap_err(), "nope");
    }

    #[test]
    fn verbose_lines_follow_kube_apiserver_and_withhold_outputs_without_details() {
        let snapshot = render(vec![
            state("db", true, Some(HealthStatus::Pass)),
            state("cache", false, Some(HealthStatus::Fail)),
            state("disk", true, Some(HealthStatus::Warn)),
        ]);
        let none = Excluded::default();
        let (code, text) = snapshot.verbose(Probe::Health, &none, true, false);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            text,
            "[+]db ok\n[-]cache failed: connection refused\n[+]disk warn: free space below 10%\nhealth check passed\n"
        );
        let (_, text) = snapshot.verbose(Probe::Health, &none, false, false);
        assert_eq!(
            text,
            "[+]db ok\n[-]cache failed: reason withheld\n[+]disk warn: reason withheld\nhealth check passed\n"
        );
        // Readiness lists the critical checks only.
        let excluded = snapshot.excluded(["disk"]).unwrap();
        let (code, text) = snapshot.verbose(Probe::Ready, &excluded, false, false);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(text, "[+]db ok\n[+]disk excluded: ok\nready check passed\n");
        let (code, text) = snapshot.verbose(Probe::Ready, &excluded, false, true);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(text.ends_with("ready check failed: draining\n"), "{text}");
        let (code, text) = snapshot.verbose(Probe::Live, &excluded, true, true);
        assert_eq!((code, text.as_str()), (StatusCode::OK, "live check passed\n"));
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
