//! healthd behind a proxy that mounts it under a path prefix: the prefix is
//! believed from `X-Forwarded-Prefix` (or fixed by `forwarded_prefix`) only
//! when the peer is a trusted proxy, and then the served contract, Swagger
//! UI and the redirect to it point there. The real nginx runs in
//! `cargo xtask gateway`; these tests play the proxy from 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::app::{client_from, spawn_app, TestApp};

/// The proxy is 127.0.0.1 (the tests' own requests); 127.0.0.2 is a client.
fn config(fixed_prefix: Option<&str>) -> String {
    let fixed = fixed_prefix.map(|p| format!("forwarded_prefix = \"{p}\"\n")).unwrap_or_default();
    format!(
        "[access]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{fixed}\n\
         [[checks]]\nname = \"disk\"\nkind = \"disk\"\npath = \"/\"\nwarn_below = \"0%\"\nfail_below = \"0%\"\n"
    )
}

async fn get(
    app: &TestApp,
    from: Ipv4Addr,
    path: &str,
    prefix: Option<&str>,
) -> crate::support::app::Answer {
    let mut request = client_from(IpAddr::V4(from)).get(app.url(path));
    if let Some(prefix) = prefix {
        request = request.header("x-forwarded-prefix", prefix);
    }
    app.send(request).await
}

fn server_url(answer: &crate::support::app::Answer) -> Value {
    let document: Value = if answer.json.is_null() {
        serde_norway::from_str(&answer.text).expect("the YAML contract parses")
    } else {
        answer.json.clone()
    };
    document["servers"][0]["url"].clone()
}

const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[tokio::test]
async fn through_a_trusted_proxy_the_contract_and_swagger_ui_point_at_the_prefix() {
    // Arrange
    let app = spawn_app(&config(None)).await;

    // Act
    let json = get(&app, PROXY, "/openapi.json", Some("/ops")).await;
    let yaml = get(&app, PROXY, "/openapi.yaml", Some("/ops/")).await;
    let script = get(&app, PROXY, "/swagger-ui/swagger-initializer.js", Some("/ops")).await;
    let redirect = get(&app, PROXY, "/swagger-ui", Some("/ops")).await;

    // Assert
    assert_eq!(server_url(&json), "/ops");
    assert_eq!(server_url(&yaml), "/ops");
    assert!(script.text.contains("\"/ops/openapi.yaml\""), "{}", script.text);
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers["location"], "/ops/swagger-ui/");
}

#[tokio::test]
async fn a_prefix_from_anyone_else_or_not_a_plain_path_changes_nothing() {
    // Arrange
    let app = spawn_app(&config(None)).await;

    // Act: a client that is not a trusted proxy, and a proxy sending garbage.
    let untrusted = get(&app, CLIENT, "/openapi.json", Some("/ops")).await;
    let script = get(&app, CLIENT, "/swagger-ui/swagger-initializer.js", Some("/ops")).await;
    let garbage = get(&app, PROXY, "/openapi.json", Some("/\"><script>")).await;
    let absolute = get(&app, PROXY, "/swagger-ui", Some("//evil.example")).await;

    // Assert
    assert_eq!(server_url(&untrusted), "/");
    assert!(script.text.contains("\"/openapi.yaml\""), "{}", script.text);
    assert_eq!(server_url(&garbage), "/");
    assert_eq!(absolute.headers["location"], "/swagger-ui/");
}

#[tokio::test]
async fn a_fixed_prefix_serves_proxies_that_cannot_send_one() {
    // Arrange
    let app = spawn_app(&config(Some("/health-ops/"))).await;

    // Act
    let silent_proxy = get(&app, PROXY, "/openapi.json", None).await;
    let other_prefix = get(&app, PROXY, "/openapi.json", Some("/other")).await;
    let client = get(&app, CLIENT, "/openapi.json", None).await;

    // Assert: the setting wins over the header, and still needs a trusted peer.
    assert_eq!(server_url(&silent_proxy), "/health-ops");
    assert_eq!(server_url(&other_prefix), "/health-ops");
    assert_eq!(server_url(&client), "/");
}

#[tokio::test]
async fn the_yaml_contract_is_text_for_whoever_asks_for_text() {
    // Arrange
    let app = spawn_app(&config(None)).await;
    let with_accept =
        |accept: &'static str| app.client.get(app.url("/openapi.yaml")).header("accept", accept);

    // Act
    let text = app.send(with_accept("text/plain")).await;
    let both = app.send(with_accept("text/plain, application/yaml")).await;
    let any = app.send(with_accept("*/*")).await;

    // Assert: the same bytes; YAML unless text is all that is asked for.
    assert_eq!(text.content_type(), "text/plain; charset=utf-8");
    assert_eq!(text.text, healthd_models::OPENAPI_YAML);
    assert_eq!(text.headers["vary"], "accept");
    assert_eq!(both.content_type(), "application/yaml");
    assert_eq!(any.content_type(), "application/yaml");
}
