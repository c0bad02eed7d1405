//! `kind = "grpc"`: the standard gRPC health protocol
//! (`grpc.health.v1.Health/Check`) with tonic and tonic-health's protos,
//! over one channel per check that reconnects by itself.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::base::policy::Policy;
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::util::trust;
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, RESPONSE_TIME,
};

pub const KIND: Kind = Kind::new("grpc", &["address", "service", "ca_file"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcFields {
    address: Option<String>,
    service: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug)]
struct GrpcSettings {
    address: String,
    service: String,
    /// Trusted instead of the system's roots, for a private CA.
    ca_file: Option<PathBuf>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: GrpcFields = input.fields()?;
    let address = input.required("address", fields.address)?;
    let valid = reqwest::Url::parse(&address).ok().filter(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && matches!(url.path(), "" | "/")
    });
    if valid.is_none() || Endpoint::from_shared(address.clone()).is_err() {
        input.report_at(
            "address",
            format!("invalid address {address:?}: expected http://HOST:PORT or https://HOST:PORT"),
        );
        return None;
    }
    if let Some(path) = &fields.ca_file {
        if !address.starts_with("https://") {
            input.report_at("ca_file", "needs an https:// address");
            return None;
        }
        if let Err(reason) = trust::check_ca_file(path) {
            input.report_at("ca_file", reason);
            return None;
        }
    }
    Some(Arc::new(GrpcSettings {
        address,
        service: fields.service.unwrap_or_default(),
        ca_file: fields.ca_file,
    }))
}

impl KindSettings for GrpcSettings {
    fn descriptors(&self) -> usize {
        // The channel's connection, and the one it makes when reconnecting.
        2
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let mut endpoint = Endpoint::from_shared(self.address.clone())?
            .connect_timeout(policy.timeout)
            .timeout(policy.timeout)
            .user_agent(concat!("healthd/", env!("CARGO_PKG_VERSION")))?;
        if self.address.starts_with("https://") {
            let tls = match &self.ca_file {
                Some(path) => {
                    let pem = trust::read_pem(path)
                        .map_err(|error| anyhow::anyhow!("check {name}: {error:#}"))?;
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint.tls_config(tls)?;
        }
        Ok(Arc::new(GrpcCheck {
            endpoint,
            channel: OnceLock::new(),
            service: self.service.clone(),
            timeout: policy.timeout,
        }))
    }
}

struct GrpcCheck {
    endpoint: Endpoint,
    /// Made by the first attempt: a channel needs the runtime to exist.
    channel: OnceLock<Channel>,
    service: String,
    timeout: Duration,
}

impl GrpcCheck {
    fn failed(&self, status: &tonic::Status) -> Observation {
        let observation = if status.code() == Code::DeadlineExceeded {
            Observation::timed_out(self.timeout)
        } else {
            Observation::fail(status_category(status))
        };
        observation.with_detail(error_chain(status))
    }
}

impl Check for GrpcCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Component
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let channel = self.channel.get_or_init(|| self.endpoint.connect_lazy()).clone();
            let request = HealthCheckRequest { service: self.service.clone() };
            let answer = match HealthClient::new(channel).check(request).await {
                Ok(answer) => answer.into_inner(),
                Err(status) => return self.failed(&status),
            };
            let elapsed = elapsed_ms(started);
            match ServingStatus::try_from(answer.status) {
                Ok(ServingStatus::Serving) => Observation::pass(vec![elapsed]),
                Ok(ServingStatus::NotServing) => {
                    Observation::fail_with("not serving", vec![elapsed])
                }
                Ok(ServingStatus::ServiceUnknown) => {
                    Observation::fail_with("unknown service", vec![elapsed])
                }
                _ => Observation::fail_with("serving status unknown", vec![elapsed]),
            }
        })
    }
}

fn status_category(status: &tonic::Status) -> String {
    match status.code() {
        // What the health protocol answers for a service it does not know.
        Code::NotFound => "unknown service".into(),
        Code::Unimplemented => "gRPC UNIMPLEMENTED: no health service".into(),
        Code::Unauthenticated => "authentication failed".into(),
        code => {
            // A transport failure arrives as UNAVAILABLE with the cause below it.
            let chain = error_chain(status);
            if let Some(tls) = tls_category(&chain) {
                return tls.into();
            }
            if code == Code::Unavailable {
                if let Some(io) = find_io_error(status) {
                    return io_category(io);
                }
                if chain.contains("dns error") || chain.contains("failed to lookup address") {
                    return "DNS: no such host".into();
                }
            }
            format!("gRPC {}", code_name(code))
        }
    }
}

/// The code as the gRPC spec writes it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_become_categories() {
        assert_eq!(status_category(&tonic::Status::not_found("x")), "unknown service");
        assert_eq!(
            status_category(&tonic::Status::unimplemented("x")),
            "gRPC UNIMPLEMENTED: no health service"
        );
        assert_eq!(status_category(&tonic::Status::unavailable("x")), "gRPC UNAVAILABLE");
        assert_eq!(status_category(&tonic::Status::internal("x")), "gRPC INTERNAL");
    }
}
