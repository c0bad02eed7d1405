//! Test support: the real server on port 0 from a config text, requests
//! whose bodies are validated against openapi.yaml, log capture, waiting
//! with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use healthd::service::{DrainHandle, Service};
use healthd::Settings;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

/// Everything logged by any test in this binary; `TEST_LOG=1` also prints it.
static LOGS: LazyLock<Mutex<Vec<u8>>> = LazyLock::new(|| Mutex::new(Vec::new()));

static TRACING: LazyLock<()> = LazyLock::new(|| {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(|| CaptureWriter)
        .finish();
    let _ = tracing::subscriber::set_global_default(subscriber);
});

struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if std::env::var_os("TEST_LOG").is_some() {
            std::io::stderr().write_all(bytes)?;
        }
        LOGS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// All log lines written so far, by every test.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
        .into_owned()
}

/// The contract as JSON, from the generated crate.
pub static CONTRACT: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(healthd_models::OPENAPI_JSON).expect("openapi.json parses")
});

static VALIDATORS: LazyLock<Mutex<HashMap<String, &'static jsonschema::Validator>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Validates `body` against `components.schemas.<schema>` of openapi.yaml.
pub fn assert_matches_schema(body: &Value, schema: &str) {
    let validator = *VALIDATORS.lock().unwrap().entry(schema.to_string()).or_insert_with(|| {
        let mut root = CONTRACT.clone();
        root["$ref"] = Value::String(format!("#/components/schemas/{schema}"));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|error| panic!("schema {schema} does not compile: {error}"));
        Box::leak(Box::new(validator))
    });
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "body does not match schema {schema}: {errors:?}\n{body:#}");
}

/// A response, its body checked against the contract by content type.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Answer {
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default()
    }

    /// The reading of `component:measurement`, if the body has it.
    pub fn check(&self, key: &str) -> Option<&Value> {
        self.json.get("checks")?.get(key)?.get(0)
    }
}

pub struct TestApp {
    pub base: String,
    pub port: u16,
    /// Where the server listens (its IP and port).
    pub address: SocketAddr,
    pub client: reqwest::Client,
    drain: DrainHandle,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts healthd from `config` (TOML), on 127.0.0.1 port 0.
pub async fn spawn_app(config: &str) -> TestApp {
    spawn_app_with_env(config, BTreeMap::new()).await
}

/// As `spawn_app`, with environment variables the config may name.
pub async fn spawn_app_with_env(config: &str, env: BTreeMap<String, String>) -> TestApp {
    spawn_app_at("127.0.0.1:0", config, env).await
}

/// As `spawn_app_with_env`, listening on `listen` (such as `"[::1]:0"`).
pub async fn spawn_app_at(listen: &str, config: &str, env: BTreeMap<String, String>) -> TestApp {
    LazyLock::force(&TRACING);
    let mut env = env;
    env.insert("HEALTHD_LISTEN".into(), listen.into());
    let settings =
        Settings::parse(config, "test.toml", &env).unwrap_or_else(|error| panic!("{error}"));
    let ip = settings.listen().ip();
    let application = Service::build(settings).await.expect("the application starts");
    let port = application.port();
    let drain = application.drain_handle();
    let running = tokio::spawn(application.run_until_stopped());
    let address = SocketAddr::new(ip, port);
    TestApp {
        base: format!("http://{address}"),
        port,
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        drain,
        running,
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Answer {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> Answer {
        self.request(reqwest::Method::GET, path, Some(token)).await
    }

    /// Sends a request and validates its body against the contract.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> Answer {
        let is_head = method == reqwest::Method::HEAD;
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("healthd answers");
        answer(response, is_head).await
    }

    /// Polls `path` until `done` holds, failing after `deadline`.
    pub async fn wait_for(
        &self,
        path: &str,
        token: Option<&str>,
        deadline: Duration,
        done: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let started = Instant::now();
        loop {
            let answer = self.request(reqwest::Method::GET, path, token).await;
            if done(&answer) {
                return answer;
            }
            assert!(
                started.elapsed() < deadline,
                "no wanted answer from {path} within {deadline:?}; last: {answer:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the drain sequence, as SIGTERM does.
    pub fn drain(&self) -> tokio::task::JoinHandle<()> {
        let drain = self.drain.clone();
        tokio::spawn(async move { drain.drain().await })
    }

    /// Whether `run_until_stopped` has returned: the server and the checks stopped.
    pub fn is_stopped(&self) -> bool {
        self.running.is_finished()
    }

    /// Sends a request built on any client (another source address, odd
    /// headers) and validates its body against the contract.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        send(request).await
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Sends a request built on any client and validates its body against the contract.
pub async fn send(request: reqwest::RequestBuilder) -> Answer {
    let (client, request) = request.build_split();
    let request = request.expect("a valid request");
    let is_head = request.method() == reqwest::Method::HEAD;
    answer(client.execute(request).await.expect("healthd answers"), is_head).await
}

/// A reqwest client whose connections come from `local` (any 127.0.0.0/8
/// address reaches a server on 127.0.0.1 through the loopback interface).
pub fn client_from(local: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// An answer read off a raw socket: the status line and headers as sent,
/// and the body.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Writes `bytes` to a new connection and reads one answer. Write errors
/// are ignored: the server may answer and close before reading it all.
pub async fn raw_request(address: SocketAddr, bytes: &[u8]) -> std::io::Result<RawAnswer> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let _ = stream.write_all(bytes).await;
    read_answer(&mut stream, bytes.starts_with(b"HEAD ")).await
}

/// Reads one HTTP/1.1 answer (status line, headers, and a body of
/// `content-length` bytes, or up to the end of the stream without one;
/// none to a HEAD); a problem+json body is validated against the contract.
pub async fn read_answer(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    is_head: bool,
) -> std::io::Result<RawAnswer> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end;
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("closed before a whole head: {:?}", String::from_utf8_lossy(&buffer)),
                ));
            }
            buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let mut body = buffer[head_end + 4..].to_vec();
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .and_then(|(_, value)| value.parse::<usize>().ok())
            .map(|length| if is_head { 0 } else { length });
        loop {
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..read]);
        }
        Ok(RawAnswer { status, headers, body })
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))??;
    if is_head {
        assert!(answer.body.is_empty(), "HEAD answered with a body: {answer:?}");
    } else if answer
        .header("content-type")
        .is_some_and(|kind| kind.starts_with("application/problem+json"))
    {
        let json: Value = serde_json::from_slice(&answer.body).expect("problem+json parses");
        assert_matches_schema(&json, "Problem");
        assert_eq!(json["status"], answer.status, "problem status matches the HTTP status");
    }
    Ok(answer)
}

/// The healthd binary, run as a child process from a config file, its
/// stdout and stderr collected as they come.
pub struct RunningBinary {
    pub child: std::process::Child,
    pub port: u16,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr; they end when the pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
    config: Option<PathBuf>,
}

/// Runs `healthd --config <config> <args>` with only `env` set of healthd's
/// variables, and waits for it to log the port it serves on.
pub async fn spawn_binary(config: &str, args: &[&str], env: &[(&str, &str)]) -> RunningBinary {
    spawn_binary_limited(config, args, env, None).await
}

/// As `spawn_binary`, with the child's limit of open files (RLIMIT_NOFILE,
/// soft and hard) set to `open_files` before it starts, as
/// `prlimit --nofile=N:N` would.
pub async fn spawn_binary_limited(
    config: &str,
    args: &[&str],
    env: &[(&str, &str)],
    open_files: Option<u64>,
) -> RunningBinary {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "healthd-binary-{}-{}.toml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, config).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_healthd"));
    command
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("HEALTHD_CONFIG")
        .env_remove("HEALTHD_LISTEN")
        .env_remove("HEALTHD_LOG_FORMAT")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    if let Some(open_files) = open_files {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit { rlim_cur: open_files, rlim_max: open_files };
        // SAFETY: setrlimit(2) is async-signal-safe and touches only the
        // struct, copied into the closure; the child is between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut binary = RunningBinary::start(command, Some(path));
    let line = binary
        .wait_for_line(Duration::from_secs(20), |line| line.contains("healthd is serving"))
        .await;
    // `port=N` in text, `"port":N` in JSON.
    let digits = line
        .split("port")
        .nth(1)
        .map(|rest| rest.trim_start_matches(['=', '"', ':']))
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
        .unwrap_or_default();
    binary.port = digits.parse().unwrap_or_else(|_| panic!("no port in {line:?}"));
    binary
}

/// Starts tracing into the captured logs, as `spawn_app` does.
pub fn init_tracing() {
    LazyLock::force(&TRACING);
}

impl RunningBinary {
    /// Spawns `command` with piped stdout and stderr collected as they come;
    /// `config` is a file to delete when it is dropped. `port` is 0 until
    /// the caller reads it off the output.
    pub fn start(mut command: std::process::Command, config: Option<PathBuf>) -> RunningBinary {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("{:?} starts: {error}", command.get_program()));
        let collect = |mut source: Box<dyn std::io::Read + Send>| {
            let sink = Arc::new(Mutex::new(String::new()));
            let writer = sink.clone();
            let reader = std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(read) = source.read(&mut chunk) {
                    if read == 0 {
                        break;
                    }
                    writer.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..read]));
                }
            });
            (sink, reader)
        };
        let (stdout, stdout_reader) = collect(Box::new(child.stdout.take().unwrap()));
        let (stderr, stderr_reader) = collect(Box::new(child.stderr.take().unwrap()));
        let readers = vec![stdout_reader, stderr_reader];
        RunningBinary { child, port: 0, stdout, stderr, readers, config }
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// GET `path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.base())).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        serde_json::from_str(&response.text().await.unwrap()).unwrap()
    }

    /// `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base())).await.unwrap().text().await.unwrap()
    }

    /// The first stdout line `wanted` accepts, waiting up to `deadline`.
    pub async fn wait_for_line(
        &mut self,
        deadline: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let started = Instant::now();
        loop {
            // Once the process has exited, all it wrote is read before looking.
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() {
                self.finish_reading();
            }
            if let Some(line) = self.stdout().lines().find(|line| wanted(line)) {
                return line.to_string();
            }
            if let Some(status) = exited {
                panic!(
                    "healthd exited ({status}) before the wanted line\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                started.elapsed() < deadline,
                "no wanted line within {deadline:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until everything the process wrote has been read: the pipes
    /// close when it exits.
    fn finish_reading(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The config file the process was started with.
    pub fn config_path(&self) -> &std::path::Path {
        self.config.as_deref().expect("started with a config file")
    }

    /// Replaces the config file's text, for a reload (SIGHUP) to read.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// The process's resident set size (`VmRSS` of /proc/PID/status), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process's /proc status");
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc status:\n{status}"));
        kib * 1024
    }

    /// Sends `signal` (such as `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill failed");
    }

    /// Waits for the process to exit, failing after `deadline`; its
    /// output is then read to the end.
    pub async fn wait_for_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.finish_reading();
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "healthd did not exit within {deadline:?}\nstdout:\n{}",
                self.stdout()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(config) = &self.config {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// Reads a response and checks its body against the schema its content
/// type implies; a HEAD answer must have no body at all.
pub async fn answer(response: reqwest::Response, is_head: bool) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a readable body");
    let content_type = headers
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let json = if is_head {
        assert!(text.is_empty(), "HEAD answered with a body: {text}");
        Value::Null
    } else if content_type.starts_with("application/health+json") {
        let json: Value = serde_json::from_str(&text).expect("health+json parses");
        assert_matches_schema(&json, "HealthReport");
        serde_json::from_value::<healthd_models::HealthReport>(json.clone())
            .expect("deserialises into HealthReport");
        json
    } else if content_type.starts_with("application/problem+json") {
        let json: Value = serde_json::from_str(&text).expect("problem+json parses");
        assert_matches_schema(&json, "Problem");
        assert_eq!(json["status"], status.as_u16(), "problem status matches the HTTP status");
        json
    } else if content_type.starts_with("application/json") {
        serde_json::from_str(&text).expect("json parses")
    } else {
        Value::Null
    };
    Answer { status, headers, text, json }
}

/// A sample of `/metrics`: the value of the line `series` (name and labels
/// exactly as written), if there is one.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
