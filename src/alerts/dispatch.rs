//! Delivery: one task per receiver takes the notifications due from the
//! outbox and makes one attempt each, at most `concurrency` at once, each
//! bounded by the receiver's `timeout`; a failed attempt is retried with
//! exponential backoff and jitter, with the same idempotency key, until it
//! succeeds, is refused, or `give_up_after` has passed. The outcome of each
//! attempt is written before the next is taken, so a restart resends only
//! what was not delivered (at least once; never twice for a delivery that
//! was recorded).

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use futures_util::{FutureExt, StreamExt};
use healthd_models::Notification;
use tokio::sync::Notify;

use crate::alerts::receivers::{DeliveryError, Receiver};
use crate::config::alerts::ReceiverSettings;
use crate::store::outbox::{Attempted, Outbox, OutboxEntry};
use crate::store::StoreError;

/// Undelivered entries looked at a time, oldest first.
const LOOKAHEAD: usize = 256;
/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often an idle receiver looks at the outbox anyway (an entry the
/// router could not wake it for, a store that came back).
const IDLE_POLL: Duration = Duration::from_secs(30);

/// A receiver's counters, as `/metrics` shows them.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Notifications delivered.
    pub sent: AtomicU64,
    /// Notifications given up (refused, or failing past `give_up_after`).
    pub failed: AtomicU64,
    /// Attempts that failed and will be tried again.
    pub retried: AtomicU64,
    /// Notifications not yet delivered nor given up.
    pub pending: AtomicU64,
}

/// One receiver's delivery task.
pub struct Delivery {
    wake: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Delivery {
    pub fn start(
        settings: ReceiverSettings,
        receiver: Arc<dyn Receiver>,
        stats: Arc<DeliveryStats>,
        outbox: Arc<dyn Outbox>,
    ) -> Arc<Delivery> {
        let delivery = Arc::new(Delivery { wake: Notify::new(), task: Mutex::new(None) });
        let worker = Worker { settings, receiver, stats, outbox, delivery: delivery.clone() };
        let task = tokio::spawn(worker.deliver_forever());
        *delivery.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        delivery
    }

    /// Something is due: look now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the task; an attempt in flight is abandoned and made again
    /// later (by the next task, or after a restart).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Each route's oldest undelivered entry, in the order given: a route's
/// notifications go out in order, so that a firing one still being retried
/// is never delivered after the resolution that followed it (which would
/// open the incident again at PagerDuty or Alertmanager).
fn heads(entries: Vec<OutboxEntry>) -> Vec<OutboxEntry> {
    #[derive(serde::Deserialize)]
    struct RouteOf {
        route: String,
    }
    let mut routes = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|entry| {
            // An unreadable body goes to `attempt`, which gives it up.
            let route = serde_json::from_str::<RouteOf>(&entry.body).map(|of| of.route).ok();
            route.is_none_or(|route| routes.insert(route))
        })
        .collect()
}

struct Worker {
    settings: ReceiverSettings,
    receiver: Arc<dyn Receiver>,
    stats: Arc<DeliveryStats>,
    outbox: Arc<dyn Outbox>,
    delivery: Arc<Delivery>,
}

impl Worker {
    async fn deliver_forever(self) {
        let name = self.settings.name.clone();
        let mut outbox_failing = false;
        loop {
            let undelivered = {
                let name = name.clone();
                self.blocking(move |outbox| outbox.undelivered(&name, LOOKAHEAD)).await
            };
            let mut next = None;
            match undelivered {
                Ok(entries) => {
                    outbox_failing = false;
                    let now = Utc::now();
                    let (due, later): (Vec<_>, Vec<_>) =
                        heads(entries).into_iter().partition(|entry| entry.next_attempt <= now);
                    if !due.is_empty() {
                        futures_util::stream::iter(due)
                            .for_each_concurrent(self.settings.concurrency, |entry| {
                                self.attempt(entry)
                            })
                            .await;
                        self.count_pending().await;
                        continue;
                    }
                    next = later.iter().map(|entry| entry.next_attempt).min();
                }
                Err(error) => {
                    if !outbox_failing {
                        tracing::error!(receiver = %name, %error, "the outbox cannot be read: delivery waits for it");
                    }
                    outbox_failing = true;
                }
            }
            self.count_pending().await;
            let wait = next
                .map(|next| (next - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            tokio::select! {
                () = self.delivery.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One attempt at one entry, and its outcome written.
    async fn attempt(&self, entry: OutboxEntry) {
        let name = &self.settings.name;
        let attempts = entry.attempts.saturating_add(1);
        let outcome = match serde_json::from_str::<Notification>(&entry.body) {
            Err(error) => {
                Attempted::GivenUp(format!("the outbox holds an unreadable notification: {error}"))
            }
            Ok(notification) => {
                let sending = AssertUnwindSafe(self.receiver.deliver(&notification)).catch_unwind();
                let result = match tokio::time::timeout(self.settings.timeout, sending).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_panicked)) => {
                        Err(DeliveryError::Refused("the receiver panicked".into()))
                    }
                    Err(_) => Err(DeliveryError::Retry(format!(
                        "no answer within its timeout of {} s",
                        self.settings.timeout.as_secs_f64()
                    ))),
                };
                self.outcome(&entry, attempts, result)
            }
        };
        match &outcome {
            Attempted::Delivered => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(receiver = %name, id = %entry.id, attempts, "notification delivered");
            }
            Attempted::RetryAt(next, error) => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(receiver = %name, id = %entry.id, attempts, %error, next = %next.to_rfc3339(), "notification not delivered: tried again later");
            }
            Attempted::GivenUp(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(receiver = %name, id = %entry.id, attempts, %error, "notification given up");
            }
        }
        let id = entry.id.clone();
        let written =
            self.blocking(move |outbox| outbox.record(&id, attempts, &outcome, Utc::now())).await;
        if let Err(error) = written {
            // Sent again after the store returns: at least once.
            tracing::error!(receiver = %name, id = %entry.id, %error, "the outcome of a delivery could not be written");
        }
    }

    fn outcome(
        &self,
        entry: &OutboxEntry,
        attempts: u32,
        result: Result<(), DeliveryError>,
    ) -> Attempted {
        match result {
            Ok(()) => Attempted::Delivered,
            Err(DeliveryError::Refused(reason)) => Attempted::GivenUp(reason),
            Err(DeliveryError::Retry(reason)) => {
                let next = Utc::now() + backoff(attempts);
                let give_up_at = entry.created + delta(self.settings.give_up_after);
                if next > give_up_at {
                    Attempted::GivenUp(format!(
                        "{reason} (still failing after {attempts} attempts)"
                    ))
                } else {
                    Attempted::RetryAt(next, reason)
                }
            }
        }
    }

    async fn count_pending(&self) {
        let name = self.settings.name.clone();
        if let Ok(pending) = self.blocking(move |outbox| outbox.pending()).await {
            let mine = pending.get(&name).copied().unwrap_or(0);
            self.stats.pending.store(mine, Ordering::Relaxed);
        }
    }

    /// An outbox call, off the runtime's threads (SQLite and PostgreSQL
    /// calls block).
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn Outbox) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || call(outbox.as_ref())).await {
            Ok(result) => result,
            Err(error) => Err(StoreError::Other(format!("the outbox call failed: {error}"))),
        }
    }
}

/// The wait before attempt `attempts + 1`: 1 s, 2 s, 4 s ... up to five
/// minutes, ±20 % so that receivers coming back are not hit all at once.
pub fn backoff(attempts: u32) -> TimeDelta {
    let base = Duration::from_secs(1u64 << attempts.saturating_sub(1).min(16)).min(MAX_BACKOFF);
    delta(base.mul_f64(0.8 + 0.4 * fastrand::f64()))
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, route: &str, created: i64) -> OutboxEntry {
        let at = chrono::DateTime::from_timestamp(1_800_000_000 + created, 0).unwrap();
        OutboxEntry {
            id: id.into(),
            receiver: "hook".into(),
            body: format!(r#"{{"route":"{route}","id":"{id}"}}"#),
            created: at,
            attempts: 0,
            next_attempt: at,
        }
    }

    #[test]
    fn only_each_routes_oldest_notification_is_tried() {
        let mut unreadable = entry("unreadable", "ops", 3);
        unreadable.body = "not json".into();
        let entries = vec![
            entry("fired", "team", 0),
            entry("other", "ops", 1),
            entry("resolved", "team", 2),
            unreadable,
        ];
        let ids: Vec<String> = heads(entries).into_iter().map(|entry| entry.id).collect();
        assert_eq!(ids, ["fired", "other", "unreadable"]);
    }
}
