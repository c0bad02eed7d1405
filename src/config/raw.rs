//! What the file holds, before validation: serde structs that refuse
//! unknown keys, so that a typo is an error naming it.

use serde::Deserialize;

use crate::base::policy::RawPolicy;
use crate::base::problem::{serde_reason, ConfigProblem};
use crate::base::units::DurationText;
use crate::config::alerts::{RawMaintenance, RawRoute};
use crate::config::server_tls::ClientAuth;
use crate::config::{Details, ForwardedHeader};

/// The file's TOML as serde reads it; a syntax error or an unknown key is
/// the one problem.
pub fn parse(text: &str) -> Result<RawSettings, ConfigProblem> {
    let table: toml::Table = toml::from_str(text).map_err(|error| ConfigProblem {
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
        ConfigProblem {
            key: if key == "." { "(top level)".into() } else { key },
            reason: serde_reason(error.into_inner()),
        }
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub access: RawAccess,
    #[serde(default)]
    pub defaults: RawPolicy,
    #[serde(default)]
    pub checks: Vec<toml::Table>,
    #[serde(default)]
    pub groups: Vec<RawGroup>,
    pub storage: Option<RawStorage>,
    #[serde(default)]
    pub receivers: Vec<toml::Table>,
    #[serde(default)]
    pub alerts: Vec<RawRoute>,
    #[serde(default)]
    pub maintenance: Vec<RawMaintenance>,
}

/// `[storage]`: where runs, roll-ups and incidents are kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub path: Option<String>,
    pub url_env: Option<String>,
    /// The CA that signed the PostgreSQL server's certificate (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    pub instance: Option<String>,
    pub hourly_retention: Option<DurationText>,
    pub daily_retention: Option<DurationText>,
    pub incident_retention: Option<DurationText>,
    pub queue: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub service_id: Option<String>,
    pub description: Option<String>,
    pub drain_delay: Option<DurationText>,
    pub workers: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<DurationText>,
    pub tls: Option<RawTls>,
    pub warn_status: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificate: String,
    pub key: String,
    pub client_ca: Option<String>,
    pub client_auth: Option<ClientAuth>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    pub details: Option<Details>,
    pub allow: Option<Vec<String>>,
    pub details_allow: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
    pub forwarded_header: Option<ForwardedHeader>,
    pub forwarded_prefix: Option<String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub clients: Vec<RawClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub common_name: Option<String>,
    pub dns_name: Option<String>,
    pub uri: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub sha256: Option<String>,
    pub env: Option<String>,
    pub scopes: Option<Vec<String>>,
}

/// The keys every check has; the rest of its table belongs to its kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub kind: String,
    pub critical: Option<bool>,
    pub tags: Option<Vec<String>>,
    pub depends_on: Option<Vec<String>>,
}

/// The keys every check has besides its policy's (`POLICY_KEYS`).
pub const COMMON_CHECK_KEYS: &[&str] = &["name", "kind", "critical", "tags", "depends_on"];

/// A `[[groups]]` table: its members by name or by tag, less `exclude`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    pub members: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub exclude: Option<Vec<String>>,
    pub details: Option<Details>,
    pub warn_status: Option<u16>,
}
