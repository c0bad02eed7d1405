//! Bad input against the real server: unknown paths, wrong methods, bodies,
//! oversized header fields, malformed query strings, and junk that must not
//! panic it, each answered in the contract's shape.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::app::{raw_request, spawn_app, spawn_binary, RawAnswer, TestApp, CONTRACT};

const CONFIG: &str = r#"
[server]
workers = 1
[access]
details = "always"
[[checks]]
name = "disk"
kind = "disk"
path = "/"
"#;

/// `GET <target>` on a raw connection, with exactly these header fields
/// after `Host` and `Connection: close`.
fn raw_get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

async fn raw(app: &TestApp, bytes: &[u8]) -> RawAnswer {
    raw_request(app.address, bytes).await.expect("an answer")
}

fn assert_problem(answer: &RawAnswer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {answer:?}");
    assert_eq!(answer.header("content-type"), Some("application/problem+json"), "{what}");
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let app = spawn_app(CONFIG).await;
    for path in [
        "/",
        "/healthz",
        "/health/",
        "/HEALTH",
        "//health",
        "/health/live/more",
        "/health/checks/",
        "/health/checks/disk/more",
        "/health/checks/nope",
        "/health/checks/%ff%fe",
        "/health/checks/%c0%af",
        "/health/checks/%00",
        "/health/checks/..%2f..%2fetc%2fpasswd",
        "/health%2flive",
        "/%ff",
        "/metrics/",
        "/openapi.yml",
        "/swagger-ui/no-such-file.js",
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}: {}", answer.text);
        assert_eq!(answer.content_type(), "application/problem+json", "{path}");
        assert_eq!(answer.json["instance"], path, "{path}");
        let head = app.request(Method::HEAD, path, None).await;
        assert_eq!(head.status, StatusCode::NOT_FOUND, "HEAD {path}");
    }
    // Dot segments a client library would have removed, sent as they are.
    for target in ["/health/../metrics", "/health/live/..", "/./health/live/x"] {
        assert_problem(&raw(&app, &raw_get(target, "")).await, 404, target);
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow_on_every_path_of_the_contract() {
    let app = spawn_app(CONFIG).await;
    let mut paths: Vec<String> = CONTRACT["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|path| path.replace("{name}", "disk").replace("{exitStatus}", "3"))
        .collect();
    paths.push("/swagger-ui".into());
    paths.push("/health/checks/nope".into());
    for path in &paths {
        // A heartbeat's pings take POST too.
        let takes_post = path.contains("/ping");
        let allow = if takes_post { "GET, HEAD, POST" } else { "GET, HEAD" };
        for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE"] {
            if takes_post && method == "POST" {
                continue;
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let answer = app.request(method.clone(), path, None).await;
            assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(answer.headers["allow"], allow, "{method} {path}");
            assert_eq!(answer.content_type(), "application/problem+json", "{method} {path}");
            assert_eq!(answer.json["instance"], path.as_str());
        }
        // A body does not change why a POST fails.
        if !takes_post {
            let post = app.send(app.client.post(app.url(path)).body("{\"a\":1}")).await;
            assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED, "POST {path} with a body");
        }
    }
    // A path that does not exist is 404 whatever the method.
    let answer = app.request(Method::DELETE, "/nowhere", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_bodies_are_refused_with_a_400_problem() {
    let app = spawn_app(CONFIG).await;
    for path in ["/health/live", "/health", "/metrics"] {
        let answer = app.send(app.client.get(app.url(path)).body("hello")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(answer.content_type(), "application/problem+json");
        assert_eq!(answer.json["detail"], "requests to healthd carry no body");
        let head = app.send(app.client.head(app.url(path)).body("hello")).await;
        assert_eq!(head.status, StatusCode::BAD_REQUEST, "HEAD {path}");
    }
    let chunked = raw_get("/health/live", "Transfer-Encoding: chunked\r\n");
    let mut chunked = chunked;
    chunked.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
    assert_problem(&raw(&app, &chunked).await, 400, "a chunked body");
    // An empty body is no body.
    let empty = raw(&app, &raw_get("/health/live", "Content-Length: 0\r\n")).await;
    assert_eq!(empty.status, 200);
}

#[tokio::test]
async fn oversized_header_fields_are_431_problems() {
    let app = spawn_app(CONFIG).await;
    let fields = |count: usize| -> String {
        (0..count).map(|index| format!("X-Pad-{index}: v\r\n")).collect()
    };
    // Host and Connection are two fields: 62 more is the limit of 64.
    assert_eq!(raw(&app, &raw_get("/health/live", &fields(62))).await.status, 200);
    let answer = raw(&app, &raw_get("/health/live", &fields(63))).await;
    assert_problem(&answer, 431, "65 fields");
    assert!(answer.json()["detail"].as_str().unwrap().contains("at most 64 fields"));

    // Names and values: "Host" "x" "Connection" "close" are 20 bytes; "X-Big" 5 more.
    let value = |length: usize| format!("X-Big: {}\r\n", "v".repeat(length));
    let limit = 16 * 1024 - 20 - 5;
    assert_eq!(raw(&app, &raw_get("/health/live", &value(limit))).await.status, 200);
    assert_problem(
        &raw(&app, &raw_get("/health/live", &value(limit + 1))).await,
        431,
        "16 KiB + 1",
    );
    let token = format!("Authorization: Bearer {}\r\n", "t".repeat(20_000));
    assert_problem(&raw(&app, &raw_get("/health", &token)).await, 431, "a 20 KB token");

    // The HEAD answer has the status and no body.
    let head =
        format!("HEAD /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n", fields(70));
    let answer = raw(&app, head.as_bytes()).await;
    assert_eq!(answer.status, 431);
    assert!(answer.body.is_empty());

    // Past the HTTP parser's own limits (96 fields, 128 KiB), actix-web
    // answers 431 itself, with no body (documented in openapi.yaml).
    let answer = raw(&app, &raw_get("/health/live", &fields(100))).await;
    assert_eq!(answer.status, 431);
    assert!(answer.body.is_empty(), "{answer:?}");
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK, "still serving");
}

#[tokio::test]
async fn malformed_query_strings_are_400_problems_and_well_formed_ones_are_ignored() {
    let app = spawn_app(CONFIG).await;
    for path in [
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/health/checks/disk",
        "/openapi.json",
    ] {
        for query in ["%zz", "a=%", "a=%f", "a=%ff", "a=%C3", "a=%C3%28", "a=%E2%82", "%%"] {
            let target = format!("{path}?{query}");
            let answer = app.get(&target).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{target}");
            assert_eq!(answer.json["detail"], "the query string is malformed", "{target}");
            assert_eq!(answer.json["instance"], path, "the query string is not echoed");
            let head = app.request(Method::HEAD, &target, None).await;
            assert_eq!(head.status, StatusCode::BAD_REQUEST, "HEAD {target}");
        }
        for query in ["", "a=b&c", "name=%C3%A9", "x=1&x=2", "a=%00", "q=%2F%3F%26"] {
            let target = format!("{path}?{query}");
            let answer = app.get(&target).await;
            assert!(answer.status.is_success(), "{target}: {}", answer.status);
        }
    }
}

/// How the server must answer a piece of junk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// healthd's own answer: this status, in problem+json.
    Problem(u16),
    /// A report: this status, in health+json.
    Report(u16),
    /// actix-web's HTTP parser refuses it before healthd sees it: this
    /// status, no body (documented in openapi.yaml).
    Parser(u16),
}

/// Requests that no client library would send, and how each is answered.
fn junk() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::{Parser, Problem, Report};
    let header_block = |count: usize| -> String {
        (0..count).map(|index| format!("X-Junk-{index}: {}\r\n", "j".repeat(40))).collect()
    };
    vec![
        ("no Host, HTTP/1.0", b"GET /health/live HTTP/1.0\r\n\r\n".to_vec(), Report(200)),
        ("absolute form", raw_get("http://elsewhere.example/health/live", ""), Report(200)),
        ("asterisk form", raw_get("*", ""), Problem(404)),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            Problem(404),
        ),
        (
            "CONNECT",
            b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_vec(),
            Problem(404),
        ),
        ("not HTTP", b"HELLO THERE\r\n\r\n".to_vec(), Parser(400)),
        ("binary", vec![0, 1, 2, 3, 255, 254, b'\r', b'\n', b'\r', b'\n'], Parser(400)),
        (
            "an unknown version",
            b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            Parser(400),
        ),
        (
            "raw bytes in the path",
            b"GET /health/checks/\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                .to_vec(),
            Parser(400),
        ),
        (
            "a NUL in the path",
            b"GET /health\x00/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            Parser(400),
        ),
        ("escapes that are not UTF-8", raw_get("/health/checks/%ff%fe%fd%c0%80", ""), Problem(404)),
        ("an escaped NUL", raw_get("/health/checks/disk%00", ""), Problem(404)),
        ("a 60 KB path", raw_get(&format!("/{}", "a".repeat(60_000)), ""), Problem(404)),
        // The `http` crate refuses a URI of 64 KiB or more.
        ("a 70 KB path", raw_get(&format!("/{}", "a".repeat(70_000)), ""), Parser(400)),
        (
            "a 60 KB check name",
            raw_get(&format!("/health/checks/{}", "%41".repeat(20_000)), ""),
            Problem(404),
        ),
        (
            "a 60 KB query",
            raw_get(&format!("/health/live?{}", "q=%41&".repeat(10_000)), ""),
            Report(200),
        ),
        ("a header without a colon", raw_get("/health/live", "Not a header\r\n"), Parser(400)),
        ("a header name with spaces", raw_get("/health/live", "Bad Name: x\r\n"), Parser(400)),
        (
            "a header value with raw bytes",
            {
                let mut bytes = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\xfe\r\nX-Forwarded-For: \xff, 10.0.0.1\r\n".to_vec();
                bytes.extend_from_slice(b"Forwarded: for=\"\xff\";;;,,for=[::1\r\n\r\n");
                bytes
            },
            Problem(401),
        ),
        (
            "a negative Content-Length",
            raw_get("/health/live", "Content-Length: -1\r\n"),
            Parser(400),
        ),
        (
            "a huge Content-Length",
            raw_get("/health/live", "Content-Length: 99999999999999999999999\r\n"),
            Parser(400),
        ),
        (
            "two Content-Lengths",
            raw_get("/health/live", "Content-Length: 1\r\nContent-Length: 2\r\n"),
            Parser(400),
        ),
        (
            "Content-Length and chunked",
            raw_get("/health/live", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
            Parser(400),
        ),
        (
            "a chunked body that never ends",
            {
                let mut bytes = raw_get("/health/live", "Transfer-Encoding: chunked\r\n");
                bytes.extend_from_slice(b"ffffffffffffffff\r\nabc");
                bytes
            },
            Problem(400),
        ),
        (
            "forwarded junk",
            raw_get(
                "/health",
                &format!(
                    "X-Forwarded-For: {}\r\nForwarded: {}\r\n",
                    ",".repeat(8000),
                    "for=\"[".repeat(1000)
                ),
            ),
            Report(200),
        ),
        (
            "many forwarded hops",
            raw_get("/health", &format!("X-Forwarded-For: {}\r\n", "10.0.0.1, ".repeat(1400))),
            Report(200),
        ),
        ("70 header fields", raw_get("/health/live", &header_block(70)), Problem(431)),
        (
            "a 16 KB cookie",
            raw_get("/health/live", &format!("Cookie: {}\r\n", "c=1; ".repeat(3300))),
            Problem(431),
        ),
        ("100 header fields", raw_get("/health/live", &header_block(100)), Parser(431)),
    ]
}

#[tokio::test]
async fn junk_never_panics_the_server_and_is_answered_below_500() {
    // Arrange: the binary, so that a panic anywhere shows on its stderr; the
    // peer is a trusted proxy, so the forwarded headers are parsed too.
    let config =
        format!("{CONFIG}\n[[access.tokens]]\nname = \"t\"\nsha256 = \"{}\"\n", "ab".repeat(32))
            .replace("[access]\n", "[access]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let mut binary = spawn_binary(&config, &[], &[("HEALTHD_LISTEN", "127.0.0.1:0")]).await;

    // Act + Assert
    for (what, bytes, expect) in junk() {
        let answer = raw_request(binary.address(), &bytes)
            .await
            .unwrap_or_else(|error| panic!("{what}: no answer: {error}"));
        let content_type = answer.header("content-type");
        let shape = match content_type {
            Some("application/problem+json") => Expect::Problem(answer.status),
            Some("application/health+json") => Expect::Report(answer.status),
            None if answer.body.is_empty() => Expect::Parser(answer.status),
            _ => panic!("{what}: unexpected answer {answer:?}"),
        };
        assert_eq!(shape, expect, "{what}");
    }
    let beyond_the_parser = raw_get("/health/live", &format!("X-Big: {}\r\n", "b".repeat(200_000)));
    match raw_request(binary.address(), &beyond_the_parser).await {
        // The server stops reading at 128 KiB and may reset the connection
        // before the client reads the 431.
        Ok(answer) => assert_eq!(answer.status, 431),
        Err(error) => assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "{error}"
        ),
    }

    // 51 pipelined requests on one connection: 51 answers, the last closes it.
    let mut pipelined = Vec::new();
    for _ in 0..50 {
        pipelined.extend_from_slice(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    pipelined.extend_from_slice(&raw_get("/health/ready", ""));
    let mut stream = tokio::net::TcpStream::connect(binary.address()).await.unwrap();
    stream.write_all(&pipelined).await.unwrap();
    let mut answers = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answers))
        .await
        .expect("the last answer closes the connection")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&answers).matches("HTTP/1.1 200 OK").count(), 51);

    // Still serving, nothing panicked, and a 60 KB path made no 60 KB log line.
    let live = raw_request(binary.address(), &raw_get("/health/live", "")).await.unwrap();
    assert_eq!(live.status, 200);
    binary.wait_for_line(Duration::from_secs(5), |line| line.contains("path=\"/aaaa")).await;
    // Stopped and read to the end, so that a panic anywhere is in the output.
    binary.signal(libc::SIGTERM);
    assert!(binary.wait_for_exit(Duration::from_secs(20)).await.success());
    let stderr = binary.stderr();
    assert!(!stderr.contains("panicked"), "healthd panicked:\n{stderr}");
    let longest = binary.stdout().lines().map(str::len).max().unwrap_or_default();
    assert!(longest < 2_000, "a log line of {longest} bytes");
}
