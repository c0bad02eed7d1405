//! Telling someone: `[[alerts]]` routes turn the engine's changes of
//! status into notifications, grouped per route, held back by maintenance
//! windows and failing dependencies, and delivered through an outbox (in
//! the store when there is one) to each receiver, with retries. Never on a
//! check's or a probe's path: the engine hands changes to a bounded queue,
//! one thread routes them, one task per receiver delivers.

mod dispatch;
pub mod receivers;
pub mod router;
pub mod test_alert;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver as Inbox, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::{DateTime, TimeDelta, Utc};
use healthd_models::{AlertList, HealthStatus, Notification};

use crate::alerts::dispatch::Delivery;
pub use crate::alerts::dispatch::DeliveryStats;
use crate::alerts::router::{AlertState, Change, CheckInfo, Effects, Router};
use crate::config::alerts::{AlertSettings, MaintenanceSettings, ReceiverSettings, RouteSettings};
use crate::config::CheckSettings;
use crate::engine::state::{FinishedRun, RunSink};
use crate::store::outbox::{MemoryOutbox, Outbox, OutboxEntry};

/// Changes waiting for the router; a storm of 10,000 fits.
const QUEUE: usize = 16_384;
/// How long delivered and given-up notifications stay in the outbox.
const KEEP_FINISHED: TimeDelta = TimeDelta::days(7);
/// How often the outbox is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3_600);
/// The list `/health/alerts` answers is rebuilt at most this often.
const VIEW_EVERY: Duration = Duration::from_millis(200);

/// The alerts of a running healthd. Cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    shared: Arc<Shared>,
}

struct Shared {
    input: SyncSender<Input>,
    view: ArcSwap<AlertList>,
    outbox: Arc<dyn Outbox>,
    /// The receivers that deliver now, by name.
    deliveries: ArcSwap<HashMap<String, Arc<Delivery>>>,
    /// Each receiver's counters, kept across reloads.
    stats: Mutex<HashMap<String, Arc<DeliveryStats>>>,
    /// Changes lost because the queue was full.
    dropped: AtomicU64,
    router: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Input {
    Change(Change),
    Reconfigure(Box<RouterConfig>),
    Stop,
}

struct RouterConfig {
    routes: Vec<RouteSettings>,
    maintenance: Vec<MaintenanceSettings>,
    checks: HashMap<String, CheckInfo>,
    refresh: HashMap<String, Duration>,
}

/// Receivers built from a config, before anything changes: a receiver
/// that cannot be built refuses the start or the reload.
pub struct Prepared {
    settings: AlertSettings,
    receivers: HashMap<String, Built>,
}

type Built = (ReceiverSettings, Arc<dyn receivers::Receiver>);

impl Prepared {
    pub fn new(settings: &AlertSettings) -> anyhow::Result<Prepared> {
        let mut built = HashMap::new();
        for receiver in &settings.receivers {
            let made = receivers::build(receiver)
                .map_err(|error| anyhow::anyhow!("receivers: {}: {error:#}", receiver.name))?;
            built.insert(receiver.name.clone(), (receiver.clone(), made));
        }
        Ok(Prepared { settings: settings.clone(), receivers: built })
    }

    fn router_config(&self, checks: &[CheckSettings]) -> RouterConfig {
        RouterConfig {
            routes: self.settings.routes.clone(),
            maintenance: self.settings.maintenance.clone(),
            checks: check_infos(checks),
            refresh: self
                .receivers
                .iter()
                .filter_map(|(name, (_, receiver))| Some((name.clone(), receiver.refresh_every()?)))
                .collect(),
        }
    }
}

/// Who this healthd is, as its notifications say.
pub struct Identity {
    pub service: String,
    pub instance: String,
}

impl Alerts {
    /// Starts routing and delivering: takes back the alerts' states kept in
    /// `outbox` (none: in memory) and each check's status from before a
    /// restart, and sends what was pending. Must run inside a tokio runtime.
    pub fn start(
        identity: Identity,
        prepared: Prepared,
        checks: &[CheckSettings],
        outbox: Option<Arc<dyn Outbox>>,
        statuses: HashMap<String, (HealthStatus, DateTime<Utc>)>,
    ) -> Alerts {
        let outbox = outbox.unwrap_or_else(|| Arc::new(MemoryOutbox::default()));
        let (input, inbox) = sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            input,
            view: ArcSwap::from_pointee(AlertList { alerts: Vec::new(), maintenance: Vec::new() }),
            outbox: outbox.clone(),
            deliveries: ArcSwap::from_pointee(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            dropped: AtomicU64::new(0),
            router: Mutex::new(None),
        });
        let config = prepared.router_config(checks);
        let mut router = Router::new(
            identity.service,
            identity.instance,
            config.routes,
            config.maintenance,
            config.checks,
            config.refresh,
        );
        let kept = match outbox.alert_states() {
            Ok(kept) => kept,
            Err(error) => {
                tracing::error!(%error, "the alerts' states cannot be read: alerts start afresh");
                Vec::new()
            }
        };
        let kept = kept
            .into_iter()
            .filter_map(|(route, check, state)| {
                Some((route, check, serde_json::from_str::<AlertState>(&state).ok()?))
            })
            .collect();
        let effects = router.restore(kept, statuses);
        let alerts = Alerts { shared };
        alerts.start_deliveries(prepared.receivers);
        let runtime = tokio::runtime::Handle::current();
        let shared = alerts.shared.clone();
        let thread = std::thread::Builder::new()
            .name("healthd-alerts".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                route_forever(router, inbox, &shared, effects);
            })
            .expect("starting the alerts' thread");
        *lock(&alerts.shared.router) = Some(thread);
        alerts
    }

    /// What the engine hands each finished run to: only changes of status
    /// go on, and never wait.
    pub fn sink(&self) -> Arc<dyn RunSink> {
        Arc::new(ChangeSink { shared: self.shared.clone() })
    }

    /// Switches to a reloaded config: routes, windows and receivers. The
    /// alerts of (route, check) pairs that remain stay as they are.
    pub fn apply(&self, prepared: Prepared, checks: &[CheckSettings]) {
        let config = prepared.router_config(checks);
        self.start_deliveries(prepared.receivers);
        // A reload must get through even when changes fill the queue.
        if self.shared.input.send(Input::Reconfigure(Box::new(config))).is_err() {
            tracing::error!("the alerts' thread has stopped: the reload does not reach the routes");
        }
    }

    fn start_deliveries(&self, receivers: HashMap<String, Built>) {
        let mut deliveries = HashMap::new();
        let mut stats = lock(&self.shared.stats);
        for (name, (settings, receiver)) in receivers {
            let counters = stats.entry(name.clone()).or_default().clone();
            let delivery =
                Delivery::start(settings, receiver, counters, self.shared.outbox.clone());
            deliveries.insert(name, delivery);
        }
        stats.retain(|name, _| deliveries.contains_key(name));
        let previous = self.shared.deliveries.swap(Arc::new(deliveries));
        for delivery in previous.values() {
            delivery.stop();
        }
    }

    /// The alerts pending, firing or suppressed, and the windows in force.
    pub fn list(&self) -> Arc<AlertList> {
        self.shared.view.load_full()
    }

    /// Each receiver's counters, by name.
    pub fn stats(&self) -> Vec<(String, Arc<DeliveryStats>)> {
        let mut stats: Vec<_> = lock(&self.shared.stats)
            .iter()
            .map(|(name, stats)| (name.clone(), stats.clone()))
            .collect();
        stats.sort_by(|a, b| a.0.cmp(&b.0));
        stats
    }

    /// Changes of status lost because the router's queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Stops routing and delivering. What is pending stays in the outbox.
    pub fn stop(&self) {
        let _ = self.shared.input.send(Input::Stop);
        if let Some(thread) = lock(&self.shared.router).take() {
            let _ = thread.join();
        }
        for delivery in self.shared.deliveries.swap(Arc::new(HashMap::new())).values() {
            delivery.stop();
        }
    }
}

/// What the routes need of each check.
fn check_infos(checks: &[CheckSettings]) -> HashMap<String, CheckInfo> {
    checks
        .iter()
        .map(|check| {
            let info = CheckInfo {
                kind: check.kind.to_string(),
                critical: check.critical,
                tags: check.tags.clone(),
                depends_on: check.depends_on.clone(),
            };
            (check.name.clone(), info)
        })
        .collect()
}

struct ChangeSink {
    shared: Arc<Shared>,
}

impl RunSink for ChangeSink {
    fn finished(&self, run: FinishedRun) {
        if run.previous == Some(run.status) {
            return;
        }
        let change = Change {
            check: run.check.to_string(),
            status: run.status,
            time: run.time,
            output: run.output.map(|output| output.to_string()),
        };
        if self.shared.input.try_send(Input::Change(change)).is_err() {
            let before = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if before == 0 {
                tracing::error!("the alerts' queue is full: changes of status are dropped (see healthd_alerts_dropped_total)");
            }
        }
    }
}

/// The router's thread: takes changes in batches, ticks at least once a
/// second, writes what the routes decided and wakes the receivers.
fn route_forever(mut router: Router, inbox: Inbox<Input>, shared: &Shared, restored: Effects) {
    let mut unwritten = Unwritten::default();
    unwritten.take(restored, shared);
    let mut last_view: Option<Instant> = None;
    let mut last_prune = Instant::now();
    loop {
        let now = Utc::now();
        let wait = (router.next_tick(now) - now).to_std().unwrap_or(Duration::ZERO);
        let mut effects = Effects::default();
        let mut changed = false;
        let first = match inbox.recv_timeout(wait) {
            Ok(input) => Some(input),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        for input in
            first.into_iter().chain(std::iter::from_fn(|| inbox.try_recv().ok()).take(QUEUE))
        {
            changed = true;
            match input {
                Input::Change(change) => effects.extend(router.change(change)),
                Input::Reconfigure(config) => effects.extend(router.reconfigure(
                    config.routes,
                    config.maintenance,
                    config.checks,
                    config.refresh,
                )),
                Input::Stop => {
                    unwritten.take(effects, shared);
                    return;
                }
            }
        }
        effects.extend(router.tick(Utc::now()));
        changed |= !effects.is_empty();
        unwritten.take(effects, shared);
        let due = last_view.is_none_or(|last| last.elapsed() >= VIEW_EVERY);
        if changed && due || last_view.is_none_or(|last| last.elapsed() >= Duration::from_secs(1)) {
            let (alerts, maintenance) = router.active(Utc::now());
            shared.view.store(Arc::new(AlertList { alerts, maintenance }));
            last_view = Some(Instant::now());
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(error) = shared.outbox.prune(Utc::now() - KEEP_FINISHED) {
                tracing::warn!(%error, "the outbox could not be pruned");
            }
        }
    }
}

/// What the router decided and the outbox has not taken yet (the store is
/// down): tried again at each pass, in order, so nothing is lost.
#[derive(Default)]
struct Unwritten {
    states: Vec<(String, String, Option<String>)>,
    entries: Vec<OutboxEntry>,
    failing_since: Option<Instant>,
}

impl Unwritten {
    fn take(&mut self, effects: Effects, shared: &Shared) {
        for (route, check, state) in effects.states {
            let state = state
                .map(|state| serde_json::to_string(&state).expect("an alert state serialises"));
            self.states.push((route, check, state));
        }
        for notification in effects.notifications {
            self.entries.push(entry(&notification));
        }
        self.write(shared);
    }

    fn write(&mut self, shared: &Shared) {
        // Notifications before the states that say they were made: killed
        // between the two, a restart tells an alert again rather than never.
        let mut failure = None;
        let mut written = 0;
        let deliveries = shared.deliveries.load();
        for entry in &self.entries {
            if let Err(error) = shared.outbox.put(entry) {
                failure = Some(error);
                break;
            }
            written += 1;
            if let Some(delivery) = deliveries.get(&entry.receiver) {
                delivery.wake();
            }
        }
        self.entries.drain(..written);
        let mut written = 0;
        if failure.is_none() {
            for (route, check, state) in &self.states {
                if let Err(error) = shared.outbox.set_alert_state(route, check, state.as_deref()) {
                    failure = Some(error);
                    break;
                }
                written += 1;
            }
        }
        self.states.drain(..written);
        match failure {
            Some(error) if self.failing_since.is_none() => {
                self.failing_since = Some(Instant::now());
                tracing::error!(%error, "the outbox cannot be written: notifications wait in memory until it can");
            }
            None if self.failing_since.take().is_some() => {
                tracing::info!("the outbox is written again");
            }
            _ => {}
        }
    }
}

/// A new notification's outbox entry, due at once.
fn entry(notification: &Notification) -> OutboxEntry {
    OutboxEntry {
        id: notification.id.clone(),
        receiver: notification.receiver.clone(),
        body: serde_json::to_string(notification).expect("a notification serialises"),
        created: notification.created_at,
        attempts: 0,
        next_attempt: notification.created_at,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
