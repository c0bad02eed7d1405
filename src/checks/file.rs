//! `kind = "file"`: a file that must exist, be fresh (`max_age`) and have a
//! plausible size (`min_size`, `max_size`); for a directory, its newest
//! entry. For the outputs of jobs that cannot be polled otherwise: a backup
//! written nightly, a feed dumped hourly, a spool that must keep moving.
//!
//! `stat` can hang on a dead network filesystem, so it runs on the blocking
//! pool with at most one call in flight per check (as `disk` does).

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use healthd_models::ComponentType;
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::base::units::{show_duration, DurationText, SizeText};
use crate::checks::util::categories::io_category;
use crate::checks::{BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind =
    Kind::new("file", &["path", "max_age", "warn_age", "min_size", "max_size"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFields {
    path: Option<PathBuf>,
    max_age: Option<DurationText>,
    warn_age: Option<DurationText>,
    min_size: Option<SizeText>,
    max_size: Option<SizeText>,
}

#[derive(Debug, Clone)]
struct FileSettings {
    path: PathBuf,
    max_age: Option<Duration>,
    warn_age: Option<Duration>,
    min_size: Option<u64>,
    max_size: Option<u64>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: FileFields = input.fields()?;
    let path = input.required("path", fields.path)?;
    if !path.is_absolute() {
        input.report_at(
            "path",
            format!("{:?} is relative: give an absolute path", path.display().to_string()),
        );
        return None;
    }
    let max_age = fields.max_age.map(|age| age.0);
    let warn_age = fields.warn_age.map(|age| age.0);
    if let (Some(warn), Some(max)) = (warn_age, max_age) {
        if warn >= max {
            input.report_at(
                "warn_age",
                format!("{} is not below max_age = {}", show_duration(warn), show_duration(max)),
            );
            return None;
        }
    }
    let min_size = fields.min_size.map(|size| size.0);
    let max_size = fields.max_size.map(|size| size.0);
    if let (Some(min), Some(max)) = (min_size, max_size) {
        if min > max {
            input.report_at("min_size", format!("{min} bytes is above max_size = {max} bytes"));
            return None;
        }
    }
    Some(Arc::new(FileSettings { path, max_age, warn_age, min_size, max_size }))
}

impl KindSettings for FileSettings {
    fn descriptors(&self) -> usize {
        // A directory is read through one open descriptor; a file is only stat'ed.
        1
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(FileCheck { settings: self.clone(), in_flight: Arc::default() }))
    }
}

struct FileCheck {
    settings: FileSettings,
    /// Set while a `stat` runs; see the module docs.
    in_flight: Arc<AtomicBool>,
}

/// What one look at the path found: the file's (or the newest entry's)
/// modification time and size.
#[derive(Debug, PartialEq)]
enum Found {
    Entry { modified: SystemTime, size: u64 },
    EmptyDirectory,
}

impl FileCheck {
    /// The status for what was found at `now`, with `age` (s) and `size`.
    fn judge(&self, found: Found, now: SystemTime) -> Observation {
        let (modified, size) = match found {
            Found::Entry { modified, size } => (modified, size),
            Found::EmptyDirectory => return Observation::fail("directory is empty"),
        };
        // A file modified in the future (clock skew) is as fresh as can be.
        let age = now.duration_since(modified).unwrap_or_default();
        let values = vec![Some((age.as_secs_f64() * 1000.0).round() / 1000.0), Some(size as f64)];
        let settings = &self.settings;
        if let Some(max) = settings.max_age.filter(|max| age > *max) {
            return Observation::fail_with(
                format!("modified more than {} ago", show_duration(max)),
                values,
            );
        }
        if let Some(min) = settings.min_size.filter(|min| size < *min) {
            return Observation::fail_with(format!("smaller than {min} bytes"), values);
        }
        if let Some(max) = settings.max_size.filter(|max| size > *max) {
            return Observation::fail_with(format!("larger than {max} bytes"), values);
        }
        if let Some(warn) = settings.warn_age.filter(|warn| age > *warn) {
            return Observation::warn(
                format!("modified more than {} ago", show_duration(warn)),
                values,
            );
        }
        Observation::pass(values)
    }
}

impl Check for FileCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::System
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("age", "s"), ("size", "bytes")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let path = self.settings.path.clone();
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            if in_flight.swap(true, Ordering::AcqRel) {
                return Observation::fail("stat is still hanging since an earlier attempt");
            }
            let look = tokio::task::spawn_blocking(move || {
                let found = look_at(&path);
                in_flight.store(false, Ordering::Release);
                found
            });
            match look.await {
                Ok(Ok(found)) => self.judge(found, SystemTime::now()),
                Ok(Err(error)) => {
                    Observation::fail(io_category(&error)).with_detail(error.to_string())
                }
                Err(_) => Observation::fail("file check panicked"),
            }
        })
    }
}

/// The file's modification time and size; for a directory, those of its
/// newest entry (by modification time; entries that vanish meanwhile are
/// skipped).
fn look_at(path: &Path) -> std::io::Result<Found> {
    let metadata = std::fs::metadata(path)?;
    if !metadata.is_dir() {
        return entry(&metadata);
    }
    let mut newest: Option<(SystemTime, u64)> = None;
    for entry in std::fs::read_dir(path)? {
        let Ok(metadata) = entry.and_then(|entry| entry.metadata()) else {
            continue;
        };
        let modified = metadata.modified()?;
        if newest.is_none_or(|(time, _)| modified > time) {
            newest = Some((modified, metadata.len()));
        }
    }
    Ok(newest.map_or(Found::EmptyDirectory, |(modified, size)| Found::Entry { modified, size }))
}

fn entry(metadata: &Metadata) -> std::io::Result<Found> {
    Ok(Found::Entry { modified: metadata.modified()?, size: metadata.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthd_models::HealthStatus;

    fn check(
        max_age: Option<u64>,
        warn_age: Option<u64>,
        min: Option<u64>,
        max: Option<u64>,
    ) -> FileCheck {
        FileCheck {
            settings: FileSettings {
                path: "/x".into(),
                max_age: max_age.map(Duration::from_secs),
                warn_age: warn_age.map(Duration::from_secs),
                min_size: min,
                max_size: max,
            },
            in_flight: Arc::default(),
        }
    }

    #[test]
    fn durations_show_as_written() {
        assert_eq!(show_duration(Duration::from_secs(26 * 3600)), "26h");
        assert_eq!(show_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn age_and_size_pick_the_status() {
        let now = SystemTime::now();
        let at =
            |age: u64, size: u64| Found::Entry { modified: now - Duration::from_secs(age), size };
        let check = check(Some(100), Some(50), Some(10), Some(1000));
        assert_eq!(check.judge(at(10, 100), now).status, HealthStatus::Pass);
        let warn = check.judge(at(60, 100), now);
        assert_eq!(
            (warn.status, warn.output.as_deref()),
            (HealthStatus::Warn, Some("modified more than 50s ago"))
        );
        let old = check.judge(at(101, 100), now);
        assert_eq!(old.output.as_deref(), Some("modified more than 100s ago"));
        assert_eq!(old.values, vec![Some(101.0), Some(100.0)]);
        assert_eq!(check.judge(at(1, 5), now).output.as_deref(), Some("smaller than 10 bytes"));
        assert_eq!(check.judge(at(1, 5000), now).output.as_deref(), Some("larger than 1000 bytes"));
        assert_eq!(
            check.judge(Found::EmptyDirectory, now).output.as_deref(),
            Some("directory is empty")
        );
        // A modification time in the future is age 0, not a failure.
        let future = Found::Entry { modified: now + Duration::from_secs(60), size: 100 };
        assert_eq!(check.judge(future, now).values[0], Some(0.0));
    }
}
