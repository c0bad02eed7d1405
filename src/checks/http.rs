//! `kind = "http"`: a GET or HEAD with reqwest, one client per check; over
//! TLS it also reports the leaf certificate's `daysRemaining`. What comes
//! back is judged by the status code (`expect_status`), an upstream
//! `application/health+json` report, and the check's conditions
//! (`checks::util::conditions`); the body is read only when one of them
//! needs it, up to `max_body`, chunk by chunk, so that a huge or endless
//! body costs no more memory than the cap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use healthd_models::{ComponentType, HealthStatus};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, Client, Method, Url};
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::base::units::SizeText;
use crate::checks::tls::{days_remaining, DAYS_REMAINING};
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::util::conditions::{self, Answer, Condition, ConditionFields};
use crate::checks::util::trust;
use crate::checks::{
    duration_ms, elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation,
    CREDENTIALS_IN_FILE, RESPONSE_TIME,
};

pub const KIND: Kind = Kind::new(
    "http",
    &[
        "url",
        "url_env",
        "method",
        "expect_status",
        "headers",
        "headers_env",
        "follow_redirects",
        "ca_file",
        "conditions",
        "max_body",
    ],
    parse,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFields {
    url: Option<String>,
    url_env: Option<String>,
    method: Option<HttpMethod>,
    expect_status: Option<Vec<u16>>,
    headers: Option<BTreeMap<String, String>>,
    headers_env: Option<BTreeMap<String, String>>,
    follow_redirects: Option<bool>,
    ca_file: Option<PathBuf>,
    conditions: Option<Vec<ConditionFields>>,
    max_body: Option<SizeText>,
}

/// `kind = "http"`, validated.
#[derive(Debug)]
struct HttpSettings {
    url: Secret,
    method: HttpMethod,
    /// Status codes that count as up; empty means 200 to 399.
    expect_status: Vec<u16>,
    /// Header values may be credentials: all are kept secret.
    headers: Vec<(String, Secret)>,
    follow_redirects: bool,
    /// Trusted instead of the built-in roots, for a private CA.
    ca_file: Option<PathBuf>,
    conditions: Arc<[Condition]>,
    /// The most of a body that is read; more fails the check.
    max_body: u64,
}

/// `max_body` unless the check says otherwise.
const DEFAULT_MAX_BODY: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum HttpMethod {
    Get,
    Head,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: HttpFields = input.fields()?;
    let (url, from_file) = input.secret_url(fields.url, fields.url_env)?;
    match Url::parse(url.expose()) {
        // A user name in an HTTP URL is often a token itself.
        Ok(parsed)
            if from_file && (!parsed.username().is_empty() || parsed.password().is_some()) =>
        {
            input.report_at("url", CREDENTIALS_IN_FILE);
            return None;
        }
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
        _ => {
            input.report_at("url", "not an http:// or https:// URL");
            return None;
        }
    }
    let mut ok = true;
    if let Some(code) =
        fields.expect_status.iter().flatten().find(|code| !(100..=599).contains(*code))
    {
        input.report_at("expect_status", format!("{code} is not an HTTP status code"));
        ok = false;
    }
    let mut headers = Vec::new();
    for (name, value) in fields.headers.into_iter().flatten() {
        headers.push((name, Secret::new(value)));
    }
    for (name, var) in fields.headers_env.into_iter().flatten() {
        match input.env.var(&var) {
            Some(value) => headers.push((name, Secret::new(value))),
            None => {
                input.report_at(
                    &format!("headers_env.{name}"),
                    format!("environment variable {var} is not set"),
                );
                ok = false;
            }
        }
    }
    for (name, value) in &headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err()
            || HeaderValue::from_str(value.expose()).is_err()
        {
            input.report_at(&format!("headers.{name}"), "not a valid HTTP header name and value");
            ok = false;
        }
    }
    if let Some(path) = &fields.ca_file {
        if let Err(reason) = trust::check_ca_file(path) {
            input.report_at("ca_file", reason);
            ok = false;
        }
    }
    let method = fields.method.unwrap_or(HttpMethod::Get);
    let conditions = conditions::parse_conditions(
        input,
        fields.conditions.unwrap_or_default(),
        method == HttpMethod::Get,
    );
    let max_body = fields.max_body.map_or(DEFAULT_MAX_BODY, |size| size.0);
    if max_body == 0 {
        input.report_at("max_body", "must be above 0 bytes");
        ok = false;
    }
    let conditions = conditions?;
    ok.then(|| {
        Arc::new(HttpSettings {
            url,
            method,
            expect_status: fields.expect_status.unwrap_or_default(),
            headers,
            follow_redirects: fields.follow_redirects.unwrap_or(false),
            ca_file: fields.ca_file,
            conditions: conditions.into(),
            max_body,
        }) as Arc<dyn KindSettings>
    })
}

impl KindSettings for HttpSettings {
    fn descriptors(&self) -> usize {
        // reqwest's pooled connection, and a new one while an old one closes.
        2
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(HttpCheck::new(name, self, policy.timeout)?))
    }
}

struct HttpCheck {
    client: Client,
    url: Url,
    method: Method,
    expect_status: Vec<u16>,
    conditions: Arc<[Condition]>,
    max_body: u64,
    timeout: Duration,
}

impl HttpCheck {
    fn new(name: &str, settings: &HttpSettings, timeout: Duration) -> anyhow::Result<Self> {
        let url = Url::parse(settings.url.expose())
            .map_err(|_| anyhow::anyhow!("check {name}: invalid URL"))?;
        let mut headers = HeaderMap::new();
        for (header, value) in &settings.headers {
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| anyhow::anyhow!("check {name}: invalid value for header {header}"))?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_bytes(header.as_bytes())?, value);
        }
        let redirects = if settings.follow_redirects {
            redirect::Policy::limited(5)
        } else {
            redirect::Policy::none()
        };
        let mut builder = Client::builder();
        if let Some(path) = &settings.ca_file {
            let pem = trust::read_pem(path)
                .map_err(|error| anyhow::anyhow!("check {name}: {error:#}"))?;
            builder = builder.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .default_headers(headers)
            .tls_info(true)
            .redirect(redirects)
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("healthd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let method = match settings.method {
            HttpMethod::Get => Method::GET,
            HttpMethod::Head => Method::HEAD,
        };
        Ok(HttpCheck {
            client,
            url,
            method,
            expect_status: settings.expect_status.clone(),
            conditions: settings.conditions.clone(),
            max_body: settings.max_body,
            timeout,
        })
    }

    /// `expect_status`; without it, 200 to 399 unless a condition judges
    /// the status instead.
    fn expected(&self, status: u16) -> bool {
        if !self.expect_status.is_empty() {
            self.expect_status.contains(&status)
        } else {
            conditions::judges_status(&self.conditions) || (200..400).contains(&status)
        }
    }

    /// The body, chunk by chunk, up to `max_body`: a larger or endless one
    /// fails as soon as it passes the cap, holding no more than the cap
    /// and one chunk. The deadline (the client's timeout and the
    /// monitor's) bounds a slow one.
    async fn read_body(&self, response: &mut reqwest::Response) -> Result<Vec<u8>, Observation> {
        let too_large =
            || Observation::fail(format!("body over max_body ({} bytes)", self.max_body));
        if response.content_length().is_some_and(|length| length > self.max_body) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if (body.len() + chunk.len()) as u64 <= self.max_body => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => return Err(too_large()),
                Ok(None) => return Ok(body),
                Err(error) => return Err(self.failed(error)),
            }
        }
    }

    fn failed(&self, error: reqwest::Error) -> Observation {
        // The URL may carry user-info: it never reaches the log.
        let error = error.without_url();
        let observation = if error.is_timeout() {
            Observation::timed_out(self.timeout)
        } else {
            Observation::fail(reqwest_category(&error))
        };
        observation.with_detail(error_chain(&error))
    }
}

impl Check for HttpCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        if self.url.scheme() == "https" {
            const OVER_TLS: &[(&str, &str)] = &[("responseTime", "ms"), DAYS_REMAINING];
            OVER_TLS
        } else {
            RESPONSE_TIME
        }
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let mut response =
                match self.client.request(self.method.clone(), self.url.clone()).send().await {
                    Ok(response) => response,
                    Err(error) => return self.failed(error),
                };
            // The leaf certificate of the connection that answered (over TLS).
            let days = response
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|info| info.peer_certificate())
                .and_then(|der| days_remaining(der, SystemTime::now()));
            let values = |elapsed| vec![elapsed, days];
            let status = response.status().as_u16();
            if !self.expected(status) {
                // The dependency answered: how fast is still worth showing.
                return Observation::fail_with(
                    format!("HTTP {status}"),
                    values(elapsed_ms(started)),
                );
            }
            let is_health_json = match health_json(response.headers()) {
                Ok(is_health_json) => is_health_json && self.method == Method::GET,
                Err(category) => {
                    return Observation::fail_with(category, values(elapsed_ms(started)))
                }
            };
            let body = if is_health_json || conditions::needs_body(&self.conditions) {
                match self.read_body(&mut response).await {
                    Ok(body) => body,
                    Err(failed) => {
                        return Observation { values: values(elapsed_ms(started)), ..failed }
                    }
                }
            } else {
                Vec::new()
            };
            let elapsed = started.elapsed();
            let elapsed_ms = duration_ms(elapsed);
            // The dependency reports its own health: carry its warn or fail.
            let reported = if is_health_json {
                match reported_status(&body) {
                    Some(status) => Some(status),
                    None => {
                        return Observation::fail_with("invalid health report", values(elapsed_ms))
                    }
                }
            } else {
                None
            };
            let answer = Answer { status, headers: response.headers(), body: &body, elapsed };
            let judged = conditions::judge(&self.conditions, &answer);
            match (reported, judged) {
                (Some(HealthStatus::Fail), _) => {
                    Observation::fail_with("dependency reports fail", values(elapsed_ms))
                }
                (_, Some((HealthStatus::Fail, output))) => {
                    Observation::fail_with(output, values(elapsed_ms))
                }
                (Some(HealthStatus::Warn), _) => {
                    Observation::warn("dependency reports warn", values(elapsed_ms))
                }
                (_, Some((_, output))) => Observation::warn(output, values(elapsed_ms)),
                _ => Observation::pass(values(elapsed_ms)),
            }
        })
    }
}

/// Whether the answer is a health report (`application/health+json`), its
/// media type read as RFC 9110 says: type and subtype in any case, with
/// parameters. A Content-Type that cannot be read is a failure: it must
/// not pass a dependency that may be reporting `fail`.
fn health_json(headers: &HeaderMap) -> Result<bool, &'static str> {
    const INVALID: &str = "invalid content type";
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else { return Ok(false) };
    if values.next().is_some() {
        return Err(INVALID);
    }
    let essence = media_type_essence(value.as_bytes()).ok_or(INVALID)?;
    Ok(essence.eq_ignore_ascii_case(b"application/health+json"))
}

/// `type/subtype` of a media type (RFC 9110, section 8.3.1), when the whole
/// value is one: `type "/" subtype *( OWS ";" OWS [ name "=" ( token /
/// quoted-string ) ] )`, with optional white space around it.
fn media_type_essence(value: &[u8]) -> Option<&[u8]> {
    let is_ows = |byte: &u8| *byte == b' ' || *byte == b'\t';
    let token_end =
        |from: usize| from + value[from..].iter().take_while(|byte| is_tchar(**byte)).count();
    let mut at = value.iter().take_while(|byte| is_ows(byte)).count();
    let start = at;
    let type_end = token_end(at);
    if type_end == at || value.get(type_end) != Some(&b'/') {
        return None;
    }
    let subtype_end = token_end(type_end + 1);
    if subtype_end == type_end + 1 {
        return None;
    }
    let essence = &value[start..subtype_end];
    at = subtype_end;
    loop {
        at += value[at..].iter().take_while(|byte| is_ows(byte)).count();
        match value.get(at) {
            None => return Some(essence),
            Some(b';') => at += 1,
            Some(_) => return None,
        }
        at += value[at..].iter().take_while(|byte| is_ows(byte)).count();
        // An empty parameter (`;;`) is allowed.
        if matches!(value.get(at), None | Some(b';')) {
            continue;
        }
        let name_end = token_end(at);
        if name_end == at || value.get(name_end) != Some(&b'=') {
            return None;
        }
        at = name_end + 1;
        if value.get(at) == Some(&b'"') {
            at += 1;
            loop {
                match value.get(at)? {
                    b'"' => break,
                    b'\\' => at += 2,
                    byte if *byte == b'\t' || *byte >= 0x20 && *byte != 0x7f => at += 1,
                    _ => return None,
                }
            }
            at += 1;
        } else {
            let value_end = token_end(at);
            if value_end == at {
                return None;
            }
            at = value_end;
        }
    }
}

/// RFC 9110's `tchar`: what a token is made of.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn reported_status(body: &[u8]) -> Option<HealthStatus> {
    #[derive(serde::Deserialize)]
    struct StatusOnly {
        status: String,
    }
    let report: StatusOnly = serde_json::from_slice(body).ok()?;
    // The draft also allows the older words ok/up and error/down.
    match report.status.as_str() {
        "pass" | "ok" | "up" => Some(HealthStatus::Pass),
        "warn" => Some(HealthStatus::Warn),
        "fail" | "error" | "down" => Some(HealthStatus::Fail),
        _ => None,
    }
}

fn reqwest_category(error: &reqwest::Error) -> String {
    let chain = error_chain(error);
    if let Some(tls) = tls_category(&chain) {
        return tls.into();
    }
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        return "DNS: no such host".into();
    }
    if let Some(io) = find_io_error(error) {
        return io_category(io);
    }
    // hyper's own words for a peer that hung up without an answer.
    if chain.contains("connection closed before message completed")
        || chain.contains("end of file before message length reached")
    {
        return "connection closed".into();
    }
    if error.is_redirect() {
        return "too many redirects".into();
    }
    if error.is_body() || error.is_decode() {
        return "response body error".into();
    }
    if error.is_connect() {
        return "connection failed".into();
    }
    "request failed".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(values: &[&[u8]]) -> Result<bool, &'static str> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CONTENT_TYPE, HeaderValue::from_bytes(value).unwrap());
        }
        health_json(&headers)
    }

    #[test]
    fn health_json_is_recognised_in_any_case_with_parameters() {
        assert_eq!(content_type(&[b"application/health+json"]), Ok(true));
        assert_eq!(content_type(&[b"Application/Health+JSON; charset=utf-8"]), Ok(true));
        assert_eq!(content_type(&[b"application/health+json ; charset=\"utf-8\""]), Ok(true));
        assert_eq!(content_type(&[b"application/json"]), Ok(false));
        assert_eq!(content_type(&[b"text/html; charset=utf-8"]), Ok(false));
        assert_eq!(content_type(&[]), Ok(false));
    }

    #[test]
    fn a_content_type_that_cannot_be_read_fails() {
        for bad in [
            &b"application/health+json\xff"[..],
            b"application/health+json;;;=",
            b"health+json",
            b"application/",
            b"",
        ] {
            assert_eq!(content_type(&[bad]), Err("invalid content type"), "{bad:?}");
        }
        let two = content_type(&[b"application/json", b"application/health+json"]);
        assert_eq!(two, Err("invalid content type"));
    }

    #[test]
    fn a_dependency_report_status_is_read() {
        assert_eq!(reported_status(br#"{"status":"warn","checks":{}}"#), Some(HealthStatus::Warn));
        assert_eq!(reported_status(br#"{"status":"down"}"#), Some(HealthStatus::Fail));
        assert_eq!(reported_status(br#"{"status":"fine"}"#), None);
        assert_eq!(reported_status(b"<html>"), None);
    }
}
