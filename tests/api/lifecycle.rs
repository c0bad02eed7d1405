//! The lifecycle starting -> ready -> draining -> stopped, against the real
//! binary and signals: readiness turns 503 at once on SIGTERM while
//! liveness stays 200, the listener closes after `drain_delay`, requests in
//! flight finish, the checks stop and the process exits 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::app::{raw_request, read_answer, spawn_app, spawn_binary};

const DEADLINE: Duration = Duration::from_secs(10);

/// What a fresh connection (as a kubelet probe makes) got.
#[derive(Debug, Clone, PartialEq)]
enum Probe {
    Answered(u16, Option<String>),
    /// The connection was refused: nothing listens any more.
    Refused,
    /// Connected, then dropped without an answer: the connection raced the
    /// listener's close (it sat in the kernel's accept queue, or was
    /// accepted and not yet served, when the socket closed). Allowed only
    /// at the close.
    Dropped,
    /// Anything else (a reset, a timeout, a broken answer) is a failure.
    Broken(String),
}

async fn probe(address: SocketAddr, path: &str) -> Probe {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    match raw_request(address, request.as_bytes()).await {
        Ok(answer) => {
            let output = answer.json()["output"].as_str().map(str::to_string);
            Probe::Answered(answer.status, output)
        }
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            Probe::Dropped
        }
        Err(error) => Probe::Broken(error.to_string()),
    }
}

#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    ready: Probe,
    live: Probe,
}

/// Probes readiness and liveness every 10 ms until both are refused a few
/// times in a row.
fn probe_loop(address: SocketAddr) -> (Arc<Mutex<Vec<Sample>>>, tokio::task::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sink = samples.clone();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let mut refused_in_a_row = 0;
        while refused_in_a_row < 5 && started.elapsed() < Duration::from_secs(20) {
            let at = Instant::now();
            let ready = probe(address, "/health/ready").await;
            let live = probe(address, "/health/live").await;
            refused_in_a_row = if ready == Probe::Refused && live == Probe::Refused {
                refused_in_a_row + 1
            } else {
                0
            };
            sink.lock().unwrap().push(Sample { at, ready, live });
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (samples, task)
}

async fn wait_for_sample(samples: &Mutex<Vec<Sample>>, wanted: impl Fn(&Sample) -> bool) {
    let started = Instant::now();
    while !samples.lock().unwrap().iter().any(&wanted) {
        assert!(started.elapsed() < DEADLINE, "no such sample: {:#?}", samples.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A listener that accepts and counts connections (a tcp check's target).
async fn counting_listener() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (address, accepted, task)
}

fn config(drain_delay: &str, target: SocketAddr) -> String {
    format!(
        r#"
[server]
drain_delay = "{drain_delay}"
workers = 1
[[checks]]
name = "dependency"
kind = "tcp"
address = "{target}"
interval = "200ms"
timeout = "100ms"
retries = 0
"#
    )
}

/// A connection with a 4 KiB receive buffer: the server cannot push a
/// large answer into it faster than it is read.
async fn narrow_connection(address: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(address).await.unwrap()
}

/// Reads an answer's head; returns its status line, `content-length` and
/// the body bytes that came with it.
async fn read_head(stream: &mut TcpStream) -> (String, usize, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            return (head, length, buffer[end + 4..].to_vec());
        }
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed before the head");
        buffer.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn sigterm_drains_readiness_first_then_closes_the_listener_finishes_in_flight_requests_and_exits_0(
) {
    // Arrange: the binary, with a 1.5 s drain delay.
    let drain_delay = Duration::from_millis(1500);
    let (target, _, _listener) = counting_listener().await;
    let mut binary =
        spawn_binary(&config("1500ms", target), &[], &[("HEALTHD_LISTEN", "127.0.0.1:0")]).await;
    let address = binary.address();
    let started = Instant::now();
    while probe(address, "/health/ready").await != Probe::Answered(200, None) {
        assert!(started.elapsed() < DEADLINE, "never ready:\n{}", binary.stdout());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A keep-alive connection, idle when the listener closes.
    let mut idle = TcpStream::connect(address).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(read_answer(&mut idle, false).await.unwrap().status, 200);
    let (samples, sampler) = probe_loop(address);
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Act
    let signalled = Instant::now();
    binary.signal(libc::SIGTERM);
    // A slow request in the drain window: a 1.5 MB answer (Swagger UI's
    // bundle) into a 4 KiB receive buffer, read a little before the
    // listener closes and the rest after.
    wait_for_sample(&samples, |s| matches!(s.ready, Probe::Answered(503, _))).await;
    let mut download = narrow_connection(address).await;
    download
        .write_all(b"GET /swagger-ui/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, length, mut body) = read_head(&mut download).await;
    wait_for_sample(&samples, |s| s.live == Probe::Refused).await;
    let listener_closed = Instant::now();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut received_after_close = 0;
    loop {
        let read = download.read(&mut chunk).await.expect("the download is not cut off");
        if read == 0 {
            break;
        }
        received_after_close += read;
        body.extend_from_slice(&chunk[..read]);
        // Slow: a few milliseconds per 64 KiB.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let idle_after_close = read_answer(&mut idle, false).await;
    let status = binary.wait_for_exit(DEADLINE).await;
    let exited = Instant::now();
    sampler.await.unwrap();

    // Assert: the download was in flight across the close, finished whole,
    // and then the connection closed.
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        received_after_close > 1_000_000,
        "only {received_after_close} bytes came after the close"
    );
    assert_eq!(body.len(), length, "the whole answer arrived");
    // An idle keep-alive connection is closed cleanly, without a byte (its
    // client reconnects, and is refused).
    match idle_after_close {
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof, "{error}"),
        Ok(answer) => panic!("an idle connection got an answer it did not ask for: {answer:?}"),
    }
    assert!(status.success(), "exit status {status}\n{}", binary.stdout());
    assert_eq!(status.code(), Some(0));

    // The probes saw: ready 200, then ready 503 (draining) with live 200,
    // then both refused; never anything else.
    let samples = samples.lock().unwrap().clone();
    let mut phase = 0;
    for sample in &samples {
        let seen = match (&sample.ready, &sample.live) {
            (Probe::Answered(200, None), Probe::Answered(200, None)) => 0,
            (Probe::Answered(503, Some(output)), Probe::Answered(200, None))
                if output == "draining" =>
            {
                1
            }
            // The listener may close between the two probes of one sample,
            // and a connection made at that moment may be dropped.
            (Probe::Answered(503, Some(_)) | Probe::Refused | Probe::Dropped, Probe::Refused)
            | (Probe::Answered(503, Some(_)), Probe::Dropped) => 2,
            _ => panic!("a probe failed or answered out of turn: {sample:?}\nall: {samples:#?}"),
        };
        assert!(seen >= phase, "went back from phase {phase} to {seen}: {samples:#?}");
        phase = seen;
    }
    let dropped =
        samples.iter().filter(|s| s.ready == Probe::Dropped || s.live == Probe::Dropped).count();
    assert!(dropped <= 1, "{dropped} probes were dropped, not only the one racing the close");
    let first = |phase_of: fn(&Sample) -> bool| {
        samples.iter().find(|s| phase_of(s)).map(|s| s.at).expect("every phase was seen")
    };
    let first_503 = first(|s| matches!(s.ready, Probe::Answered(503, _)));
    let first_refused = first(|s| s.live == Probe::Refused);
    assert!(samples.iter().any(|s| s.at < signalled && s.ready == Probe::Answered(200, None)));
    let draining_samples = samples
        .iter()
        .filter(|s| {
            matches!(s.ready, Probe::Answered(503, _)) && s.live == Probe::Answered(200, None)
        })
        .count();
    assert!(draining_samples >= 5, "only {draining_samples} samples saw the drain window");
    // Readiness turned at once; the listener closed no sooner than drain_delay.
    assert!(
        first_503.duration_since(signalled) < Duration::from_millis(1000),
        "{:?}",
        first_503 - signalled
    );
    assert!(first_refused.duration_since(signalled) >= drain_delay - Duration::from_millis(50));
    assert!(listener_closed >= first_refused);
    // Nothing kept the process: it exited soon after the last answer.
    assert!(exited.duration_since(listener_closed) < Duration::from_secs(5));

    // The log tells the sequence, in order.
    let stdout = binary.stdout();
    let position = |text: &str| {
        stdout.find(text).unwrap_or_else(|| panic!("{text:?} is not in the log:\n{stdout}"))
    };
    let order = [
        position("SIGTERM received"),
        position("draining: readiness now answers 503"),
        position("drain delay over: closing the listener"),
        position("checks stopped; healthd stopped"),
    ];
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "out of order:\n{stdout}");
}

#[tokio::test]
async fn sigint_drains_and_exits_0_too() {
    let (target, _, _listener) = counting_listener().await;
    let mut binary =
        spawn_binary(&config("200ms", target), &[], &[("HEALTHD_LISTEN", "127.0.0.1:0")]).await;
    binary.signal(libc::SIGINT);
    let status = binary.wait_for_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "{}", binary.stdout());
    let stdout = binary.stdout();
    assert!(stdout.contains("SIGINT received") && stdout.contains("healthd stopped"), "{stdout}");
}

#[tokio::test]
async fn the_checks_stop_once_the_server_has_stopped() {
    // Arrange: a tcp check against a listener that counts its connections.
    let (target, accepted, _listener) = counting_listener().await;
    let app =
        spawn_app(&format!("{}\n[access]\ndetails = \"always\"\n", config("300ms", target))).await;
    let started = Instant::now();
    while accepted.load(Ordering::SeqCst) < 2 {
        assert!(started.elapsed() < DEADLINE, "the check never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Act
    let drain = app.drain();
    // During the drain window: readiness 503 (draining), liveness 200, metrics say so.
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json["output"], "draining");
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK);
    let metrics = app.get("/metrics").await;
    assert!(metrics.text.lines().any(|line| line == "healthd_draining 1"), "{}", metrics.text);
    drain.await.unwrap();
    let started = Instant::now();
    while !app.is_stopped() {
        assert!(started.elapsed() < DEADLINE, "the application did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after_stop = accepted.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Assert: more than three intervals later, no check has run.
    assert_eq!(accepted.load(Ordering::SeqCst), after_stop, "a check ran after the stop");
}

#[tokio::test]
async fn startup_and_readiness_answer_503_starting_until_every_check_has_reported() {
    // Arrange: a non-critical check whose first reading takes its whole 3 s
    // deadline (a listener that accepts and never answers HTTP), long enough
    // that a loaded machine still sees the starting state first.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let _holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let app = spawn_app(&format!(
        r#"
[server]
workers = 1
[[checks]]
name = "slow"
kind = "http"
url = "http://{address}/health"
critical = false
interval = "5s"
timeout = "3s"
retries = 0
"#
    ))
    .await;

    // Act + Assert: starting.
    for path in ["/health/startup", "/health/ready"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(answer.json["output"], "starting", "{path}");
    }
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK);

    // Ready once the first reading is in, though it failed: the check is not critical.
    app.wait_for("/health/startup", None, DEADLINE, |a| a.status == StatusCode::OK).await;
    assert_eq!(app.get("/health/ready").await.status, StatusCode::OK);
    let health = app.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json["status"], "warn");
}
