//! `[storage]`: where healthd keeps its runs, roll-ups and incidents past a
//! restart. Without it, healthd keeps them in memory only.

use std::path::PathBuf;
use std::time::Duration;

use crate::base::name::check_name_problem;
use crate::base::problem::ConfigProblem;
use crate::base::secret::{Environment, Secret};
use crate::checks::util::postgres_tls::split_sslmode;
use crate::checks::util::trust;
use crate::config::raw::RawStorage;

/// `[storage]`, validated.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    /// Whose series these are: two healthd writing to one PostgreSQL keep
    /// apart by it. The host name unless set.
    pub instance: String,
    pub hourly_retention: Duration,
    pub daily_retention: Duration,
    pub incident_retention: Duration,
    /// Finished runs waiting to be written at most; past it they are
    /// dropped and counted, so that a slow store never slows a check.
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// A SQLite file, created when missing.
    Sqlite { path: PathBuf },
    /// A PostgreSQL database, by URL (with the postgres kind's `sslmode`s
    /// and `ca_file`).
    Postgres { url: Secret, ca_file: Option<PathBuf> },
}

impl StorageSettings {
    /// Whether two configs name the same store with the same settings.
    pub fn is_same_as(&self, other: &StorageSettings) -> bool {
        let backends_match = match (&self.backend, &other.backend) {
            (StorageBackend::Sqlite { path: a }, StorageBackend::Sqlite { path: b }) => a == b,
            (
                StorageBackend::Postgres { url: a, ca_file: ca_a },
                StorageBackend::Postgres { url: b, ca_file: ca_b },
            ) => a.expose() == b.expose() && ca_a == ca_b,
            _ => false,
        };
        backends_match
            && self.instance == other.instance
            && self.hourly_retention == other.hourly_retention
            && self.daily_retention == other.daily_retention
            && self.incident_retention == other.incident_retention
            && self.queue == other.queue
    }
}

pub const DEFAULT_HOURLY_RETENTION: Duration = Duration::from_secs(30 * 86_400);
pub const DEFAULT_DAILY_RETENTION: Duration = Duration::from_secs(400 * 86_400);
pub const DEFAULT_INCIDENT_RETENTION: Duration = Duration::from_secs(400 * 86_400);
/// About 20 s of runs at 10,000 checks every 10 s.
pub const DEFAULT_QUEUE: usize = 20_000;
/// The longest retention: ten years.
const MAX_RETENTION: Duration = Duration::from_secs(3_660 * 86_400);

pub fn settings(
    raw: RawStorage,
    env: &dyn Environment,
    problems: &mut Vec<ConfigProblem>,
) -> Option<StorageSettings> {
    let count = problems.len();
    if raw.ca_file.is_some() && raw.url_env.is_none() {
        problems.push(ConfigProblem::new("storage.ca_file", "is for PostgreSQL: set url_env too"));
    }
    if let Some(path) = &raw.ca_file {
        if let Err(reason) = trust::check_ca_file(path) {
            problems.push(ConfigProblem::new("storage.ca_file", reason));
        }
    }
    let backend = match (raw.path, raw.url_env) {
        (Some(path), None) if !path.trim().is_empty() => {
            Some(StorageBackend::Sqlite { path: PathBuf::from(path) })
        }
        (None, Some(var)) => match env.var(&var) {
            Some(url) if !url.is_empty() => {
                // The parser's message never repeats the URL.
                match split_sslmode(&url).0.parse::<tokio_postgres::Config>() {
                    Ok(_) => Some(StorageBackend::Postgres {
                        url: Secret::new(url),
                        ca_file: raw.ca_file.clone(),
                    }),
                    Err(error) => {
                        problems.push(ConfigProblem::new(
                            "storage.url_env",
                            format!("{var} is not a PostgreSQL connection string: {error}"),
                        ));
                        None
                    }
                }
            }
            _ => {
                problems.push(ConfigProblem::new(
                    "storage.url_env",
                    format!("environment variable {var} is not set or empty"),
                ));
                None
            }
        },
        _ => {
            problems.push(ConfigProblem::new(
                "storage",
                "set exactly one of path (a SQLite file) or url_env (a variable holding a PostgreSQL URL)",
            ));
            None
        }
    };
    let instance = raw.instance.unwrap_or_else(host_name);
    if let Some(reason) = check_name_problem(&instance) {
        problems.push(ConfigProblem::new("storage.instance", reason));
    }
    let mut retention = |key: &str, value: Option<Duration>, default: Duration, least: Duration| {
        let value = value.unwrap_or(default);
        if value < least || value > MAX_RETENTION {
            problems.push(ConfigProblem::new(
                format!("storage.{key}"),
                format!(
                    "must be between {} h and {} days",
                    least.as_secs() / 3_600,
                    MAX_RETENTION.as_secs() / 86_400
                ),
            ));
        }
        value
    };
    let hour = Duration::from_secs(3_600);
    let day = Duration::from_secs(86_400);
    let hourly_retention = retention(
        "hourly_retention",
        raw.hourly_retention.map(Duration::from),
        DEFAULT_HOURLY_RETENTION,
        hour,
    );
    let daily_retention = retention(
        "daily_retention",
        raw.daily_retention.map(Duration::from),
        DEFAULT_DAILY_RETENTION,
        day,
    );
    let incident_retention = retention(
        "incident_retention",
        raw.incident_retention.map(Duration::from),
        DEFAULT_INCIDENT_RETENTION,
        hour,
    );
    let queue = raw.queue.unwrap_or(DEFAULT_QUEUE);
    if !(100..=10_000_000).contains(&queue) {
        problems.push(ConfigProblem::new("storage.queue", "must be between 100 and 10000000"));
    }
    if problems.len() != count {
        return None;
    }
    Some(StorageSettings {
        backend: backend?,
        instance,
        hourly_retention,
        daily_retention,
        incident_retention,
        queue,
    })
}

/// The host name, as the kernel has it; "healthd" if it cannot be read.
pub(crate) fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&byte| byte == 0).unwrap_or(0);
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "healthd".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::config::Settings;

    fn problems(text: &str) -> Vec<String> {
        let env = BTreeMap::from([
            ("STORE_URL".to_string(), "postgres://h/db".to_string()),
            ("NOT_A_URL".to_string(), "postgres://h:port/db".to_string()),
        ]);
        match Settings::parse(text, "test.toml", &env) {
            Ok(_) => Vec::new(),
            Err(error) => {
                error.problems.iter().map(|p| format!("{}: {}", p.key, p.reason)).collect()
            }
        }
    }

    #[test]
    fn a_store_is_a_file_or_a_url_from_the_environment() {
        assert!(problems("[storage]\npath = \"/var/lib/healthd/store.db\"\n").is_empty());
        assert!(problems("[storage]\nurl_env = \"STORE_URL\"\n").is_empty());
        let both = problems("[storage]\npath = \"x.db\"\nurl_env = \"STORE_URL\"\n");
        assert!(both[0].contains("set exactly one of path"), "{both:?}");
        let unset = problems("[storage]\nurl_env = \"NOT_SET\"\n");
        assert!(unset[0].contains("storage.url_env") && unset[0].contains("NOT_SET"), "{unset:?}");
        let bad = problems("[storage]\nurl_env = \"NOT_A_URL\"\n");
        assert!(
            bad[0].contains("storage.url_env") && bad[0].contains("not a PostgreSQL"),
            "{bad:?}"
        );
        let ca_for_sqlite =
            problems("[storage]\npath = \"x.db\"\nca_file = \"/nonexistent.pem\"\n");
        assert!(ca_for_sqlite[0].contains("storage.ca_file"), "{ca_for_sqlite:?}");
    }

    #[test]
    fn retention_and_queue_are_bounded_and_named() {
        let found = problems(
            "[storage]\npath = \"x.db\"\nhourly_retention = \"10m\"\ndaily_retention = \"20000d\"\nqueue = 5\n",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("storage.hourly_retention"));
        assert!(found[1].contains("storage.daily_retention"));
        assert!(found[2].contains("storage.queue"));
        let instance = problems("[storage]\npath = \"x.db\"\ninstance = \"has space\"\n");
        assert!(instance[0].contains("storage.instance"), "{instance:?}");
    }
}
