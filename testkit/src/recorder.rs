//! A small HTTP/1.1 server on a free port of 127.0.0.1 that records every
//! request (method, path, headers, body) and answers each with a status
//! the test chooses, or hangs: what a receiver's test posts to in place of
//! Slack, PagerDuty or an Alertmanager's webhook target.
//!
//! It reads `Content-Length` and chunked bodies and keeps connections
//! alive, which is all that reqwest and Go's `net/http` send. A test waits
//! for what it expects with [`Recorder::wait_for`], which polls until
//! enough requests have arrived or a deadline passes; it never sleeps and
//! then looks. Dropping the recorder closes the listener and every
//! connection, hanging ones included.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::process::lock;

/// The largest request the recorder reads (headers and body).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// How the recorder answers the requests that arrive from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status with an empty body.
    Status(u16),
    /// This status with this body (`Content-Type: application/json`).
    Body(u16, String),
    /// Read the request, record it, and never answer (the connection stays
    /// open until the recorder is dropped).
    Hang,
}

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// Header names in lowercase, in the order they came.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The status it was answered with; `None` for one left hanging.
    pub answered: Option<u16>,
}

impl Recorded {
    /// The first header of this name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(have, _)| *have == name).map(|(_, value)| value.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A recording HTTP server; see the module docs.
pub struct Recorder {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    reply: Mutex<Reply>,
    arrived: Notify,
}

impl Recorder {
    /// Listens on a free port of 127.0.0.1 and answers 200 until told
    /// otherwise. Must run inside a tokio runtime.
    pub async fn start() -> Recorder {
        Recorder::answering(Reply::Status(200)).await
    }

    /// Listens on a free port of 127.0.0.1 and answers `reply`.
    pub async fn answering(reply: Reply) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let address = listener.local_addr().expect("the recorder's address");
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            reply: Mutex::new(reply),
            arrived: Notify::new(),
        });
        let task = tokio::spawn(accept_forever(listener, shared.clone()));
        Recorder { address, shared, task }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Answers the requests that arrive from now on with `reply`.
    pub fn reply(&self, reply: Reply) {
        *lock(&self.shared.reply) = reply;
    }

    /// The requests recorded so far, in the order they were read.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `count` requests have arrived and returns them
    /// all; panics, listing what did arrive, if `deadline` passes first.
    pub async fn wait_for(&self, count: usize, deadline: Duration) -> Vec<Recorded> {
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            // Registered before looking, so an arrival in between wakes us.
            let arrived = self.shared.arrived.notified();
            let requests = self.requests();
            if requests.len() >= count {
                return requests;
            }
            // A short poll as well, should a wake-up be missed.
            let wake = tokio::time::Instant::now() + Duration::from_millis(100);
            if tokio::time::timeout_at(wake.min(give_up), arrived).await.is_err()
                && tokio::time::Instant::now() >= give_up
            {
                let requests = self.requests();
                if requests.len() >= count {
                    return requests;
                }
                panic!(
                    "the recorder on {} got {} of {count} requests within {deadline:?}: {:#?}",
                    self.address,
                    requests.len(),
                    requests
                        .iter()
                        .map(|r| format!("{} {} {}", r.method, r.path, r.text()))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

impl Drop for Recorder {
    /// Ends the listener and, with its `JoinSet`, every connection.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_forever(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped (with every connection task in it) when this task is aborted.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, shared.clone()));
                }
                Err(error) => eprintln!("recorder: accept failed: {error}"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves one connection's requests, one after the other, until the
/// client closes it or sends something that is not HTTP/1.1.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buffer = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buffer).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                eprintln!("recorder: unreadable request: {error}");
                return;
            }
        };
        let reply = lock(&shared.reply).clone();
        let close =
            request.header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"));
        let mut request = request;
        request.answered = match &reply {
            Reply::Status(status) | Reply::Body(status, _) => Some(*status),
            Reply::Hang => None,
        };
        lock(&shared.requests).push(request);
        shared.arrived.notify_waiters();
        let (status, body) = match reply {
            Reply::Status(status) => (status, String::new()),
            Reply::Body(status, body) => (status, body),
            Reply::Hang => {
                // Holds the connection open, unanswered, until dropped.
                std::future::pending::<()>().await;
                return;
            }
        };
        let mut answer =
            format!("HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n", reason(status), body.len());
        if !body.is_empty() {
            answer.push_str("content-type: application/json\r\n");
        }
        if close {
            answer.push_str("connection: close\r\n");
        }
        answer.push_str("\r\n");
        answer.push_str(&body);
        if stream.write_all(answer.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request from `stream`; `buffer` keeps what was read past it
/// (a pipelined next request). `None` when the client closed the
/// connection between requests.
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Option<Recorded>, String> {
    let head_end = loop {
        if let Some(at) = find(buffer, b"\r\n\r\n") {
            break at;
        }
        if !fill(stream, buffer).await? {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err("the connection closed within the headers".into())
            };
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(path)) = (request_line.next(), request_line.next()) else {
        return Err(format!("not a request line: {head:?}"));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let mut request = Recorded {
        method: method.into(),
        path: path.into(),
        headers,
        body: Vec::new(),
        answered: None,
    };
    if request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.map_err(|e| e.to_string())?;
    }
    if request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        request.body = read_chunked(stream, buffer).await?;
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length.parse().map_err(|_| format!("content-length {length:?}"))?;
        if length > MAX_REQUEST {
            return Err(format!("a body of {length} bytes"));
        }
        while buffer.len() < length {
            if !fill(stream, buffer).await? {
                return Err("the connection closed within the body".into());
            }
        }
        request.body = buffer.drain(..length).collect();
    }
    Ok(Some(request))
}

async fn read_chunked(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = find(buffer, b"\r\n") {
                break at;
            }
            if !fill(stream, buffer).await? {
                return Err("the connection closed within a chunk".into());
            }
        };
        let line = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        buffer.drain(..line_end + 2);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).map_err(|_| format!("a chunk size of {size:?}"))?;
        if body.len() + size > MAX_REQUEST {
            return Err("a chunked body over the limit".into());
        }
        // The chunk and its CRLF; the last (empty) chunk's trailers end
        // with an empty line.
        if size == 0 {
            loop {
                if let Some(at) = find(buffer, b"\r\n") {
                    let empty = at == 0;
                    buffer.drain(..at + 2);
                    if empty {
                        return Ok(body);
                    }
                } else if !fill(stream, buffer).await? {
                    return Err("the connection closed within the trailers".into());
                }
            }
        }
        while buffer.len() < size + 2 {
            if !fill(stream, buffer).await? {
                return Err("the connection closed within a chunk".into());
            }
        }
        body.extend(buffer.drain(..size));
        buffer.drain(..2);
    }
}

/// Reads more into `buffer`; false at end of stream.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<bool, String> {
    if buffer.len() > MAX_REQUEST {
        return Err("a request over the limit".into());
    }
    let mut chunk = [0u8; 8192];
    let read = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
    buffer.extend_from_slice(&chunk[..read]);
    Ok(read > 0)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw HTTP/1.1 exchange: what was answered, up to the end of the headers.
    async fn exchange(port: u16, request: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while find(&answer, b"\r\n\r\n").is_none() {
            let read = stream.read(&mut chunk).await.unwrap();
            assert!(read > 0, "closed before answering");
            answer.extend_from_slice(&chunk[..read]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn records_a_chunked_post_and_answers_the_status_it_is_told() {
        // Arrange
        let recorder = Recorder::answering(Reply::Status(503)).await;

        // Act
        let answer = exchange(
            recorder.port(),
            "POST /hook?x=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
             X-Thing: Yes\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;

        // Assert
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        let requests = recorder.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/hook?x=1");
        assert_eq!(requests[0].header("x-thing"), Some("Yes"));
        assert_eq!(requests[0].body, b"abcde");
    }
}
