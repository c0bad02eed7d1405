//! Test policies and fake checks for the crate's unit tests, in one place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use healthd_models::ComponentType;

use crate::base::policy::Policy;
use crate::checks::{BoxFuture, Check, Observation, RESPONSE_TIME};

/// A policy for unit tests: every 10 s, a 1 s deadline, no retries.
pub const TEST_POLICY: Policy = Policy {
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(1),
    retries: 0,
    backoff: Duration::from_millis(100),
    failure_threshold: 1,
    success_threshold: 1,
    history: 120,
};

/// A check that passes and measures nothing.
pub struct Nothing;

impl Check for Nothing {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }
    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }
    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async { Observation::pass(vec![]) })
    }
}

/// Turns `fail` after 3 failed runs, back after 2 good ones.
pub const THRESHOLDS_3_2: Policy =
    Policy { failure_threshold: 3, success_threshold: 2, ..TEST_POLICY };

/// A check that plays a script: each attempt takes the next outcome,
/// `None` being an attempt that never ends.
pub struct Scripted(Mutex<std::collections::VecDeque<Option<Observation>>>);

impl Scripted {
    pub fn new(outcomes: Vec<Option<Observation>>) -> Self {
        Scripted(Mutex::new(outcomes.into()))
    }
}

impl Check for Scripted {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }
    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }
    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let next = self.0.lock().unwrap().pop_front().flatten();
        Box::pin(async move {
            match next {
                Some(observation) => observation,
                None => std::future::pending().await,
            }
        })
    }
}

/// Quick runs for the engine's tests: a 50 ms deadline, one retry.
pub const QUICK: Policy = Policy {
    interval: Duration::from_secs(1),
    timeout: Duration::from_millis(50),
    retries: 1,
    backoff: Duration::from_millis(5),
    failure_threshold: 1,
    success_threshold: 1,
    history: 120,
};

/// A check whose attempts panic: in `attempt` itself (odd calls) or in
/// the future it returns (even calls).
pub struct Panicking(pub std::sync::atomic::AtomicU32);

impl Check for Panicking {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }
    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }
    fn attempt(&self) -> BoxFuture<'_, Observation> {
        if self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst).is_multiple_of(2) {
            panic!("secret detail in attempt");
        }
        Box::pin(async { panic!("secret detail in the future") })
    }
}

/// A check whose attempt never ends and says when its future is dropped.
pub struct Hanging(pub Arc<std::sync::atomic::AtomicBool>);

struct SetOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Check for Hanging {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }
    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }
    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let guard = SetOnDrop(self.0.clone());
        Box::pin(async move {
            let _guard = guard;
            std::future::pending().await
        })
    }
}
