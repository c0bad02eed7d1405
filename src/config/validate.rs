//! Validation: what the file says (`raw`) into `Settings`, every problem
//! reported with its key, not only the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::base::budget::Budget;
use crate::base::name::{check_name_problem, duplicate_name};
use crate::base::net::Cidr;
use crate::base::policy::{Policy, RawPolicy, DEFAULT_POLICY, POLICY_KEYS};
use crate::base::problem::{or_list, serde_reason, ConfigProblem};
use crate::base::secret::{sha256, Environment};
use crate::base::units::Prefix;
use crate::checks::{self, KindInput};
use crate::config::raw::RawClient;
use crate::config::raw::{RawCheck, RawSettings, COMMON_CHECK_KEYS};
use crate::config::{
    server_tls, AccessSettings, CheckSettings, ClientMatch, ClientSettings, Details,
    ForwardedHeader, ServerSettings, Settings, TokenSettings,
};

/// Every setting from what the file says, reporting each problem.
pub fn settings(
    raw: RawSettings,
    env: &dyn Environment,
    problems: &mut Vec<ConfigProblem>,
) -> Settings {
    let asks_for_client_certificates =
        raw.server.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
    let tls = raw.server.tls.and_then(|raw| server_tls::settings(raw, problems));
    let mut report = |key: String, reason: String| problems.push(ConfigProblem::new(key, reason));

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
    if raw.server.max_connections == Some(0) {
        report("server.max_connections".into(), "must be at least 1".into());
    }
    let server = ServerSettings {
        listen,
        service_id: raw.server.service_id.unwrap_or_else(|| "healthd".into()),
        description: raw.server.description,
        drain_delay: raw.server.drain_delay.map_or(Duration::from_secs(5), |d| d.0),
        workers: raw.server.workers,
        max_connections: raw.server.max_connections,
        idle_timeout: raw.server.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
        tls,
    };
    if server.idle_timeout.is_zero() || server.idle_timeout > MAX_IDLE_TIMEOUT {
        report(
            "server.idle_timeout".into(),
            format!("must be more than 0 and at most {} s", MAX_IDLE_TIMEOUT.as_secs()),
        );
    }

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
                Some(value) if !value.is_empty() => Some(sha256(value.as_bytes())),
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
        Prefix::parse(text)
            .map_err(|reason| report("access.forwarded_prefix".into(), reason))
            .ok()
            .filter(|prefix| !prefix.is_root())
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
        clients: clients(raw.access.clients, asks_for_client_certificates, problems),
    };

    let defaults = DEFAULT_POLICY.under(&raw.defaults);
    let mut names = HashSet::new();
    let mut checks = Vec::new();
    for (index, table) in raw.checks.into_iter().enumerate() {
        let key = format!("checks[{index}]");
        if let Some(check) = check_settings(table, &key, &defaults, env, &mut names, problems) {
            checks.push(check);
        }
    }

    let settings = Settings { server, access, defaults, checks };
    // A cap set in the file must leave the checks their descriptors; a
    // derived one always does (the service works it out at start).
    if let (Some(wanted), Some(limit)) =
        (settings.server.max_connections.filter(|&n| n > 0), env.open_files_limit())
    {
        let planned = Budget::plan(
            limit,
            settings.check_descriptors(),
            settings.server.worker_count(),
            Some(wanted),
        );
        if let Err(reason) = planned {
            problems.push(ConfigProblem::new("server.max_connections", reason));
        }
    }
    settings
}

/// `server.idle_timeout` unless set: actix-web's own default keep-alive
/// and first-request timeouts.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `server.idle_timeout`: an idle client holds a slot at most this long.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// `[[access.clients]]`: each with a unique name and exactly one match.
fn clients(
    raw: Vec<RawClient>,
    asks_for_client_certificates: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<ClientSettings> {
    let mut names = HashSet::new();
    let mut clients = Vec::new();
    for (index, client) in raw.into_iter().enumerate() {
        let key = format!("access.clients[{index}]");
        if !names.insert(client.name.clone()) {
            problems.push(ConfigProblem::new(
                format!("{key}.name"),
                format!("duplicate client name {:?}", client.name),
            ));
        }
        let matches = match (client.common_name, client.dns_name, client.uri) {
            (Some(name), None, None) => ClientMatch::CommonName(name),
            (None, Some(name), None) => ClientMatch::DnsName(name),
            (None, None, Some(uri)) => ClientMatch::Uri(uri),
            _ => {
                problems.push(ConfigProblem::new(key, "set exactly one of common_name (the subject's CN), dns_name or uri (a subject alternative name, such as a SPIFFE id)"));
                continue;
            }
        };
        clients.push(ClientSettings { name: client.name, matches });
    }
    if !clients.is_empty() && !asks_for_client_certificates {
        // Without a client CA no client certificate is asked for: the
        // entries could never match.
        problems.push(ConfigProblem::new(
            "access.clients",
            "needs server.tls.client_ca: client certificates are asked for only with it",
        ));
    }
    clients
}

/// One `[[checks]]` table: the common keys here, the rest by its kind.
fn check_settings(
    mut table: toml::Table,
    key: &str,
    defaults: &Policy,
    env: &dyn Environment,
    names: &mut HashSet<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<CheckSettings> {
    let mut report = |name: &str, reason: String| {
        let key = if name.is_empty() { key.to_string() } else { format!("{key}.{name}") };
        problems.push(ConfigProblem::new(key, reason))
    };
    let mut take = |keys: &[&str]| {
        let taken: toml::Table =
            keys.iter().filter_map(|name| Some((name.to_string(), table.remove(*name)?))).collect();
        toml::Value::Table(taken)
    };
    let (common, raw_policy) = (take(COMMON_CHECK_KEYS), take(POLICY_KEYS));
    let check: RawCheck = read(common, &mut report)?;
    let raw_policy: RawPolicy = read(raw_policy, &mut report)?;
    if let Some(reason) = check_name_problem(&check.name) {
        report("name", reason);
    } else if !names.insert(check.name.clone()) {
        report("name", duplicate_name(&check.name));
    }
    let policy = defaults.under(&raw_policy);
    for reason in policy.problems() {
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
    let definition = table.clone().into_iter().collect();
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

/// Deserialises part of a check's table, reporting a problem at the key
/// it is about.
fn read<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    report: &mut impl FnMut(&str, String),
) -> Option<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|error| {
            let path = error.path().to_string();
            report(if path == "." { "" } else { &path }, serde_reason(error.into_inner()));
        })
        .ok()
}
