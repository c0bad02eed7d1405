//! Roll-ups: the runs of one check over an hour or a day, summed so that
//! two partial sums of the same period add up (a flush every minute, a
//! restart in the middle), and so that percentiles can be read back from
//! histogram buckets.

use healthd_models::HealthStatus;

use crate::engine::state::LATENCY_BUCKETS;

pub const HOUR_SECONDS: i64 = 3_600;
pub const DAY_SECONDS: i64 = 86_400;

/// The runs of one period. Durations in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rollup {
    pub runs: u64,
    pub failed: u64,
    pub warned: u64,
    pub duration_sum_ms: f64,
    pub duration_min_ms: f64,
    pub duration_max_ms: f64,
    /// Runs per `LATENCY_BUCKETS` bound, not cumulative: a run counts in
    /// the first bucket whose bound it does not exceed; runs above the
    /// last bound are `runs` minus their sum.
    pub buckets: [u64; LATENCY_BUCKETS.len()],
}

impl Rollup {
    pub fn add_run(&mut self, status: HealthStatus, duration_ms: f64) {
        let first = self.runs == 0;
        self.runs += 1;
        self.failed += u64::from(status == HealthStatus::Fail);
        self.warned += u64::from(status == HealthStatus::Warn);
        self.duration_sum_ms += duration_ms;
        if first || duration_ms < self.duration_min_ms {
            self.duration_min_ms = duration_ms;
        }
        if first || duration_ms > self.duration_max_ms {
            self.duration_max_ms = duration_ms;
        }
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|&bound| duration_ms <= bound * 1e3) {
            self.buckets[bucket] += 1;
        }
    }

    /// Two sums of the same check's runs, as one.
    pub fn merge(&mut self, other: &Rollup) {
        if other.runs == 0 {
            return;
        }
        if self.runs == 0 {
            *self = *other;
            return;
        }
        self.runs += other.runs;
        self.failed += other.failed;
        self.warned += other.warned;
        self.duration_sum_ms += other.duration_sum_ms;
        self.duration_min_ms = self.duration_min_ms.min(other.duration_min_ms);
        self.duration_max_ms = self.duration_max_ms.max(other.duration_max_ms);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }

    /// The share of runs that were not `fail`.
    pub fn uptime(&self) -> Option<f64> {
        // Precision loss only past 2^53 runs.
        #[allow(clippy::cast_precision_loss)]
        (self.runs > 0).then(|| (self.runs - self.failed) as f64 / self.runs as f64)
    }

    #[allow(clippy::cast_precision_loss)]
    pub fn mean_ms(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.duration_sum_ms / self.runs as f64)
    }

    /// The `q` quantile (0 to 1) of the run duration in ms, interpolated
    /// within its bucket as Prometheus' `histogram_quantile` does, and
    /// kept between the least and the most run seen.
    #[allow(clippy::cast_precision_loss)]
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.runs == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.runs as f64;
        let mut below = 0u64;
        let mut lower = 0.0;
        for (count, bound) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            let upper = bound * 1e3;
            if *count > 0 && (below + count) as f64 >= rank {
                let within = (rank - below as f64) / *count as f64;
                let estimate = lower + (upper - lower) * within;
                return Some(estimate.clamp(self.duration_min_ms, self.duration_max_ms));
            }
            below += count;
            lower = upper;
        }
        // Above the last bound: the most is the best estimate there is.
        Some(self.duration_max_ms)
    }
}

/// The hour (since the epoch) a time in seconds falls in.
pub fn hour_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(HOUR_SECONDS)
}

/// The UTC day (since the epoch) a time in seconds falls in.
pub fn day_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(DAY_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthStatus::{Fail, Pass, Warn};

    #[test]
    fn runs_add_up_and_two_partial_sums_merge_into_the_whole() {
        let runs = [(Pass, 2.0), (Fail, 2000.0), (Warn, 30.0), (Pass, 0.5), (Pass, 12_000.0)];
        let mut whole = Rollup::default();
        let (mut first, mut second) = (Rollup::default(), Rollup::default());
        for (index, (status, ms)) in runs.into_iter().enumerate() {
            whole.add_run(status, ms);
            if index < 2 {
                first.add_run(status, ms)
            } else {
                second.add_run(status, ms)
            }
        }
        assert_eq!((whole.runs, whole.failed, whole.warned), (5, 1, 1));
        assert_eq!((whole.duration_min_ms, whole.duration_max_ms), (0.5, 12_000.0));
        assert_eq!(whole.duration_sum_ms, 14_032.5);
        // 0.5 ms and 2 ms in the 1 ms and 5 ms buckets, 30 ms in 50 ms,
        // 2 s in 2.5 s; 12 s is above the last bound.
        assert_eq!(whole.buckets, [1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0]);
        first.merge(&second);
        assert_eq!(first, whole);
        assert_eq!(whole.uptime(), Some(0.8));
    }

    #[test]
    fn quantiles_interpolate_within_buckets_and_stay_within_what_was_seen() {
        let mut rollup = Rollup::default();
        assert_eq!(rollup.quantile_ms(0.5), None);
        // 100 runs: 90 of 3 ms, 10 of 80 ms.
        for _ in 0..90 {
            rollup.add_run(Pass, 3.0);
        }
        for _ in 0..10 {
            rollup.add_run(Pass, 80.0);
        }
        // The median lies in the (1, 5] ms bucket: 1 + 4 × 50/90.
        let p50 = rollup.quantile_ms(0.5).unwrap();
        assert!((p50 - (1.0 + 4.0 * 50.0 / 90.0)).abs() < 1e-9, "{p50}");
        // The 95th in (50, 100] ms, 5 of its 10 runs in: 75 ms, and the
        // 99th at 95 ms is kept under the most seen, 80 ms.
        assert!((rollup.quantile_ms(0.95).unwrap() - 75.0).abs() < 1e-9);
        assert_eq!(rollup.quantile_ms(0.99), Some(80.0));
    }

    #[test]
    fn hours_and_days_are_utc_and_floor_before_the_epoch() {
        assert_eq!(hour_of(3_599), 0);
        assert_eq!(hour_of(3_600), 1);
        assert_eq!(day_of(86_399), 0);
        assert_eq!(day_of(-1), -1);
    }
}
