//! What the SQL kinds (`postgres`, `mysql`) share: their keys and the
//! pool and statement defaults.

use crate::checks::KindInput;

/// The keys of the SQL kinds (`postgres`, `mysql`).
pub const SQL_KEYS: &[&str] = &["url", "url_env", "query", "pool_size", "ca_file"];

/// The SQL kinds' `[[checks]]` keys: a database URL (or the variable that
/// holds it), the statement a run executes, the pool, a private CA.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlFields {
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub query: Option<String>,
    pub pool_size: Option<usize>,
    pub ca_file: Option<std::path::PathBuf>,
}

impl SqlFields {
    /// The pool's size (2 unless set; 0 is reported) and the statement a
    /// run executes (`SELECT 1` unless set).
    pub fn pool_and_query(&self, input: &mut KindInput<'_>) -> Option<(usize, String)> {
        let pool_size = self.pool_size.unwrap_or(2);
        if pool_size == 0 {
            input.report_at("pool_size", "must be at least 1");
            return None;
        }
        Some((pool_size, self.query.clone().unwrap_or_else(|| "SELECT 1".into())))
    }
}
