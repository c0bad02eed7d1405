//! The configuration: one TOML file (or the built-in default), a few
//! environment variables over it, validated once at load into typed
//! `Settings`. Every problem names the file, the key and the reason.
//!
//! `raw` holds what the file says, as serde reads it (unknown keys
//! refused); `validate` turns it into `Settings`. The keys every check has
//! are read here; the rest of a `[[checks]]` table goes to the kind the
//! registry names, so this layer never names a kind.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::base::files::{read_text_capped, MAX_CONFIG_BYTES};
use crate::base::name::check_name_problem;
use crate::base::net::Cidr;
use crate::base::policy::{CheckPolicy, Policy};
use crate::base::problem::{ConfigError, ConfigProblem};
use crate::base::secret::Environment;
use crate::base::units::Prefix;
use crate::checks::from_code::{Prebuilt, CODE_KIND};
use crate::checks::{Check, KindSettings};

pub mod alerts;
mod raw;
mod storage;

pub use alerts::AlertSettings;
pub use storage::{StorageBackend, StorageSettings};
pub mod server_tls;
mod validate;

pub use server_tls::TlsSettings;

/// Everything healthd needs to run, validated: from a file or the
/// built-in default ([`Settings::load`]), or a config text
/// ([`Settings::parse`]). Hand it to [`Healthd::builder`](crate::Healthd::builder).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[server]`.
    pub(crate) server: ServerSettings,
    /// `[access]`.
    pub(crate) access: AccessSettings,
    /// `[defaults]` over the built-in policy: what every check, from the
    /// file or from code, runs under unless it says otherwise.
    pub(crate) defaults: Policy,
    /// `[[checks]]`.
    pub(crate) checks: Vec<CheckSettings>,
    /// `[storage]`: none keeps everything in memory, as long as the process lives.
    pub(crate) storage: Option<StorageSettings>,
    /// `[[groups]]`, their members resolved to check names.
    pub(crate) groups: Vec<GroupSettings>,
    /// `[[receivers]]`, `[[alerts]]` and `[[maintenance]]`.
    pub(crate) alerts: AlertSettings,
}

impl Settings {
    /// This healthd's name among others: the store's `instance`, else the
    /// host name.
    pub(crate) fn instance(&self) -> String {
        match &self.storage {
            Some(storage) => storage.instance.clone(),
            None => storage::host_name(),
        }
    }
}

/// `[server]`: where to listen and who we are.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// `serviceId` in reports.
    pub service_id: String,
    pub description: Option<String>,
    /// How long readiness answers 503 before the listener closes.
    pub drain_delay: Duration,
    /// actix-web worker threads; defaults to the number of cores.
    pub workers: Option<usize>,
    /// `[server.tls]`: HTTPS (and mutual TLS) instead of plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Client connections at most, over all workers; derived from the
    /// limit of open files and the checks' reserve unless set
    /// (`base::budget`).
    pub max_connections: Option<usize>,
    /// How long a client connection may sit without a request (before its
    /// first, or between two) before it is closed.
    pub idle_timeout: Duration,
    /// What `warn` answers on `/health`, and on groups that do not say.
    pub warn_status: WarnStatus,
}

/// The HTTP status a report whose status is `warn` answers with (Spring's
/// `http-mapping`): 200 by default, since a degraded service still serves;
/// 503 for callers that must route around it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WarnStatus {
    #[default]
    Ok,
    Unavailable,
}

impl WarnStatus {
    /// `warn_status = 200` or `503`; anything else is refused with the reason.
    pub fn from_code(code: u16) -> Result<WarnStatus, String> {
        match code {
            200 => Ok(WarnStatus::Ok),
            503 => Ok(WarnStatus::Unavailable),
            _ => Err(format!(
                "warn_status = {code}: use 200 (warn is served) or 503 (warn is unavailable)"
            )),
        }
    }
}

/// A `[[groups]]` entry, validated: its members resolved to check names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    pub name: String,
    /// Check names, in the order of `[[checks]]`; never empty.
    pub members: Vec<String>,
    /// The group's own `details`: it may show less than `[access]` does,
    /// never more. `None`: as `[access]` says.
    pub details: Option<Details>,
    /// The group's `warn_status`, else the server's.
    pub warn_status: WarnStatus,
}

impl ServerSettings {
    /// The worker threads actix-web starts: `workers`, or as many as
    /// actix's default (the available parallelism, at most 512).
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(512))
    }
}

/// `[access]`: who may connect, and who may see details.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    pub details: Details,
    pub allow: Vec<Cidr>,
    pub details_allow: Vec<Cidr>,
    pub trusted_proxies: Vec<Cidr>,
    /// The one header a trusted proxy writes the client address into.
    pub forwarded_header: ForwardedHeader,
    /// The path prefix trusted proxies mount healthd under, for proxies that
    /// cannot send `X-Forwarded-Prefix`; it wins over the header. Normalised
    /// (`/ops`), never empty.
    pub forwarded_prefix: Option<Prefix>,
    pub tokens: Vec<TokenSettings>,
    /// `[[access.clients]]`: verified client certificates that are principals.
    pub clients: Vec<ClientSettings>,
}

/// A client certificate that is a principal: its name, and what of the
/// certificate must equal what is configured.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub name: String,
    pub matches: ClientMatch,
}

/// The part of a verified client certificate an entry matches, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// A common name (CN) of the subject.
    CommonName(String),
    /// A DNS name among the subject alternative names.
    DnsName(String),
    /// A URI among the subject alternative names (a SPIFFE id).
    Uri(String),
}

/// Which header carries the client address through trusted proxies. Only
/// one is read: a proxy appends to the header it writes and passes the
/// other through untouched, so reading both would let a client choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (nginx, Envoy, HAProxy, Traefik, cloud load balancers).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Who sees the checks behind a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Details {
    Never,
    Authorized,
    Always,
}

/// A bearer token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct TokenSettings {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Scopes,
}

impl fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSettings")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// What a token may do (`scopes`): `read` (see details where `details`
/// lets tokens) and `ping` (ping any heartbeat). Unset, a token reads and
/// cannot ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes {
    pub read: bool,
    pub ping: bool,
}

impl Scopes {
    /// A token that sets no `scopes`.
    pub const DEFAULT: Scopes = Scopes { read: true, ping: false };
    /// The names a token's `scopes` may list.
    pub const NAMES: &[&str] = &["read", "ping"];
}

/// One check: what to run and the policy it runs under.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    pub name: String,
    /// The `kind = "..."` it was declared with.
    pub kind: &'static str,
    /// A failing non-critical check makes the service `warn`, not `fail`, and
    /// is left out of readiness.
    pub critical: bool,
    pub policy: Policy,
    /// `tags`: labels `[[groups]]` pick members by; a check may have none.
    pub tags: Vec<String>,
    /// `depends_on`: checks whose failure explains this one's; while one
    /// fails, this check's alerts are marked as caused by it, not sent.
    pub depends_on: Vec<String>,
    /// The kind's own settings, validated.
    pub settings: Arc<dyn KindSettings>,
    /// The kind's keys as written, in order, so a reload can tell an
    /// unchanged check (a slice, not a `toml::Table`: a map's first node
    /// alone takes 632 bytes, and every running check keeps this).
    definition: Box<[(String, toml::Value)]>,
}

impl CheckSettings {
    /// Builds the check's pool or client.
    pub fn build(&self) -> anyhow::Result<Arc<dyn Check>> {
        self.settings.build(&self.name, &self.policy)
    }

    /// Whether `other` describes the same check under the same policy.
    /// Tags are left out: they change which groups show the check, not
    /// how it runs, so a reload that changes them keeps its readings.
    pub fn is_same_as(&self, other: &CheckSettings) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && self.critical == other.critical
            && self.policy == other.policy
            && self.definition == other.definition
    }

    /// A check from code (`kind` "code"): its name and policy validated
    /// as a `[[checks]]` table's are, over `defaults`. The problems are
    /// keyed by the check's name.
    pub fn from_code(
        name: &str,
        policy: &CheckPolicy,
        defaults: &Policy,
        check: Arc<dyn Check>,
    ) -> Result<CheckSettings, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut report = |reason: String| problems.push(ConfigProblem::new(name, reason));
        if let Some(reason) = check_name_problem(name) {
            report(reason);
        }
        if check.measurements().is_empty() {
            // Reports have one entry per measurement: it would not show.
            report("measurements() is empty: a check reports at least one measurement".into());
        }
        let resolved = defaults.under(policy.raw());
        resolved.problems().into_iter().for_each(&mut report);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CheckSettings {
            name: name.into(),
            kind: CODE_KIND,
            critical: policy.is_critical(),
            policy: resolved,
            tags: Vec::new(),
            depends_on: Vec::new(),
            settings: Arc::new(Prebuilt(check)),
            definition: Box::default(),
        })
    }
}

/// The built-in default: listen on 127.0.0.1:8080 and watch the disk we run on.
pub const DEFAULT_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
service_id = "healthd"

# Without tokens configured, let local callers see the checks.
[access]
details = "always"
details_allow = ["127.0.0.0/8", "::1/128"]

[[checks]]
name = "disk"
kind = "disk"
path = "."
warn_below = "10%"
fail_below = "5%"
"#;

impl Settings {
    /// `server.listen`, or `HEALTHD_LISTEN` over it: where the binary listens.
    pub fn listen(&self) -> SocketAddr {
        self.server.listen
    }

    /// The descriptors the `[[checks]]` may hold at once: the checks' part
    /// of the reserve client connections may not take.
    pub fn check_descriptors(&self) -> u64 {
        self.checks.iter().map(|check| check.settings.descriptors() as u64).sum()
    }

    /// The names of the `[[checks]]`, in order.
    pub fn check_names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.checks.iter().map(|check| check.name.as_str())
    }

    /// Reads `path`, or the built-in default when there is none.
    pub fn load(path: Option<&Path>, env: &dyn Environment) -> Result<Settings, ConfigError> {
        match path {
            Some(path) => {
                let source_name = path.display().to_string();
                let text =
                    read_text_capped(path, MAX_CONFIG_BYTES).map_err(|reason| ConfigError {
                        source_name: source_name.clone(),
                        problems: vec![ConfigProblem::new("(file)", reason)],
                    })?;
                Settings::parse(&text, &source_name, env)
            }
            None => Settings::parse(DEFAULT_CONFIG, "(built-in default)", env),
        }
    }

    /// Parses and validates a whole config text; `source_name` names it in errors.
    pub fn parse(
        text: &str,
        source_name: &str,
        env: &dyn Environment,
    ) -> Result<Settings, ConfigError> {
        let fail = |problems| ConfigError { source_name: source_name.to_string(), problems };
        let raw = raw::parse(text).map_err(|problem| fail(vec![problem]))?;
        let mut problems = Vec::new();
        let settings = validate::settings(raw, env, &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(fail(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::base::policy::DEFAULT_POLICY;
    use crate::checks::test_support::Nothing;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, "test.toml", &BTreeMap::new())
    }

    fn only_problem(text: &str) -> ConfigProblem {
        let mut problems = parse(text).expect_err("config should be rejected").problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems.remove(0)
    }

    #[test]
    fn the_built_in_default_is_valid() {
        let settings = Settings::load(None, &BTreeMap::new()).unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(settings.checks.len(), 1);
        assert_eq!(settings.checks[0].kind, "disk");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let problem = only_problem("[server]\nlisten = \"127.0.0.1:0\"\nlistne = \"x\"\n");
        assert_eq!(problem.key, "server.listne");
        assert!(problem.reason.contains("unknown field `listne`"), "{}", problem.reason);
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let problem = only_problem("[defaults]\ntimeout = \"2 seconds\"\n");
        assert_eq!(problem.key, "defaults.timeout");
        assert!(problem.reason.contains("invalid duration"), "{}", problem.reason);
    }

    #[test]
    fn a_timeout_that_does_not_fit_the_interval_is_rejected() {
        let problem =
            only_problem("[[checks]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"1s\"\ntimeout = \"600ms\"\nretries = 1\n");
        assert_eq!(problem.key, "checks[0]");
        assert!(problem.reason.contains("does not fit inside interval"), "{}", problem.reason);
    }

    #[test]
    fn a_password_in_a_url_is_refused() {
        let problem = only_problem(
            "[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgres://u:hunter2@h/db\"\n",
        );
        assert_eq!(problem.key, "checks[0].url");
        assert!(!problem.reason.contains("hunter2"));
    }

    #[test]
    fn an_http_url_with_user_info_is_refused_but_a_postgres_user_is_not() {
        let problem = only_problem(
            "[[checks]]\nname = \"api\"\nkind = \"http\"\nurl = \"https://s3cret@h/health\"\n",
        );
        assert_eq!(problem.key, "checks[0].url");
        assert!(parse(
            "[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgres://app@h/db\"\n"
        )
        .is_ok());
    }

    #[test]
    fn a_password_in_a_key_value_dsn_is_refused_however_it_is_spaced() {
        let problem = only_problem(
            "[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"host=h password = hunter2\"\n",
        );
        assert_eq!(problem.key, "checks[0].url");
    }

    #[test]
    fn absurd_retries_are_an_error_not_a_panic() {
        let problem = only_problem("[[checks]]\nname = \"t\"\nkind = \"tcp\"\naddress = \"h:1\"\nretries = 4294967295\nbackoff = \"1000000h\"\n");
        assert!(problem.reason.contains("more than 10"), "{}", problem.reason);
    }

    #[test]
    fn keys_of_another_kind_are_refused() {
        let problem = only_problem(
            "[[checks]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"h:1\"\nquery = \"SELECT 1\"\n",
        );
        assert_eq!(problem.key, "checks[0].query");
        // Every kind that has the key is named (mysql only where it is built in).
        let owners = if cfg!(feature = "mysql") { "postgres or mysql" } else { "postgres" };
        assert_eq!(
            problem.reason,
            format!("does not apply to kind \"tcp\" (it is a key of {owners})")
        );
    }

    #[test]
    fn an_unknown_key_of_a_check_lists_the_keys_of_its_kind() {
        let problem = only_problem(
            "[[checks]]\nname = \"c\"\nkind = \"tcp\"\naddress = \"h:1\"\nadress = \"h:2\"\n",
        );
        assert_eq!(problem.key, "checks[0].adress");
        assert!(
            problem
                .reason
                .contains("unknown field `adress`, expected one of `address`, `send`, `expect`"),
            "{}",
            problem.reason
        );
    }

    #[test]
    fn a_check_from_code_takes_the_defaults_under_what_it_sets() {
        let settings = parse("[defaults]\ninterval = \"30s\"\nretries = 1\n").unwrap();
        let policy = CheckPolicy::new().critical(false).timeout(Duration::from_secs(1));
        let check =
            CheckSettings::from_code("queue", &policy, &settings.defaults, Arc::new(Nothing))
                .unwrap();
        assert_eq!((check.kind, check.critical), (CODE_KIND, false));
        assert_eq!(check.policy.interval, Duration::from_secs(30));
        assert_eq!(check.policy.timeout, Duration::from_secs(1));
        assert_eq!(check.policy.retries, 1);
        assert!(check.build().is_ok());
    }

    #[test]
    fn a_check_from_code_that_does_not_fit_its_interval_is_an_error_naming_it() {
        let policy = CheckPolicy::new()
            .interval(Duration::from_secs(1))
            .timeout(Duration::from_millis(600))
            .retries(1);
        let problems =
            CheckSettings::from_code("queue", &policy, &DEFAULT_POLICY, Arc::new(Nothing))
                .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "queue");
        assert!(problems[0].reason.contains("does not fit inside interval"), "{problems:?}");
        let problems = CheckSettings::from_code(
            "no spaces",
            &CheckPolicy::new().retries(u32::MAX).backoff(Duration::MAX),
            &DEFAULT_POLICY,
            Arc::new(Nothing),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    /// An environment with no variables and a limit of open files.
    struct Limited(u64);

    impl Environment for Limited {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn open_files_limit(&self) -> Option<u64> {
            Some(self.0)
        }
    }

    #[test]
    fn a_cap_that_leaves_the_checks_no_reserve_is_a_problem_of_server_max_connections() {
        let config = |cap: usize| {
            format!("[server]\nworkers = 1\nmax_connections = {cap}\n[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"postgres://app@h/db\"\npool_size = 4\n")
        };
        // 256 - 5 (the pool of 4, and one closing) - 32 (the process, 1 worker) = 219.
        let settings = Settings::parse(&config(219), "t.toml", &Limited(256)).unwrap();
        assert_eq!(settings.check_descriptors(), 5);
        let error = Settings::parse(&config(220), "t.toml", &Limited(256)).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        assert!(
            error.to_string().starts_with("t.toml: server.max_connections: 220 leaves no reserve"),
            "{error}"
        );
        assert!(error.to_string().contains("at most 219"), "{error}");
        // Without a known limit only the service can tell (at start); 0 is always wrong.
        assert!(parse(&config(100_000)).is_ok());
        assert_eq!(only_problem(&config(0)).key, "server.max_connections");
    }

    #[test]
    fn a_token_reads_unless_its_scopes_say_otherwise() {
        let token = |scopes: &str| {
            let hash = "0".repeat(64);
            format!("[[access.tokens]]\nname = \"t\"\nsha256 = \"{hash}\"\n{scopes}")
        };
        let scopes = |text: &str| parse(&token(text)).unwrap().access.tokens[0].scopes;
        assert_eq!(scopes(""), Scopes { read: true, ping: false });
        assert_eq!(scopes("scopes = [\"ping\"]"), Scopes { read: false, ping: true });
        assert_eq!(scopes("scopes = [\"read\", \"ping\"]"), Scopes { read: true, ping: true });
        let problem = only_problem(&token("scopes = [\"read\", \"write\"]"));
        assert_eq!(problem.key, "access.tokens[0].scopes[1]");
        assert_eq!(problem.reason, "unknown scope \"write\": expected read or ping");
        assert_eq!(only_problem(&token("scopes = []")).key, "access.tokens[0].scopes");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let env = BTreeMap::from([("DB".to_string(), "postgres://u:hunter2@h/db".to_string())]);
        let settings = Settings::parse(
            "[[checks]]\nname = \"db\"\nkind = \"postgres\"\nurl_env = \"DB\"\n",
            "t",
            &env,
        )
        .unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    const TAGGED: &str = r#"
[[checks]]
name = "db"
kind = "disk"
tags = ["payments", "core"]
[[checks]]
name = "cache"
kind = "disk"
tags = ["payments"]
critical = false
[[checks]]
name = "search"
kind = "disk"
"#;

    #[test]
    fn groups_resolve_members_by_name_and_tag_less_exclusions() {
        let text = format!(
            "[server]\nwarn_status = 503\n{TAGGED}\n[[groups]]\nname = \"payments\"\ntags = [\"payments\"]\nmembers = [\"search\"]\nexclude = [\"cache\"]\n\n[[groups]]\nname = \"lenient\"\nmembers = [\"cache\"]\ndetails = \"never\"\nwarn_status = 200\n"
        );
        let settings = parse(&text).unwrap();
        assert_eq!(settings.checks[0].tags, ["core", "payments"]);
        assert_eq!(settings.server.warn_status, WarnStatus::Unavailable);
        assert_eq!(
            settings.groups,
            [
                GroupSettings {
                    name: "payments".into(),
                    members: vec!["db".into(), "search".into()],
                    details: None,
                    warn_status: WarnStatus::Unavailable,
                },
                GroupSettings {
                    name: "lenient".into(),
                    members: vec!["cache".into()],
                    details: Some(Details::Never),
                    warn_status: WarnStatus::Ok,
                },
            ]
        );
    }

    #[test]
    fn every_group_problem_names_its_key() {
        let cases = [
            ("name = \"bad name\"\nmembers = [\"db\"]", "groups[0].name", "invalid name"),
            (
                "name = \"g\"\nmembers = [\"dbx\"]",
                "groups[0].members[0]",
                "no check is named \"dbx\"",
            ),
            (
                "name = \"g\"\ntags = [\"nope\"]",
                "groups[0].tags[0]",
                "no check has the tag \"nope\"",
            ),
            (
                "name = \"g\"\nmembers = [\"db\"]\nexclude = [\"x\"]",
                "groups[0].exclude[0]",
                "no check is named \"x\"",
            ),
            ("name = \"g\"", "groups[0]", "needs members (check names) or tags"),
            (
                "name = \"g\"\nmembers = [\"db\"]\nexclude = [\"db\"]",
                "groups[0]",
                "no members once exclude",
            ),
            (
                "name = \"g\"\nmembers = [\"db\"]\nwarn_status = 500",
                "groups[0].warn_status",
                "use 200",
            ),
            (
                "name = \"g\"\nmembers = [\"db\"]\ndetails = \"some\"",
                "groups[0].details",
                "unknown variant",
            ),
            ("name = \"g\"\nmember = [\"db\"]", "groups[0].member", "unknown field `member`"),
        ];
        for (group, key, reason) in cases {
            let problem = only_problem(&format!("{TAGGED}\n[[groups]]\n{group}\n"));
            assert_eq!(problem.key, key, "{group}: {problem:?}");
            assert!(problem.reason.contains(reason), "{group}: {problem:?}");
        }
        let twice = format!(
            "{TAGGED}\n[[groups]]\nname = \"g\"\nmembers = [\"db\"]\n[[groups]]\nname = \"g\"\nmembers = [\"db\"]\n"
        );
        let problem = only_problem(&twice);
        assert_eq!(problem.key, "groups[1].name");
        assert_eq!(problem.reason, "duplicate group name \"g\"");
        let problem =
            only_problem("[[checks]]\nname = \"db\"\nkind = \"disk\"\ntags = [\"a b\"]\n");
        assert_eq!(problem.key, "checks[0].tags[0]");
        assert!(problem.reason.starts_with("invalid tag"), "{problem:?}");
        assert_eq!(only_problem("[server]\nwarn_status = 404\n").key, "server.warn_status");
    }

    #[test]
    fn a_change_of_tags_alone_keeps_the_check_as_it_runs() {
        let before = parse("[[checks]]\nname = \"db\"\nkind = \"disk\"\ntags = [\"a\"]\n").unwrap();
        let after = parse("[[checks]]\nname = \"db\"\nkind = \"disk\"\ntags = [\"b\"]\n").unwrap();
        assert!(before.checks[0].is_same_as(&after.checks[0]));
    }
}
