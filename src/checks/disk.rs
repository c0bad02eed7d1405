//! `kind = "disk"`: free space of the filesystem that holds `path`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use healthd_models::ComponentType;
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::base::units::PercentText;
use crate::checks::util::categories::io_category;
use crate::checks::{BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind = Kind::new("disk", &["path", "warn_below", "fail_below"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskFields {
    path: Option<String>,
    warn_below: Option<PercentText>,
    fail_below: Option<PercentText>,
}

#[derive(Debug)]
struct DiskSettings {
    path: PathBuf,
    warn_below: f64,
    fail_below: f64,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: DiskFields = input.fields()?;
    let warn_below = fields.warn_below.map_or(10.0, |p| p.0);
    let fail_below = fields.fail_below.map_or(5.0, |p| p.0);
    if fail_below > warn_below {
        input.report_at("fail_below", format!("{fail_below}% is above warn_below = {warn_below}%"));
        return None;
    }
    let path = PathBuf::from(fields.path.unwrap_or_else(|| ".".into()));
    Some(Arc::new(DiskSettings { path, warn_below, fail_below }))
}

impl KindSettings for DiskSettings {
    fn descriptors(&self) -> usize {
        // statvfs(2) takes the path: no descriptor is held.
        0
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(DiskCheck::new(&self.path, self.warn_below, self.fail_below)))
    }
}

struct DiskCheck {
    path: PathBuf,
    warn_below: f64,
    fail_below: f64,
    /// Set while a statvfs runs. A deadline abandons the wait, not the
    /// thread: while one is stuck, attempts answer at once instead of
    /// tying up another blocking thread each.
    in_flight: Arc<AtomicBool>,
}

impl DiskCheck {
    fn new(path: &Path, warn_below: f64, fail_below: f64) -> Self {
        DiskCheck { path: path.to_path_buf(), warn_below, fail_below, in_flight: Arc::default() }
    }

    fn judge(&self, free_percent: f64) -> Observation {
        let values = vec![Some((free_percent * 100.0).round() / 100.0)];
        if free_percent < self.fail_below {
            Observation::fail_with(format!("free space below {}%", self.fail_below), values)
        } else if free_percent < self.warn_below {
            Observation::warn(format!("free space below {}%", self.warn_below), values)
        } else {
            Observation::pass(values)
        }
    }
}

impl Check for DiskCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::System
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("freeSpace", "%")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        let path = self.path.clone();
        let in_flight = self.in_flight.clone();
        Box::pin(async move {
            if in_flight.swap(true, Ordering::AcqRel) {
                return Observation::fail("statvfs is still hanging since an earlier attempt");
            }
            // statvfs can hang on a dead network filesystem: keep it off the
            // async threads, where the deadline can still abandon the wait.
            let statvfs = tokio::task::spawn_blocking(move || {
                let free = free_percent(&path);
                in_flight.store(false, Ordering::Release);
                free
            });
            match statvfs.await {
                Ok(Ok(free)) => self.judge(free),
                Ok(Err(error)) => {
                    Observation::fail(io_category(&error)).with_detail(format!("statvfs: {error}"))
                }
                Err(_) => Observation::fail("disk check panicked"),
            }
        })
    }
}

/// Percentage of the filesystem's blocks available to unprivileged users.
fn free_percent(path: &Path) -> std::io::Result<f64> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path holds a NUL byte")
    })?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if stats.f_blocks == 0 {
        return Ok(100.0);
    }
    Ok(stats.f_bavail as f64 / stats.f_blocks as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthd_models::HealthStatus;

    #[test]
    fn thresholds_pick_the_status() {
        let check = DiskCheck::new(Path::new("/"), 10.0, 5.0);
        assert_eq!(check.judge(50.0).status, HealthStatus::Pass);
        assert_eq!(check.judge(7.0).status, HealthStatus::Warn);
        assert_eq!(check.judge(4.9).status, HealthStatus::Fail);
        assert_eq!(check.judge(4.9).values, vec![Some(4.9)]);
    }

    #[test]
    fn the_root_filesystem_has_a_reading() {
        let free = free_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&free));
        assert!(free_percent(Path::new("/no/such/dir")).is_err());
    }
}
