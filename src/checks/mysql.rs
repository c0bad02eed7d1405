//! `kind = "mysql"` (MySQL and MariaDB): `query` through a mysql_async pool
//! built once per check, over TLS (rustls) when the URL asks for it with
//! `require_ssl=true`. A connection whose query did not finish (the deadline
//! passed, or it failed) is closed, never handed to a later attempt.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, IoError, Opts, OptsBuilder, Pool, PoolConstraints};

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::util::guard::AbandonUnlessFinished;
use crate::checks::util::sql::{SqlFields, SQL_KEYS};
use crate::checks::util::trust;
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, CREDENTIALS_IN_FILE,
};

pub const KIND: Kind = Kind::new("mysql", SQL_KEYS, parse);

#[derive(Debug)]
struct MysqlSettings {
    dsn: Secret,
    query: String,
    pool_size: usize,
    /// A private CA's PEM file, trusted instead of the system's roots.
    ca_file: Option<PathBuf>,
}

/// mysql_async URL parameters healthd refuses, and what to do instead.
const REFUSED_PARAMETERS: [(&str, &str); 3] = [
    ("pool_min", "set pool_size instead"),
    ("pool_max", "set pool_size instead"),
    ("built_in_roots", "healthd trusts the system's roots, or only those in ca_file"),
];

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: SqlFields = input.fields()?;
    let (dsn, from_file) = input.secret_url(fields.url.clone(), fields.url_env.clone())?;
    let parameters = url_parameters(dsn.expose());
    if let Some((name, instead)) = REFUSED_PARAMETERS
        .iter()
        .find(|(refused, _)| parameters.iter().any(|(name, _)| name == refused))
    {
        input.report_at("url", format!("{name}: {instead}"));
        return None;
    }
    // mysql_async 0.37 skips the name check by matching rustls's error text
    // for "NotValidForName", which current rustls no longer writes: the
    // parameter would be silently ignored.
    if parameters.iter().any(|(name, value)| name == "verify_identity" && value != "true") {
        input.report_at(
            "url",
            "verify_identity=false is not supported: connect by a name the certificate holds",
        );
        return None;
    }
    let opts = match Opts::from_url(dsn.expose()) {
        Ok(opts) => opts,
        Err(error) => {
            // UrlError names the parameter or the part that is wrong, never
            // the URL's user-info.
            input.report_at(
                "url",
                format!("not a MySQL URL (mysql://user@host:3306/database): {error}"),
            );
            return None;
        }
    };
    if from_file && opts.pass().is_some() {
        input.report_at("url", CREDENTIALS_IN_FILE);
        return None;
    }
    let (pool_size, query) = fields.pool_and_query(input)?;
    if let Some(path) = &fields.ca_file {
        if opts.ssl_opts().is_none() {
            input.report_at("ca_file", "needs require_ssl=true in the URL");
            return None;
        }
        if let Err(reason) = trust::check_ca_file(path) {
            input.report_at("ca_file", reason);
            return None;
        }
    }
    Some(Arc::new(MysqlSettings { dsn, query, pool_size, ca_file: fields.ca_file }))
}

/// The URL's query parameters, for the few healthd looks at itself.
fn url_parameters(dsn: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(dsn).map(|url| url.query_pairs().into_owned().collect()).unwrap_or_default()
}

/// The roots to trust, as mysql_async takes them: the PEM file's bytes, or
/// each of the system's certificates as DER; read when the check is built.
fn root_certificates(ca_file: Option<&Path>) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(path) = ca_file {
        let pem = trust::read_pem(path)?;
        return Ok(vec![pem]);
    }
    // As `trust::roots`: unreadable entries are skipped, and with none at all
    // every certificate is "not trusted", a category like any other.
    let found = rustls_native_certs::load_native_certs();
    Ok(found.certs.into_iter().map(|certificate| certificate.to_vec()).collect())
}

impl KindSettings for MysqlSettings {
    fn descriptors(&self) -> usize {
        // The pool, and a connection closed for an unfinished query while its
        // replacement opens.
        self.pool_size + 1
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(MysqlCheck::new(name, self, policy.timeout)?))
    }
}

struct MysqlCheck {
    pool: Pool,
    query: String,
    timeout: Duration,
}

impl MysqlCheck {
    fn new(name: &str, settings: &MysqlSettings, timeout: Duration) -> anyhow::Result<Self> {
        let opts = Opts::from_url(settings.dsn.expose())
            .map_err(|_| anyhow::anyhow!("check {name}: invalid MySQL URL"))?;
        let size = settings.pool_size;
        // min = max: up to `pool_size` idle connections are kept between
        // runs (with the default inactive_connection_ttl of 0, mysql_async
        // closes idle ones above `min` at once).
        let constraints = PoolConstraints::new(size, size)
            .ok_or_else(|| anyhow::anyhow!("check {name}: invalid pool_size {size}"))?;
        let pool_opts = opts.pool_opts().clone().with_constraints(constraints);
        let ssl_opts = match opts.ssl_opts().cloned() {
            // mysql_async trusts webpki's roots; healthd trusts what the
            // PostgreSQL kind does: the system's, or only those in ca_file.
            Some(ssl) => Some(
                ssl.with_root_certs(
                    root_certificates(settings.ca_file.as_deref())?
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                )
                .with_disable_built_in_roots(true),
            ),
            None => None,
        };
        // mysql_async would otherwise ask a loopback server for its Unix
        // socket and move there: the check watches the address it was given.
        let prefer_socket = url_parameters(settings.dsn.expose())
            .iter()
            .any(|(key, value)| key == "prefer_socket" && value == "true");
        let opts = OptsBuilder::from_opts(opts)
            .pool_opts(pool_opts)
            .ssl_opts(ssl_opts)
            .prefer_socket(prefer_socket);
        // Spawns nothing yet: the pool's recycler starts with the first
        // attempt, on the monitor's runtime.
        let pool = Pool::new(opts);
        Ok(MysqlCheck { pool, query: settings.query.clone(), timeout })
    }

    fn failed(&self, error: &mysql_async::Error) -> Observation {
        // mysql_async errors never include the URL or the password.
        Observation::fail(mysql_category(error)).with_detail(error_chain(error))
    }

    fn connections(&self) -> Option<f64> {
        Some(self.pool.metrics().connection_count.load(Ordering::Relaxed) as f64)
    }
}

impl Check for MysqlCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("responseTime", "ms"), ("connections", "connections")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            // At the deadline this future is dropped: a connect in progress
            // is cancelled by mysql_async (its slot freed, its socket closed).
            let mut conn = match self.pool.get_conn().await {
                Ok(conn) => AbandonUnlessFinished::new(conn, |conn| close(conn, self.timeout)),
                Err(error) => return self.failed(&error),
            };
            match conn.connection().query_drop(&self.query).await {
                Ok(()) => {
                    // Back to the pool.
                    drop(conn.finish());
                    Observation::pass(vec![elapsed_ms(started), self.connections()])
                }
                Err(error) => self.failed(&error),
            }
        })
    }
}

/// Closes a pooled connection whose query did not finish, rather than let
/// it go back to the pool.
///
/// Why not just drop it: a `Conn` dropped mid-query goes to the pool's
/// recycler. If it was dropped inside one of mysql_async's routines (the
/// query sent, its result header not yet read) it is marked disconnected and
/// the recycler discards it. But if it was dropped while reading rows, it has
/// a pending result, and the recycler first reads the rest of that result,
/// with no deadline, then puts the connection back in the pool: on a server
/// that hangs mid-result that holds a pool slot for as long as it hangs, and
/// a later attempt inherits the session. `Conn::disconnect` marks the
/// connection disconnected before it awaits anything, so this spawns it,
/// bounded by the check's timeout (`bound`): the server is told COM_QUIT
/// when it still listens, and when the bound cuts it short the connection is
/// already one the recycler discards (its socket closed).
fn close(conn: Conn, bound: Duration) {
    // Attempts run on the monitor's tokio runtime, so there is one; a
    // drop outside any runtime falls back to mysql_async's recycling.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(bound, conn.disconnect()).await;
        });
    }
}

/// MySQL and MariaDB server error codes (the same numbers in both).
mod code {
    pub const CON_COUNT: u16 = 1040;
    pub const DB_ACCESS_DENIED: u16 = 1044;
    pub const ACCESS_DENIED: u16 = 1045;
    pub const BAD_DB: u16 = 1049;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    pub const HOST_IS_BLOCKED: u16 = 1129;
    pub const HOST_NOT_PRIVILEGED: u16 = 1130;
    pub const TOO_MANY_USER_CONNECTIONS: u16 = 1203;
    pub const NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
    pub const OPTION_PREVENTS_STATEMENT: u16 = 1290;
    pub const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
    pub const CONNECTION_KILLED: u16 = 1927;
}

fn mysql_category(error: &mysql_async::Error) -> String {
    use mysql_async::Error;
    match error {
        Error::Server(server) => server_category(server.code),
        Error::Driver(driver) => match driver {
            DriverError::ConnectionClosed => "connection closed".into(),
            DriverError::NoClientSslFlagFromServer => "TLS: the server does not accept TLS".into(),
            DriverError::UnknownAuthPlugin { .. }
            | DriverError::CleartextPluginDisabled
            | DriverError::MysqlOldPasswordDisabled => "authentication method not supported".into(),
            DriverError::PoolDisconnected => "connection pool error".into(),
            _ => "connection failed".into(),
        },
        Error::Io(IoError::Tls(_)) => {
            tls_category(&error_chain(error)).unwrap_or("TLS: handshake failed").into()
        }
        Error::Io(IoError::Io(io)) => {
            // rustls reports some handshake failures as io::Error.
            tls_category(&error_chain(error)).map_or_else(|| io_category(io), String::from)
        }
        Error::Other(_) | Error::Url(_) => match find_io_error(error) {
            Some(io) => io_category(io),
            None => "connection failed".into(),
        },
    }
}

fn server_category(code: u16) -> String {
    let category = match code {
        code::ACCESS_DENIED | code::ACCESS_DENIED_NO_PASSWORD => "authentication failed",
        code::DB_ACCESS_DENIED => "access to the database denied",
        code::BAD_DB => "unknown database",
        code::CON_COUNT | code::TOO_MANY_USER_CONNECTIONS => "too many connections",
        code::SERVER_SHUTDOWN | code::CONNECTION_KILLED => "server is shutting down",
        code::HOST_IS_BLOCKED => "host is blocked",
        code::HOST_NOT_PRIVILEGED => "host not allowed to connect",
        code::NOT_SUPPORTED_AUTH_MODE => "authentication method not supported",
        code::OPTION_PREVENTS_STATEMENT => "database is read-only",
        _ => return format!("query failed (error {code})"),
    };
    category.into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::base::problem::ConfigProblem;

    /// Parses `toml` as one check's mysql keys, with `env`.
    fn parse_with(toml: &str, env: &[(&str, &str)]) -> (bool, Vec<ConfigProblem>) {
        let table: toml::Table = toml.parse().expect("test TOML");
        let env: BTreeMap<String, String> =
            env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        let policy = crate::checks::test_support::TEST_POLICY;
        let mut problems = Vec::new();
        let mut input = KindInput::new("checks[0]", "mysql", &policy, table, &env, &mut problems);
        let parsed = parse(&mut input).is_some();
        (parsed, problems)
    }

    fn reasons(problems: &[ConfigProblem]) -> Vec<String> {
        problems.iter().map(|problem| format!("{}: {}", problem.key, problem.reason)).collect()
    }

    #[test]
    fn a_url_without_a_password_and_the_defaults_load() {
        let (parsed, problems) = parse_with(r#"url = "mysql://healthd@db.internal:3306/app""#, &[]);
        assert!(parsed, "{problems:?}");
        let settings = MysqlSettings {
            dsn: Secret::new("mysql://healthd@127.0.0.1:1/app".into()),
            query: "SELECT 1".into(),
            pool_size: 2,
            ca_file: None,
        };
        // Building opens nothing and needs no runtime.
        let check = MysqlCheck::new("db", &settings, Duration::from_secs(1)).unwrap();
        assert_eq!(check.connections(), Some(0.0));
        assert_eq!(check.measurements()[1], ("connections", "connections"));
    }

    #[test]
    fn a_password_in_the_file_is_refused_but_not_from_the_environment() {
        let (parsed, problems) =
            parse_with(r#"url = "mysql://healthd:hunter2@db.internal/app""#, &[]);
        assert!(!parsed);
        assert_eq!(reasons(&problems), [format!("checks[0].url: {CREDENTIALS_IN_FILE}")]);
        assert!(!format!("{problems:?}").contains("hunter2"));

        let (parsed, problems) = parse_with(
            r#"url_env = "DB_URL""#,
            &[("DB_URL", "mysql://healthd:hunter2@db.internal/app?require_ssl=true")],
        );
        assert!(parsed, "{problems:?}");
    }

    #[test]
    fn bad_urls_and_keys_are_reported_with_their_key_and_without_the_url() {
        for (toml, wanted) in [
            (r#"url = "postgres://db.internal/app""#, "checks[0].url: not a MySQL URL"),
            (r#"url = "mysql://db.internal/app?nosuch=1""#, "checks[0].url: not a MySQL URL"),
            (
                r#"url = "mysql://db.internal/app?require_ssl=maybe""#,
                "checks[0].url: not a MySQL URL",
            ),
            (
                r#"url = "mysql://db.internal/app?pool_max=5""#,
                "checks[0].url: pool_max: set pool_size instead",
            ),
            (
                r#"url = "mysql://db.internal/app?require_ssl=true&verify_identity=false""#,
                "checks[0].url: verify_identity=false is not supported",
            ),
            (
                r#"url = "mysql://db.internal/app?require_ssl=true&built_in_roots=false""#,
                "checks[0].url: built_in_roots: healthd trusts the system's roots",
            ),
            (
                r#"url = "mysql://db.internal/app"
pool_size = 0"#,
                "checks[0].pool_size: must be at least 1",
            ),
            (
                r#"url = "mysql://db.internal/app"
ca_file = "/etc/hostname""#,
                "checks[0].ca_file: needs require_ssl=true",
            ),
            (
                r#"url = "mysql://db.internal/app?require_ssl=true"
ca_file = "/nonexistent/ca.pem""#,
                "checks[0].ca_file: cannot read /nonexistent/ca.pem",
            ),
            (
                r#"url = "mysql://db.internal/app"
sslmode = "require""#,
                "checks[0].sslmode: unknown field `sslmode`",
            ),
            (
                "query = \"SELECT 1\"",
                "checks[0].url: url or url_env is required for kind \"mysql\"",
            ),
        ] {
            let (parsed, problems) = parse_with(toml, &[]);
            assert!(!parsed, "{toml}");
            let reasons = reasons(&problems);
            assert!(reasons.iter().any(|reason| reason.starts_with(wanted)), "{toml}: {reasons:?}");
        }
        let (_, problems) = parse_with(
            r#"url_env = "DB_URL""#,
            &[("DB_URL", "mysql://healthd:hunter2@db.internal:notaport/app")],
        );
        assert!(!format!("{problems:?}").contains("hunter2"), "{problems:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn a_ca_file_is_checked_at_load() {
        let certs = healthd_testkit::certs::TestCerts::new();
        let not_pem = certs.dir().join("not.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let url = r#"url = "mysql://db.internal/app?require_ssl=true""#;
        let (parsed, problems) = parse_with(&format!("{url}\nca_file = {not_pem:?}"), &[]);
        assert!(!parsed);
        assert!(reasons(&problems)[0].ends_with("holds no certificate"), "{problems:?}");
        let (parsed, problems) =
            parse_with(&format!("{url}\nca_file = {:?}", certs.ca_path()), &[]);
        assert!(parsed, "{problems:?}");
    }

    #[test]
    fn server_errors_become_categories() {
        assert_eq!(server_category(1045), "authentication failed");
        assert_eq!(server_category(1049), "unknown database");
        assert_eq!(server_category(1040), "too many connections");
        assert_eq!(server_category(1053), "server is shutting down");
        assert_eq!(server_category(1064), "query failed (error 1064)");
        let closed = mysql_async::Error::Driver(DriverError::ConnectionClosed);
        assert_eq!(mysql_category(&closed), "connection closed");
        let refused =
            mysql_async::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(mysql_category(&refused), "connection refused");
        let server = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1045,
            message: "Access denied for user 'x'@'localhost' (using password: YES)".into(),
            state: "28000".into(),
        });
        assert_eq!(mysql_category(&server), "authentication failed");
    }
}
