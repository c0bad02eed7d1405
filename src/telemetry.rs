//! Logging: one tracing subscriber for the process, text or JSON, written
//! to stdout by a background thread so that no request waits on a write.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

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
    let sink = BackgroundSink::start();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(sink);
    let result = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging was already set up: {error}");
    }
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
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped_lines: u64,
}

impl Shared {
    fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bytes = std::mem::take(&mut pending.bytes);
        drop(pending);
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&bytes);
        let _ = stdout.flush();
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
    fn start() -> BackgroundSink {
        let shared = SINK
            .get_or_init(|| {
                let shared =
                    Arc::new(Shared { pending: Mutex::new(Pending::default()), ready: Condvar::new() });
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
            pending = shared.ready.wait_timeout(pending, FLUSH_EVERY).unwrap_or_else(|p| p.into_inner()).0;
        }
        std::mem::swap(&mut batch, &mut pending.bytes);
        let dropped = std::mem::take(&mut pending.dropped_lines);
        drop(pending);
        let mut stdout = std::io::stdout().lock();
        if dropped > 0 {
            let _ = writeln!(stdout, "healthd: {dropped} log lines dropped: stdout could not keep up");
        }
        let _ = stdout.write_all(&batch);
        let _ = stdout.flush();
        batch.clear();
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
            if line.is_empty() {
                return;
            }
            let mut pending = self.shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if pending.bytes.len() + line.len() > MAX_PENDING {
                pending.dropped_lines += 1;
            } else {
                pending.bytes.extend_from_slice(line);
                // Otherwise the writer wakes on its own every FLUSH_EVERY:
                // under load, that batches thousands of lines per write.
                if pending.bytes.len() >= WAKE_AT {
                    self.shared.ready.notify_one();
                }
            }
            line.clear();
        });
    }
}
