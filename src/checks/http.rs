//! `kind = "http"`: a GET or HEAD with reqwest, one client per check.

use std::time::{Duration, Instant};

use healthd_models::{ComponentType, HealthStatus};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{redirect, Client, Method, Url};

use crate::checks::{
    elapsed_ms, error_chain, find_io_error, io_category, BoxFuture, Check, Observation,
    RESPONSE_TIME,
};
use crate::config::{HttpCheckSettings, HttpMethod};

/// A dependency's own health report is read up to this size.
const MAX_HEALTH_BODY: usize = 64 * 1024;

pub struct HttpCheck {
    name: String,
    client: Client,
    url: Url,
    method: Method,
    expect_status: Vec<u16>,
    timeout: Duration,
}

impl HttpCheck {
    pub fn new(
        name: &str,
        settings: &HttpCheckSettings,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
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
        let client = Client::builder()
            .default_headers(headers)
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
            name: name.to_string(),
            client,
            url,
            method,
            expect_status: settings.expect_status.clone(),
            timeout,
        })
    }

    fn expected(&self, status: u16) -> bool {
        if self.expect_status.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expect_status.contains(&status)
        }
    }

    fn failed(&self, error: reqwest::Error) -> Observation {
        // The URL may carry user-info: it never reaches the log.
        let error = error.without_url();
        tracing::warn!(check = %self.name, error = %error_chain(&error), "http check failed");
        if error.is_timeout() {
            return Observation::timed_out(self.timeout);
        }
        Observation::fail(reqwest_category(&error))
    }
}

impl Check for HttpCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let mut response =
                match self.client.request(self.method.clone(), self.url.clone()).send().await {
                    Ok(response) => response,
                    Err(error) => return self.failed(error),
                };
            let status = response.status().as_u16();
            if !self.expected(status) {
                // The dependency answered: how fast is still worth showing.
                return Observation::fail_with(format!("HTTP {status}"), vec![elapsed_ms(started)]);
            }
            let is_health_json = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/health+json"));
            if !is_health_json || self.method == Method::HEAD {
                return Observation::pass(vec![elapsed_ms(started)]);
            }
            // The dependency reports its own health: carry its warn or fail.
            let mut body = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_HEALTH_BODY => {
                        body.extend_from_slice(&chunk)
                    }
                    Ok(Some(_)) => return Observation::fail("health report too large"),
                    Ok(None) => break,
                    Err(error) => return self.failed(error),
                }
            }
            let elapsed = elapsed_ms(started);
            match reported_status(&body) {
                Some(HealthStatus::Pass) => Observation::pass(vec![elapsed]),
                Some(HealthStatus::Warn) => {
                    Observation::warn("dependency reports warn", vec![elapsed])
                }
                Some(HealthStatus::Fail) => {
                    Observation::fail_with("dependency reports fail", vec![elapsed])
                }
                None => Observation::fail("invalid health report"),
            }
        })
    }
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

/// rustls names certificate problems in its error text; map them to words.
/// Current rustls 0.23 writes the common ones as sentences ("certificate expired:
/// verification time ..."), the others as variant names; match both.
fn tls_category(chain: &str) -> Option<&'static str> {
    let categories = [
        ("certificate expired", "TLS: certificate expired"),
        ("Expired", "TLS: certificate expired"),
        ("certificate not valid yet", "TLS: certificate not yet valid"),
        ("NotValidYet", "TLS: certificate not yet valid"),
        ("UnknownIssuer", "TLS: certificate not trusted"),
        ("certificate not valid for name", "TLS: certificate does not match the host name"),
        ("NotValidForName", "TLS: certificate does not match the host name"),
        ("Revoked", "TLS: certificate revoked"),
        ("invalid peer certificate", "TLS: invalid certificate"),
        ("InvalidContentType", "TLS: the server does not speak TLS"),
        ("CorruptMessage", "TLS: the server does not speak TLS"),
    ];
    categories.iter().find(|(needle, _)| chain.contains(needle)).map(|(_, category)| *category)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dependency_report_status_is_read() {
        assert_eq!(reported_status(br#"{"status":"warn","checks":{}}"#), Some(HealthStatus::Warn));
        assert_eq!(reported_status(br#"{"status":"down"}"#), Some(HealthStatus::Fail));
        assert_eq!(reported_status(br#"{"status":"fine"}"#), None);
        assert_eq!(reported_status(b"<html>"), None);
    }

    #[test]
    fn tls_errors_become_categories() {
        assert_eq!(
            tls_category("invalid peer certificate: Expired"),
            Some("TLS: certificate expired")
        );
        // The text rustls 0.23 writes for the common certificate problems.
        let expired = "error sending request: client error (Connect): invalid peer certificate: certificate expired: verification time 1700000000 (UNIX), but certificate is not valid after 1600000000 (100000000 seconds ago)";
        assert_eq!(tls_category(expired), Some("TLS: certificate expired"));
        let early = "invalid peer certificate: certificate not valid yet: verification time 1 (UNIX), but certificate is not valid before 2 (1 seconds in future)";
        assert_eq!(tls_category(early), Some("TLS: certificate not yet valid"));
        let name = "invalid peer certificate: certificate not valid for name \"a.example\"; certificate is only valid for b.example";
        assert_eq!(tls_category(name), Some("TLS: certificate does not match the host name"));
        assert_eq!(
            tls_category("invalid peer certificate: UnknownIssuer"),
            Some("TLS: certificate not trusted")
        );
        assert_eq!(
            tls_category("received corrupt message of type InvalidContentType"),
            Some("TLS: the server does not speak TLS")
        );
        assert_eq!(tls_category("connection refused"), None);
    }
}
