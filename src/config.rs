//! The configuration: one TOML file (or the built-in default), a few
//! environment variables over it, validated once at load into typed
//! `Settings`. Every problem names the file, the key and the reason.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::checks::{self, Check, KindInput, KindSettings};
use crate::history::MAX_HISTORY;
use crate::net::Cidr;

/// Everything healthd needs to run, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[access]`.
    pub access: AccessSettings,
    /// `[defaults]` over the built-in policy: what every check, from the
    /// file or from code, runs under unless it says otherwise.
    pub defaults: Policy,
    /// `[[checks]]`.
    pub checks: Vec<CheckSettings>,
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
    pub forwarded_prefix: Option<String>,
    pub tokens: Vec<TokenSettings>,
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
}

impl fmt::Debug for TokenSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSettings").field("name", &self.name).finish_non_exhaustive()
    }
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
    /// The kind's own settings, validated.
    pub settings: Arc<dyn KindSettings>,
    /// The kind's keys as written, so a reload can tell an unchanged check.
    definition: toml::Table,
}

impl CheckSettings {
    /// Builds the check's pool or client.
    pub fn build(&self) -> anyhow::Result<Arc<dyn Check>> {
        self.settings.build(&self.name, &self.policy)
    }

    /// Whether `other` describes the same check under the same policy.
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
    ) -> Result<CheckSettings, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut report = |reason: String| problems.push(Problem { key: name.into(), reason });
        if !valid_check_name(name) {
            report(format!("invalid name {name:?}: use 1 to 64 of A-Z a-z 0-9 - _ ."));
        }
        if check.measurements().is_empty() {
            // Reports have one entry per measurement: it would not show.
            report("measurements() is empty: a check reports at least one measurement".into());
        }
        let resolved = policy_over(defaults, &policy.raw());
        policy_problems(&resolved).into_iter().for_each(&mut report);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CheckSettings {
            name: name.into(),
            kind: CODE_KIND,
            critical: policy.critical.unwrap_or(true),
            policy: resolved,
            settings: Arc::new(Prebuilt(check)),
            definition: toml::Table::new(),
        })
    }
}

/// The kind label of checks from code, in logs and metrics.
pub const CODE_KIND: &str = "code";

/// The settings of a check from code: the check itself, built already.
struct Prebuilt(Arc<dyn Check>);

impl fmt::Debug for Prebuilt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prebuilt")
    }
}

impl KindSettings for Prebuilt {
    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(self.0.clone())
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
    interval: Option<Duration>,
    timeout: Option<Duration>,
    retries: Option<u32>,
    backoff: Option<Duration>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    history: Option<u32>,
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

    /// `interval`: how often the check runs.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// `timeout`: the hard deadline of one attempt; its future is dropped then.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// `retries`: attempts after a failed one, within the same run (at most 10).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// `backoff`: the base of the exponential backoff between attempts.
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// `failure_threshold`: failed runs in a row before the check reports `fail`.
    pub fn failure_threshold(mut self, runs: u32) -> Self {
        self.failure_threshold = Some(runs);
        self
    }

    /// `success_threshold`: good runs in a row before a failed check recovers.
    pub fn success_threshold(mut self, runs: u32) -> Self {
        self.success_threshold = Some(runs);
        self
    }

    /// `history`: runs kept for the history endpoint and the status page (0: none).
    pub fn history(mut self, runs: u32) -> Self {
        self.history = Some(runs);
        self
    }

    fn raw(&self) -> RawPolicy {
        RawPolicy {
            interval: self.interval.map(DurationText),
            timeout: self.timeout.map(DurationText),
            retries: self.retries,
            backoff: self.backoff.map(DurationText),
            failure_threshold: self.failure_threshold,
            success_threshold: self.success_threshold,
            history: self.history,
        }
    }
}

/// When and how patiently a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub interval: Duration,
    /// Hard deadline of one attempt.
    pub timeout: Duration,
    /// Attempts after the first failed one, within the same run.
    pub retries: u32,
    /// Base of the exponential backoff between attempts (full jitter).
    pub backoff: Duration,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// Runs kept for `/health/checks/{name}/history` and the status page
    /// (0 keeps none). Not about running, but set where the rest is: in
    /// `[defaults]` or per check.
    pub history: u32,
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
}

/// A value that must never reach a response or a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Config problems, each with the key it is about; shown one per line as
/// `FILE: KEY: REASON`.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, `(built-in default)`, or `checks from code`.
    pub source_name: String,
    /// Every problem found, not only the first.
    pub problems: Vec<Problem>,
}

/// One problem with a config.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `checks[2].timeout`, or a check from code's name.
    pub key: String,
    /// What is wrong, and what would be right.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}: {}", self.source_name, problem.key, problem.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

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

/// Where the environment can change the file's settings
/// (`HEALTHD_LISTEN`, variables a check names with `url_env`, tokens'
/// `env`): the process's ([`ProcessEnv`]), or a map in tests.
pub trait Environment {
    /// The variable's value, if it is set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Settings {
    /// Reads `path`, or the built-in default when there is none.
    pub fn load(path: Option<&Path>, env: &dyn Environment) -> Result<Settings, ConfigError> {
        match path {
            Some(path) => {
                let source_name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
                    source_name: source_name.clone(),
                    problems: vec![Problem {
                        key: "(file)".into(),
                        reason: format!("cannot read: {error}"),
                    }],
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
        let raw = parse_raw(text).map_err(|problem| fail(vec![problem]))?;
        let mut problems = Vec::new();
        let settings = validate(raw, env, &mut problems);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(fail(problems))
        }
    }
}

fn parse_raw(text: &str) -> Result<RawSettings, Problem> {
    let table: toml::Table = toml::from_str(text).map_err(|error| Problem {
        key: "(syntax)".into(),
        reason: error
            .to_string()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    })?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
        let key = error.path().to_string();
        Problem {
            key: if key == "." { "(top level)".into() } else { key },
            reason: serde_reason(error.into_inner()),
        }
    })
}

/// A serde error as a problem's reason: toml appends a line naming the key
/// (`in `timeout``), which the problem's key already says.
pub fn serde_reason(error: impl fmt::Display) -> String {
    let mut reason = error.to_string();
    if let Some(end) = reason.find("\nin `") {
        reason.truncate(end);
    }
    reason.trim_end().to_string()
}

// What the file holds, before validation. Every struct denies unknown keys so
// a typo is an error that names it.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    defaults: RawPolicy,
    #[serde(default)]
    checks: Vec<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    service_id: Option<String>,
    description: Option<String>,
    drain_delay: Option<DurationText>,
    workers: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    details: Option<Details>,
    allow: Option<Vec<String>>,
    details_allow: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    forwarded_header: Option<ForwardedHeader>,
    forwarded_prefix: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: Option<String>,
    env: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    interval: Option<DurationText>,
    timeout: Option<DurationText>,
    retries: Option<u32>,
    backoff: Option<DurationText>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    history: Option<u32>,
}

/// The keys every check has; the rest of its table belongs to its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    kind: String,
    critical: Option<bool>,
    interval: Option<DurationText>,
    timeout: Option<DurationText>,
    retries: Option<u32>,
    backoff: Option<DurationText>,
    failure_threshold: Option<u32>,
    success_threshold: Option<u32>,
    history: Option<u32>,
}

const COMMON_CHECK_KEYS: &[&str] = &[
    "name",
    "kind",
    "critical",
    "interval",
    "timeout",
    "retries",
    "backoff",
    "failure_threshold",
    "success_threshold",
    "history",
];

/// A duration written as `"500ms"`, `"2s"`, `"1m"` or `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationText(pub Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(DurationText).map_err(serde::de::Error::custom)
    }
}

/// Parses `"500ms"`, `"2s"`, `"1m"`, `"1h"` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("invalid duration {text:?}: expected a whole number and a unit (ms, s, m, h), such as \"500ms\" or \"2s\"")
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(invalid()),
    };
    millis.map(Duration::from_millis).ok_or_else(invalid)
}

/// A percentage written as `"10%"`.
#[derive(Clone, Copy, Debug)]
pub struct PercentText(pub f64);

impl<'de> Deserialize<'de> for PercentText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || {
            serde::de::Error::custom(format!("invalid percentage {text:?}: expected a number from 0 to 100 and '%', such as \"10%\""))
        };
        let number: f64 =
            text.strip_suffix('%').ok_or_else(invalid)?.trim().parse().map_err(|_| invalid())?;
        if (0.0..=100.0).contains(&number) {
            Ok(PercentText(number))
        } else {
            Err(invalid())
        }
    }
}

const DEFAULT_POLICY: Policy = Policy {
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(2),
    retries: 2,
    backoff: Duration::from_millis(100),
    failure_threshold: 1,
    success_threshold: 1,
    history: 120,
};

/// A policy for unit tests: every 10 s, a 1 s deadline, no retries.
#[cfg(test)]
pub const TEST_POLICY: Policy = Policy {
    interval: Duration::from_secs(10),
    timeout: Duration::from_secs(1),
    retries: 0,
    backoff: Duration::from_millis(100),
    failure_threshold: 1,
    success_threshold: 1,
    history: 120,
};

/// Check names become URL path segments and metric labels.
fn valid_check_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

fn validate(raw: RawSettings, env: &dyn Environment, problems: &mut Vec<Problem>) -> Settings {
    let mut report = |key: String, reason: String| problems.push(Problem { key, reason });

    let listen_text = env.var("HEALTHD_LISTEN").map(|value| ("HEALTHD_LISTEN", value));
    let (listen_key, listen_text) = listen_text
        .unwrap_or(("server.listen", raw.server.listen.unwrap_or_else(|| "127.0.0.1:8080".into())));
    let listen = listen_text.parse().unwrap_or_else(|_| {
        report(listen_key.into(), format!("invalid listen address {listen_text:?}: expected IP:PORT, such as \"127.0.0.1:8080\" or \"[::]:8080\""));
        SocketAddr::from(([127, 0, 0, 1], 8080))
    });
    if raw.server.workers == Some(0) {
        report("server.workers".into(), "must be at least 1".into());
    }
    let server = ServerSettings {
        listen,
        service_id: raw.server.service_id.unwrap_or_else(|| "healthd".into()),
        description: raw.server.description,
        drain_delay: raw.server.drain_delay.map_or(Duration::from_secs(5), |d| d.0),
        workers: raw.server.workers,
    };

    let mut cidrs = |key: &str, values: Option<Vec<String>>, default: &[&str]| -> Vec<Cidr> {
        let values = values.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        values
            .iter()
            .enumerate()
            .filter_map(|(index, text)| {
                text.parse::<Cidr>()
                    .map_err(|reason| report(format!("access.{key}[{index}]"), reason))
                    .ok()
            })
            .collect()
    };
    let allow = cidrs("allow", raw.access.allow, &["0.0.0.0/0", "::/0"]);
    let details_allow = cidrs("details_allow", raw.access.details_allow, &["0.0.0.0/0", "::/0"]);
    let trusted_proxies = cidrs("trusted_proxies", raw.access.trusted_proxies, &[]);

    let mut token_names = HashSet::new();
    let mut tokens = Vec::new();
    for (index, token) in raw.access.tokens.into_iter().enumerate() {
        let key = format!("access.tokens[{index}]");
        if !token_names.insert(token.name.clone()) {
            report(format!("{key}.name"), format!("duplicate token name {:?}", token.name));
        }
        let digest = match (token.sha256, token.env) {
            (Some(hex), None) => parse_sha256_hex(&hex)
                .map_err(|reason| report(format!("{key}.sha256"), reason))
                .ok(),
            (None, Some(var)) => match env.var(&var) {
                Some(value) if !value.is_empty() => {
                    Some(crate::http::access::sha256(value.as_bytes()))
                }
                _ => {
                    report(
                        format!("{key}.env"),
                        format!("environment variable {var} is not set or empty"),
                    );
                    None
                }
            },
            _ => {
                report(key.clone(), "set exactly one of sha256 (the token's hex SHA-256) or env (a variable holding the token)".into());
                None
            }
        };
        if let Some(sha256) = digest {
            tokens.push(TokenSettings { name: token.name, sha256 });
        }
    }
    let forwarded_prefix = raw.access.forwarded_prefix.as_deref().and_then(|text| {
        if trusted_proxies.is_empty() {
            report(
                "access.forwarded_prefix".into(),
                "applies only to requests from access.trusted_proxies, which lists none".into(),
            );
        }
        crate::http::access::normalise_prefix(text)
            .map_err(|reason| report("access.forwarded_prefix".into(), reason))
            .ok()
            .filter(|prefix| !prefix.is_empty())
    });
    let details = raw.access.details.unwrap_or(Details::Authorized);
    let access = AccessSettings {
        details,
        allow,
        details_allow,
        trusted_proxies,
        forwarded_header: raw.access.forwarded_header.unwrap_or(ForwardedHeader::XForwardedFor),
        forwarded_prefix,
        tokens,
    };

    let defaults = policy_over(&DEFAULT_POLICY, &raw.defaults);
    let mut names = HashSet::new();
    let mut checks = Vec::new();
    for (index, table) in raw.checks.into_iter().enumerate() {
        let key = format!("checks[{index}]");
        if let Some(check) = check_settings(table, &key, &defaults, env, &mut names, problems) {
            checks.push(check);
        }
    }

    Settings { server, access, defaults, checks }
}

fn policy_over(base: &Policy, raw: &RawPolicy) -> Policy {
    Policy {
        interval: raw.interval.map_or(base.interval, |d| d.0),
        timeout: raw.timeout.map_or(base.timeout, |d| d.0),
        retries: raw.retries.unwrap_or(base.retries),
        backoff: raw.backoff.map_or(base.backoff, |d| d.0),
        failure_threshold: raw.failure_threshold.unwrap_or(base.failure_threshold),
        success_threshold: raw.success_threshold.unwrap_or(base.success_threshold),
        history: raw.history.unwrap_or(base.history),
    }
}

fn policy_problems(policy: &Policy) -> Vec<String> {
    let mut problems = Vec::new();
    if policy.timeout.is_zero() {
        problems.push("timeout must be more than 0".into());
    }
    if policy.interval.is_zero() {
        problems.push("interval must be more than 0".into());
    }
    if policy.retries > 10 {
        problems.push(format!("retries = {} is more than 10", policy.retries));
    }
    if policy.failure_threshold == 0 || policy.success_threshold == 0 {
        problems.push("failure_threshold and success_threshold must be at least 1".into());
    }
    if policy.history > MAX_HISTORY {
        problems.push(format!("history = {} is more than {MAX_HISTORY}", policy.history));
    }
    if policy.retries <= 10 && policy.worst_case() > policy.interval {
        problems.push(format!(
            "timeout × (retries + 1) + backoff = {} ms does not fit inside interval = {} ms: lower timeout or retries, or raise interval",
            policy.worst_case().as_millis(),
            policy.interval.as_millis()
        ));
    }
    problems
}

/// One `[[checks]]` table: the common keys here, the rest by its kind.
fn check_settings(
    mut table: toml::Table,
    key: &str,
    defaults: &Policy,
    env: &dyn Environment,
    names: &mut HashSet<String>,
    problems: &mut Vec<Problem>,
) -> Option<CheckSettings> {
    let mut report = |name: &str, reason: String| {
        let key = if name.is_empty() { key.to_string() } else { format!("{key}.{name}") };
        problems.push(Problem { key, reason })
    };
    let mut common = toml::Table::new();
    for name in COMMON_CHECK_KEYS {
        if let Some(value) = table.remove(*name) {
            common.insert(name.to_string(), value);
        }
    }
    let check: RawCheck = match serde_path_to_error::deserialize(toml::Value::Table(common)) {
        Ok(check) => check,
        Err(error) => {
            let path = error.path().to_string();
            report(if path == "." { "" } else { &path }, serde_reason(error.into_inner()));
            return None;
        }
    };
    if !valid_check_name(&check.name) {
        report("name", format!("invalid name {:?}: use 1 to 64 of A-Z a-z 0-9 - _ .", check.name));
    } else if !names.insert(check.name.clone()) {
        report("name", format!("duplicate check name {:?}", check.name));
    }
    let policy = policy_over(
        defaults,
        &RawPolicy {
            interval: check.interval,
            timeout: check.timeout,
            retries: check.retries,
            backoff: check.backoff,
            failure_threshold: check.failure_threshold,
            success_threshold: check.success_threshold,
            history: check.history,
        },
    );
    for reason in policy_problems(&policy) {
        report("", reason);
    }
    let kinds = checks::kinds();
    let Some(kind) = kinds.iter().find(|kind| kind.name == check.kind) else {
        let names: Vec<&str> = kinds.iter().map(|kind| kind.name).collect();
        report("kind", format!("unknown kind {:?}: expected {}", check.kind, or_list(&names)));
        return None;
    };
    let mut misplaced = false;
    if kind.feature.is_none() || !kind.keys.is_empty() {
        // A key of another kind is named as such; an unknown one is left to
        // the kind's settings, which refuse it with the keys they expect.
        table.retain(|name, _| {
            let owners: Vec<&str> = kinds
                .iter()
                .filter(|other| other.keys.contains(&name))
                .map(|other| other.name)
                .collect();
            if kind.keys.contains(&name) || owners.is_empty() {
                return true;
            }
            report(
                name,
                format!(
                    "does not apply to kind {:?} (it is a key of {})",
                    check.kind,
                    or_list(&owners)
                ),
            );
            misplaced = true;
            false
        });
    }
    let definition = table.clone();
    let mut input = KindInput::new(key, kind.name, &policy, table, env, problems);
    let settings = kind.parse(&mut input)?;
    if misplaced {
        return None;
    }
    Some(CheckSettings {
        name: check.name,
        kind: kind.name,
        critical: check.critical.unwrap_or(true),
        policy,
        settings,
        definition,
    })
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => only.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

fn parse_sha256_hex(hex: &str) -> Result<[u8; 32], String> {
    let invalid = || {
        "expected 64 hex digits (the SHA-256 of the token; `healthd hash-token` prints it)"
            .to_string()
    };
    if hex.len() != 64 {
        return Err(invalid());
    }
    let mut digest = [0u8; 32];
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2).ok_or_else(invalid)?, 16)
            .map_err(|_| invalid())?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, "test.toml", &BTreeMap::new())
    }

    fn only_problem(text: &str) -> Problem {
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
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
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
            problem.reason.contains("unknown field `adress`, expected `address`"),
            "{}",
            problem.reason
        );
    }

    struct Nothing;

    impl Check for Nothing {
        fn component_type(&self) -> healthd_models::ComponentType {
            healthd_models::ComponentType::Component
        }
        fn measurements(&self) -> &'static [(&'static str, &'static str)] {
            checks::RESPONSE_TIME
        }
        fn attempt(&self) -> checks::BoxFuture<'_, checks::Observation> {
            Box::pin(async { checks::Observation::pass(vec![]) })
        }
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
}
