//! The OpenAPI description (docs/api.yaml) against what the server serves.

use std::collections::BTreeSet;
use std::fs;

use serde_json::Value;

use vmm::api::routes::ROUTES;

use crate::common::http::keys;
use crate::harness::Harness;
use crate::model::{all_features, every_stat};

const METHODS: [&str; 5] = ["GET", "PUT", "PATCH", "POST", "DELETE"];

fn openapi() -> Value {
    let text = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn resolve<'a>(spec: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            let target = spec
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference}"));
            resolve(spec, target)
        }
        None => node,
    }
}

/// The (path, METHOD) pairs the spec describes.
fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                operations.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    operations
}

fn example_body<'a>(spec: &'a Value, operation: &'a Value) -> Option<&'a Value> {
    let body = resolve(spec, operation.get("requestBody")?);
    body.pointer("/content/application~1json/example")
}

#[test]
fn openapi_describes_exactly_the_routes_the_server_serves() {
    let spec = openapi();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert!(spec["info"]["title"].is_string());
    assert!(spec["info"]["version"].is_string());
    let described = spec_operations(&spec);

    // Every operation of the spec is served, and its example body is accepted, each by a
    // VM of its own (the example of PUT /actions stops the VM, which then refuses more).
    for (path, method) in &described {
        let h = Harness::new(Some(all_features()));
        let operation = &spec["paths"][path][method.to_lowercase()];
        let body = example_body(&spec, operation).map(|example| example.to_string());
        let answer = h.request(method, path, body.as_deref());
        assert!(
            (200..300).contains(&answer.status),
            "{method} {path} with the spec's example: {} {}",
            answer.status,
            answer.text()
        );
        let documented = operation["responses"]
            .as_object()
            .unwrap()
            .contains_key(&answer.status.to_string());
        assert!(
            documented,
            "{method} {path}: status {} is not in the spec",
            answer.status
        );
    }

    // Everything the server serves is in the spec: probe every path either knows of,
    // and some it should not serve, with every method.
    let mut paths: BTreeSet<String> = described.iter().map(|(path, _)| path.clone()).collect();
    paths.extend(ROUTES.iter().map(|route| route.path.to_string()));
    paths.extend(
        ["/balloon/hinting", "/version", "/vm/config"]
            .iter()
            .map(|p| p.to_string()),
    );
    let probe = Harness::new(Some(all_features()));
    for path in &paths {
        for method in METHODS {
            let body = (method != "GET").then_some("{}");
            let answer = probe.request(method, path, body);
            let served = answer.status != 404 && answer.status != 405;
            assert_eq!(
                served,
                described.contains(&(path.clone(), method.to_string())),
                "{method} {path}: {} {}",
                answer.status,
                answer.text()
            );
        }
    }
}

#[test]
fn openapi_schemas_name_the_fields_the_server_returns() {
    let spec = openapi();
    let full = Harness::new(Some(all_features()));
    full.balloon().update(|state| {
        state.stats = every_stat();
        state.last_update_age_ms = Some(10);
        state.unknown_tags = 1;
        state.guest_cmd = Some(2);
    });
    let minimal = Harness::new(Some(all_features()));

    let mut checked = 0;
    for (path, method) in spec_operations(&spec) {
        let operation = &spec["paths"][&path][method.to_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        for (status, response) in responses {
            let response = resolve(&spec, response);
            let Some(schema) = response.pointer("/content/application~1json/schema") else {
                continue;
            };
            let schema = resolve(&spec, schema);
            let properties: BTreeSet<String> = keys(&schema["properties"]);
            let required: BTreeSet<String> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .map(|name| name.as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert!(required.is_subset(&properties), "{method} {path} {status}");
            if status == "200" {
                let everything = full.request(&method, &path, None).json();
                assert_eq!(keys(&everything), properties, "{method} {path}");
                let least = minimal.request(&method, &path, None).json();
                assert!(
                    required.is_subset(&keys(&least)),
                    "{method} {path}: required {required:?}, minimal answer {least}"
                );
                checked += 1;
            } else if !status.starts_with('2') {
                assert_eq!(properties, BTreeSet::from(["fault_message".to_string()]));
                assert_eq!(required, properties);
            }
        }
    }
    // GET /, /machine-config, /vm, /balloon, /balloon/statistics, /balloon/hinting/status.
    assert_eq!(checked, 6);
}
