//! `kind = "grpc"` against real gRPC servers the tests start with tonic:
//! tonic-health's health service flipped between SERVING and NOT_SERVING,
//! per service and for the whole server, a server with no health service,
//! a closed port and a listener that never answers. Every state is waited
//! for with a deadline.

use std::net::SocketAddr;

use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::support::app::{spawn_app, Answer, TestApp};
use crate::support::checks::{config, is_unavailable, shows, DEADLINE};
use crate::support::upstream::{refused_address, Silent};

const API: &str = "api:responseTime";

/// A gRPC server on a free port, serving tonic-health's health service (or
/// nothing at all); shuts down when dropped, closing its connections.
struct HealthServer {
    address: SocketAddr,
    reporter: Option<HealthReporter>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HealthServer {
    async fn start(with_health: bool) -> HealthServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let incoming = TcpIncoming::from(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let reporter = if with_health {
            let (reporter, service) = tonic_health::server::health_reporter();
            let server = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stopped);
            tokio::spawn(async move { server.await.expect("the gRPC server") });
            Some(reporter)
        } else {
            // No service at all: every call is UNIMPLEMENTED.
            let server = Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming_shutdown(incoming, stopped);
            tokio::spawn(async move { server.await.expect("the gRPC server") });
            None
        };
        HealthServer { address, reporter, stop: Some(stop) }
    }

    async fn set(&self, service: &str, status: ServingStatus) {
        self.reporter.as_ref().unwrap().set_service_status(service, status).await;
    }

    fn address(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One grpc check named `api` against `address`.
fn api_check(address: &str, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "api"
kind = "grpc"
address = "{address}"
interval = "700ms"
timeout = "500ms"
retries = 0
{extra}
"#
    ))
}

async fn wait_shows(app: &TestApp, key: &str, wanted: &str, output: Option<&str>) -> Answer {
    app.wait_for("/health", None, DEADLINE, |a| shows(a, key, wanted, output)).await
}

#[tokio::test]
async fn a_server_flipping_between_serving_and_not_serving_is_followed() {
    // Arrange
    let server = HealthServer::start(true).await;
    let app = spawn_app(&api_check(&server.address(), "")).await;
    let answer = wait_shows(&app, API, "pass", None).await;
    let reading = answer.check(API).unwrap();
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");

    // Act
    server.set("", ServingStatus::NotServing).await;

    // Assert
    let answer = wait_shows(&app, API, "fail", Some("not serving")).await;
    assert!(is_unavailable(&answer));

    // Act
    server.set("", ServingStatus::Serving).await;

    // Assert
    wait_shows(&app, API, "pass", None).await;
}

#[tokio::test]
async fn a_named_service_is_asked_for_and_an_unknown_one_fails() {
    // Arrange
    let server = HealthServer::start(true).await;
    server.set("orders.v1.Orders", ServingStatus::NotServing).await;
    let checks = format!(
        r#"
[[checks]]
name = "api"
kind = "grpc"
address = "{0}"
service = "orders.v1.Orders"
interval = "700ms"
timeout = "500ms"
retries = 0

[[checks]]
name = "unknown"
kind = "grpc"
address = "{0}"
service = "no.such.Service"
interval = "700ms"
timeout = "500ms"
retries = 0
"#,
        server.address()
    );
    let app = spawn_app(&config(&checks)).await;

    // Assert: the service's own status, not the server's.
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, API, "fail", Some("not serving"))
            && shows(a, "unknown:responseTime", "fail", Some("unknown service"))
    })
    .await;

    // Act
    server.set("orders.v1.Orders", ServingStatus::Serving).await;

    // Assert
    wait_shows(&app, API, "pass", None).await;
}

#[tokio::test]
async fn a_server_without_a_health_service_is_unimplemented() {
    // Arrange
    let server = HealthServer::start(false).await;

    // Act
    let app = spawn_app(&api_check(&server.address(), "")).await;

    // Assert
    let answer = wait_shows(&app, API, "fail", Some("gRPC UNIMPLEMENTED: no health service")).await;
    assert!(is_unavailable(&answer));
}

#[tokio::test]
async fn a_closed_port_is_refused_and_a_silent_listener_times_out() {
    // Arrange
    let closed = refused_address().await;
    let silent = Silent::start().await;
    let checks = format!(
        r#"
[[checks]]
name = "api"
kind = "grpc"
address = "http://{closed}"
interval = "700ms"
timeout = "500ms"
retries = 0

[[checks]]
name = "silent"
kind = "grpc"
address = "http://{}"
interval = "700ms"
timeout = "500ms"
retries = 0
"#,
        silent.address()
    );

    // Act
    let app = spawn_app(&config(&checks)).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, API, "fail", Some("connection refused"))
                && shows(a, "silent:responseTime", "fail", Some("timed out after 500 ms"))
        })
        .await;
    assert!(is_unavailable(&answer));
}

#[tokio::test]
async fn a_server_that_stops_fails_the_check_and_one_on_the_same_port_brings_it_back() {
    // Arrange
    let server = HealthServer::start(true).await;
    let address = server.address;
    let app = spawn_app(&api_check(&server.address(), "")).await;
    wait_shows(&app, API, "pass", None).await;

    // Act
    drop(server);

    // Assert
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    assert_eq!(answer.json["status"], "fail");

    // Act: a new server on the same port; the channel reconnects by itself.
    let listener = tokio::net::TcpListener::bind(address).await.expect("the port again");
    let (_reporter, service) = tonic_health::server::health_reporter();
    let again = Server::builder().add_service(service);
    let task = tokio::spawn(again.serve_with_incoming(TcpIncoming::from(listener)));

    // Assert
    wait_shows(&app, API, "pass", None).await;
    task.abort();
}
