//! The OpenAPI document (`schemas/openapi.json`, served at `/openapi.json`) against the JSON
//! Schemas and the live server: its components are exactly the wire-format schemas of
//! `schemas/`; every documented operation is served (no "no such endpoint", no 405) and is
//! counted under its own route pattern in `/metrics`; and schemathesis, generating requests
//! from the document, finds every answer documented (status, content type, body schema) and no
//! server error. (The converse — every served route is documented — is the unit test
//! `observability::tests::the_route_table_and_the_openapi_document_agree`.)
//!
//! `TOCSIN_UPDATE_OPENAPI=1 cargo test --test it openapi::components` rewrites the components
//! from the schema files after a schema changed — and fails when it had to, so that the run
//! with the variable set is never the one that passes; the next run checks what it wrote.

use crate::common::{Backend, Tocsin};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
}

fn document() -> Value {
    serde_json::from_str(&std::fs::read_to_string(schemas_dir().join("openapi.json")).unwrap())
        .unwrap()
}

const COMPONENT: &str = "#/components/schemas/";

/// A schema file's content as an OpenAPI component: no `$id`, `$schema` or `$defs` at the
/// top (`$defs` become components of their own, `<file>.<name>`), and references to other
/// files and to `$defs` pointing at components.
fn as_component(value: &Value, stem: &str, top: bool) -> Value {
    match value {
        Value::Object(object) => Value::Object(
            object
                .iter()
                .filter(|(key, _)| !(top && ["$id", "$schema", "$defs"].contains(&key.as_str())))
                .map(|(key, value)| {
                    let value = match (key.as_str(), value.as_str()) {
                        ("$ref", Some(target)) if target.ends_with(".json") => {
                            json!(format!("{COMPONENT}{}", &target[..target.len() - 5]))
                        }
                        ("$ref", Some(target)) if target.starts_with("#/$defs/") => {
                            json!(format!("{COMPONENT}{stem}.{}", &target["#/$defs/".len()..]))
                        }
                        _ => as_component(value, stem, false),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| as_component(item, stem, false))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The component `name` made from its schema file: `name.json`, or `$defs` entry `d` of
/// `stem.json` for `stem.d`.
fn component_from_file(name: &str) -> Value {
    let read = |stem: &str| -> Value {
        let path = schemas_dir().join(format!("{stem}.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    if schemas_dir().join(format!("{name}.json")).exists() {
        return as_component(&read(name), name, true);
    }
    let (stem, definition) = name.rsplit_once('.').expect("a component names a file");
    as_component(&read(stem)["$defs"][definition], stem, false)
}

fn component_refs(value: &Value, found: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                match (key.as_str(), value.as_str()) {
                    ("$ref", Some(target)) if target.starts_with(COMPONENT) => {
                        found.insert(target[COMPONENT.len()..].to_owned());
                    }
                    _ => component_refs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| component_refs(item, found)),
        _ => {}
    }
}

#[test]
fn components_are_the_json_schemas_of_the_directory() {
    let mut document = document();
    let mut wanted = BTreeSet::new();
    component_refs(&document["paths"], &mut wanted);
    let mut expected = Map::new();
    while let Some(name) = wanted.pop_first() {
        if expected.contains_key(&name) {
            continue;
        }
        let component = component_from_file(&name);
        component_refs(&component, &mut wanted);
        expected.insert(name, component);
    }
    let expected = Value::Object(expected);
    // Update mode rewrites a stale document and still fails, so that a run with the variable
    // set can never pass over an out-of-date document: the next run (with or without it)
    // checks what was written.
    if std::env::var_os("TOCSIN_UPDATE_OPENAPI").is_some()
        && document["components"]["schemas"] != expected
    {
        document["components"]["schemas"] = expected;
        let text = serde_json::to_string_pretty(&document).unwrap() + "\n";
        std::fs::write(schemas_dir().join("openapi.json"), text).unwrap();
        panic!(
            "schemas/openapi.json was out of date: its components are rewritten from the \
             schema files; review the change and run the test again"
        );
    }
    let actual = &document["components"]["schemas"];
    for (name, component) in expected.as_object().unwrap() {
        assert_eq!(
            &actual[name], component,
            "component `{name}` differs from its schema file; run \
             TOCSIN_UPDATE_OPENAPI=1 cargo test --test it openapi::components"
        );
    }
    let extra: Vec<&String> = actual
        .as_object()
        .unwrap()
        .keys()
        .filter(|name| !expected.as_object().unwrap().contains_key(*name))
        .collect();
    assert!(extra.is_empty(), "components no path uses: {extra:?}");
}

/// Every (path, method) the document describes.
fn operations(document: &Value) -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                operations.push((path.clone(), method.to_uppercase()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn every_documented_operation_is_served_and_counted_under_its_pattern() {
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let served: Value = tocsin
        .http
        .get(tocsin.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        served,
        document(),
        "/openapi.json serves schemas/openapi.json"
    );

    let operations = operations(&served);
    assert!(operations.len() >= 30, "{operations:?}");
    for (pattern, method) in &operations {
        let path = pattern
            .replace("{platform}", "neo")
            .replace("{eventId}", "no-such-event")
            .replace("{name}", "no-such-name");
        let request = tocsin
            .http
            .request(method.parse().unwrap(), tocsin.url(&path))
            .basic_auth(&tocsin.user, Some(&tocsin.password));
        let request = if method == "POST" || method == "PUT" {
            request.json(&json!({}))
        } else {
            request
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {body}");
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {path} is documented but not served"
        );
    }

    let metrics = tocsin.metrics().await;
    for (pattern, method) in &operations {
        let counted = format!("method=\"{method}\",route=\"{pattern}\"");
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("tocsin_http_requests_total{")
                    && line.contains(&counted)),
            "{method} {pattern} not counted under its pattern:\n{metrics}"
        );
    }
    tocsin.shutdown().await;
}

/// schemathesis, from `TOCSIN_SCHEMATHESIS`, `target/tools/venv/bin` (where `scripts/test`
/// installs it) or the `PATH`.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("TOCSIN_SCHEMATHESIS") {
        return path.into();
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/schemathesis");
    if installed.exists() {
        return installed;
    }
    let on_path = std::process::Command::new("schemathesis")
        .arg("--version")
        .output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "schemathesis is not installed: run scripts/test (it installs it into target/tools/venv), \
         or `pip install schemathesis`, or set TOCSIN_SCHEMATHESIS"
    );
    "schemathesis".into()
}

#[tokio::test]
async fn schemathesis_finds_every_answer_documented() {
    let schemathesis = schemathesis();
    let tocsin = Tocsin::start(Backend::Embedded, &Value::Null, &[]).await;
    let output = tokio::process::Command::new(&schemathesis)
        .current_dir(tocsin.data_dir.parent().unwrap())
        .args(["--no-color", "run", "--url", &tocsin.base, "--auth"])
        .arg(format!("{}:{}", tocsin.user, tocsin.password))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            // One worker: with two threads, Hypothesis on CPython 3.11 now and then crashes
            // inside `ast` ("AST constructor recursion depth mismatch", a CPython bug with
            // concurrent AST construction) and the run reports that as an error.
            "--workers",
            "1",
            "--seed",
            "7",
        ])
        .arg(schemas_dir().join("openapi.json"))
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    tocsin.shutdown().await;
}
