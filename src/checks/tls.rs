//! `kind = "tls"`: a TLS handshake with `address`, the chain and the name
//! verified (the system's roots, or `ca_file`), and the days left on the
//! leaf certificate; also the expiry reading the `http` kind reports as its
//! `daysRemaining`.
//!
//! rustls refuses an expired certificate without handing it over, so the
//! check's verifier (`trust::Verifier`, recording) keeps the leaf it was shown
//! and the verdict: an expired leaf still says how long ago it expired.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use healthd_models::ComponentType;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::base::policy::Policy;
use crate::checks::util::categories::{error_chain, io_category, tls_category};
use crate::checks::util::trust::{Seen, Verifier, Verify};
use crate::checks::{BoxFuture, Check, Kind, KindInput, KindSettings, Observation};

pub const KIND: Kind =
    Kind::new("tls", &["address", "server_name", "ca_file", "warn_below", "fail_below"], parse);

/// `daysRemaining`, the measurement of the leaf certificate's expiry.
pub const DAYS_REMAINING: (&str, &str) = ("daysRemaining", "d");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFields {
    address: Option<String>,
    server_name: Option<String>,
    ca_file: Option<PathBuf>,
    warn_below: Option<DaysText>,
    fail_below: Option<DaysText>,
}

/// A number of days written as `"14d"`.
#[derive(Clone, Copy, Debug)]
struct DaysText(u32);

impl<'de> Deserialize<'de> for DaysText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.strip_suffix('d').and_then(|days| days.parse().ok()).map(DaysText).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid number of days {text:?}: expected a whole number and 'd', such as \"14d\""
            ))
        })
    }
}

#[derive(Debug)]
struct TlsSettings {
    address: String,
    server_name: ServerName<'static>,
    /// Trusted instead of the system's roots, for a private CA.
    ca_file: Option<PathBuf>,
    warn_below: u32,
    fail_below: u32,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: TlsFields = input.fields()?;
    let address = input.required("address", fields.address)?;
    let Some(host) = address
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']').to_string())
    else {
        input.report_at("address", format!("invalid address {address:?}: expected HOST:PORT"));
        return None;
    };
    let (key, name) = match fields.server_name {
        Some(name) => ("server_name", name),
        None => ("address", host),
    };
    let Ok(server_name) = ServerName::try_from(name.clone()) else {
        input.report_at(key, format!("{name:?} is not a DNS name or an IP address"));
        return None;
    };
    if let Some(path) = &fields.ca_file {
        if let Err(reason) = crate::checks::util::trust::check_ca_file(path) {
            input.report_at("ca_file", reason);
            return None;
        }
    }
    let warn_below = fields.warn_below.map_or(14, |days| days.0);
    let fail_below = fields.fail_below.map_or(3, |days| days.0);
    if fail_below > warn_below {
        input.report_at("fail_below", format!("{fail_below}d is above warn_below = {warn_below}d"));
        return None;
    }
    Some(Arc::new(TlsSettings {
        address,
        server_name,
        ca_file: fields.ca_file,
        warn_below,
        fail_below,
    }))
}

impl KindSettings for TlsSettings {
    fn descriptors(&self) -> usize {
        // The handshake's socket.
        1
    }

    fn build(&self, _name: &str, _policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let provider = Arc::new(ring::default_provider());
        let roots = crate::checks::util::trust::roots(self.ca_file.as_deref())?;
        let verifier = Verifier::new(Verify::Full, roots, &provider)?;
        Ok(Arc::new(TlsCheck {
            address: self.address.clone(),
            server_name: self.server_name.clone(),
            provider,
            verifier,
            warn_below: self.warn_below,
            fail_below: self.fail_below,
        }))
    }
}

struct TlsCheck {
    address: String,
    server_name: ServerName<'static>,
    provider: Arc<CryptoProvider>,
    verifier: Verifier,
    warn_below: u32,
    fail_below: u32,
}

impl TlsCheck {
    /// A client config whose verifier reports into `seen`: one per attempt,
    /// so that concurrent handshakes never share a record.
    fn connector(&self, seen: &Arc<Mutex<Seen>>) -> anyhow::Result<TlsConnector> {
        let verifier = self.verifier.clone().recording(seen.clone());
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// The status for a leaf with `days` left, and its `daysRemaining`.
    fn judge(&self, days: f64) -> Observation {
        let values = vec![Some(days)];
        if days < 0.0 {
            return Observation::fail_with(expired_output(days), values);
        }
        let output = expires_output(days);
        if days < f64::from(self.fail_below) {
            Observation::fail_with(output, values)
        } else if days < f64::from(self.warn_below) {
            Observation::warn(output, values)
        } else {
            Observation::pass(values)
        }
    }

    /// A handshake that failed: what the verifier saw says more than the error.
    fn failed(&self, error: &std::io::Error, seen: &Seen) -> Observation {
        let detail = error_chain(error);
        let days = seen.leaf.as_ref().and_then(|leaf| days_remaining(leaf, SystemTime::now()));
        let values = vec![days];
        match &seen.error {
            // An expired CA or intermediate under a leaf that is still valid.
            Some(error) if is_expired(error) => match days {
                Some(days) if days < 0.0 => Observation::fail_with(expired_output(days), values),
                _ => Observation::fail_with("TLS: certificate expired", values),
            },
            Some(error) => Observation::fail_with(
                tls_category(&format!("{error:?} {error}")).unwrap_or("TLS: invalid certificate"),
                values,
            ),
            None if error.kind() == std::io::ErrorKind::InvalidData => Observation::fail(
                tls_category(&error_chain(error)).unwrap_or("TLS: handshake failed"),
            ),
            None => Observation::fail(io_category(error)),
        }
        .with_detail(detail)
    }
}

fn is_expired(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    )
}

impl Check for TlsCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[DAYS_REMAINING]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let connector = match self.connector(&seen) {
                Ok(connector) => connector,
                Err(error) => {
                    let detail = format!("{error:#}");
                    return Observation::fail("TLS: client configuration failed")
                        .with_detail(detail);
                }
            };
            let stream = match TcpStream::connect(&self.address).await {
                Ok(stream) => stream,
                Err(error) => {
                    return Observation::fail(io_category(&error)).with_detail(error.to_string());
                }
            };
            let handshake = connector.connect(self.server_name.clone(), stream).await;
            let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
            match handshake {
                Ok(mut stream) => {
                    // A polite close_notify; the peer's answer is not needed.
                    let _ = stream.shutdown().await;
                    match seen
                        .leaf
                        .as_ref()
                        .and_then(|leaf| days_remaining(leaf, SystemTime::now()))
                    {
                        Some(days) => self.judge(days),
                        None => Observation::fail("TLS: unreadable certificate"),
                    }
                }
                Err(error) => self.failed(&error, &seen),
            }
        })
    }
}

/// Days from `now` to the certificate's notAfter, to two decimals; negative
/// once it expired. `None` when the DER does not parse.
pub fn days_remaining(der: &[u8], now: SystemTime) -> Option<f64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let not_after = certificate.validity().not_after.timestamp() as f64;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    };
    let days = (not_after - now) / 86_400.0;
    Some((days * 100.0).round() / 100.0)
}

fn day_count(days: u64) -> String {
    if days == 1 {
        "1 day".into()
    } else {
        format!("{days} days")
    }
}

fn expires_output(days: f64) -> String {
    match days.floor() as u64 {
        0 => "certificate expires in less than a day".into(),
        whole => format!("certificate expires in {}", day_count(whole)),
    }
}

fn expired_output(days: f64) -> String {
    match (-days).floor() as u64 {
        0 => "certificate expired less than a day ago".into(),
        whole => format!("certificate expired {} ago", day_count(whole)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use healthd_models::HealthStatus;

    fn check(warn_below: u32, fail_below: u32) -> TlsCheck {
        let provider = Arc::new(ring::default_provider());
        let roots = crate::checks::util::trust::roots(None).unwrap();
        TlsCheck {
            address: "127.0.0.1:443".into(),
            server_name: ServerName::try_from("localhost").unwrap(),
            verifier: Verifier::new(Verify::Full, roots, &provider).unwrap(),
            provider,
            warn_below,
            fail_below,
        }
    }

    #[test]
    fn days_left_pick_the_status_and_the_words() {
        let check = check(14, 3);
        let pass = check.judge(30.2);
        assert_eq!((pass.status, pass.output), (HealthStatus::Pass, None));
        assert_eq!(pass.values, vec![Some(30.2)]);
        let warn = check.judge(9.5);
        assert_eq!(warn.status, HealthStatus::Warn);
        assert_eq!(warn.output.as_deref(), Some("certificate expires in 9 days"));
        let fail = check.judge(1.2);
        assert_eq!(fail.status, HealthStatus::Fail);
        assert_eq!(fail.output.as_deref(), Some("certificate expires in 1 day"));
        let expired = check.judge(-2.4);
        assert_eq!(expired.status, HealthStatus::Fail);
        assert_eq!(expired.output.as_deref(), Some("certificate expired 2 days ago"));
        assert_eq!(
            check.judge(-0.2).output.as_deref(),
            Some("certificate expired less than a day ago")
        );
        assert_eq!(
            check.judge(0.4).output.as_deref(),
            Some("certificate expires in less than a day")
        );
    }

    #[test]
    fn a_certificate_that_is_not_der_is_no_reading() {
        assert_eq!(days_remaining(b"not a certificate", SystemTime::now()), None);
    }

    #[test]
    fn days_parse_from_text() {
        let parse = |text: &str| toml::Value::String(text.into()).try_into::<DaysText>();
        assert_eq!(parse("14d").unwrap().0, 14);
        assert!(parse("14").unwrap_err().to_string().contains("such as \"14d\""));
        assert!(parse("2w").is_err());
    }
}
