//! Conditions: rules on what a dependency answered (its status code, body,
//! a header, a JSON value, its response time), each turning the check
//! `warn` or `fail` when it does not hold. Written as `[[checks.conditions]]`
//! tables: a `subject`, an `op`, a `value`, a `severity` and an optional
//! `name`.
//!
//! An output names the rule and says what was seen by its type or length
//! only (`got a string of 4 characters`): a body can hold secrets, so none
//! of it is ever shown or logged. Outputs are stable from run to run (no
//! times, no sizes of the whole body), since a changed output is logged.

use std::cell::OnceCell;
use std::time::Duration;

use healthd_models::HealthStatus;
use regex::bytes::Regex;
use reqwest::header::{HeaderMap, HeaderName};
use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::base::problem::or_list;
use crate::base::units::parse_duration;
use crate::checks::util::pattern::bytes_pattern;
use crate::checks::KindInput;

/// One `[[checks.conditions]]` table as the file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionFields {
    subject: Option<String>,
    op: Option<String>,
    value: Option<toml::Value>,
    severity: Option<Severity>,
    name: Option<String>,
}

/// What a rule that does not hold makes of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Severity {
    Warn,
    Fail,
}

/// One validated rule.
#[derive(Debug)]
pub struct Condition {
    /// Shown in outputs: the rule's `name`, or the rule as written.
    name: String,
    severity: HealthStatus,
    rule: Rule,
}

#[derive(Debug)]
enum Rule {
    Status(Test),
    /// The limit in milliseconds.
    ResponseTime(Order, f64),
    /// The pattern, and whether the body must match it (or must not).
    Body(Regex, bool),
    Header(HeaderName, Test),
    Json {
        path: JsonPath,
        length: bool,
        test: Test,
    },
}

#[derive(Debug)]
enum Test {
    Equals(Value),
    NotEquals(Value),
    Order(Order, f64),
    OneOf(Vec<Value>),
    Matches(Regex),
    NotMatches(Regex),
    Exists,
    Absent,
}

#[derive(Debug, Clone, Copy)]
enum Order {
    Below,
    AtMost,
    Above,
    AtLeast,
}

impl Order {
    fn holds(self, seen: f64, limit: f64) -> bool {
        match self {
            Order::Below => seen < limit,
            Order::AtMost => seen <= limit,
            Order::Above => seen > limit,
            Order::AtLeast => seen >= limit,
        }
    }
}

/// The operators, as `op` writes them.
const OPS: &[&str] =
    &["==", "!=", "<", "<=", ">", ">=", "one-of", "matches", "not-matches", "exists", "absent"];
const NUMERIC_OPS: &[&str] = &["==", "!=", "<", "<=", ">", ">=", "one-of"];
const ORDER_OPS: &[&str] = &["<", "<=", ">", ">="];
const PATTERN_OPS: &[&str] = &["matches", "not-matches"];
const HEADER_OPS: &[&str] = &["matches", "not-matches", "exists", "absent"];

/// A JSONPath longer or deeper than this is refused: its parser recurses
/// once per nesting level, and a config must not be able to exhaust the
/// stack of the thread that loads it.
const MAX_PATH_LENGTH: usize = 1024;
const MAX_PATH_NESTING: usize = 32;

/// What the subject of a rule is, before its op and value are read.
enum Subject {
    Status,
    ResponseTime,
    Body,
    Header(HeaderName),
    Json { path: JsonPath, length: bool },
}

impl Subject {
    fn ops(&self) -> &'static [&'static str] {
        match self {
            Subject::Status => NUMERIC_OPS,
            Subject::ResponseTime => ORDER_OPS,
            Subject::Body => PATTERN_OPS,
            Subject::Header(_) => HEADER_OPS,
            Subject::Json { length: true, .. } => NUMERIC_OPS,
            Subject::Json { length: false, .. } => OPS,
        }
    }

    /// Whether values are whole numbers (status codes, lengths).
    fn whole_numbers(&self) -> bool {
        matches!(self, Subject::Status | Subject::Json { length: true, .. })
    }
}

/// Reads a check's conditions, reporting problems at
/// `conditions[N].KEY`; `None` if there were any. `has_body` is false for
/// a HEAD request, whose answer has no body to judge.
pub fn parse_conditions(
    input: &mut KindInput<'_>,
    tables: Vec<ConditionFields>,
    has_body: bool,
) -> Option<Vec<Condition>> {
    let mut conditions = Vec::new();
    let mut ok = true;
    for (index, fields) in tables.into_iter().enumerate() {
        let at = |key: &str| format!("conditions[{index}].{key}");
        match parse_condition(fields, has_body) {
            Ok(condition) => conditions.push(condition),
            Err((key, reason)) => {
                input.report_at(&at(key), reason);
                ok = false;
            }
        }
    }
    ok.then_some(conditions)
}

type Problem = (&'static str, String);

fn parse_condition(fields: ConditionFields, has_body: bool) -> Result<Condition, Problem> {
    let subject_text = fields.subject.ok_or(("subject", "is required".to_string()))?;
    let subject = parse_subject(&subject_text).map_err(|reason| ("subject", reason))?;
    if !has_body && matches!(subject, Subject::Body | Subject::Json { .. }) {
        return Err(("subject", "method HEAD has no body to judge: use GET".into()));
    }
    let op = fields.op.ok_or(("op", "is required".to_string()))?;
    if !OPS.contains(&op.as_str()) {
        return Err(("op", format!("unknown operator {op:?}: expected {}", or_list(OPS))));
    }
    if !subject.ops().contains(&op.as_str()) {
        return Err((
            "op",
            format!("{op:?} does not apply to {subject_text}: expected {}", or_list(subject.ops())),
        ));
    }
    let test =
        parse_test(&subject, &op, fields.value.as_ref()).map_err(|reason| ("value", reason))?;
    let name = match fields.name {
        Some(name) if name.trim().is_empty() => return Err(("name", "is empty".into())),
        Some(name) => name,
        None => match &fields.value {
            Some(value) => format!("{subject_text} {op} {}", show(value)),
            None => format!("{subject_text} {op}"),
        },
    };
    let severity = match fields.severity.unwrap_or(Severity::Fail) {
        Severity::Warn => HealthStatus::Warn,
        Severity::Fail => HealthStatus::Fail,
    };
    let rule = match (subject, test) {
        (Subject::Status, test) => Rule::Status(test),
        (Subject::ResponseTime, Test::Order(order, limit)) => Rule::ResponseTime(order, limit),
        (Subject::Body, Test::Matches(pattern)) => Rule::Body(pattern, true),
        (Subject::Body, Test::NotMatches(pattern)) => Rule::Body(pattern, false),
        (Subject::Header(header), test) => Rule::Header(header, test),
        (Subject::Json { path, length }, test) => Rule::Json { path, length, test },
        // Held off by `Subject::ops` above.
        _ => return Err(("op", format!("{op:?} does not apply to {subject_text}"))),
    };
    Ok(Condition { name, severity, rule })
}

fn parse_subject(text: &str) -> Result<Subject, String> {
    match text {
        "status" => return Ok(Subject::Status),
        "response_time" => return Ok(Subject::ResponseTime),
        "body" => return Ok(Subject::Body),
        _ => {}
    }
    if let Some(name) = text.strip_prefix("header ") {
        return HeaderName::from_bytes(name.trim().as_bytes())
            .map(Subject::Header)
            .map_err(|_| format!("{:?} is not an HTTP header name", name.trim()));
    }
    if let Some(inner) = text.strip_prefix("length(").and_then(|rest| rest.strip_suffix(')')) {
        return json_path(inner.trim()).map(|path| Subject::Json { path, length: true });
    }
    if text.starts_with('$') {
        return json_path(text).map(|path| Subject::Json { path, length: false });
    }
    Err(format!(
        "unknown subject {text:?}: expected status, body, response_time, header NAME, \
         a JSONPath such as $.status, or length(JSONPATH)"
    ))
}

fn json_path(text: &str) -> Result<JsonPath, String> {
    if text.len() > MAX_PATH_LENGTH {
        return Err(format!("JSONPath longer than {MAX_PATH_LENGTH} characters"));
    }
    let mut depth = 0usize;
    for byte in text.bytes() {
        match byte {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_PATH_NESTING {
            return Err(format!("JSONPath nested deeper than {MAX_PATH_NESTING} levels"));
        }
    }
    JsonPath::parse(text).map_err(|error| format!("invalid JSONPath (RFC 9535): {error}"))
}

fn parse_test(subject: &Subject, op: &str, value: Option<&toml::Value>) -> Result<Test, String> {
    if matches!(op, "exists" | "absent") {
        return match value {
            None => Ok(if op == "exists" { Test::Exists } else { Test::Absent }),
            Some(_) => Err(format!("{op} takes no value")),
        };
    }
    let value = value.ok_or_else(|| format!("is required for {op}"))?;
    if let Subject::ResponseTime = subject {
        let limit = value
            .as_str()
            .ok_or_else(|| "expected a duration such as \"300ms\"".to_string())
            .and_then(parse_duration)?;
        return Ok(Test::Order(order(op), limit.as_secs_f64() * 1_000.0));
    }
    let scalar = |value: &toml::Value| -> Result<Value, String> {
        if subject.whole_numbers() {
            return match value.as_integer() {
                Some(number) if number >= 0 => Ok(Value::from(number)),
                _ => Err(format!("{} is not a whole number", show(value))),
            };
        }
        match value {
            toml::Value::String(text) => Ok(Value::from(text.as_str())),
            toml::Value::Integer(number) => Ok(Value::from(*number)),
            toml::Value::Float(number) => serde_json::Number::from_f64(*number)
                .map(Value::Number)
                .ok_or_else(|| format!("{} is not a finite number", show(value))),
            toml::Value::Boolean(flag) => Ok(Value::from(*flag)),
            _ => Err(format!("{} is not a string, a number or a boolean", show(value))),
        }
    };
    match op {
        "==" => Ok(Test::Equals(scalar(value)?)),
        "!=" => Ok(Test::NotEquals(scalar(value)?)),
        "<" | "<=" | ">" | ">=" => {
            let limit = match value {
                toml::Value::Integer(number) => *number as f64,
                toml::Value::Float(number) if !subject.whole_numbers() && number.is_finite() => {
                    *number
                }
                _ => return Err(format!("{op} compares numbers: {} is not one", show(value))),
            };
            Ok(Test::Order(order(op), limit))
        }
        "one-of" => match value {
            toml::Value::Array(items) if !items.is_empty() => {
                Ok(Test::OneOf(items.iter().map(scalar).collect::<Result<_, _>>()?))
            }
            _ => Err("one-of takes a list of values, such as [200, 204]".into()),
        },
        "matches" | "not-matches" => {
            let text = value.as_str().ok_or("expected a regular expression (a string)")?;
            let pattern = bytes_pattern(text)?;
            Ok(if op == "matches" { Test::Matches(pattern) } else { Test::NotMatches(pattern) })
        }
        _ => Err(format!("unknown operator {op:?}")),
    }
}

/// A value as the file wrote it, for a rule's name and for problems.
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("{text:?}"),
        toml::Value::Integer(number) => number.to_string(),
        toml::Value::Float(number) => number.to_string(),
        toml::Value::Boolean(flag) => flag.to_string(),
        toml::Value::Array(items) => {
            format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", "))
        }
        toml::Value::Datetime(_) => "a date".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

fn order(op: &str) -> Order {
    match op {
        "<" => Order::Below,
        "<=" => Order::AtMost,
        ">" => Order::Above,
        _ => Order::AtLeast,
    }
}

/// What the dependency answered, as far as the rules look at it.
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// Empty when no rule needs the body (or for HEAD).
    pub body: &'a [u8],
    pub elapsed: Duration,
}

/// Whether any rule reads the body, so that it is read at all.
pub fn needs_body(conditions: &[Condition]) -> bool {
    conditions.iter().any(|condition| matches!(condition.rule, Rule::Body(..) | Rule::Json { .. }))
}

/// Whether any rule is on the status code, which then replaces the
/// default rule (200 to 399).
pub fn judges_status(conditions: &[Condition]) -> bool {
    conditions.iter().any(|condition| matches!(condition.rule, Rule::Status(_)))
}

/// The worst status among the rules that do not hold, and its output:
/// the first such rule, with how many more did not hold. `None` when all hold.
pub fn judge(conditions: &[Condition], answer: &Answer<'_>) -> Option<(HealthStatus, String)> {
    let json = OnceCell::new();
    let mut worst: Option<(HealthStatus, String)> = None;
    let mut broken = 0;
    for condition in conditions {
        let Err(seen) = condition.rule.holds(answer, &json) else { continue };
        broken += 1;
        let worse = match &worst {
            None => true,
            Some((status, _)) => {
                *status == HealthStatus::Warn && condition.severity == HealthStatus::Fail
            }
        };
        if worse {
            worst = Some((condition.severity, format!("{}: {seen}", condition.name)));
        }
    }
    worst.map(|(status, output)| match broken {
        1 => (status, output),
        more => (status, format!("{output} (and {} more)", more - 1)),
    })
}

impl Rule {
    /// `Err` says what was seen, by type or length.
    fn holds(
        &self,
        answer: &Answer<'_>,
        json: &OnceCell<Result<Value, &'static str>>,
    ) -> Result<(), String> {
        match self {
            Rule::Status(test) => {
                let status = Value::from(answer.status);
                test.holds(&status).then_some(()).ok_or(format!("got HTTP {}", answer.status))
            }
            Rule::ResponseTime(order, limit) => {
                let ms = answer.elapsed.as_secs_f64() * 1_000.0;
                if order.holds(ms, *limit) {
                    Ok(())
                } else if matches!(order, Order::Below | Order::AtMost) {
                    Err("too slow".into())
                } else {
                    Err("too fast".into())
                }
            }
            Rule::Body(pattern, true) => {
                pattern.is_match(answer.body).then_some(()).ok_or("the body does not match".into())
            }
            Rule::Body(pattern, false) => {
                (!pattern.is_match(answer.body)).then_some(()).ok_or("the body matches".into())
            }
            Rule::Header(name, test) => header_holds(answer.headers, name, test),
            Rule::Json { path, length, test } => {
                let parsed = json.get_or_init(|| parse_json(answer.body));
                let document = parsed.as_ref().map_err(|reason| reason.to_string())?;
                json_holds(path, *length, test, document)
            }
        }
    }
}

/// A body parsed holds this many JSON values at most: each takes 32 bytes
/// or more as a `serde_json::Value`, so 1 MiB of `0,0,0,...` would take 16
/// MiB (and twice that while its array grows), far more than the body.
const MAX_JSON_VALUES: usize = 1 << 16;

/// The body as JSON, once for all the rules.
fn parse_json(body: &[u8]) -> Result<Value, &'static str> {
    // Every value but the first of an array follows a comma, every member's
    // a colon: their count (strings included) bounds the values to about
    // twice itself, before a byte is parsed.
    let separators = body.iter().filter(|byte| matches!(byte, b',' | b':')).count();
    if separators >= MAX_JSON_VALUES {
        return Err("the body has more than 65536 JSON values");
    }
    // serde_json stops at 128 levels of nesting: a body nested deeper is
    // "not JSON", never a stack overflow.
    serde_json::from_slice(body).map_err(|_| "the body is not JSON")
}

fn header_holds(headers: &HeaderMap, name: &HeaderName, test: &Test) -> Result<(), String> {
    let values: Vec<&[u8]> = headers.get_all(name).iter().map(|value| value.as_bytes()).collect();
    let absent = || "the header is absent".to_string();
    match test {
        Test::Exists => (!values.is_empty()).then_some(()).ok_or_else(absent),
        Test::Absent => values.is_empty().then_some(()).ok_or_else(|| describe_values(&values)),
        // Any of its values (a header may come more than once).
        Test::Matches(_) if values.is_empty() => Err(absent()),
        Test::Matches(pattern) => values
            .iter()
            .any(|value| pattern.is_match(value))
            .then_some(())
            .ok_or_else(|| format!("{}, none matching", describe_values(&values))),
        Test::NotMatches(pattern) => (!values.iter().any(|value| pattern.is_match(value)))
            .then_some(())
            .ok_or_else(|| format!("{}, one matching", describe_values(&values))),
        // Comparisons are not offered for headers (`HEADER_OPS`).
        _ => Err("the rule does not apply to a header".into()),
    }
}

fn describe_values(values: &[&[u8]]) -> String {
    match values {
        [one] => format!("got a value of {} bytes", one.len()),
        many => format!("got {} values", many.len()),
    }
}

/// Every node the path selects must pass, and it must select one at least
/// (`exists` and `absent` look only at whether it selects any).
fn json_holds(path: &JsonPath, length: bool, test: &Test, document: &Value) -> Result<(), String> {
    let nodes = path.query(document).all();
    match test {
        Test::Exists => {
            return (!nodes.is_empty()).then_some(()).ok_or("nothing at the path".into())
        }
        Test::Absent => {
            return match nodes.as_slice() {
                [] => Ok(()),
                [one] => Err(format!("got {}", describe(one))),
                many => Err(format!("got {} values", many.len())),
            }
        }
        _ => {}
    }
    if nodes.is_empty() {
        return Err("nothing at the path".into());
    }
    let count = nodes.len();
    for (index, node) in nodes.into_iter().enumerate() {
        let passes = if length {
            value_length(node).is_some_and(|length| test.holds(&Value::from(length)))
        } else {
            test.holds(node)
        };
        if !passes {
            let seen = format!("got {}", describe(node));
            return Err(if count == 1 {
                seen
            } else {
                format!("value {} of {count}: {seen}", index + 1)
            });
        }
    }
    Ok(())
}

impl Test {
    fn holds(&self, seen: &Value) -> bool {
        match self {
            Test::Equals(wanted) => same(seen, wanted),
            Test::NotEquals(wanted) => !same(seen, wanted),
            Test::Order(order, limit) => {
                seen.as_f64().is_some_and(|seen| order.holds(seen, *limit))
            }
            Test::OneOf(wanted) => wanted.iter().any(|wanted| same(seen, wanted)),
            Test::Matches(pattern) => {
                seen.as_str().is_some_and(|text| pattern.is_match(text.as_bytes()))
            }
            Test::NotMatches(pattern) => {
                seen.as_str().is_some_and(|text| !pattern.is_match(text.as_bytes()))
            }
            // They select rather than compare: `json_holds` and
            // `header_holds` answer them before any value is compared.
            Test::Exists | Test::Absent => false,
        }
    }
}

/// Equality as JSON means it: 1 and 1.0 are the same number.
fn same(seen: &Value, wanted: &Value) -> bool {
    match (seen, wanted) {
        (Value::Number(seen), Value::Number(wanted)) => seen.as_f64() == wanted.as_f64(),
        _ => seen == wanted,
    }
}

/// A string's characters, an array's items, an object's members.
fn value_length(value: &Value) -> Option<usize> {
    match value {
        Value::String(text) => Some(text.chars().count()),
        Value::Array(items) => Some(items.len()),
        Value::Object(members) => Some(members.len()),
        _ => None,
    }
}

/// A value by its type and length, never its content.
fn describe(value: &Value) -> String {
    let plural = |count: usize, one: &str, many: &str| {
        format!("{count} {}", if count == 1 { one } else { many })
    };
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(text) => {
            format!("a string of {}", plural(text.chars().count(), "character", "characters"))
        }
        Value::Array(items) => format!("an array of {}", plural(items.len(), "item", "items")),
        Value::Object(members) => {
            format!("an object of {}", plural(members.len(), "member", "members"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    /// One condition from its TOML table.
    fn rule(table: &str) -> Result<Condition, Problem> {
        rule_for(table, true)
    }

    fn rule_for(table: &str, has_body: bool) -> Result<Condition, Problem> {
        let fields: ConditionFields = toml::from_str(table).expect("a condition table");
        parse_condition(fields, has_body)
    }

    fn problem(table: &str) -> (&'static str, String) {
        rule(table).err().unwrap_or_else(|| panic!("{table} is accepted"))
    }

    struct Seen {
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
        elapsed: Duration,
    }

    fn seen(body: &str) -> Seen {
        Seen { status: 200, headers: HeaderMap::new(), body: body.into(), elapsed: Duration::ZERO }
    }

    /// The output of judging `seen` by the rules of `tables`.
    fn judged(tables: &[&str], seen: &Seen) -> Option<(HealthStatus, String)> {
        let conditions: Vec<Condition> =
            tables.iter().map(|table| rule(table).expect("a valid rule")).collect();
        let answer = Answer {
            status: seen.status,
            headers: &seen.headers,
            body: &seen.body,
            elapsed: seen.elapsed,
        };
        judge(&conditions, &answer)
    }

    fn fails(table: &str, seen: &Seen) -> String {
        match judged(&[table], seen) {
            Some((HealthStatus::Fail, output)) => output,
            other => panic!("{table}: {other:?}"),
        }
    }

    fn passes(table: &str, seen: &Seen) {
        assert_eq!(judged(&[table], seen), None, "{table}");
    }

    #[test]
    fn bad_rules_name_the_key_and_the_reason() {
        let cases = [
            (r#"op = "==""#, "subject", "is required"),
            (r#"subject = "$.a""#, "op", "is required"),
            (r#"subject = "$.a"
op = "~=""#, "op", "unknown operator \"~=\": expected ==, !=, <, <=, >, >=, one-of, matches, not-matches, exists or absent"),
            (r#"subject = "body"
op = "==""#, "op", "\"==\" does not apply to body: expected matches or not-matches"),
            (r#"subject = "cookies"
op = "exists""#, "subject", "unknown subject \"cookies\""),
            (r#"subject = "$.a[?"
op = "exists""#, "subject", "invalid JSONPath (RFC 9535): at position"),
            (r#"subject = "header bad name"
op = "exists""#, "subject", "\"bad name\" is not an HTTP header name"),
            (r#"subject = "body"
op = "matches"
value = "(unclosed""#, "value", "invalid regular expression: unclosed group"),
            (r#"subject = "$.a"
op = "==""#, "value", "is required for =="),
            (r#"subject = "$.a"
op = "exists"
value = true"#, "value", "exists takes no value"),
            (r#"subject = "$.a"
op = "one-of"
value = "UP""#, "value", "one-of takes a list of values"),
            (r#"subject = "$.a"
op = "<"
value = "ten""#, "value", "< compares numbers: \"ten\" is not one"),
            (r#"subject = "status"
op = "=="
value = "200""#, "value", "\"200\" is not a whole number"),
            (r#"subject = "response_time"
op = "<"
value = 300"#, "value", "expected a duration such as \"300ms\""),
            (r#"subject = "response_time"
op = "<"
value = "soon""#, "value", "invalid duration \"soon\""),
            (r#"subject = "$.a"
op = "=="
value = { nested = 1 }"#, "value", "a table is not a string, a number or a boolean"),
            (r#"subject = "$.a"
op = "exists"
name = " ""#, "name", "is empty"),
        ];
        for (table, key, reason) in cases {
            let (got_key, got_reason) = problem(table);
            assert_eq!(got_key, key, "{table}");
            assert!(got_reason.starts_with(reason), "{table}: {got_reason}");
        }
        let severity = toml::from_str::<ConditionFields>("severity = \"fatal\"").unwrap_err();
        assert!(severity.to_string().contains("unknown variant `fatal`"), "{severity}");
    }

    #[test]
    fn a_jsonpath_too_deep_for_the_parser_is_refused_before_parsing() {
        let deep = format!("$[?{}@.a{}]", "(".repeat(10_000), ")".repeat(10_000));
        let (key, reason) = problem(&format!("subject = '{deep}'\nop = \"exists\""));
        assert_eq!(key, "subject");
        assert_eq!(reason, "JSONPath longer than 1024 characters");
        let nested = format!("$[?{}@.a{}]", "(".repeat(40), ")".repeat(40));
        let (_, reason) = problem(&format!("subject = '{nested}'\nop = \"exists\""));
        assert_eq!(reason, "JSONPath nested deeper than 32 levels");
        // At the limit, it parses on a stack the size of a tokio worker's
        // (a reload parses the config there).
        let at_limit = format!("$[?{}@.a == 1{}]", "(".repeat(31), ")".repeat(31));
        let parsed = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || json_path(&at_limit).is_ok())
            .unwrap()
            .join()
            .unwrap();
        assert!(parsed);
    }

    #[test]
    fn a_head_request_has_no_body_to_judge() {
        let body = "subject = \"body\"\nop = \"matches\"\nvalue = \"ok\"";
        let (key, reason) = rule_for(body, false).err().unwrap();
        assert_eq!(
            (key, reason.as_str()),
            ("subject", "method HEAD has no body to judge: use GET")
        );
        assert!(rule_for("subject = \"status\"\nop = \"==\"\nvalue = 200", false).is_ok());
    }

    #[test]
    fn json_comparisons_pass_and_fail_naming_the_type_never_the_value() {
        let body = seen(
            r#"{"status":"DOWN","load":0.93,"threads":3,"ok":false,"items":[1,2],"none":null,
                "components":{"db":{"status":"UP"},"disk":{"status":"DOWN"}}}"#,
        );
        let rule = |subject: &str, op: &str, value: &str| {
            format!("subject = '{subject}'\nop = \"{op}\"\nvalue = {value}")
        };
        passes(&rule("$.status", "==", r#""DOWN""#), &body);
        assert_eq!(
            fails(&rule("$.status", "==", r#""UP""#), &body),
            r#"$.status == "UP": got a string of 4 characters"#
        );
        passes(&rule("$.status", "!=", r#""UP""#), &body);
        assert_eq!(fails(&rule("$.status", "!=", r#""DOWN""#), &body).len(), 48);
        passes(&rule("$.load", "<", "1"), &body);
        assert_eq!(fails(&rule("$.load", "<=", "0.9"), &body), "$.load <= 0.9: got a number");
        passes(&rule("$.threads", ">", "2"), &body);
        passes(&rule("$.threads", ">=", "3"), &body);
        passes(&rule("$.threads", "==", "3.0"), &body);
        assert_eq!(
            fails(&rule("$.status", ">", "2"), &body),
            "$.status > 2: got a string of 4 characters"
        );
        passes(&rule("$.status", "one-of", r#"["UP", "DOWN"]"#), &body);
        assert_eq!(
            fails(&rule("$.ok", "one-of", "[true]"), &body),
            "$.ok one-of [true]: got a boolean"
        );
        passes(&rule("$.status", "matches", r#""^DO""#), &body);
        passes(&rule("$.status", "not-matches", r#""^UP$""#), &body);
        assert_eq!(
            fails(&rule("$.items", "matches", r#"".""#), &body),
            r#"$.items matches ".": got an array of 2 items"#
        );
        passes(&rule("length($.items)", ">=", "1"), &body);
        passes(&rule("length($.status)", "==", "4"), &body);
        assert_eq!(
            fails(&rule("length($.components)", "==", "3"), &body),
            "length($.components) == 3: got an object of 2 members"
        );
        assert_eq!(
            fails(&rule("length($.load)", ">", "0"), &body),
            "length($.load) > 0: got a number"
        );
        // Every value the path selects must hold.
        assert_eq!(
            fails(&rule("$.components.*.status", "==", r#""UP""#), &body),
            r#"$.components.*.status == "UP": value 2 of 2: got a string of 4 characters"#
        );
        passes(&rule("$.components.db.status", "==", r#""UP""#), &body);
        assert_eq!(
            fails(&rule("$.missing", "==", "1"), &body),
            "$.missing == 1: nothing at the path"
        );
        passes("subject = '$.none'\nop = \"exists\"", &body);
        assert_eq!(
            fails("subject = '$.gone'\nop = \"exists\"", &body),
            "$.gone exists: nothing at the path"
        );
        passes("subject = '$.gone'\nop = \"absent\"", &body);
        assert_eq!(fails("subject = '$.none'\nop = \"absent\"", &body), "$.none absent: got null");
        // RFC 9535 filters and functions work in a subject.
        passes(&rule(r#"length($.components[?@.status == "DOWN"])"#, "==", "1"), &body);
    }

    #[test]
    fn a_body_that_is_not_json_fails_a_json_rule_cleanly() {
        let rule = "subject = '$.status'\nop = \"exists\"\nname = \"status present\"";
        assert_eq!(fails(rule, &seen("<html>")), "status present: the body is not JSON");
        let invalid_utf8 = Seen { body: b"{\"status\":\"\xff\"}".to_vec(), ..seen("") };
        assert_eq!(fails(rule, &invalid_utf8), "status present: the body is not JSON");
        // 100,000 levels: serde_json's recursion limit (128) refuses it
        // without overflowing the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(fails(rule, &seen(&deep)), "status present: the body is not JSON");
        // A body too wide to parse within a few MiB is refused unparsed.
        let wide = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES));
        assert_eq!(
            fails(rule, &seen(&wide)),
            "status present: the body has more than 65536 JSON values"
        );
        let members: Vec<String> =
            (0..MAX_JSON_VALUES / 2).map(|n| format!("\"k{n}\":0")).collect();
        let object = format!("{{\"status\":1,{}}}", members.join(","));
        assert_eq!(
            fails(rule, &seen(&object)),
            "status present: the body has more than 65536 JSON values"
        );
        let wide_enough = format!("{{\"status\":[{}0]}}", "0,".repeat(MAX_JSON_VALUES - 2));
        passes(rule, &seen(&wide_enough));
    }

    #[test]
    fn status_body_header_and_response_time_rules() {
        let mut answer = seen("service ready\nmode: maintenance");
        answer.status = 503;
        answer.headers.insert("x-mode", HeaderValue::from_static("primary"));
        answer.headers.append("x-mode", HeaderValue::from_static("standby"));
        answer.headers.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfeok").unwrap());
        answer.elapsed = Duration::from_millis(400);

        assert_eq!(
            fails("subject = \"status\"\nop = \"one-of\"\nvalue = [200, 204]", &answer),
            "status one-of [200, 204]: got HTTP 503"
        );
        passes("subject = \"status\"\nop = \">=\"\nvalue = 500", &answer);
        passes("subject = \"body\"\nop = \"matches\"\nvalue = \"(?m)^service ready$\"", &answer);
        assert_eq!(
            fails("subject = \"body\"\nop = \"not-matches\"\nvalue = \"(?i)MAINTENANCE\"", &answer),
            r#"body not-matches "(?i)MAINTENANCE": the body matches"#
        );
        assert_eq!(
            fails("subject = \"body\"\nop = \"matches\"\nvalue = \"^ready\"", &answer),
            r#"body matches "^ready": the body does not match"#
        );
        passes("subject = \"header X-Mode\"\nop = \"matches\"\nvalue = \"^standby$\"", &answer);
        assert_eq!(
            fails(
                "subject = \"header X-Mode\"\nop = \"not-matches\"\nvalue = \"standby\"",
                &answer
            ),
            r#"header X-Mode not-matches "standby": got 2 values, one matching"#
        );
        passes("subject = \"header X-Raw\"\nop = \"matches\"\nvalue = \"ok$\"", &answer);
        assert_eq!(
            fails("subject = \"header X-Raw\"\nop = \"absent\"", &answer),
            "header X-Raw absent: got a value of 4 bytes"
        );
        assert_eq!(
            fails("subject = \"header X-Gone\"\nop = \"matches\"\nvalue = \".\"", &answer),
            r#"header X-Gone matches ".": the header is absent"#
        );
        passes("subject = \"header X-Gone\"\nop = \"absent\"", &answer);
        passes("subject = \"response_time\"\nop = \"<\"\nvalue = \"1s\"", &answer);
        assert_eq!(
            fails("subject = \"response_time\"\nop = \"<\"\nvalue = \"300ms\"", &answer),
            r#"response_time < "300ms": too slow"#
        );
    }

    #[test]
    fn the_worst_rule_is_shown_with_how_many_more_broke() {
        let answer = seen(r#"{"status":"UP","db":"DOWN","cache":"DOWN"}"#);
        let warn_db =
            "subject = '$.db'\nop = \"==\"\nvalue = \"UP\"\nseverity = \"warn\"\nname = \"db\"";
        let fail_cache = "subject = '$.cache'\nop = \"==\"\nvalue = \"UP\"\nname = \"cache\"";
        let pass = "subject = '$.status'\nop = \"==\"\nvalue = \"UP\"";
        assert_eq!(
            judged(&[pass, warn_db], &answer),
            Some((HealthStatus::Warn, "db: got a string of 4 characters".into()))
        );
        assert_eq!(
            judged(&[warn_db, pass, fail_cache], &answer),
            Some((HealthStatus::Fail, "cache: got a string of 4 characters (and 1 more)".into()))
        );
        assert_eq!(judged(&[pass], &answer), None);
    }
}
