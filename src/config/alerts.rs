//! `[[receivers]]`, `[[alerts]]` and `[[maintenance]]`: who is told of
//! what, when, and when not. Validated here, every problem with its key;
//! `src/alerts/` acts on them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::base::name::{check_name_problem, tag_problem};
use crate::base::problem::{or_list, ConfigProblem};
use crate::base::schedule::{Schedule, ScheduleProblem};
use crate::base::secret::{Environment, Secret};
use crate::base::units::DurationText;
use crate::checks::util::trust;
use crate::config::CheckSettings;

/// The receivers, routes and maintenance windows, validated; empty when
/// the file has none.
#[derive(Debug, Clone, Default)]
pub struct AlertSettings {
    pub receivers: Vec<ReceiverSettings>,
    pub routes: Vec<RouteSettings>,
    pub maintenance: Vec<MaintenanceSettings>,
}

/// A `[[receivers]]` entry.
#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub name: String,
    pub kind: ReceiverKind,
    /// One delivery attempt's deadline.
    pub timeout: Duration,
    /// Deliveries in flight at most.
    pub concurrency: usize,
    /// How long a notification is retried before it is given up.
    pub give_up_after: Duration,
}

/// What each kind of receiver needs. Every URL, key, secret and password
/// comes from the environment (a Slack URL is a credential).
#[derive(Debug, Clone)]
pub enum ReceiverKind {
    /// Alertmanager's base URL (`http://alertmanager:9093`); alerts go to
    /// its API v2.
    Alertmanager {
        url: Secret,
    },
    Webhook {
        url: Secret,
        /// Standard Webhooks signing secret (`whsec_` and base64, or raw bytes).
        secret: Option<Secret>,
        body: WebhookBody,
    },
    PagerDuty {
        routing_key: Secret,
        /// The Events API v2 endpoint (another for a proxy or a test).
        url: String,
    },
    Email(EmailSettings),
}

/// What a webhook posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookBody {
    /// The `Notification` as JSON.
    Notification,
    Preset(WebhookPreset),
    /// A minijinja template over the `Notification` that renders JSON.
    Template(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookPreset {
    Slack,
    Teams,
    Discord,
    Mattermost,
    GoogleChat,
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub to: Vec<String>,
    /// Roots for the SMTP server's certificate besides the system's.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (587).
    Starttls,
    /// TLS from the first byte (465).
    Tls,
    /// No TLS: only for a relay on the same host or network.
    Plain,
}

/// An `[[alerts]]` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    pub name: String,
    /// Check names, resolved from `checks`, `tags` and `critical`.
    pub checks: Vec<String>,
    /// Whether `warn` fires too (else only `fail`).
    pub on_warn: bool,
    /// How long a check must keep failing before it fires.
    pub for_: Duration,
    pub send_resolved: bool,
    /// Reminders while it stays firing; none when zero.
    pub repeat_interval: Duration,
    /// How long the first change waits for others to join its notification.
    pub group_wait: Duration,
    /// How long later changes wait after a notification.
    pub group_interval: Duration,
    pub receiver: String,
}

/// A `[[maintenance]]` window.
#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    pub name: String,
    /// Check names, resolved from `checks` and `tags`.
    pub checks: Vec<String>,
    pub when: MaintenanceWhen,
}

#[derive(Debug, Clone)]
pub enum MaintenanceWhen {
    Fixed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// Opens at each time of the schedule, for `duration`.
    Recurring {
        schedule: Schedule,
        duration: Duration,
    },
}

impl MaintenanceSettings {
    /// The window in force at `now`: its start and end.
    pub fn in_force(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let (start, end) = match &self.when {
            MaintenanceWhen::Fixed { start, end } => (*start, *end),
            MaintenanceWhen::Recurring { schedule, duration } => {
                let start = schedule.latest_at_or_before(now)?;
                (start, start + chrono::TimeDelta::from_std(*duration).ok()?)
            }
        };
        (start <= now && now < end).then_some((start, end))
    }
}

pub const DEFAULT_RECEIVER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_RECEIVER_CONCURRENCY: usize = 4;
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3_600);
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_secs(30);
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(300);
/// Alertmanager's default.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3_600);
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
const RECEIVER_KINDS: &[&str] = &["alertmanager", "webhook", "pagerduty", "email"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReceiverCommon {
    name: String,
    kind: String,
    timeout: Option<DurationText>,
    concurrency: Option<usize>,
    give_up_after: Option<DurationText>,
}
const RECEIVER_COMMON_KEYS: &[&str] = &["name", "kind", "timeout", "concurrency", "give_up_after"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    url_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url_env: String,
    secret_env: Option<String>,
    preset: Option<WebhookPreset>,
    template: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPagerDuty {
    routing_key_env: String,
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmail {
    host: String,
    port: Option<u16>,
    security: Option<SmtpSecurity>,
    username: Option<String>,
    password_env: Option<String>,
    from: String,
    to: Vec<String>,
    ca_file: Option<PathBuf>,
}

/// An `[[alerts]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    name: String,
    receiver: String,
    checks: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    critical: Option<bool>,
    on: Option<Vec<String>>,
    #[serde(rename = "for")]
    for_: Option<DurationText>,
    send_resolved: Option<bool>,
    repeat_interval: Option<DurationText>,
    group_wait: Option<DurationText>,
    group_interval: Option<DurationText>,
}

/// A `[[maintenance]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    name: String,
    checks: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    schedule: Option<String>,
    timezone: Option<String>,
    duration: Option<DurationText>,
    start: Option<String>,
    end: Option<String>,
}

/// Everything of `[[receivers]]`, `[[alerts]]` and `[[maintenance]]`.
pub fn settings(
    receivers: Vec<toml::Table>,
    routes: Vec<RawRoute>,
    maintenance: Vec<RawMaintenance>,
    checks: &[CheckSettings],
    names: &HashSet<String>,
    env: &dyn Environment,
    problems: &mut Vec<ConfigProblem>,
) -> AlertSettings {
    let receivers: Vec<ReceiverSettings> = receivers
        .into_iter()
        .enumerate()
        .filter_map(|(index, table)| receiver(table, &format!("receivers[{index}]"), env, problems))
        .collect();
    let mut seen = HashSet::new();
    for (index, receiver) in receivers.iter().enumerate() {
        if !seen.insert(receiver.name.as_str()) {
            problems.push(ConfigProblem::new(
                format!("receivers[{index}].name"),
                format!("duplicate receiver name {:?}", receiver.name),
            ));
        }
    }
    let receiver_names: Vec<&str> = receivers.iter().map(|r| r.name.as_str()).collect();
    let mut route_names = HashSet::new();
    let routes = routes
        .into_iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            let key = format!("alerts[{index}]");
            if !route_names.insert(raw.name.clone()) {
                problems.push(ConfigProblem::new(
                    format!("{key}.name"),
                    format!("duplicate route name {:?}", raw.name),
                ));
            }
            route(raw, &key, &receiver_names, checks, names, problems)
        })
        .collect();
    let maintenance = maintenance
        .into_iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            window(raw, &format!("maintenance[{index}]"), checks, names, problems)
        })
        .collect();
    AlertSettings { receivers, routes, maintenance }
}

fn receiver(
    mut table: toml::Table,
    key: &str,
    env: &dyn Environment,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ReceiverSettings> {
    let mut report = |at: &str, reason: String| {
        let key = if at.is_empty() { key.to_string() } else { format!("{key}.{at}") };
        problems.push(ConfigProblem::new(key, reason));
    };
    let common: toml::Table = RECEIVER_COMMON_KEYS
        .iter()
        .filter_map(|name| Some((name.to_string(), table.remove(*name)?)))
        .collect();
    let common: RawReceiverCommon = read(toml::Value::Table(common), &mut report)?;
    if let Some(reason) = check_name_problem(&common.name) {
        report("name", reason);
    }
    let rest = toml::Value::Table(table);
    let secret = |at: &str, var: &str, report: &mut dyn FnMut(&str, String)| match env.var(var) {
        Some(value) if !value.is_empty() => Some(Secret::new(value)),
        _ => {
            report(at, format!("environment variable {var} is not set or empty"));
            None
        }
    };
    let kind = match common.kind.as_str() {
        "alertmanager" => {
            let raw: RawAlertmanager = read(rest, &mut report)?;
            let url = secret("url_env", &raw.url_env, &mut report)?;
            http_url(url.expose(), &raw.url_env)
                .map_err(|reason| report("url_env", reason))
                .ok()?;
            ReceiverKind::Alertmanager { url }
        }
        "webhook" => {
            let raw: RawWebhook = read(rest, &mut report)?;
            let url = secret("url_env", &raw.url_env, &mut report)?;
            http_url(url.expose(), &raw.url_env)
                .map_err(|reason| report("url_env", reason))
                .ok()?;
            let signing = match &raw.secret_env {
                Some(var) => Some(secret("secret_env", var, &mut report)?),
                None => None,
            };
            let body = match (raw.preset, raw.template) {
                (None, None) => WebhookBody::Notification,
                (Some(preset), None) => WebhookBody::Preset(preset),
                (None, Some(template)) => {
                    if let Err(error) = minijinja::Environment::new().template_from_str(&template) {
                        report("template", format!("is not a minijinja template: {error}"));
                        return None;
                    }
                    WebhookBody::Template(template)
                }
                (Some(_), Some(_)) => {
                    report("template", "set preset or template, not both".into());
                    return None;
                }
            };
            ReceiverKind::Webhook { url, secret: signing, body }
        }
        "pagerduty" => {
            let raw: RawPagerDuty = read(rest, &mut report)?;
            let routing_key = secret("routing_key_env", &raw.routing_key_env, &mut report)?;
            let url = raw.url.unwrap_or_else(|| PAGERDUTY_EVENTS_URL.into());
            http_url(&url, "url").map_err(|reason| report("url", reason)).ok()?;
            ReceiverKind::PagerDuty { routing_key, url }
        }
        "email" => {
            let raw: RawEmail = read(rest, &mut report)?;
            email(raw, env, &mut report).map(ReceiverKind::Email)?
        }
        other => {
            report(
                "kind",
                format!("unknown receiver kind {other:?}: expected {}", or_list(RECEIVER_KINDS)),
            );
            return None;
        }
    };
    if common.concurrency == Some(0) {
        report("concurrency", "must be at least 1".into());
    }
    let timeout = common.timeout.map_or(DEFAULT_RECEIVER_TIMEOUT, |t| t.0);
    if timeout.is_zero() || timeout > Duration::from_secs(300) {
        report("timeout", "must be more than 0 and at most 5m".into());
    }
    let give_up_after = common.give_up_after.map_or(DEFAULT_GIVE_UP_AFTER, |t| t.0);
    if give_up_after < timeout {
        report("give_up_after", "must be at least the receiver's timeout".into());
    }
    Some(ReceiverSettings {
        name: common.name,
        kind,
        timeout,
        concurrency: common.concurrency.unwrap_or(DEFAULT_RECEIVER_CONCURRENCY).max(1),
        give_up_after,
    })
}

fn email(
    raw: RawEmail,
    env: &dyn Environment,
    report: &mut dyn FnMut(&str, String),
) -> Option<EmailSettings> {
    let security = raw.security.unwrap_or(SmtpSecurity::Starttls);
    let port = raw.port.unwrap_or(match security {
        SmtpSecurity::Starttls => 587,
        SmtpSecurity::Tls => 465,
        SmtpSecurity::Plain => 25,
    });
    let mut fine = true;
    if raw.host.trim().is_empty() {
        report("host", "must not be empty".into());
        fine = false;
    }
    let password = match (&raw.username, &raw.password_env) {
        (Some(_), Some(var)) => match env.var(var) {
            Some(value) if !value.is_empty() => Some(Secret::new(value)),
            _ => {
                report("password_env", format!("environment variable {var} is not set or empty"));
                fine = false;
                None
            }
        },
        (None, None) => None,
        (Some(_), None) => {
            report("password_env", "username needs password_env".into());
            fine = false;
            None
        }
        (None, Some(_)) => {
            report("username", "password_env needs username".into());
            fine = false;
            None
        }
    };
    if raw.from.parse::<lettre::message::Mailbox>().is_err() {
        report("from", format!("{:?} is not a mail address", raw.from));
        fine = false;
    }
    if raw.to.is_empty() {
        report("to", "needs at least one address".into());
        fine = false;
    }
    for (index, to) in raw.to.iter().enumerate() {
        if to.parse::<lettre::message::Mailbox>().is_err() {
            report(&format!("to[{index}]"), format!("{to:?} is not a mail address"));
            fine = false;
        }
    }
    if let Some(path) = &raw.ca_file {
        if let Err(reason) = trust::check_ca_file(path) {
            report("ca_file", reason);
            fine = false;
        }
    }
    fine.then_some(EmailSettings {
        host: raw.host,
        port,
        security,
        username: raw.username,
        password,
        from: raw.from,
        to: raw.to,
        ca_file: raw.ca_file,
    })
}

/// An http(s) URL; the reason never repeats it (it may hold a credential).
fn http_url(url: &str, source: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(_) => Err(format!("{source} must hold an http or https URL")),
        Err(error) => Err(format!("{source} is not a URL: {error}")),
    }
}

/// Check names chosen by name, tag, and (for routes) criticality; each
/// name and tag must match something, so that a typo is an error rather
/// than a silently smaller set.
fn chosen(
    key: &str,
    by_name: &[String],
    by_tag: &[String],
    critical: bool,
    checks: &[CheckSettings],
    names: &HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<String> {
    for (at, name) in by_name.iter().enumerate().filter(|(_, name)| !names.contains(*name)) {
        problems.push(ConfigProblem::new(
            format!("{key}.checks[{at}]"),
            format!("no check is named {name:?}"),
        ));
    }
    for (at, tag) in by_tag.iter().enumerate() {
        if let Some(reason) = tag_problem(tag) {
            problems.push(ConfigProblem::new(format!("{key}.tags[{at}]"), reason));
        } else if !checks.iter().any(|check| check.tags.contains(tag)) {
            problems.push(ConfigProblem::new(
                format!("{key}.tags[{at}]"),
                format!("no check has the tag {tag:?}"),
            ));
        }
    }
    checks
        .iter()
        .filter(|check| {
            by_name.contains(&check.name)
                || check.tags.iter().any(|tag| by_tag.contains(tag))
                || (critical && check.critical)
        })
        .map(|check| check.name.clone())
        .collect()
}

fn route(
    raw: RawRoute,
    key: &str,
    receivers: &[&str],
    checks: &[CheckSettings],
    names: &HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<RouteSettings> {
    let count = problems.len();
    let mut report =
        |at: &str, reason: String| problems.push(ConfigProblem::new(format!("{key}{at}"), reason));
    if let Some(reason) = check_name_problem(&raw.name) {
        report(".name", reason);
    }
    if !receivers.contains(&raw.receiver.as_str()) {
        let known = if receivers.is_empty() {
            "no [[receivers]] are configured".to_string()
        } else {
            format!("expected {}", or_list(receivers))
        };
        report(".receiver", format!("no receiver is named {:?}: {known}", raw.receiver));
    }
    let mut on_warn = false;
    for (at, on) in raw.on.clone().unwrap_or_else(|| vec!["fail".into()]).iter().enumerate() {
        match on.as_str() {
            "fail" => {}
            "warn" => on_warn = true,
            other => report(
                &format!(".on[{at}]"),
                format!("unknown status {other:?}: expected fail or warn"),
            ),
        }
    }
    let critical = raw.critical.unwrap_or(false);
    let (by_name, by_tag) = (raw.checks.unwrap_or_default(), raw.tags.unwrap_or_default());
    if by_name.is_empty() && by_tag.is_empty() && !critical {
        report("", "a route needs checks (names), tags or critical = true".into());
        return None;
    }
    let chosen = chosen(key, &by_name, &by_tag, critical, checks, names, problems);
    let group_wait = raw.group_wait.map_or(DEFAULT_GROUP_WAIT, |d| d.0);
    let group_interval = raw.group_interval.map_or(DEFAULT_GROUP_INTERVAL, |d| d.0);
    if group_interval.is_zero() {
        problems.push(ConfigProblem::new(format!("{key}.group_interval"), "must be more than 0"));
    }
    (problems.len() == count).then_some(RouteSettings {
        name: raw.name,
        checks: chosen,
        on_warn,
        for_: raw.for_.map_or(Duration::ZERO, |d| d.0),
        send_resolved: raw.send_resolved.unwrap_or(true),
        repeat_interval: raw.repeat_interval.map_or(DEFAULT_REPEAT_INTERVAL, |d| d.0),
        group_wait,
        group_interval,
        receiver: raw.receiver,
    })
}

fn window(
    raw: RawMaintenance,
    key: &str,
    checks: &[CheckSettings],
    names: &HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<MaintenanceSettings> {
    let count = problems.len();
    let mut report =
        |at: &str, reason: String| problems.push(ConfigProblem::new(format!("{key}{at}"), reason));
    if let Some(reason) = check_name_problem(&raw.name) {
        report(".name", reason);
    }
    let when = match (raw.schedule, raw.start, raw.end) {
        (Some(line), None, None) => {
            let duration = raw.duration.map(|d| d.0).filter(|d| !d.is_zero());
            match (Schedule::parse(&line, raw.timezone.as_deref()), duration) {
                (Ok(schedule), Some(duration)) => {
                    Some(MaintenanceWhen::Recurring { schedule, duration })
                }
                (Err(ScheduleProblem::Line(reason)), _) => {
                    report(".schedule", reason);
                    None
                }
                (Err(ScheduleProblem::Zone(reason)), _) => {
                    report(".timezone", reason);
                    None
                }
                (Ok(_), None) => {
                    report(".duration", "a schedule needs a duration of more than 0".into());
                    None
                }
            }
        }
        (None, Some(start), Some(end)) => {
            if raw.duration.is_some() || raw.timezone.is_some() {
                report("", "duration and timezone go with schedule, not with start and end".into());
            }
            let mut time = |at: &str, text: &str| match DateTime::parse_from_rfc3339(text) {
                Ok(time) => Some(time.with_timezone(&Utc)),
                Err(_) => {
                    report(
                        at,
                        format!(
                            "{text:?} is not an RFC 3339 time, such as \"2026-12-24T22:00:00Z\""
                        ),
                    );
                    None
                }
            };
            match (time(".start", &start), time(".end", &end)) {
                (Some(start), Some(end)) if start < end => {
                    Some(MaintenanceWhen::Fixed { start, end })
                }
                (Some(_), Some(_)) => {
                    report(".end", "must be after start".into());
                    None
                }
                _ => None,
            }
        }
        _ => {
            report(
                "",
                "set schedule and duration (a recurring window) or start and end (one window)"
                    .into(),
            );
            None
        }
    };
    let (by_name, by_tag) = (raw.checks.unwrap_or_default(), raw.tags.unwrap_or_default());
    if by_name.is_empty() && by_tag.is_empty() {
        problems.push(ConfigProblem::new(key, "a maintenance window needs checks (names) or tags"));
        return None;
    }
    let chosen = chosen(key, &by_name, &by_tag, false, checks, names, problems);
    (problems.len() == count).then_some(MaintenanceSettings {
        name: raw.name,
        checks: chosen,
        when: when?,
    })
}

/// Deserialises a table, reporting a problem at the key it is about.
fn read<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    report: &mut dyn FnMut(&str, String),
) -> Option<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|error| {
            let path = error.path().to_string();
            report(
                if path == "." { "" } else { &path },
                crate::base::problem::serde_reason(error.into_inner()),
            );
        })
        .ok()
}

/// `depends_on`: each a check of the file, never the check itself, and no
/// cycle (a cycle would suppress each other's alerts for ever).
pub fn dependencies(
    checks: &[CheckSettings],
    names: &HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) {
    for (index, check) in checks.iter().enumerate() {
        for (at, name) in check.depends_on.iter().enumerate() {
            let key = format!("checks[{index}].depends_on[{at}]");
            if name == &check.name {
                problems.push(ConfigProblem::new(key, "a check cannot depend on itself"));
            } else if !names.contains(name) {
                problems.push(ConfigProblem::new(key, format!("no check is named {name:?}")));
            }
        }
    }
    for (index, check) in checks.iter().enumerate() {
        // Walks the dependencies from each check; reaching it again is a cycle.
        let mut stack: Vec<&str> = check.depends_on.iter().map(String::as_str).collect();
        let mut visited = HashSet::new();
        while let Some(name) = stack.pop() {
            if name == check.name {
                problems.push(ConfigProblem::new(
                    format!("checks[{index}].depends_on"),
                    format!("{:?} depends on itself through its dependencies", check.name),
                ));
                break;
            }
            if visited.insert(name) {
                if let Some(next) = checks.iter().find(|other| other.name == name) {
                    stack.extend(next.depends_on.iter().map(String::as_str));
                }
            }
        }
    }
}
