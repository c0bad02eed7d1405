//! The descriptor budget, against the real binary under a low limit of
//! open files: idle clients past the cap wait in the listen backlog and
//! leave the checks their descriptors; a client waiting there is served
//! as soon as a slot frees; idle clients give their slots back after
//! `server.idle_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{metric, read_answer, spawn_app, spawn_binary_limited, RawAnswer};

const DEADLINE: Duration = Duration::from_secs(10);
/// The limit the binary runs under, as `prlimit --nofile=256:256` sets it.
const OPEN_FILES: u64 = 256;
/// Idle clients held open against it: more than the limit allows.
const IDLE_CLIENTS: usize = 400;

/// A listener that accepts and counts connections (the tcp check's target).
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, accepted)
}

/// One keep-alive connection that asks healthd things: it holds a slot of
/// its own, so it is answered while every other slot is taken.
struct Observer(TcpStream);

impl Observer {
    async fn connect(address: SocketAddr) -> Observer {
        Observer(TcpStream::connect(address).await.unwrap())
    }

    async fn get(&mut self, path: &str) -> RawAnswer {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        self.0.write_all(request.as_bytes()).await.unwrap();
        read_answer(&mut self.0, false).await.expect("an answer on the observer's connection")
    }

    /// The value of a sample of `/metrics` (`name{labels}` as written).
    async fn metric(&mut self, sample: &str) -> f64 {
        let answer = self.get("/metrics").await;
        assert_eq!(answer.status, 200);
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        metric(&text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}"))
    }

    /// Polls `sample` until `wanted` holds, failing after `DEADLINE`.
    async fn wait_for(&mut self, sample: &str, wanted: impl Fn(f64) -> bool) -> f64 {
        let started = Instant::now();
        loop {
            let value = self.metric(sample).await;
            if wanted(value) {
                return value;
            }
            assert!(started.elapsed() < DEADLINE, "{sample} stayed at {value}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const STATUS: &str = "healthd_check_status{check=\"dependency\",kind=\"tcp\"}";
const RUNS: &str = "healthd_check_runs_total{check=\"dependency\",kind=\"tcp\"}";
const FAILURES: &str = "healthd_check_failures_total{check=\"dependency\",kind=\"tcp\"}";
const OPEN: &str = "healthd_client_connections";
const MAX: &str = "healthd_client_connections_max";

#[tokio::test]
async fn a_check_keeps_passing_while_400_idle_clients_hold_connections_under_256_open_files() {
    // Arrange: one worker, so that actix's per-worker cap is the whole
    // cap; an idle timeout longer than the test, so that the idle clients
    // hold their slots throughout. A retry keeps a busy machine's stall
    // from failing a run: a check out of descriptors fails every attempt.
    let (target, accepted) = counting_listener().await;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
idle_timeout = "60s"
[access]
details = "always"
[[checks]]
name = "dependency"
kind = "tcp"
address = "{target}"
interval = "400ms"
timeout = "150ms"
retries = 1
"#
    );
    let binary = spawn_binary_limited(&config, &[], &[], Some(OPEN_FILES)).await;
    let stdout = binary.stdout();
    assert!(stdout.contains("limit of open files (RLIMIT_NOFILE) soft=256 hard=256"), "{stdout}");
    let mut observer = Observer::connect(binary.address()).await;
    observer.wait_for(STATUS, |status| status == 0.0).await;
    let cap = observer.metric(MAX).await as usize;
    // The reserve: the tcp check's one descriptor and the process's margin.
    assert!(cap <= (OPEN_FILES - 1 - 32) as usize && cap > 150, "cap {cap}");

    // Act: 400 idle clients, in order; those past the cap wait in the backlog.
    let mut idle = Vec::with_capacity(IDLE_CLIENTS);
    for _ in 0..IDLE_CLIENTS {
        idle.push(TcpStream::connect(binary.address()).await.expect("connects (to the backlog)"));
    }
    observer.wait_for(OPEN, |open| open as usize == cap).await;

    // Assert: the check still connects and passes, run after run.
    let (runs, failures) = (observer.metric(RUNS).await, observer.metric(FAILURES).await);
    let connects = accepted.load(Ordering::SeqCst);
    let held_since = Instant::now();
    observer.wait_for(RUNS, |now| now >= runs + 5.0).await;
    assert_eq!(observer.metric(FAILURES).await, failures, "the check failed while clients held");
    assert_eq!(observer.metric(STATUS).await, 0.0);
    assert!(accepted.load(Ordering::SeqCst) >= connects + 5);
    assert_eq!(observer.metric(OPEN).await as usize, cap, "the cap held");
    eprintln!(
        "cap {cap} of {OPEN_FILES} open files; {} runs passed in {:?} with {IDLE_CLIENTS} idle clients",
        observer.metric(RUNS).await - runs,
        held_since.elapsed()
    );

    // A probe past the cap waits in the backlog...
    let address = binary.address();
    let probe = tokio::spawn(async move {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let request = b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        stream.write_all(request).await.unwrap();
        let answer = read_answer(&mut stream, false).await;
        (answer.map(|answer| answer.status).ok(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!probe.is_finished(), "the probe was answered with every slot taken");
    // ...behind the idle clients that wait there too; closing them frees no slot.
    let accepted_clients = cap - 1;
    idle.truncate(accepted_clients);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!probe.is_finished(), "the probe was answered with every slot taken");

    // ...and is answered as soon as a few held clients let go.
    idle.drain(..10);
    let freed = Instant::now();
    let (status, answered) = tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .expect("the probe is answered within 5 s of slots freeing")
        .unwrap();
    assert_eq!(status, Some(200));
    eprintln!("the waiting probe was answered {:?} after 10 slots freed", answered - freed);

    // Everything recovers when the clients let go.
    drop(idle);
    observer.wait_for(OPEN, |open| open == 1.0).await;
    assert_eq!(observer.metric(STATUS).await, 0.0);
}

#[tokio::test]
async fn idle_clients_are_closed_after_the_idle_timeout() {
    // Arrange
    let app = spawn_app("[server]\nidle_timeout = \"1s\"\n").await;
    let silent = TcpStream::connect(app.address).await.unwrap();
    let mut kept_alive = TcpStream::connect(app.address).await.unwrap();
    kept_alive.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut kept_alive, false).await.unwrap().status, 200);
    let started = Instant::now();

    // Act: neither sends anything more; each read ends when healthd closes.
    let read_to_end = |mut stream: TcpStream| async move {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        started.elapsed()
    };
    let (silent, kept_alive) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(read_to_end(silent), read_to_end(kept_alive))
    })
    .await
    .expect("idle connections are closed within 5 s");

    // Assert: closed after about the idle timeout, not before.
    for (name, after) in [("no request", silent), ("keep-alive", kept_alive)] {
        assert!(after >= Duration::from_millis(900), "{name}: closed after {after:?}");
    }
    eprintln!("idle clients closed after {silent:?} (no request) and {kept_alive:?} (keep-alive)");
}
