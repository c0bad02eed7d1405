//! `kind = "exec"`: runs a Nagios-compatible plugin (the Monitoring Plugins
//! API) and reads its exit status, the first line of its output and its
//! performance data.
//!
//! How a run is kept in bounds:
//! - argv only, never a shell; the program is an absolute path, checked at
//!   load; the environment is empty but for the variables the config names;
//! - the plugin runs in a process group of its own. A guard kills the whole
//!   group (SIGKILL) when the run ends, however it ends: at the deadline
//!   (the monitor drops the future, the guard drops with it), or when the
//!   plugin exits and leaves children behind, which would otherwise hold
//!   its pipes open;
//! - stdout is read up to 64 KiB and stderr up to 8 KiB; the rest is read
//!   and dropped, so a chatty plugin never blocks on a full pipe;
//! - at most one run per check is in flight.
//!
//! `Check::measurements` is `&'static`, and the labels come from the config:
//! each distinct list is interned once for the life of the process, so
//! reloading the same config leaks nothing new.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::{elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind = Kind::new("exec", &["command", "env", "perfdata"], parse);

/// What is kept of stdout (the output and the performance data).
const STDOUT_CAP: usize = 64 * 1024;
/// What is kept of stderr (only its size is logged).
const STDERR_CAP: usize = 8 * 1024;
/// The longest output shown, in characters.
const OUTPUT_CHARS: usize = 200;
/// How long the pipes may stay open after the plugin exited and its group
/// was killed (a child that left the group may still hold them).
const DRAIN: Duration = Duration::from_millis(100);
/// Most perfdata labels one check may turn into measurements.
const MAX_LABELS: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecFields {
    command: Option<Vec<String>>,
    env: Option<Vec<String>>,
    perfdata: Option<Vec<toml::Value>>,
}

#[derive(Debug)]
struct ExecSettings {
    program: PathBuf,
    args: Vec<String>,
    /// Variables passed to the plugin, read from healthd's environment.
    env: Vec<(String, Secret)>,
    /// (label, unit) of each perfdata value that becomes a measurement.
    perfdata: Vec<(String, String)>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: ExecFields = input.fields()?;
    let command = input.required("command", fields.command)?;
    let Some((program, args)) = command.split_first() else {
        input.report_at("command", "is empty: give the plugin's path and its arguments");
        return None;
    };
    let program = PathBuf::from(program);
    if !program.is_absolute() {
        input.report_at(
            "command",
            format!(
                "{:?} is not an absolute path (the plugin runs without a shell or PATH)",
                program.display().to_string()
            ),
        );
        return None;
    }
    match std::fs::metadata(&program) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {}
        Ok(_) => {
            input.report_at("command", format!("{} is not an executable file", program.display()));
            return None;
        }
        Err(error) => {
            let reason = match error.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => error.to_string(),
            };
            input.report_at("command", format!("{}: {reason}", program.display()));
            return None;
        }
    }
    let mut env = Vec::new();
    for name in fields.env.unwrap_or_default() {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            input.report_at("env", format!("{name:?} is not a variable name"));
            return None;
        }
        match input.env.var(&name) {
            Some(value) => env.push((name, Secret::new(value))),
            None => {
                input.report_at("env", format!("environment variable {name} is not set"));
                return None;
            }
        }
    }
    let perfdata = perfdata_fields(input, fields.perfdata.unwrap_or_default())?;
    Some(Arc::new(ExecSettings { program, args: args.to_vec(), env, perfdata }))
}

/// `perfdata = ["load1", { label = "time", unit = "s" }]`: labels, each
/// with the unit it is reported in (none unless given).
fn perfdata_fields(
    input: &mut KindInput<'_>,
    items: Vec<toml::Value>,
) -> Option<Vec<(String, String)>> {
    if items.len() > MAX_LABELS {
        input.report_at("perfdata", format!("{} labels: at most {MAX_LABELS}", items.len()));
        return None;
    }
    let mut labels: Vec<(String, String)> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let key = format!("perfdata[{index}]");
        let (label, unit) = match item {
            toml::Value::String(label) => (label, String::new()),
            toml::Value::Table(mut table) => {
                let label = table.remove("label");
                let unit = table.remove("unit");
                match (label, unit, table.keys().next()) {
                    (_, _, Some(other)) => {
                        input.report_at(
                            &key,
                            format!("unknown key `{other}`, expected `label` or `unit`"),
                        );
                        return None;
                    }
                    (Some(toml::Value::String(label)), None, None) => (label, String::new()),
                    (Some(toml::Value::String(label)), Some(toml::Value::String(unit)), None) => {
                        (label, unit)
                    }
                    _ => {
                        input.report_at(&key, "expected { label = \"time\", unit = \"s\" }");
                        return None;
                    }
                }
            }
            _ => {
                input.report_at(
                    &key,
                    "expected a label (\"load1\") or { label = \"time\", unit = \"s\" }",
                );
                return None;
            }
        };
        if label.is_empty() || label.contains(['=', '\'']) || label.chars().any(char::is_control) {
            input.report_at(&key, format!("{label:?} is not a perfdata label"));
            return None;
        }
        if label == "responseTime" {
            input.report_at(&key, "responseTime is the plugin's run time; pick another label");
            return None;
        }
        if !unit.chars().all(|c| c.is_ascii_alphabetic() || c == '%' || c == '/') {
            input.report_at(&key, format!("{unit:?} is not a unit"));
            return None;
        }
        if labels.iter().any(|(seen, _)| *seen == label) {
            input.report_at(&key, format!("{label:?} is listed twice"));
            return None;
        }
        labels.push((label, unit));
    }
    Some(labels)
}

impl KindSettings for ExecSettings {
    fn descriptors(&self) -> usize {
        // While the plugin starts: the two ends of the stdout and stderr pipes,
        // and the spawn's own error pipe; `/dev/null` for stdin.
        7
    }

    fn build(&self, name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let mut measurements = self.perfdata.clone();
        measurements.push(("responseTime".into(), "ms".into()));
        Ok(Arc::new(ExecCheck {
            name: name.to_string(),
            program: self.program.clone(),
            args: self.args.clone(),
            env: self
                .env
                .iter()
                .map(|(name, value)| (name.clone(), value.expose().to_string()))
                .collect(),
            perfdata: self.perfdata.clone(),
            measurements: intern(measurements),
            running: tokio::sync::Mutex::new(()),
        }))
    }
}

/// The `&'static` measurement list for `list`: leaked once per distinct
/// list in the life of the process, so a reload leaks nothing new.
fn intern(list: Vec<(String, String)>) -> &'static [(&'static str, &'static str)] {
    type Interned = HashMap<Vec<(String, String)>, &'static [(&'static str, &'static str)]>;
    static INTERNED: Mutex<Option<Interned>> = Mutex::new(None);
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    let interned = interned.get_or_insert_with(HashMap::new);
    if let Some(found) = interned.get(&list) {
        return found;
    }
    let leak = |text: &str| -> &'static str { Box::leak(text.to_owned().into_boxed_str()) };
    let leaked: Vec<(&'static str, &'static str)> =
        list.iter().map(|(label, unit)| (leak(label), leak(unit))).collect();
    let leaked: &'static [(&'static str, &'static str)] = Box::leak(leaked.into_boxed_slice());
    interned.insert(list, leaked);
    leaked
}

struct ExecCheck {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    perfdata: Vec<(String, String)>,
    measurements: &'static [(&'static str, &'static str)],
    /// Held while a run is in flight.
    running: tokio::sync::Mutex<()>,
}

/// Kills the plugin's process group when dropped.
struct GroupGuard(libc::pid_t);

impl GroupGuard {
    fn kill(&self) {
        // SAFETY: killpg only sends a signal. The group is the plugin's own
        // (it leads it): while the leader is unreaped, or any member lives,
        // the ID cannot belong to another group.
        unsafe { libc::killpg(self.0, libc::SIGKILL) };
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `pipe` to its end, keeping the first `cap` bytes in `kept`.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, kept: &mut Vec<u8>, cap: usize) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

impl Check for ExecCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        self.measurements
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let Ok(_running) = self.running.try_lock() else {
                return Observation::fail("still running since an earlier attempt");
            };
            let started = Instant::now();
            let mut command = tokio::process::Command::new(&self.program);
            command
                .args(&self.args)
                .env_clear()
                .envs(self.env.iter().map(|(name, value)| (name, value)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true);
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    return Observation::fail(match error.kind() {
                        std::io::ErrorKind::NotFound => "plugin not found",
                        std::io::ErrorKind::PermissionDenied => "permission denied",
                        _ => "plugin did not start",
                    })
                    .with_detail(error.to_string());
                }
            };
            // Declared after the child, so dropped before it: the group is
            // killed while its leader is still unreaped.
            let group = child.id().map(|pid| GroupGuard(pid as libc::pid_t));
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let status = {
                let reading = async {
                    tokio::join!(
                        read_capped(stdout, &mut out, STDOUT_CAP),
                        read_capped(stderr, &mut err, STDERR_CAP)
                    )
                };
                tokio::pin!(reading);
                tokio::select! {
                    () = async { (&mut reading).await; } => child.wait().await,
                    status = child.wait() => {
                        // Children it left behind would hold the pipes open.
                        if let Some(group) = &group {
                            group.kill();
                        }
                        let _ = tokio::time::timeout(DRAIN, &mut reading).await;
                        status
                    }
                }
            };
            drop(group);
            let response_time = elapsed_ms(started);
            let status = match status {
                Ok(status) => status,
                Err(error) => {
                    return Observation::fail("plugin did not finish")
                        .with_detail(error.to_string());
                }
            };
            let (text, perfdata) = split_output(&String::from_utf8_lossy(&out));
            let mut values: Vec<Option<f64>> = self
                .perfdata
                .iter()
                .map(|(label, unit)| value_of(&perfdata, label, unit, &self.name))
                .collect();
            values.push(response_time);
            tracing::debug!(check = %self.name, ?status, stderr_bytes = err.len(), "plugin ran");
            judge(status.code(), status.signal(), text, values)
        })
    }
}

/// The status for an exit: 0 pass, 1 warn, 2 fail, 3 fail (`unknown`).
fn judge(
    code: Option<i32>,
    signal: Option<i32>,
    text: String,
    values: Vec<Option<f64>>,
) -> Observation {
    let or = |fallback: &str| if text.is_empty() { fallback.to_string() } else { text.clone() };
    match (code, signal) {
        (Some(0), _) => Observation::pass(values),
        (Some(1), _) => Observation::warn(or("warning (no output)"), values),
        (Some(2), _) => Observation::fail_with(or("critical (no output)"), values),
        (Some(3), _) => Observation::fail_with(
            if text.is_empty() {
                "unknown".to_string()
            } else {
                cap_chars(&format!("unknown: {text}"))
            },
            values,
        ),
        (Some(code), _) => Observation::fail_with(format!("exit status {code}"), values),
        (None, Some(signal)) => {
            Observation::fail_with(format!("killed by signal {signal}"), values)
        }
        (None, None) => Observation::fail_with("plugin did not finish", values),
    }
}

/// The output (the first line's text before `|`, without control
/// characters, at most 200 characters) and the performance data (after
/// `|` on the first line, and after the first `|` of the lines below it).
fn split_output(stdout: &str) -> (String, String) {
    let (first, rest) = stdout.split_once('\n').unwrap_or((stdout, ""));
    let (text, mut perfdata) = match first.split_once('|') {
        Some((text, perf)) => (text, perf.to_string()),
        None => (first, String::new()),
    };
    if let Some((_, more)) = rest.split_once('|') {
        perfdata.push(' ');
        perfdata.push_str(more);
    }
    let clean: String = text.chars().filter(|c| !c.is_control()).collect();
    (cap_chars(clean.trim()), perfdata)
}

fn cap_chars(text: &str) -> String {
    text.chars().take(OUTPUT_CHARS).collect()
}

/// One perfdata item: `'label'=value[UOM];warn;crit;min;max`.
#[derive(Debug, PartialEq)]
struct Perf {
    label: String,
    value: Option<f64>,
    unit: String,
}

/// Parses performance data; items that do not parse are skipped.
fn parse_perfdata(text: &str) -> Vec<Perf> {
    let mut items = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let label;
        if let Some(quoted) = rest.strip_prefix('\'') {
            // '' inside quotes is a quote.
            let mut out = String::new();
            let mut chars = quoted.char_indices().peekable();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if matches!(chars.peek(), Some((_, '\''))) {
                        out.push('\'');
                        chars.next();
                    } else {
                        end = Some(i + 1);
                        break;
                    }
                } else {
                    out.push(c);
                }
            }
            let Some(end) = end else { break };
            label = out;
            rest = &quoted[end..];
        } else {
            let end = rest.find(['=', ' ', '\t', '\n']).unwrap_or(rest.len());
            label = rest[..end].to_string();
            rest = &rest[end..];
        }
        let Some(after) = rest.strip_prefix('=') else {
            // Not an item: skip to the next whitespace.
            rest = rest.trim_start_matches(|c: char| !c.is_whitespace()).trim_start();
            continue;
        };
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (item, next) = after.split_at(end);
        rest = next.trim_start();
        let first = item.split(';').next().unwrap_or("");
        let number_end = first
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.')))
            .unwrap_or(first.len());
        let (number, unit) = first.split_at(number_end);
        items.push(Perf { label, value: number.parse().ok(), unit: unit.to_string() });
    }
    items
}

/// The (check, label, unit) whose unit did not convert, already logged.
static UNITS_WARNED: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashSet<(String, String, String)>>,
> = std::sync::LazyLock::new(Default::default);

/// The value of `label` in `perfdata`, in `unit`; `None` when the run did
/// not report it (or reported `U`), or in a unit that does not convert.
fn value_of(perfdata: &str, label: &str, unit: &str, check: &str) -> Option<f64> {
    let item = parse_perfdata(perfdata).into_iter().find(|item| item.label == label)?;
    let value = item.value?;
    if unit.is_empty() || item.unit.is_empty() || item.unit == unit {
        return Some(value);
    }
    match (scale(&item.unit), scale(unit)) {
        (Some((from_kind, from)), Some((to_kind, to))) if from_kind == to_kind => {
            Some(value * from / to)
        }
        _ => {
            // Said once per check, label and unit: the plugin will say the
            // same on every run.
            let said = (check.to_string(), label.to_string(), item.unit.clone());
            if UNITS_WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(said) {
                tracing::warn!(check, label, reported = %item.unit, wanted = unit, "perfdata unit does not convert (said once)");
            }
            None
        }
    }
}

/// Units of the plugin API that convert: time and bytes (1024-based, as
/// the plugins write them).
fn scale(unit: &str) -> Option<(&'static str, f64)> {
    Some(match unit {
        "us" => ("time", 1e-6),
        "ms" => ("time", 1e-3),
        "s" => ("time", 1.0),
        "B" => ("bytes", 1.0),
        "KB" => ("bytes", 1024.0),
        "MB" => ("bytes", 1024.0 * 1024.0),
        "GB" => ("bytes", 1024.0 * 1024.0 * 1024.0),
        "TB" => ("bytes", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthd_models::HealthStatus;

    #[test]
    fn perfdata_parses_quoted_labels_units_and_thresholds() {
        let items = parse_perfdata(
            "time=0.000123s;;;0.000000;10.000000 'disk /var'=42%;80;90 'it''s'=U load1=0.5;5;10;0 junk",
        );
        assert_eq!(
            items,
            vec![
                Perf { label: "time".into(), value: Some(0.000123), unit: "s".into() },
                Perf { label: "disk /var".into(), value: Some(42.0), unit: "%".into() },
                Perf { label: "it's".into(), value: None, unit: "U".into() },
                Perf { label: "load1".into(), value: Some(0.5), unit: "".into() },
            ]
        );
    }

    #[test]
    fn output_is_the_first_line_before_the_bar_capped_and_clean() {
        let (text, perf) = split_output("OK - fine\x07 now | a=1\nlong text\nmore | b=2\nc=3\n");
        assert_eq!(text, "OK - fine now");
        assert_eq!(parse_perfdata(&perf).len(), 3);
        let long = "x".repeat(500);
        assert_eq!(split_output(&long).0.chars().count(), 200);
        assert_eq!(split_output("").0, "");
    }

    #[test]
    fn units_convert_within_their_kind_or_give_no_value() {
        assert_eq!(value_of("time=0.5s", "time", "ms", "c"), Some(500.0));
        assert_eq!(value_of("size=2KB", "size", "B", "c"), Some(2048.0));
        assert_eq!(value_of("time=0.5s", "time", "%", "c"), None);
        assert_eq!(value_of("load1=0.5", "load1", "", "c"), Some(0.5));
        assert_eq!(value_of("load1=0.5", "load5", "", "c"), None);
    }

    #[test]
    fn exit_statuses_map_to_statuses() {
        let v = || vec![Some(1.0)];
        assert_eq!(judge(Some(0), None, "OK".into(), v()).status, HealthStatus::Pass);
        let warn = judge(Some(1), None, "WARNING - slow".into(), v());
        assert_eq!(
            (warn.status, warn.output.as_deref()),
            (HealthStatus::Warn, Some("WARNING - slow"))
        );
        assert_eq!(
            judge(Some(2), None, "".into(), v()).output.as_deref(),
            Some("critical (no output)")
        );
        let unknown = judge(Some(3), None, "UNKNOWN - what".into(), v());
        assert_eq!(
            (unknown.status, unknown.output.as_deref()),
            (HealthStatus::Fail, Some("unknown: UNKNOWN - what"))
        );
        assert_eq!(judge(Some(7), None, "x".into(), v()).output.as_deref(), Some("exit status 7"));
        assert_eq!(
            judge(None, Some(9), "".into(), v()).output.as_deref(),
            Some("killed by signal 9")
        );
    }

    #[test]
    fn equal_measurement_lists_are_interned_once() {
        let list =
            || vec![("load1".to_string(), "".to_string()), ("responseTime".into(), "ms".into())];
        let a = intern(list());
        let b = intern(list());
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, &[("load1", ""), ("responseTime", "ms")]);
    }
}
