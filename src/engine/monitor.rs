//! One task per check: every `interval`, run it under its deadline, retry
//! with backoff, apply thresholds, and render its own piece of the bodies.
//! One publisher task assembles the pieces into a new `Snapshot` at most
//! once per burst of runs. Probes only ever read the snapshot.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use healthd_models::HealthStatus;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::base::policy::Policy;
use crate::checks::{Check, Observation};
use crate::config::{CheckSettings, GroupSettings, WarnStatus};
use crate::engine::render::{Layout, Piece, Renderer, ServiceInfo, Snapshot};
use crate::engine::state::{CheckState, Remembered, RunResult, RunSink};

/// Runs the checks and owns the published snapshot. Clones are handles
/// on the same checks (a reload runs beside the server).
#[derive(Clone)]
pub struct Monitor {
    core: Arc<Core>,
}

/// What a reload did to the checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckChanges {
    pub added: usize,
    /// Checks whose settings changed: they start afresh (no reading, no counters).
    pub restarted: usize,
    pub removed: usize,
    /// Checks whose settings are the same: they keep their task, so their
    /// readings, counters and schedule.
    pub unchanged: usize,
}

/// A reload's checks, built and compared with the running ones, not yet
/// started: see `Monitor::prepare`.
pub struct Prepared {
    entries: Vec<RosterChange>,
    changes: CheckChanges,
    groups: Vec<GroupSettings>,
    warn_status: WarnStatus,
}

impl Prepared {
    /// The checks this reload starts (new or changed), before they run.
    pub fn started(&self) -> impl Iterator<Item = (&CheckSettings, &Arc<dyn Check>)> {
        self.entries.iter().filter_map(|entry| match entry {
            RosterChange::Start(settings, check) => Some((settings.as_ref(), check)),
            RosterChange::Keep(_) => None,
        })
    }
}

enum RosterChange {
    Keep(Arc<Slot>),
    Start(Box<CheckSettings>, Arc<dyn Check>),
}

/// A new or changed check's first run may take this much longer than its
/// policy's worst case before the reload goes on without its reading.
const FIRST_READING_MARGIN: Duration = Duration::from_secs(1);

/// A cheap handle that reads the latest snapshot.
#[derive(Clone)]
pub struct SnapshotReader {
    core: Arc<Core>,
}

/// After assembling a snapshot that took `t`, the publisher waits at least
/// `t` times this before the next one: assembling never takes more than
/// about 1% of a core, however many checks there are.
const PUBLISH_IDLE_FACTOR: u32 = 100;
/// The least wait between two snapshots: runs that end together (checks
/// started together keep their phase) make one snapshot.
const PUBLISH_MIN_GAP: Duration = Duration::from_millis(5);
/// The most a finished run waits to be published.
const PUBLISH_MAX_GAP: Duration = Duration::from_millis(500);

/// What the monitor's handles, its tasks and the snapshot reader share.
struct Core {
    renderer: ArcSwap<Renderer>,
    roster: ArcSwap<Roster>,
    snapshot: ArcSwap<Snapshot>,
    /// A run has stored a new piece; the publisher assembles a new snapshot.
    changed: Notify,
    /// Every check has reported once: startup is over for good.
    started: AtomicBool,
    publisher: Mutex<Option<JoinHandle<()>>>,
    /// One reload at a time; `stop` waits for the one under way.
    reloading: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
    /// Takes every finished run (the store), when there is one.
    sink: Option<Arc<dyn RunSink>>,
}

/// The checks being run, in the configured order, and where their entries
/// go in the bodies.
struct Roster {
    slots: Vec<Arc<Slot>>,
    layout: Arc<Layout>,
}

/// Where one check's task publishes its latest piece. The task is its only
/// writer, but for re-renderings of the same state (turned stale, a new
/// identity), which are swapped in only over the piece they were made from.
struct Slot {
    /// What the check was started from, for a reload to compare.
    settings: CheckSettings,
    /// The check itself, for what reaches it from outside its runs
    /// (a heartbeat's pings).
    check: Arc<dyn Check>,
    piece: ArcSwap<Piece>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Slot {
    fn new(
        settings: &CheckSettings,
        check: &Arc<dyn Check>,
        renderer: &Renderer,
        remembered: Option<Remembered>,
    ) -> Arc<Slot> {
        let mut state = CheckState::new(settings, check.as_ref());
        if let Some(remembered) = remembered {
            state.remember(remembered);
        }
        Arc::new(Slot {
            settings: settings.clone(),
            check: check.clone(),
            piece: ArcSwap::from_pointee(renderer.piece(state, Instant::now())),
            task: Mutex::new(None),
        })
    }

    fn has_reported(&self) -> bool {
        self.piece.load().state.reading.is_some()
    }

    fn stop(&self) -> Option<JoinHandle<()>> {
        let task = self.task.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()?;
        task.abort();
        Some(task)
    }
}

impl Monitor {
    /// Starts one task per check (each pairs its settings with its
    /// implementation), with `groups` and what `warn` answers on
    /// `/health`, handing each finished run to `sink` and taking back what
    /// it remembered of each check (by name) from before a restart. Must
    /// run inside a tokio runtime.
    pub fn start(
        service: ServiceInfo,
        checks: Vec<(&CheckSettings, Arc<dyn Check>)>,
        groups: &[GroupSettings],
        warn_status: WarnStatus,
        sink: Option<Arc<dyn RunSink>>,
        mut remembered: HashMap<String, Remembered>,
    ) -> Monitor {
        let renderer = Renderer::new(service, 0);
        let mut pending = Vec::with_capacity(checks.len());
        let mut slots = Vec::with_capacity(checks.len());
        for (settings, check) in checks {
            let memory = remembered.remove(&settings.name);
            let slot = Slot::new(settings, &check, &renderer, memory);
            slots.push(slot.clone());
            pending.push((check, settings.policy, slot));
        }
        let core =
            Core::new(renderer, Roster::new(slots, groups, warn_status), Instant::now(), sink);
        *lock(&core.publisher) = Some(tokio::spawn(publish_forever(core.clone())));
        for (check, policy, slot) in pending {
            core.spawn(check, policy, slot);
        }
        Monitor { core }
    }

    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader { core: self.core.clone() }
    }

    /// Compares `settings` with the running checks by name, and builds the
    /// checks that are new or changed (a check that cannot be built refuses
    /// the reload: the error names it by its index in `settings`). The
    /// groups and what `warn` answers switch with the checks. Nothing
    /// changes until `apply`.
    pub fn prepare(
        &self,
        settings: &[CheckSettings],
        groups: &[GroupSettings],
        warn_status: WarnStatus,
    ) -> Result<Prepared, (usize, anyhow::Error)> {
        let roster = self.core.roster.load();
        let running: HashMap<&str, &Arc<Slot>> =
            roster.slots.iter().map(|slot| (slot.settings.name.as_str(), slot)).collect();
        let mut changes = CheckChanges::default();
        let mut entries = Vec::with_capacity(settings.len());
        let mut named = HashSet::new();
        for (index, wanted) in settings.iter().enumerate() {
            named.insert(wanted.name.as_str());
            match running.get(wanted.name.as_str()) {
                Some(slot) if slot.settings.is_same_as(wanted) => {
                    changes.unchanged += 1;
                    entries.push(RosterChange::Keep(Arc::clone(slot)));
                }
                running_one => {
                    let check = wanted.build().map_err(|error| (index, error))?;
                    if running_one.is_some() {
                        changes.restarted += 1;
                    } else {
                        changes.added += 1;
                    }
                    entries.push(RosterChange::Start(Box::new(wanted.clone()), check));
                }
            }
        }
        changes.removed = running.keys().filter(|name| !named.contains(*name)).count();
        Ok(Prepared { entries, changes, groups: groups.to_vec(), warn_status })
    }

    /// Puts a prepared set of checks in place of the running one. New and
    /// changed checks start at once, out of sight until their first reading
    /// (or their worst case has passed), so that they never show `no
    /// reading yet`; then every body switches to the new set in one
    /// snapshot, and the checks that left are stopped.
    pub async fn apply(&self, prepared: Prepared) -> CheckChanges {
        let _one_at_a_time = self.core.reloading.lock().await;
        if self.core.stopped.load(Ordering::SeqCst) {
            return CheckChanges::default();
        }
        let renderer = self.core.renderer.load_full();
        let mut slots = Vec::with_capacity(prepared.entries.len());
        // Stopped again if this future is dropped before they are in place.
        let mut starting = Starting(Vec::new());
        let mut first_reading_by = Instant::now();
        for entry in prepared.entries {
            match entry {
                RosterChange::Keep(slot) => slots.push(slot),
                RosterChange::Start(settings, check) => {
                    let slot = Slot::new(&settings, &check, &renderer, None);
                    self.core.spawn(check, settings.policy, slot.clone());
                    first_reading_by = first_reading_by
                        .max(Instant::now() + settings.policy.worst_case() + FIRST_READING_MARGIN);
                    starting.0.push(slot.clone());
                    slots.push(slot);
                }
            }
        }
        while !starting.0.iter().all(|slot| slot.has_reported())
            && Instant::now() < first_reading_by
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kept: HashSet<*const Slot> = slots.iter().map(Arc::as_ptr).collect();
        let roster = Roster::new(slots, &prepared.groups, prepared.warn_status);
        let previous = self.core.roster.swap(Arc::new(roster));
        starting.0.clear();
        self.core.publish_now();
        for slot in previous.slots.iter().filter(|slot| !kept.contains(&Arc::as_ptr(slot))) {
            slot.stop();
        }
        prepared.changes
    }

    /// The service's identity in every body from now on; the readings stay.
    pub fn set_service(&self, service_id: &str, description: Option<&str>) {
        let current = self.core.renderer.load_full();
        let service = current.service();
        if service.service_id == service_id && service.description.as_deref() == description {
            return;
        }
        let service = ServiceInfo {
            service_id: service_id.to_string(),
            description: description.map(str::to_string),
            ..service.clone()
        };
        // Pieces rendered for the old identity are rendered again as the
        // next snapshot is assembled.
        self.core.renderer.store(Arc::new(Renderer::new(service, current.epoch() + 1)));
        self.core.publish_now();
    }

    /// Stops every check task, abandoning runs in flight, and the
    /// publisher, and waits for them.
    pub async fn stop(self) {
        let _no_reload = self.core.reloading.lock().await;
        self.core.stopped.store(true, Ordering::SeqCst);
        let mut tasks: Vec<JoinHandle<()>> =
            self.core.roster.load().slots.iter().filter_map(|slot| slot.stop()).collect();
        if let Some(publisher) = lock(&self.core.publisher).take() {
            publisher.abort();
            tasks.push(publisher);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Checks a reload started, stopped unless they were put in place.
struct Starting(Vec<Arc<Slot>>);

impl Drop for Starting {
    fn drop(&mut self) {
        for slot in &self.0 {
            slot.stop();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Roster {
    fn new(slots: Vec<Arc<Slot>>, groups: &[GroupSettings], warn_status: WarnStatus) -> Roster {
        let pieces: Vec<Arc<Piece>> = slots.iter().map(|slot| slot.piece.load_full()).collect();
        let layout = Arc::new(Layout::with_groups(
            pieces.iter().map(|piece| (piece.state.name.as_str(), piece.state.measurements)),
            groups,
            warn_status,
        ));
        Roster { slots, layout }
    }
}

impl SnapshotReader {
    /// The latest snapshot, without touching its reference count on the
    /// probe path. When a reading in it has gone stale (the monitor was
    /// stopped, or the runtime is starved), it is assembled again so that
    /// stale reads as `fail`.
    pub fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        let snapshot = self.core.snapshot.load();
        let now = Instant::now();
        if !snapshot.is_stale(now) {
            return snapshot;
        }
        arc_swap::Guard::from_inner(self.core.render_again(&snapshot, now))
    }
}

impl SnapshotReader {
    /// The running check of that name, as the checks in the latest
    /// snapshot are (a reload swaps them in at once).
    pub fn running_check(&self, name: &str) -> Option<Arc<dyn Check>> {
        let roster = self.core.roster.load();
        let index = roster.layout.index_of(name)?;
        roster.slots.get(index).map(|slot| slot.check.clone())
    }
}

/// Assembles a snapshot after runs have ended, at most once per burst of
/// them: see `PUBLISH_IDLE_FACTOR`.
async fn publish_forever(core: Arc<Core>) {
    let mut earliest = tokio::time::Instant::now();
    loop {
        core.changed.notified().await;
        tokio::time::sleep_until(earliest).await;
        let began = Instant::now();
        core.publish_now();
        let gap = (began.elapsed() * PUBLISH_IDLE_FACTOR).clamp(PUBLISH_MIN_GAP, PUBLISH_MAX_GAP);
        earliest = tokio::time::Instant::now() + gap;
    }
}

async fn run_forever(check: Arc<dyn Check>, policy: Policy, slot: Arc<Slot>, core: Arc<Core>) {
    let name = slot.settings.name.clone();
    let mut ticks = tokio::time::interval(policy.interval);
    // A slow run delays the next one rather than causing a burst of runs.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Boxed for the run's length only: between runs, 10,000 idle tasks
        // then hold no room for the deadline's timer and the attempt.
        let run = Box::pin(run_once(&name, check.as_ref(), &policy)).await;
        // The piece holds the check's only copy of its state.
        let mut state = slot.piece.load().state.clone();
        let finished = state.record(run, core.sink.is_some());
        let piece = core.renderer.load().piece(state, Instant::now());
        slot.piece.store(Arc::new(piece));
        core.changed.notify_one();
        if let (Some(sink), Some(finished)) = (&core.sink, finished) {
            sink.finished(finished);
        }
    }
}

/// Said of an attempt that panicked; the panic's message goes to the log only.
pub const PANICKED: &str = "check panicked";

/// One run: attempts under the deadline, retried with full-jitter backoff.
async fn run_once(name: &str, check: &dyn Check, policy: &Policy) -> RunResult {
    let started = Instant::now();
    let mut timeouts = 0;
    let mut attempt = 0;
    loop {
        // A panic (in `attempt` itself or in its future) fails this attempt
        // only; the task and its schedule go on. Dropping the future at the
        // deadline still cancels the attempt.
        let attempt_caught = AssertUnwindSafe(async { check.attempt().await }).catch_unwind();
        let observation = match tokio::time::timeout(policy.timeout, attempt_caught).await {
            Ok(Ok(observation)) => observation,
            Ok(Err(panic)) => {
                tracing::error!(
                    check = name,
                    panic = panic_message(panic.as_ref()),
                    "check panicked"
                );
                Observation::fail(PANICKED)
            }
            Err(_) => Observation::timed_out(policy.timeout),
        };
        if observation.timed_out {
            timeouts += 1;
        }
        if observation.status != HealthStatus::Fail || attempt == policy.retries {
            return RunResult {
                observation,
                attempts: attempt + 1,
                timeouts,
                duration: started.elapsed(),
            };
        }
        let cap = policy.backoff_cap(attempt);
        tokio::time::sleep(cap.mul_f64(fastrand::f64())).await;
        attempt += 1;
    }
}

/// The text a panic was raised with, when it is one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "(not a string)",
    }
}

impl Core {
    fn new(
        renderer: Renderer,
        roster: Roster,
        now: Instant,
        sink: Option<Arc<dyn RunSink>>,
    ) -> Arc<Core> {
        let pieces = roster.slots.iter().map(|slot| slot.piece.load_full()).collect();
        let snapshot = renderer.assemble(roster.layout.clone(), pieces, now, false);
        Arc::new(Core {
            renderer: ArcSwap::from_pointee(renderer),
            roster: ArcSwap::from_pointee(roster),
            snapshot: ArcSwap::from_pointee(snapshot),
            changed: Notify::new(),
            started: AtomicBool::new(false),
            publisher: Mutex::new(None),
            reloading: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
            sink,
        })
    }

    /// Publishes a snapshot at once, not waiting for the publisher.
    fn publish_now(&self) {
        self.snapshot.store(Arc::new(self.assemble(Instant::now())));
    }

    fn spawn(self: &Arc<Self>, check: Arc<dyn Check>, policy: Policy, slot: Arc<Slot>) {
        let task = tokio::spawn(run_forever(check, policy, slot.clone(), self.clone()));
        *lock(&slot.task) = Some(task);
    }

    /// Every body from the latest pieces. Pieces that no longer read as a
    /// rendering at `now` would (turned stale, or made for another
    /// identity) are rendered again here and kept for the next time.
    fn assemble(&self, now: Instant) -> Snapshot {
        let renderer = self.renderer.load();
        let roster = self.roster.load();
        let pieces = roster
            .slots
            .iter()
            .map(|slot| {
                let piece = slot.piece.load_full();
                if piece.is_current(&renderer, now) {
                    return piece;
                }
                let fresh = Arc::new(renderer.piece(piece.state.clone(), now));
                // Unless the check's task has stored a newer run meanwhile.
                slot.piece.compare_and_swap(&piece, fresh.clone());
                fresh
            })
            .collect();
        let started = self.started.load(Ordering::Relaxed);
        let snapshot = renderer.assemble(roster.layout.clone(), pieces, now, started);
        if !snapshot.starting {
            self.started.store(true, Ordering::Relaxed);
        }
        snapshot
    }

    /// Assembles the snapshot again at `now`, so that the readings that
    /// went stale read as `fail`, and publishes that unless a newer snapshot
    /// was published meanwhile: a probe must never put back older readings
    /// over a run that was just published. Returns what is published.
    fn render_again(&self, seen: &Arc<Snapshot>, now: Instant) -> Arc<Snapshot> {
        let fresh = Arc::new(self.assemble(now));
        let previous = self.snapshot.compare_and_swap(seen, fresh.clone());
        if Arc::ptr_eq(&previous, seen) {
            fresh
        } else {
            arc_swap::Guard::into_inner(previous)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::test_support::{Hanging, Panicking, Scripted, QUICK};
    use HealthStatus::{Fail, Pass};

    #[tokio::test]
    async fn a_failed_attempt_is_retried_within_the_run() {
        let check = Scripted::new(vec![
            Some(Observation::fail("HTTP 500")),
            Some(Observation::pass(vec![Some(1.0)])),
        ]);
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.status, Pass);
        assert_eq!(run.attempts, 2);
    }

    #[tokio::test]
    async fn retries_stop_at_the_configured_count() {
        let fail = || Some(Observation::fail("HTTP 500"));
        let check = Scripted::new(vec![fail(), fail(), fail()]);
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.output.as_deref(), Some("HTTP 500"));
        assert_eq!(run.attempts, 2);
    }

    #[tokio::test]
    async fn an_attempt_that_never_ends_is_cut_at_the_deadline() {
        let check = Scripted::new(vec![None, None]);
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.status, Fail);
        assert_eq!(run.observation.output.as_deref(), Some("timed out after 50 ms"));
        assert_eq!((run.attempts, run.timeouts), (2, 2));
        assert!(run.duration < QUICK.worst_case() + Duration::from_millis(500), "{run:?}");
    }

    #[tokio::test]
    async fn a_panicking_attempt_is_a_failure_that_keeps_the_task() {
        let check = Panicking(Default::default());
        let run = run_once("c", &check, &QUICK).await;
        assert_eq!(run.observation.status, Fail);
        assert_eq!(run.observation.output.as_deref(), Some(PANICKED));
        // Both kinds of panic were caught, and the failed attempt retried.
        assert_eq!(run.attempts, 2);
        let again = run_once("c", &check, &QUICK).await;
        assert_eq!(again.observation.output.as_deref(), Some(PANICKED));
    }

    #[tokio::test]
    async fn the_deadline_drops_the_attempt_through_the_panic_catch() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let policy = Policy { retries: 0, ..QUICK };
        let run = run_once("c", &Hanging(dropped.clone()), &policy).await;
        assert_eq!(run.observation.output.as_deref(), Some("timed out after 50 ms"));
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the attempt was not dropped");
    }

    #[test]
    fn a_probe_never_puts_older_readings_back_over_a_newer_snapshot() {
        let renderer = Renderer::new(ServiceInfo::new("svc".into(), None), 0);
        let core =
            Core::new(renderer, Roster::new(Vec::new(), &[], WarnStatus::Ok), Instant::now(), None);
        let seen = core.snapshot.load_full();
        // A run publishes after the probe loaded `seen` and before it renders.
        let newer = Arc::new(core.assemble(Instant::now()));
        core.snapshot.store(newer.clone());
        let answered = core.render_again(&seen, Instant::now());
        assert!(Arc::ptr_eq(&answered, &newer));
        assert!(Arc::ptr_eq(&core.snapshot.load_full(), &newer));
        // With nothing newer, the new rendering is published.
        let rendered = core.render_again(&newer, Instant::now());
        assert!(!Arc::ptr_eq(&rendered, &newer));
        assert!(Arc::ptr_eq(&core.snapshot.load_full(), &rendered));
    }
}
