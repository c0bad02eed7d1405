//! Logging: one tracing subscriber for the process, text or JSON, written
//! to stdout by a background thread so that no request waits on a write.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use chrono::{Datelike, Timelike, Utc};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("invalid log format {other:?}: expected text or json")),
        }
    }
}

/// Installs the subscriber; `RUST_LOG` filters (default `info`). Call once.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let sink = BackgroundSink::start(format);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(sink);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already set up: {error}");
        return;
    }
    if tracing::enabled!(target: "healthd::access", tracing::Level::INFO) {
        let _ = ACCESS_FORMAT.set(format);
    }
}

/// The access log's format, when healthd's own logging is installed and
/// lets `healthd::access` through.
static ACCESS_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// One request, as the access log tells it.
pub struct AccessRecord<'a> {
    pub client: IpAddr,
    pub peer: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub principal: &'a str,
}

/// Logs one request. Under healthd's own logging the line is formatted
/// here, by hand, straight into the writer's buffer: it runs on every
/// probe, and tracing's formatter cost a probe a fifth of its throughput.
/// Otherwise (the routes embedded in another app) it is a tracing event.
pub fn log_access(record: &AccessRecord<'_>) {
    let (Some(format), Some(shared)) = (ACCESS_FORMAT.get(), SINK.get()) else {
        tracing::info!(
            target: "healthd::access",
            client = %record.client,
            peer = %record.peer,
            method = record.method,
            path = record.path,
            status = record.status,
            duration_ms = record.duration.as_secs_f64() * 1e3,
            principal = record.principal,
            "request"
        );
        return;
    };
    LINE.with_borrow_mut(|line| {
        if *format == LogFormat::Json {
            line.extend_from_slice(br#"{"timestamp":""#);
        }
        write_timestamp(line);
        let _ = match format {
            LogFormat::Json => {
                let _ = write!(
                    line,
                    r#"","level":"INFO","message":"request","client":"{}","peer":"{}","method":"#,
                    record.client, record.peer
                );
                json_string(line, record.method);
                line.extend_from_slice(br#","path":"#);
                json_string(line, record.path);
                let _ = write!(line, r#","status":{},"duration_ms":"#, record.status);
                write_millis(line, record.duration);
                line.extend_from_slice(br#","principal":"#);
                json_string(line, record.principal);
                writeln!(line, r#","target":"healthd::access"}}"#)
            }
            LogFormat::Text => writeln!(
                line,
                "  INFO healthd::access: request client={} peer={} method={} path={:?} status={} duration_ms={}.{:03} principal={:?}",
                record.client,
                record.peer,
                record.method,
                record.path,
                record.status,
                record.duration.as_micros() / 1000,
                record.duration.as_micros() % 1000,
                record.principal
            ),
        };
        shared.push(line);
    });
}

thread_local! {
    /// The formatted `YYYY-MM-DDTHH:MM:SS` of the current second, so that a
    /// line formats only its microseconds.
    static SECOND: RefCell<(i64, [u8; 19])> = const { RefCell::new((i64::MIN, [0; 19])) };
}

/// Appends the time now as RFC 3339 in UTC with microseconds.
fn write_timestamp(out: &mut Vec<u8>) {
    let now = Utc::now();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != now.timestamp() {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = write!(
                cursor,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                now.year(),
                now.month(),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
            *second = now.timestamp();
        }
        out.extend_from_slice(&text[..]);
    });
    let _ = write!(out, ".{:06}Z", now.timestamp_subsec_micros() % 1_000_000);
}

/// Appends a duration in milliseconds with microsecond precision, without
/// going through float formatting.
fn write_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = duration.as_micros();
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

/// Appends `text` as a JSON string literal.
fn json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for character in text.chars() {
        match character {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buffer = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Writes out every line logged so far. Call before the process exits.
pub fn flush() {
    if let Some(shared) = SINK.get() {
        shared.flush();
    }
}

/// Lines wait here at most this long before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Pending bytes that wake the writer before its timer.
const WAKE_AT: usize = 256 * 1024;
/// Past this many pending bytes (stdout blocked), lines are dropped and
/// counted rather than letting memory grow or requests wait.
const MAX_PENDING: usize = 8 * 1024 * 1024;

static SINK: OnceLock<Arc<Shared>> = OnceLock::new();

struct Shared {
    pending: Mutex<Pending>,
    ready: Condvar,
    format: LogFormat,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped_lines: u64,
}

impl Shared {
    /// Hands a finished line to the writer thread and clears it.
    fn push(&self, line: &mut Vec<u8>) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.bytes.len() + line.len() > MAX_PENDING {
            pending.dropped_lines += 1;
        } else {
            pending.bytes.extend_from_slice(line);
            // Otherwise the writer wakes on its own every FLUSH_EVERY:
            // under load, that batches thousands of lines per write.
            if pending.bytes.len() >= WAKE_AT {
                self.ready.notify_one();
            }
        }
        line.clear();
    }

    /// Writes out what is pending. Taking the batch under the stdout lock
    /// keeps lines in order and makes `flush` wait for a batch the writer
    /// thread has taken but not written yet.
    fn write_pending(&self, batch: &mut Vec<u8>) {
        let mut stdout = std::io::stdout().lock();
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::swap(batch, &mut pending.bytes);
        let dropped = std::mem::take(&mut pending.dropped_lines);
        drop(pending);
        if dropped > 0 {
            let message = format!("{dropped} log lines dropped: stdout could not keep up");
            let _ = match self.format {
                LogFormat::Json => {
                    writeln!(
                        stdout,
                        r#"{{"level":"WARN","message":"{message}","target":"healthd::telemetry"}}"#
                    )
                }
                LogFormat::Text => writeln!(stdout, "  WARN healthd::telemetry: {message}"),
            };
        }
        let _ = stdout.write_all(batch);
        let _ = stdout.flush();
        batch.clear();
    }

    fn flush(&self) {
        self.write_pending(&mut Vec::new());
    }
}

/// A `MakeWriter` whose writers fill a per-thread line buffer and hand the
/// finished line to the writer thread: one short lock, no syscall, no
/// allocation once the buffers have grown.
#[derive(Clone)]
struct BackgroundSink {
    shared: Arc<Shared>,
}

impl BackgroundSink {
    fn start(format: LogFormat) -> BackgroundSink {
        let shared = SINK
            .get_or_init(|| {
                let shared = Arc::new(Shared {
                    pending: Mutex::new(Pending::default()),
                    ready: Condvar::new(),
                    format,
                });
                let writer = shared.clone();
                std::thread::Builder::new()
                    .name("healthd-log".into())
                    .spawn(move || write_forever(&writer))
                    .expect("the log writer thread starts");
                shared
            })
            .clone();
        BackgroundSink { shared }
    }
}

fn write_forever(shared: &Shared) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let mut pending = shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while pending.bytes.is_empty() {
            pending = shared
                .ready
                .wait_timeout(pending, FLUSH_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(pending);
        shared.write_pending(&mut batch);
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

struct LineWriter<'a> {
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for BackgroundSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { shared: &self.shared }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LINE.with_borrow_mut(|line| line.extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        LINE.with_borrow_mut(|line| {
            if !line.is_empty() {
                self.shared.push(line);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::json_string;

    #[test]
    fn timestamps_and_durations_format_without_floats() {
        let mut out = Vec::new();
        super::write_timestamp(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(&text).is_ok(), "{text}");
        assert_eq!(text.len(), "2026-11-23T20:15:41.560867Z".len());
        let mut out = Vec::new();
        super::write_millis(&mut out, std::time::Duration::from_micros(12_042));
        assert_eq!(out, b"12.042");
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut out = Vec::new();
        json_string(&mut out, "/p\"a\\t\u{1}é");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, r#""/p\"a\\t\u0001é""#);
        assert_eq!(serde_json::from_str::<String>(&text).unwrap(), "/p\"a\\t\u{1}é");
    }
}
