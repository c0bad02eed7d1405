//! Every operation on the built-in default config: status codes, content
//! types, HEAD, 405, 404, 400, Swagger UI and the contract documents.

use healthd::DEFAULT_CONFIG;
use reqwest::{Method, StatusCode};

use crate::support::app::{spawn_app, CONTRACT};

#[tokio::test]
async fn health_shows_a_real_disk_reading_to_local_callers_on_the_default_config() {
    // Arrange
    let app = spawn_app(DEFAULT_CONFIG).await;

    // Act
    let answer = app
        .wait_for("/health", None, std::time::Duration::from_secs(5), |a| {
            a.check("disk:freeSpace").is_some_and(|d| d.get("observedValue").is_some())
        })
        .await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "application/health+json");
    let disk = answer.check("disk:freeSpace").unwrap();
    let free = disk["observedValue"].as_f64().expect("a number");
    assert!((0.0..=100.0).contains(&free));
    assert_eq!(disk["observedUnit"], "%");
    assert_eq!(disk["componentType"], "system");
    assert_eq!(answer.json["serviceId"], "healthd");
}

#[tokio::test]
async fn probes_answer_health_json_once_every_check_reported() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    app.wait_for("/health/startup", None, std::time::Duration::from_secs(5), |a| {
        a.status == StatusCode::OK
    })
    .await;
    for path in ["/health/live", "/health/ready", "/health/startup", "/health/checks/disk"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
        assert_eq!(answer.content_type(), "application/health+json", "{path}");
        assert_eq!(answer.json["status"], "pass", "{path}");
    }
}

#[tokio::test]
async fn head_answers_the_status_and_headers_of_get_without_a_body() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    app.wait_for("/health/startup", None, std::time::Duration::from_secs(5), |a| {
        a.status == StatusCode::OK
    })
    .await;
    for path in [
        "/health",
        "/health/live",
        "/health/checks/nope",
        "/metrics",
        "/openapi.yaml",
        "/swagger-ui/",
    ] {
        let get = app.request(Method::GET, path, None).await;
        let head = app.request(Method::HEAD, path, None).await;
        assert_eq!(head.status, get.status, "{path}");
        assert_eq!(head.content_type(), get.content_type(), "{path}");
        assert!(head.text.is_empty(), "{path}: HEAD has a body");
    }
}

#[tokio::test]
async fn other_methods_are_405_with_allow() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        let answer = app.request(method.clone(), "/health/ready", None).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.headers["allow"], "GET, HEAD");
        assert_eq!(answer.content_type(), "application/problem+json");
        assert_eq!(answer.json["instance"], "/health/ready");
    }
}

#[tokio::test]
async fn unknown_paths_and_checks_are_404_problems() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    let answer = app.get("/healthz").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.content_type(), "application/problem+json");

    let answer = app.get("/health/checks/no-such-check").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.json["detail"].as_str().unwrap().contains("no-such-check"));
}

#[tokio::test]
async fn a_malformed_query_string_is_a_400_problem_and_a_valid_one_is_ignored() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    let answer = app.get("/health?verbose=%zz").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.content_type(), "application/problem+json");
    assert_eq!(answer.json["instance"], "/health");

    let answer = app.get("/health/live?cache-buster=123").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary_and_shows_the_contract() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    let redirect = app.get("/swagger-ui").await;
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers["location"], "/swagger-ui/");

    let page = app.get("/swagger-ui/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type().starts_with("text/html"));
    assert!(page.text.contains("swagger-ui"), "{}", page.text);

    let initializer = app.get("/swagger-ui/swagger-initializer.js").await;
    assert_eq!(initializer.status, StatusCode::OK);
    assert!(initializer.text.contains("/openapi.yaml"), "{}", initializer.text);
    assert!(
        initializer.text.contains(r#""validatorUrl": "none""#)
            || initializer.text.contains(r#""validatorUrl":"none""#),
        "{}",
        initializer.text
    );
    assert!(
        !initializer.text.contains("https://"),
        "Swagger UI must not call out: {}",
        initializer.text
    );
}

#[tokio::test]
async fn the_contract_is_served_as_yaml_and_json() {
    let app = spawn_app(DEFAULT_CONFIG).await;
    let yaml = app.get("/openapi.yaml").await;
    assert_eq!(yaml.status, StatusCode::OK);
    assert_eq!(yaml.content_type(), "application/yaml");
    assert_eq!(yaml.text, healthd_models::OPENAPI_YAML);

    let json = app.get("/openapi.json").await;
    assert_eq!(json.status, StatusCode::OK);
    assert_eq!(json.json, *CONTRACT);
}
