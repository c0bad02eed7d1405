//! Validation: what the file says (`raw`) into `Settings`, every problem
//! reported with its key, not only the first.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::base::budget::Budget;
use crate::base::name::{check_name_problem, duplicate_name, tag_problem};
use crate::base::net::Cidr;
use crate::base::policy::{Policy, RawPolicy, DEFAULT_POLICY, POLICY_KEYS};
use crate::base::problem::{or_list, serde_reason, ConfigProblem};
use crate::base::secret::{parse_sha256_hex, sha256, Environment};
use crate::base::units::Prefix;
use crate::checks::{self, KindInput};
use crate::config::raw::{RawCheck, RawSettings, COMMON_CHECK_KEYS};
use crate::config::raw::{RawClient, RawGroup};
use crate::config::{
    alerts, server_tls, storage, AccessSettings, CheckSettings, ClientMatch, ClientSettings,
    Details, ForwardedHeader, GroupSettings, Scopes, ServerSettings, Settings, TokenSettings,
    WarnStatus,
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
    let warn_status = raw.server.warn_status.map_or(WarnStatus::Ok, |code| {
        WarnStatus::from_code(code).unwrap_or_else(|reason| {
            report("server.warn_status".into(), reason);
            WarnStatus::Ok
        })
    });
    let server = ServerSettings {
        listen,
        service_id: raw.server.service_id.unwrap_or_else(|| "healthd".into()),
        description: raw.server.description,
        drain_delay: raw.server.drain_delay.map_or(Duration::from_secs(5), |d| d.0),
        workers: raw.server.workers,
        max_connections: raw.server.max_connections,
        idle_timeout: raw.server.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
        tls,
        warn_status,
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
        let scopes = scopes(token.scopes, &key, &mut report);
        if let (Some(sha256), Some(scopes)) = (digest, scopes) {
            tokens.push(TokenSettings { name: token.name, sha256, scopes });
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

    let storage = raw.storage.and_then(|raw| storage::settings(raw, env, problems));
    let groups = groups(raw.groups, &checks, &names, warn_status, problems);
    alerts::dependencies(&checks, &names, problems);
    let alerts = alerts::settings(
        raw.receivers,
        raw.alerts,
        raw.maintenance,
        &checks,
        &names,
        env,
        problems,
    );
    let settings = Settings { server, access, defaults, checks, storage, groups, alerts };
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

/// A token's `scopes`: `Scopes::DEFAULT` when unset; each name one of
/// `Scopes::NAMES`, and at least one.
fn scopes(
    names: Option<Vec<String>>,
    key: &str,
    report: &mut impl FnMut(String, String),
) -> Option<Scopes> {
    let Some(names) = names else { return Some(Scopes::DEFAULT) };
    if names.is_empty() {
        report(
            format!("{key}.scopes"),
            format!("lists no scope: expected {}", or_list(Scopes::NAMES)),
        );
        return None;
    }
    let mut scopes = Scopes { read: false, ping: false };
    let mut valid = true;
    for (index, name) in names.iter().enumerate() {
        match name.as_str() {
            "read" => scopes.read = true,
            "ping" => scopes.ping = true,
            _ => {
                report(
                    format!("{key}.scopes[{index}]"),
                    format!("unknown scope {name:?}: expected {}", or_list(Scopes::NAMES)),
                );
                valid = false;
            }
        }
    }
    valid.then_some(scopes)
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
    let mut tags = check.tags.unwrap_or_default();
    for (index, tag) in tags.iter().enumerate() {
        if let Some(reason) = tag_problem(tag) {
            report(&format!("tags[{index}]"), reason);
        }
    }
    tags.sort();
    tags.dedup();
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
        tags,
        depends_on: check.depends_on.unwrap_or_default(),
        settings,
        definition,
    })
}

/// `[[groups]]`: each with a valid, unique name and at least one member
/// once its `members` and `tags` are resolved to checks and its `exclude`
/// taken away. A name or a tag that matches no check is a problem: a typo
/// would otherwise leave a group silently smaller. `names` holds every
/// check name the file declares, also of checks with other problems, so
/// that those are not reported twice.
fn groups(
    raw: Vec<RawGroup>,
    checks: &[CheckSettings],
    names: &HashSet<String>,
    server_warn_status: WarnStatus,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<GroupSettings> {
    let mut seen = HashSet::new();
    let mut groups = Vec::new();
    for (index, group) in raw.into_iter().enumerate() {
        let key = format!("groups[{index}]");
        let mut report = |at: &str, reason: String| {
            problems.push(ConfigProblem::new(format!("{key}{at}"), reason))
        };
        if let Some(reason) = check_name_problem(&group.name) {
            report(".name", reason);
        } else if !seen.insert(group.name.clone()) {
            report(".name", format!("duplicate group name {:?}", group.name));
        }
        let unknown = |name: &str| !names.contains(name);
        let members = group.members.unwrap_or_default();
        for (at, name) in members.iter().enumerate().filter(|(_, name)| unknown(name)) {
            report(&format!(".members[{at}]"), format!("no check is named {name:?}"));
        }
        let exclude = group.exclude.unwrap_or_default();
        for (at, name) in exclude.iter().enumerate().filter(|(_, name)| unknown(name)) {
            report(&format!(".exclude[{at}]"), format!("no check is named {name:?}"));
        }
        let tags = group.tags.unwrap_or_default();
        let mut chosen_exist = members.iter().all(|name| !unknown(name));
        for (at, tag) in tags.iter().enumerate() {
            if let Some(reason) = tag_problem(tag) {
                report(&format!(".tags[{at}]"), reason);
                chosen_exist = false;
            } else if !checks.iter().any(|check| check.tags.contains(tag)) {
                report(&format!(".tags[{at}]"), format!("no check has the tag {tag:?}"));
                chosen_exist = false;
            }
        }
        if members.is_empty() && tags.is_empty() {
            report("", "a group needs members (check names) or tags".into());
            continue;
        }
        let resolved: Vec<String> = checks
            .iter()
            .filter(|check| {
                members.contains(&check.name) || check.tags.iter().any(|tag| tags.contains(tag))
            })
            .filter(|check| !exclude.contains(&check.name))
            .map(|check| check.name.clone())
            .collect();
        // Said only when what the group chose exists: else it is the typo.
        if resolved.is_empty() && chosen_exist {
            report("", "has no members once exclude is taken away".into());
        }
        let warn_status = match group.warn_status.map(WarnStatus::from_code) {
            None => server_warn_status,
            Some(Ok(warn_status)) => warn_status,
            Some(Err(reason)) => {
                report(".warn_status", reason);
                server_warn_status
            }
        };
        groups.push(GroupSettings {
            name: group.name,
            members: resolved,
            details: group.details,
            warn_status,
        });
    }
    groups
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
