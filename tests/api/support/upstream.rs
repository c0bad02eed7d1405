//! Small local HTTP dependencies for the check tests: a listener on
//! 127.0.0.1 port 0 that answers with a `Behaviour` the test can change at
//! any time (200, 500, slowly, never, alternately, fail-then-succeed, an
//! `application/health+json` report, closing at once, or a `Reply` the
//! test composes: headers and a body of any size, endless, or not UTF-8),
//! a listener that accepts and stays silent, for the protocols that are not
//! HTTP, and a `Banner` server that greets and answers like SSH or SMTP.
//!
//! It speaks just enough HTTP/1.1 for reqwest: it reads the request head,
//! answers once with `Connection: close`, and closes. It counts the requests
//! it received and keeps the last one's headers, so a test can see that a
//! secret header was sent and then check it was never echoed by healthd.
//! Plain answers echo the request head in their body on purpose: a
//! dependency that repeats credentials back must not make healthd leak them.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The largest request head the server reads.
const MAX_HEAD: usize = 16 * 1024;

/// How the upstream answers each request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Answers with this status at once.
    Status(u16),
    /// Waits this long, then answers with the status.
    Slow(Duration, u16),
    /// Accepts, reads the request, and never answers; the socket stays open
    /// until the upstream is dropped. Also stands in for a PostgreSQL server
    /// that accepts and never answers.
    Never,
    /// Accepts, reads the request, and closes without answering.
    Close,
    /// The first status on the 1st, 3rd, 5th... request since it was set,
    /// the second on the others.
    Alternate(u16, u16),
    /// 200 with `application/health+json` and this `status` in the body.
    HealthReport(&'static str),
    /// A health report with `status` under this Content-Type, as raw bytes.
    HealthReportAs(&'static [u8], &'static str),
    /// Writes a plain HTTP answer as soon as it accepts, before reading: what
    /// a TLS client sees when it is pointed at a plain HTTP port.
    PlainAtOnce,
    /// The reply the test composed.
    Reply(Reply),
}

/// A composed answer: after `delay`, `status` with `headers` and `body`.
#[derive(Clone, PartialEq, Default)]
pub struct Reply {
    pub status: u16,
    /// Values as bytes: a header value need not be UTF-8.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Body,
    pub delay: Duration,
}

impl Reply {
    /// 200 with `body` as JSON.
    pub fn json(body: &str) -> Reply {
        Reply::typed("application/json", body)
    }

    /// 200 with `body` under this Content-Type.
    pub fn typed(content_type: &str, body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
            body: Body::Bytes(Arc::from(body.as_bytes())),
            delay: Duration::ZERO,
        }
    }

    /// 200 with this body, sent whole with its Content-Length.
    pub fn bytes(body: &[u8]) -> Reply {
        Reply { status: 200, body: Body::Bytes(Arc::from(body)), ..Reply::default() }
    }

    pub fn status(self, status: u16) -> Reply {
        Reply { status, ..self }
    }

    pub fn header(mut self, name: &str, value: &[u8]) -> Reply {
        self.headers.push((name.into(), value.to_vec()));
        self
    }

    pub fn delay(self, delay: Duration) -> Reply {
        Reply { delay, ..self }
    }
}

/// Hostile bodies print their size, never megabytes of bytes.
impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        write!(
            f,
            "Reply({}, headers {names:?}, {:?}, after {:?})",
            self.status, self.body, self.delay
        )
    }
}

/// A composed body.
#[derive(Clone, PartialEq)]
pub enum Body {
    /// These bytes, with their Content-Length.
    Bytes(Arc<[u8]>),
    /// This many bytes of filler with an honest Content-Length, written in
    /// 64 KiB pieces and never held whole.
    Sized(u64),
    /// Filler in 64 KiB chunks (chunked transfer coding, no length): this
    /// many bytes, or without end.
    Chunked(Option<u64>),
}

impl Default for Body {
    fn default() -> Body {
        Body::Bytes(Arc::from(&b""[..]))
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(bytes) => write!(f, "{} bytes", bytes.len()),
            Body::Sized(size) => write!(f, "{size} bytes with a length"),
            Body::Chunked(Some(size)) => write!(f, "{size} bytes chunked"),
            Body::Chunked(None) => write!(f, "an endless chunked body"),
        }
    }
}

/// Writes `reply` after the request head; stops at the first write error
/// (the client gave up on a body it would not read).
async fn write_reply(stream: &mut TcpStream, reply: Reply, head_only: bool) {
    tokio::time::sleep(reply.delay).await;
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status)).into_bytes();
    for (name, value) in &reply.headers {
        head.extend_from_slice(format!("{name}: ").as_bytes());
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    let length = match &reply.body {
        Body::Bytes(bytes) => Some(bytes.len() as u64),
        Body::Sized(size) => Some(*size),
        Body::Chunked(_) => None,
    };
    match length {
        Some(length) => head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    if stream.write_all(&head).await.is_err() || head_only {
        return;
    }
    const PIECE: usize = 64 * 1024;
    let filler = vec![b'x'; PIECE];
    match reply.body {
        Body::Bytes(bytes) => {
            let _ = stream.write_all(&bytes).await;
        }
        Body::Sized(mut left) => {
            while left > 0 {
                let piece = left.min(PIECE as u64) as usize;
                if stream.write_all(&filler[..piece]).await.is_err() {
                    return;
                }
                left -= piece as u64;
            }
        }
        Body::Chunked(size) => {
            let mut left = size.unwrap_or(u64::MAX);
            let mut chunk = format!("{PIECE:x}\r\n").into_bytes();
            chunk.extend_from_slice(&filler);
            chunk.extend_from_slice(b"\r\n");
            while left > 0 {
                let piece = left.min(PIECE as u64) as usize;
                let written = if piece == PIECE {
                    stream.write_all(&chunk).await
                } else {
                    let mut last = format!("{piece:x}\r\n").into_bytes();
                    last.extend_from_slice(&filler[..piece]);
                    last.extend_from_slice(b"\r\n");
                    stream.write_all(&last).await
                };
                if written.is_err() {
                    return;
                }
                left -= piece as u64;
            }
            let _ = stream.write_all(b"0\r\n\r\n").await;
        }
    }
    let _ = stream.shutdown().await;
}

/// What the upstream saw of one request.
#[derive(Debug, Clone, Default)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    /// Requests received since the behaviour was last set.
    since_set: AtomicUsize,
    /// Requests received in all.
    requests: AtomicUsize,
    last: Mutex<Option<SeenRequest>>,
}

/// A running upstream; dropping it closes the listener and every connection.
pub struct Upstream {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Binds 127.0.0.1 port 0 and serves on the current runtime.
    pub async fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding an upstream");
        let address = listener.local_addr().expect("the upstream's address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            since_set: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            last: Mutex::new(None),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Upstream { address, shared, task }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT/health`.
    pub fn url(&self) -> String {
        format!("http://{}/health", self.address)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT/health` (both must be URL-safe).
    pub fn url_with_userinfo(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}/health", self.address)
    }

    /// Changes how the next requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        let mut current = self.shared.behaviour.lock().unwrap();
        *current = behaviour;
        self.shared.since_set.store(0, Ordering::SeqCst);
    }

    /// Requests whose head was received, in all.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The last request received, if any.
    pub fn last_request(&self) -> Option<SeenRequest> {
        self.shared.last.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task and so closes the held sockets.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(answer(stream, shared.clone()));
                }
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    if *shared.behaviour.lock().unwrap() == Behaviour::PlainAtOnce {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n").await;
        let _ = stream.shutdown().await;
        return;
    }
    let Some(request) = read_head(&mut stream).await else {
        return;
    };
    let behaviour = shared.behaviour.lock().unwrap().clone();
    let nth = shared.since_set.fetch_add(1, Ordering::SeqCst);
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let head_only = request.method == "HEAD";
    let echo = format!("{} {}\n{:?}\n", request.method, request.path, request.headers);
    *shared.last.lock().unwrap() = Some(request);

    if let Behaviour::Reply(reply) = behaviour {
        write_reply(&mut stream, reply, head_only).await;
        return;
    }
    let (status, content_type, body) = match behaviour {
        Behaviour::Status(status) => (status, &b"text/plain"[..], echo),
        Behaviour::Slow(delay, status) => {
            tokio::time::sleep(delay).await;
            (status, &b"text/plain"[..], echo)
        }
        Behaviour::Never => {
            // Hold the socket open, reading whatever comes, until the peer
            // gives up or the upstream is dropped.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
            return;
        }
        Behaviour::Close | Behaviour::PlainAtOnce | Behaviour::Reply(_) => return,
        Behaviour::Alternate(first, second) => {
            (if nth.is_multiple_of(2) { first } else { second }, &b"text/plain"[..], echo)
        }
        Behaviour::HealthReport(status) => (200, &b"application/health+json"[..], report(status)),
        Behaviour::HealthReportAs(content_type, status) => (200, content_type, report(status)),
    };
    let mut response =
        format!("HTTP/1.1 {status} {}\r\ncontent-type: ", reason(status)).into_bytes();
    response.extend_from_slice(content_type);
    response.extend_from_slice(
        format!("\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes(),
    );
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// A health report body saying `status`.
fn report(status: &str) -> String {
    format!(r#"{{"status":"{status}","serviceId":"upstream"}}"#)
}

/// Reads up to the blank line that ends the head; `None` if the peer
/// closed first or the head is malformed.
async fn read_head(stream: &mut TcpStream) -> Option<SeenRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if buffer.len() > MAX_HEAD {
            return None;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Some(SeenRequest { method, path, headers })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// A TCP address whose connects never complete: a listener with a backlog of
/// 0 whose one queue slot is taken by a connection it never accepts, so the
/// kernel drops every further SYN and a connect hangs until the caller gives
/// up. (A listener that accepts is not enough for a TCP check: the kernel
/// completes the handshake before anyone calls accept.)
pub struct Unanswering {
    address: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl Unanswering {
    pub async fn start() -> Unanswering {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("binding 127.0.0.1:0");
        let listener = socket.listen(0).expect("listening");
        let address = listener.local_addr().expect("the listener's address");
        let filler = TcpStream::connect(address).await.expect("filling the accept queue");
        Unanswering { address, _listener: listener, _filler: filler }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// A 127.0.0.1 address where nothing listens: connects are refused.
pub async fn refused_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
    let address = listener.local_addr().expect("the listener's address");
    drop(listener);
    address
}

/// A listener that accepts every connection, counts it, reads whatever
/// comes and never writes a byte: a broker or server that hangs after the
/// TCP handshake. Connections stay open until it is dropped.
pub struct Silent {
    address: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let address = listener.local_addr().expect("the listener's address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            // Owned here, so aborting the accept loop closes every connection.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((mut stream, _)) = listener.accept() => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        connections.spawn(async move {
                            let mut sink = [0u8; 1024];
                            while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Silent { address, accepted, task }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that greets each connection with `greeting` (a banner, as
/// SSH and SMTP servers send); with an `exchange` (request, reply), it
/// answers the reply once what it received ends with the request, and
/// then closes, as an SMTP server does after `QUIT`. It keeps what it
/// received, so a test can see the bytes a check sent.
pub struct Banner {
    address: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Banner {
    pub async fn start(
        greeting: &'static [u8],
        exchange: Option<(&'static [u8], &'static [u8])>,
    ) -> Banner {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let address = listener.local_addr().expect("the listener's address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        connections.spawn(converse(stream, greeting, exchange, log.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Banner { address, received, task }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every byte received so far, from every connection.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }
}

async fn converse(
    mut stream: TcpStream,
    greeting: &'static [u8],
    exchange: Option<(&'static [u8], &'static [u8])>,
    log: Arc<Mutex<Vec<u8>>>,
) {
    if stream.write_all(greeting).await.is_err() {
        return;
    }
    let mut this_connection = Vec::new();
    let mut chunk = [0u8; 1024];
    while let Ok(read) = stream.read(&mut chunk).await {
        if read == 0 {
            return;
        }
        log.lock().unwrap().extend_from_slice(&chunk[..read]);
        this_connection.extend_from_slice(&chunk[..read]);
        if let Some((request, reply)) = exchange {
            if this_connection.ends_with(request) {
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

impl Drop for Banner {
    fn drop(&mut self) {
        self.task.abort();
    }
}
