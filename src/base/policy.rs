//! When and how patiently a check runs: its policy. The keys are listed
//! once, in `policy_keys!` below, which makes the validated `Policy`, its
//! built-in default, the keys as written (`RawPolicy`, for `[defaults]` and
//! each `[[checks]]` table), the list of key names and the setters of
//! [`CheckPolicy`] from that one list: a new key is one entry there (and
//! its validation in `Policy::problems`, if it has a rule).

use std::time::Duration;

use serde::Deserialize;

use crate::base::units::DurationText;

/// The most runs a check's history may keep.
pub const MAX_HISTORY: u32 = 10_000;

macro_rules! policy_keys {
    ($(
        $(#[doc = $doc:literal])*
        $key:ident: $ty:ty = $default:expr, written as $written:ty;
    )*) => {
        /// When and how patiently a check runs, validated.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Policy {
            $($(#[doc = $doc])* pub $key: $ty,)*
        }

        /// The built-in policy, under `[defaults]`: every 10 s, a 2 s
        /// timeout, 2 retries with a 100 ms backoff, thresholds of 1, the
        /// last 120 runs kept.
        pub const DEFAULT_POLICY: Policy = Policy { $($key: $default,)* };

        /// The policy keys as a table writes them (`[defaults]`, a
        /// `[[checks]]` table, a check from code); an unset key comes from
        /// the policy under it.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawPolicy {
            $(pub $key: Option<$written>,)*
        }

        /// The names of the policy keys.
        pub const POLICY_KEYS: &[&str] = &[$(stringify!($key)),*];

        impl Policy {
            /// What `raw` sets, over this policy.
            pub fn under(&self, raw: &RawPolicy) -> Policy {
                Policy { $($key: raw.$key.map_or(self.$key, Into::into),)* }
            }
        }

        impl CheckPolicy {
            $(
                $(#[doc = $doc])*
                pub fn $key(mut self, $key: $ty) -> Self {
                    self.policy.$key = Some($key.into());
                    self
                }
            )*
        }
    };
}

policy_keys! {
    /// `interval`: how often the check runs.
    interval: Duration = Duration::from_secs(10), written as DurationText;
    /// `timeout`: the hard deadline of one attempt; its future is dropped then.
    timeout: Duration = Duration::from_secs(2), written as DurationText;
    /// `retries`: attempts after a failed one, within the same run (at most 10).
    retries: u32 = 2, written as u32;
    /// `backoff`: the base of the exponential backoff between attempts (full jitter).
    backoff: Duration = Duration::from_millis(100), written as DurationText;
    /// `failure_threshold`: failed runs in a row before the check reports `fail`.
    failure_threshold: u32 = 1, written as u32;
    /// `success_threshold`: good runs in a row before a failed check recovers.
    success_threshold: u32 = 1, written as u32;
    /// `history`: runs kept for the history endpoint and the status page (0: none).
    history: u32 = 120, written as u32;
}

impl Policy {
    /// The longest one run can take: every attempt timing out, every backoff at its cap.
    pub fn worst_case(&self) -> Duration {
        let attempts = self.retries.saturating_add(1);
        // Saturating all the way: a config may say anything, and check-config must not panic.
        let backoff_total = (0..self.retries.min(64))
            .fold(Duration::ZERO, |total, retry| total.saturating_add(self.backoff_cap(retry)));
        self.timeout.saturating_mul(attempts).saturating_add(backoff_total)
    }

    /// The upper bound of the jittered wait before retry number `retry` (0-based).
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        self.backoff.saturating_mul(1u32 << retry.min(16))
    }

    /// A reading older than this is stale, and stale is `fail`.
    pub fn stale_after(&self) -> Duration {
        self.interval * 3
    }

    /// What is wrong with this policy, one reason each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.timeout.is_zero() {
            problems.push("timeout must be more than 0".into());
        }
        if self.interval.is_zero() {
            problems.push("interval must be more than 0".into());
        }
        if self.retries > 10 {
            problems.push(format!("retries = {} is more than 10", self.retries));
        }
        if self.failure_threshold == 0 || self.success_threshold == 0 {
            problems.push("failure_threshold and success_threshold must be at least 1".into());
        }
        if self.history > MAX_HISTORY {
            problems.push(format!("history = {} is more than {MAX_HISTORY}", self.history));
        }
        if self.retries <= 10 && self.worst_case() > self.interval {
            problems.push(format!(
                "timeout × (retries + 1) + backoff = {} ms does not fit inside interval = {} ms: lower timeout or retries, or raise interval",
                self.worst_case().as_millis(),
                self.interval.as_millis()
            ));
        }
        problems
    }
}

/// The policy of a check from code: what it sets of the keys a
/// `[[checks]]` table may set. What it leaves unset comes from the
/// config's `[defaults]` (else the built-in ones: every 10 s, a 2 s
/// timeout, 2 retries with a 100 ms backoff, thresholds of 1, critical),
/// and the result is validated as a config check's is.
///
/// ```
/// use std::time::Duration;
/// let policy = healthd::CheckPolicy::new()
///     .critical(false)
///     .interval(Duration::from_secs(5))
///     .timeout(Duration::from_millis(500));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckPolicy {
    critical: Option<bool>,
    policy: RawPolicy,
}

impl CheckPolicy {
    /// Everything from `[defaults]`.
    pub fn new() -> Self {
        CheckPolicy::default()
    }

    /// `critical`: a failing non-critical check makes the service `warn`,
    /// not `fail`, and is left out of readiness. Checks are critical unless
    /// they say otherwise.
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = Some(critical);
        self
    }

    /// Whether the check is critical (it is unless it says otherwise).
    pub fn is_critical(&self) -> bool {
        self.critical.unwrap_or(true)
    }

    /// The keys it sets, as a table would write them.
    pub fn raw(&self) -> &RawPolicy {
        &self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_named_and_a_raw_policy_sets_only_what_it_says() {
        assert_eq!(POLICY_KEYS.len(), 7);
        let raw = RawPolicy { retries: Some(0), ..RawPolicy::default() };
        let policy = DEFAULT_POLICY.under(&raw);
        assert_eq!(policy, Policy { retries: 0, ..DEFAULT_POLICY });
        let from_code = CheckPolicy::new().timeout(Duration::from_secs(1));
        assert_eq!(DEFAULT_POLICY.under(from_code.raw()).timeout, Duration::from_secs(1));
    }
}
