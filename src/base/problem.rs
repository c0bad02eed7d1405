//! Config problems: each names the key it is about and the reason, and a
//! `ConfigError` shows them one per line as `FILE: KEY: REASON`.

use std::fmt;

/// Config problems, each with the key it is about; shown one per line as
/// `FILE: KEY: REASON`.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, `(built-in default)`, or `checks from code`.
    pub source_name: String,
    /// Every problem found, not only the first.
    pub problems: Vec<ConfigProblem>,
}

/// One problem with a config.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: `checks[2].timeout`, or a check from code's name.
    pub key: String,
    /// What is wrong, and what would be right.
    pub reason: String,
}

impl ConfigProblem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigProblem {
        ConfigProblem { key: key.into(), reason: reason.into() }
    }
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

/// `a`, `a or b`, `a, b or c`: choices in a reason.
pub fn or_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [only] => only.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
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
