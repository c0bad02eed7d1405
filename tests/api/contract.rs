//! Code and contract cannot drift: the document utoipa derives from the
//! handlers and generated models matches openapi.yaml, and every operation
//! answers only status codes the contract lists for it.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use crate::support::app::{spawn_app_with_env, CONTRACT};

/// (path, method) -> status codes.
fn operations(document: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut operations = BTreeMap::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let Some(responses) = operation.get("responses").and_then(Value::as_object) else {
                continue;
            };
            operations.insert((path.clone(), method.clone()), responses.keys().cloned().collect());
        }
    }
    operations
}

/// Schema name -> (properties, required).
fn schemas(document: &Value) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut schemas = BTreeMap::new();
    for (name, schema) in document["components"]["schemas"].as_object().expect("schemas") {
        let properties = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let required = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        schemas.insert(name.clone(), (properties, required));
    }
    schemas
}

#[test]
fn the_document_derived_from_the_code_matches_openapi_yaml() {
    let derived = serde_json::to_value(healthd::openapi()).unwrap();
    assert_eq!(
        operations(&derived),
        operations(&CONTRACT),
        "paths, methods or status codes differ"
    );
    assert_eq!(
        schemas(&derived),
        schemas(&CONTRACT),
        "schema names, fields or required fields differ"
    );
}

#[test]
fn every_operation_has_a_unique_operation_id_and_a_description() {
    let mut ids = BTreeSet::new();
    for (path, item) in CONTRACT["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} is not unique");
            assert!(
                operation["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{id} has no description"
            );
        }
    }
}

#[tokio::test]
async fn every_operation_answers_a_status_the_contract_lists() {
    let config = r#"
        [access]
        details = "authorized"
        [[access.tokens]]
        name = "ci"
        env = "TOKEN"
        [[access.tokens]]
        name = "cron"
        env = "PING_TOKEN"
        scopes = ["ping"]
        [[checks]]
        name = "disk"
        kind = "disk"
        path = "/"
        [[checks]]
        name = "backup"
        kind = "heartbeat"
        period = "1h"
        grace = "10m"
    "#;
    let env = BTreeMap::from([
        ("TOKEN".to_string(), "contract-token".to_string()),
        ("PING_TOKEN".to_string(), "contract-ping-token".to_string()),
    ]);
    let app = spawn_app_with_env(config, env).await;
    for ((path, method), statuses) in operations(&CONTRACT) {
        for name in ["disk", "backup", "missing"] {
            let concrete = path.replace("{name}", name).replace("{exitStatus}", "3");
            let tokens = [None, Some("contract-token"), Some("contract-ping-token"), Some("wrong")];
            for token in tokens {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let answer = app.request(method.clone(), &concrete, token).await;
                let status = answer.status.as_u16().to_string();
                assert!(statuses.contains(&status), "{method} {concrete} (token {token:?}) answered {status}, contract lists {statuses:?}");
            }
        }
    }
}
