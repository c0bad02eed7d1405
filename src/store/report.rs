//! What the store answers, as the contract's models: uptime over the
//! standard windows, incidents, a series over a time range.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use healthd_models::{
    CheckUptime, Incident, Series, SeriesPoint, SeriesSource, UptimeWindow, UptimeWindowName,
};

use crate::store::rollup::{day_of, hour_of, Rollup, DAY_SECONDS, HOUR_SECONDS};
use crate::store::{IncidentRow, Resolution, RunRow, Store, StoreError};

/// The windows every uptime answer has, and their length in hours.
const WINDOWS: [(UptimeWindowName, i64); 5] = [
    (UptimeWindowName::X24h, 24),
    (UptimeWindowName::X7d, 7 * 24),
    (UptimeWindowName::X30d, 30 * 24),
    (UptimeWindowName::X90d, 90 * 24),
    (UptimeWindowName::X365d, 365 * 24),
];
/// Windows up to this many hours are summed from hourly roll-ups; longer
/// ones from daily ones (whole UTC days, today's included).
const HOURLY_UP_TO: i64 = 7 * 24;
/// The most points a series answers.
pub const MAX_POINTS: i64 = 2_000;

/// Each named check's uptime over 24 h, 7, 30, 90 and 365 days: a query
/// per window, however many checks.
pub fn uptime(store: &Store, names: &[&str]) -> Result<Vec<CheckUptime>, StoreError> {
    uptime_over(store, names, &WINDOWS)
}

/// As `uptime`, over 24 h, 7 and 30 days only (what the status page shows).
pub fn recent_uptime(store: &Store, names: &[&str]) -> Result<Vec<CheckUptime>, StoreError> {
    uptime_over(store, names, &WINDOWS[..3])
}

fn uptime_over(
    store: &Store,
    names: &[&str],
    windows: &[(UptimeWindowName, i64)],
) -> Result<Vec<CheckUptime>, StoreError> {
    let now = store.now().timestamp();
    let instance = store.instance();
    let hour = hour_of(now);
    let day = day_of(now);
    // Per window, per check: one sum per query, then the windows from the per-window sums.
    let mut sums: Vec<std::collections::HashMap<String, Rollup>> =
        Vec::with_capacity(windows.len());
    for &(_, hours) in windows {
        let found = if hours <= HOURLY_UP_TO {
            store.reader().rollup_sums(instance, names, Resolution::Hourly, hour - hours + 1)?
        } else {
            store.reader().rollup_sums(instance, names, Resolution::Daily, day - hours / 24 + 1)?
        };
        sums.push(found);
    }
    Ok(names
        .iter()
        .map(|name| CheckUptime {
            component_id: (*name).to_string(),
            windows: windows
                .iter()
                .zip(&sums)
                .map(|((window, _), sums)| window_of(*window, sums.get(*name)))
                .collect(),
        })
        .collect())
}

fn window_of(window: UptimeWindowName, rollup: Option<&Rollup>) -> UptimeWindow {
    let rollup = rollup.copied().unwrap_or_default();
    UptimeWindow {
        window,
        runs: rollup.runs,
        failed_runs: rollup.failed,
        warned_runs: rollup.warned,
        uptime: rollup.uptime(),
        p50_ms: rollup.quantile_ms(0.5),
        p95_ms: rollup.quantile_ms(0.95),
        p99_ms: rollup.quantile_ms(0.99),
    }
}

pub fn incidents(store: &Store, names: &[&str], limit: u32) -> Result<Vec<Incident>, StoreError> {
    let rows = store.reader().incidents(store.instance(), names, limit)?;
    Ok(rows.into_iter().map(incident).collect())
}

fn incident(row: IncidentRow) -> Incident {
    Incident {
        duration_ms: row
            .ended
            .map(|ended| u64::try_from((ended - row.started).num_milliseconds()).unwrap_or(0)),
        component_id: row.check,
        from: row.from,
        to: row.to,
        started_at: row.started,
        ended_at: row.ended,
        output: row.output,
    }
}

/// A check's runs in `[from, to)`, a point per `step` seconds (about 100
/// points when absent): from the kept runs when they reach back to
/// `from`, else from hourly roll-ups while they are kept, else daily ones.
pub fn series(
    store: &Store,
    name: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: Option<u32>,
) -> Result<Series, StoreError> {
    let instance = store.instance();
    let now = store.now();
    let span = (to - from).num_seconds().max(1);
    let oldest_run = store.reader().oldest_run(instance, name)?;
    let hourly_kept_from =
        now - TimeDelta::from_std(store.retention().hourly).unwrap_or(TimeDelta::MAX);
    let (source, resolution) = if oldest_run.is_some_and(|oldest| oldest <= from) {
        (SeriesSource::Runs, 1)
    } else if from >= hourly_kept_from {
        (SeriesSource::Hourly, HOUR_SECONDS)
    } else {
        (SeriesSource::Daily, DAY_SECONDS)
    };
    let wanted = step.map_or(ceil_div(span, 100), i64::from).max(1);
    // A whole number of the source's periods, and at most MAX_POINTS points.
    let step = ceil_div(wanted, resolution).max(1) * resolution;
    let step = step.max(ceil_div(ceil_div(span, MAX_POINTS), resolution) * resolution);
    let start = from.timestamp().div_euclid(step) * step;
    let mut points: Vec<(i64, Rollup)> = Vec::new();
    let mut add = |at: i64, rollup: &Rollup| {
        let bucket = at.div_euclid(step) * step;
        match points.last_mut() {
            Some((last, sum)) if *last == bucket => sum.merge(rollup),
            _ => points.push((bucket, *rollup)),
        }
    };
    match source {
        SeriesSource::Runs => {
            let runs: Vec<RunRow> = store.reader().runs_between(instance, name, from, to)?;
            for run in runs {
                let mut one = Rollup::default();
                one.add_run(run.status, run.duration.as_secs_f64() * 1e3);
                add(run.time.timestamp(), &one);
            }
        }
        SeriesSource::Hourly | SeriesSource::Daily => {
            let which =
                if source == SeriesSource::Hourly { Resolution::Hourly } else { Resolution::Daily };
            let first = start.div_euclid(resolution);
            let last = (to.timestamp() - 1).div_euclid(resolution);
            for (period, rollup) in store.reader().rollups(instance, name, which, first, last)? {
                add(period * resolution, &rollup);
            }
        }
    }
    Ok(Series {
        component_id: name.to_string(),
        from,
        to,
        step_seconds: u32::try_from(step).unwrap_or(u32::MAX),
        source,
        points: points
            .into_iter()
            .map(|(at, rollup)| SeriesPoint {
                time: DateTime::from_timestamp(at, 0).unwrap_or_default(),
                runs: rollup.runs,
                failed_runs: rollup.failed,
                warned_runs: rollup.warned,
                uptime: rollup.uptime(),
                mean_ms: rollup.mean_ms(),
                min_ms: Some(rollup.duration_min_ms),
                max_ms: Some(rollup.duration_max_ms),
            })
            .collect(),
    })
}

/// `a / b` rounded up, for positive `b`.
fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

/// One check's daily uptime, oldest first; `None` for a day without runs.
pub type DailyUptime = Vec<Option<f64>>;

/// Each named check's daily uptime over the `days` UTC days ending today,
/// and today's date: a query per check, each over at most `days` rows.
pub fn daily_uptime(
    store: &Store,
    names: &[&str],
    days: i64,
) -> Result<(NaiveDate, Vec<DailyUptime>), StoreError> {
    let now = store.now();
    let today = day_of(now.timestamp());
    let first = today - days + 1;
    let mut found = Vec::with_capacity(names.len());
    for name in names {
        let mut uptime = vec![None; usize::try_from(days).unwrap_or(0)];
        let rollups =
            store.reader().rollups(store.instance(), name, Resolution::Daily, first, today)?;
        for (day, rollup) in rollups {
            if let Some(slot) = usize::try_from(day - first).ok().and_then(|at| uptime.get_mut(at))
            {
                *slot = rollup.uptime();
            }
        }
        found.push(uptime);
    }
    Ok((now.date_naive(), found))
}
