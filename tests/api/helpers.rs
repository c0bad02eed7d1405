//! Test support: the real server on port 0 from a config text, requests
//! whose bodies are validated against openapi.yaml, log capture, waiting
//! with a deadline.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use healthd::config::Settings;
use healthd::startup::{Application, DrainHandle};
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
    pub client: reqwest::Client,
    drain: DrainHandle,
}

/// Starts healthd from `config` (TOML), on 127.0.0.1 port 0.
pub async fn spawn_app(config: &str) -> TestApp {
    spawn_app_with_env(config, BTreeMap::new()).await
}

/// As `spawn_app`, with environment variables the config may name.
pub async fn spawn_app_with_env(config: &str, env: BTreeMap<String, String>) -> TestApp {
    LazyLock::force(&TRACING);
    let mut env = env;
    env.insert("HEALTHD_LISTEN".into(), "127.0.0.1:0".into());
    let settings =
        Settings::parse(config, "test.toml", &env).unwrap_or_else(|error| panic!("{error}"));
    let application = Application::build(settings).await.expect("the application starts");
    let port = application.port();
    let drain = application.drain_handle();
    tokio::spawn(application.run_until_stopped());
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        drain,
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
