//! The issue's "done when": one config with a check of each of the broker,
//! gRPC and certificate kinds (amqp, nats, grpc, tls, and http over TLS for
//! its daysRemaining) and of the host kinds (file, exec, dns, mqtt, icmp)
//! against real servers (the test binary's shared throwaway RabbitMQ, a
//! throwaway NATS, dnsmasq and mosquitto) and files passes `healthd check-config`,
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
    // The host kinds' peers: a file written just now.
    let backup = std::env::temp_dir().join(unique("healthd-every-kind-backup-"));
    std::fs::write(&backup, b"nightly").unwrap();
    let dns = healthd_testkit::dnsmasq::TestDnsmasq::start("10.0.0.1 orders.test\n", "").await;
    let broker = healthd_testkit::mosquitto::TestMosquitto::start().await;
    let check_tcp = healthd_testkit::debian::require_package(
        "/usr/lib/nagios/plugins/check_tcp",
        "monitoring-plugins-basic",
    );
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

[[checks]]
name = "backup"
kind = "file"
path = "{backup}"
max_age = "26h"
min_size = 1

[[checks]]
name = "plugin"
kind = "exec"
command = ["{check_tcp}", "-H", "127.0.0.1", "-p", "{tls_port}"]
perfdata = [{{ label = "time", unit = "ms" }}]

[[checks]]
name = "orders-dns"
kind = "dns"
domain = "orders.test"
servers = ["{dns_server}"]
expect_exact = ["10.0.0.1"]

[[checks]]
name = "broker"
kind = "mqtt"
url = "{mqtt_url}"
username_env = "MQTT_USER"
password_env = "MQTT_PASSWORD"
topic = "healthd/every-kind"

[[checks]]
name = "loopback"
kind = "icmp"
address = "127.0.0.1"
ping_interval = "50ms"
"#,
        mqtt_url = broker.url(),
        dns_server = dns.address(),
        check_tcp = check_tcp.display(),
        backup = backup.display(),
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
        ("MQTT_USER", healthd_testkit::mosquitto::USER),
        ("MQTT_PASSWORD", broker.password()),
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
        "backup:age",
        "backup:size",
        "plugin:time",
        "plugin:responseTime",
        "orders-dns:responseTime",
        "orders-dns:answers",
        "broker:responseTime",
        "loopback:roundTripTime",
        "loopback:packetLoss",
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
    for secret in
        [nats_token.as_str(), OPS_TOKEN, broker.password(), &rabbitmq_user_info, rabbitmq_password]
    {
        assert!(!everything.contains(secret), "{secret:?} is in a body or the log:\n{everything}");
    }
    grpc_task.abort();
    let _ = std::fs::remove_file(&backup);
}
