//! The name rule: check names, group names and tags become URL path
//! segments, query values and metric labels, so all three follow it.

/// Why `name` cannot name a check or a group, if it cannot: 1 to 64 of
/// `A-Z a-z 0-9 - _ .`.
pub fn check_name_problem(name: &str) -> Option<String> {
    problem("name", name)
}

/// Why `tag` cannot be a check's tag, if it cannot: the name rule.
pub fn tag_problem(tag: &str) -> Option<String> {
    problem("tag", tag)
}

fn problem(what: &str, value: &str) -> Option<String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    (!valid).then(|| format!("invalid {what} {value:?}: use 1 to 64 of A-Z a-z 0-9 - _ ."))
}

/// Said of a second check with the same name.
pub fn duplicate_name(name: &str) -> String {
    format!("duplicate check name {name:?}")
}
