//! Logging: one tracing subscriber for the process, text or JSON, written
//! to stdout by a background thread so that no request waits on a write.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Timelike, Utc};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written: readable text, or one JSON object per line.
/// The command line parses it (`--log-format`, `HEALTHD_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Readable text.
    Text,
    /// One JSON object per line.
    Json,
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
    /// An HTTP method, which the parser admits only as a token: written unescaped.
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
        match format {
            LogFormat::Json => {
                line.extend_from_slice(br#"{"timestamp":""#);
                write_timestamp(line);
                line.extend_from_slice(br#"","level":"INFO","message":"request","client":""#);
                write_addresses(line, record.client, br#"","peer":""#, record.peer);
                // A method is an HTTP token: nothing in it needs escaping.
                line.extend_from_slice(br#"","method":""#);
                line.extend_from_slice(record.method.as_bytes());
                line.push(b'"');
                line.extend_from_slice(br#","path":"#);
                json_string(line, record.path);
                line.extend_from_slice(br#","status":"#);
                write_decimal(line, record.status.into());
                line.extend_from_slice(br#","duration_ms":"#);
                write_millis(line, record.duration);
                line.extend_from_slice(br#","principal":"#);
                json_string(line, record.principal);
                line.extend_from_slice(b",\"target\":\"healthd::access\"}\n");
            }
            LogFormat::Text => {
                write_timestamp(line);
                line.extend_from_slice(b"  INFO healthd::access: request client=");
                write_addresses(line, record.client, b" peer=", record.peer);
                line.extend_from_slice(b" method=");
                line.extend_from_slice(record.method.as_bytes());
                line.extend_from_slice(b" path=");
                debug_string(line, record.path);
                line.extend_from_slice(b" status=");
                write_decimal(line, record.status.into());
                line.extend_from_slice(b" duration_ms=");
                write_millis(line, record.duration);
                line.extend_from_slice(b" principal=");
                debug_string(line, record.principal);
                line.push(b'\n');
            }
        }
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
    // The system clock read directly: chrono's `Utc::now` works out the
    // calendar date on every call, and the date changes once a second.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != seconds {
            let now = DateTime::<Utc>::from_timestamp(seconds, 0).unwrap_or_default();
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
            *second = seconds;
        }
        out.extend_from_slice(&text[..]);
    });
    out.push(b'.');
    write_padded(out, since_epoch.subsec_micros().into(), 6);
    out.push(b'Z');
}

/// Appends a duration in milliseconds with microsecond precision.
fn write_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    write_decimal(out, micros / 1000);
    out.push(b'.');
    write_padded(out, micros % 1000, 3);
}

/// Appends `value` in decimal. The access log writes numbers by hand:
/// `core::fmt` machinery cost a probe more than the rest of its line.
fn write_decimal(out: &mut Vec<u8>, value: u64) {
    write_padded(out, value, 1);
}

/// "00" to "99": numbers are written two digits a step, as itoa does,
/// halving the divisions of a digit-by-digit loop.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Appends `value` in decimal, zero-padded to at least `width` digits
/// (at most 20).
fn write_padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        let pair = value as usize * 2;
        start -= 2;
        digits[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else if value > 0 {
        start -= 1;
        digits[start] = b'0' + value as u8;
    }
    start = start.min(digits.len() - width.min(digits.len()));
    out.extend_from_slice(&digits[start..]);
}

thread_local! {
    /// The addresses this thread formatted last: a worker mostly hears
    /// from the same few load balancers and kubelets.
    static ADDRESSES: RefCell<[FormattedAddress; 2]> = RefCell::new(Default::default());
}

struct FormattedAddress {
    address: IpAddr,
    text: Vec<u8>,
}

impl Default for FormattedAddress {
    fn default() -> Self {
        let address = IpAddr::from([0, 0, 0, 0]);
        FormattedAddress { address, text: address.to_string().into_bytes() }
    }
}

/// Appends the client's and the peer's address, joined by `separator`.
fn write_addresses(out: &mut Vec<u8>, client: IpAddr, separator: &[u8], peer: IpAddr) {
    ADDRESSES.with_borrow_mut(|[cached_client, cached_peer]| {
        for (cached, address) in [(&mut *cached_client, client), (&mut *cached_peer, peer)] {
            if cached.address != address {
                cached.address = address;
                cached.text.clear();
                let _ = write!(cached.text, "{address}");
            }
        }
        out.extend_from_slice(&cached_client.text);
        out.extend_from_slice(separator);
        out.extend_from_slice(&cached_peer.text);
    });
}

/// Printable ASCII but quotes and backslashes: the bytes that stand for
/// themselves when quoted, in JSON and in Rust's `Debug` alike.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut byte = 0x20;
    while byte < 0x7f {
        plain[byte] = byte != b'"' as usize && byte != b'\\' as usize;
        byte += 1;
    }
    plain
};

/// Whether `text` needs no escaping in either format. A table lookup a
/// byte: every logged path goes through here.
fn needs_no_escaping(text: &str) -> bool {
    text.bytes().all(|byte| PLAIN[usize::from(byte)])
}

/// Appends `text` in double quotes, as is, when it needs no escaping in
/// either format; says whether it did.
fn quoted_as_is(out: &mut Vec<u8>, text: &str) -> bool {
    let plain = needs_no_escaping(text);
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
    plain
}

/// Appends `text` quoted as Rust's `Debug` quotes it (the text format).
fn debug_string(out: &mut Vec<u8>, text: &str) {
    if !quoted_as_is(out, text) {
        let _ = write!(out, "{text:?}");
    }
}

/// Appends `text` as a JSON string literal.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if quoted_as_is(out, text) {
        return;
    }
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

static SINK: OnceLock<Arc<SinkState>> = OnceLock::new();

struct SinkState {
    pending: Mutex<Pending>,
    ready: Condvar,
    format: LogFormat,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped_lines: u64,
}

impl SinkState {
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
                        r#"{{"level":"WARN","message":"{message}","target":"healthd::api::log"}}"#
                    )
                }
                LogFormat::Text => writeln!(stdout, "  WARN healthd::api::log: {message}"),
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
    shared: Arc<SinkState>,
}

impl BackgroundSink {
    fn start(format: LogFormat) -> BackgroundSink {
        let shared = SINK
            .get_or_init(|| {
                let shared = Arc::new(SinkState {
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

fn write_forever(shared: &SinkState) {
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
    shared: &'a SinkState,
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
    fn numbers_addresses_and_strings_format_as_std_does() {
        let edges = [(0, 1), (7, 3), (42, 3), (999, 3), (1234, 3), (5, 6), (9, 20), (u64::MAX, 1)];
        let every_small = (0..=100_000).flat_map(|value| [(value, 1), (value, 3), (value, 6)]);
        for (value, width) in edges.into_iter().chain(every_small) {
            let mut out = Vec::new();
            super::write_padded(&mut out, value, width);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{value:0width$}"));
        }
        // Consecutive pairs share an address or not, so the per-thread
        // cache is both reused and refilled.
        let addresses =
            ["0.0.0.0", "127.0.0.1", "127.0.0.1", "10.20.3.4", "2001:db8::1", "::", "127.0.0.1"];
        for pair in addresses.windows(2) {
            let mut out = Vec::new();
            let (client, peer) = (pair[0].parse().unwrap(), pair[1].parse().unwrap());
            super::write_addresses(&mut out, client, b" ", peer);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{} {}", pair[0], pair[1]));
        }
        for text in ["/health", "anonymous", "/p\"a", "/é", "/\u{1}", "/\u{7f}"] {
            let mut out = Vec::new();
            super::debug_string(&mut out, text);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{text:?}"));
        }
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
