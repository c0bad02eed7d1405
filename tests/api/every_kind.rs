//! The issue's "done when": one config with a check of each of the broker,
//! gRPC and certificate kinds (amqp, nats, grpc, tls, and http over TLS for
//! its daysRemaining) against real servers (the test binary's shared
//! throwaway RabbitMQ, a throwaway NATS) passes `healthd check-config`,
//! and the binary run from it reports every check `pass` at `/health` to a
//! caller with a token; the credentials of each never reach its output.

use std::process::Command;
use std::time::Instant;

use healthd_testkit::certs::{TestCerts, TlsListener};
use reqwest::StatusCode;

use crate::support::app::{send, spawn_binary};
use crate::support::checks::{status, unique, DEADLINE};
use crate::support::nats::TestNats;
use crate::support::rabbitmq::TestRabbitmq;

const OPS_TOKEN: &str = "every-kind-token-4b1e";

#[tokio::test]
async fn a_config_with_every_new_kind_loads_and_reports_every_check_pass_with_a_token() {
    // Arrange: the servers.
    let rabbitmq = TestRabbitmq::shared().await;
    let nats = TestNats::start_with_token().await;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("orders.v1.Orders", tonic_health::ServingStatus::Serving).await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_address = grpc.local_addr().unwrap();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc)),
    );
    let certs = TestCerts::new();
    let tls = TlsListener::start(&certs.valid()).await;
    let ca = certs.ca_path().display().to_string();
    let nats_token = nats.token().unwrap().to_string();
    let config = format!(
        r#"
[server]
service_id = "every-kind"
drain_delay = "0s"

[access]
details = "authorized"
details_allow = ["127.0.0.0/8"]
[[access.tokens]]
name = "ops"
env = "HEALTHD_OPS_TOKEN"

[defaults]
interval = "2s"
timeout = "1s"
retries = 0

[[checks]]
name = "rabbitmq"
kind = "amqp"
url_env = "RABBITMQ_URL"

[[checks]]
name = "nats"
kind = "nats"
url = "{nats_url}"
token_env = "NATS_TOKEN"

[[checks]]
name = "orders-grpc"
kind = "grpc"
address = "http://{grpc_address}"
service = "orders.v1.Orders"

[[checks]]
name = "certificate"
kind = "tls"
address = "{tls_address}"
ca_file = "{ca}"

[[checks]]
name = "https"
kind = "http"
url = "https://127.0.0.1:{tls_port}/"
ca_file = "{ca}"
"#,
        nats_url = nats.url(),
        tls_address = tls.address(),
        tls_port = tls.port(),
    );
    let rabbitmq_password = rabbitmq.password();
    let rabbitmq_url = rabbitmq.url_with_credentials();
    let env = [
        ("HEALTHD_LISTEN", "127.0.0.1:0"),
        ("HEALTHD_OPS_TOKEN", OPS_TOKEN),
        ("RABBITMQ_URL", rabbitmq_url.as_str()),
        ("NATS_TOKEN", nats_token.as_str()),
    ];

    // Act 1: check-config.
    let path = std::env::temp_dir().join(format!("{}.toml", unique("healthd-every-kind-")));
    std::fs::write(&path, &config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_healthd"));
    command.args(["check-config", "--config"]).arg(&path).env_remove("HEALTHD_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    let checked = command.output().unwrap();
    let _ = std::fs::remove_file(&path);

    // Assert 1
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(0), "check-config refused it:\n{stderr}");

    // Act 2: the binary from the same config.
    let binary = spawn_binary(&config, &[], &env).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let keys = [
        "rabbitmq:responseTime",
        "nats:responseTime",
        "orders-grpc:responseTime",
        "certificate:daysRemaining",
        "https:responseTime",
        "https:daysRemaining",
    ];
    let answer = loop {
        let answer =
            send(client.get(format!("{}/health", binary.base())).bearer_auth(OPS_TOKEN)).await;
        if keys.iter().all(|key| status(&answer, key) == Some("pass")) {
            break answer;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not every check passes within {DEADLINE:?}: {:#}\n{}",
            answer.json,
            binary.stdout()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    // Assert 2
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "pass");
    let anonymous = send(client.get(format!("{}/health", binary.base()))).await;
    assert!(anonymous.json.get("checks").is_none(), "details need the token");
    let everything = format!("{}\n{}\n{}", answer.text, binary.stdout(), binary.stderr());
    let rabbitmq_user_info = format!("{}:{rabbitmq_password}", rabbitmq.user());
    for secret in [nats_token.as_str(), OPS_TOKEN, &rabbitmq_user_info, rabbitmq_password] {
        assert!(!everything.contains(secret), "{secret:?} is in a body or the log:\n{everything}");
    }
    grpc_task.abort();
}
