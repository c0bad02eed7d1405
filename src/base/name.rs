//! The check-name rule: names become URL path segments and metric labels.

/// Why `name` cannot name a check, if it cannot: 1 to 64 of
/// `A-Z a-z 0-9 - _ .`.
pub fn check_name_problem(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    (!valid).then(|| format!("invalid name {name:?}: use 1 to 64 of A-Z a-z 0-9 - _ ."))
}

/// Said of a second check with the same name.
pub fn duplicate_name(name: &str) -> String {
    format!("duplicate check name {name:?}")
}
