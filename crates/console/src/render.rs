//! Pages as HTML: the templates (embedded in the binary, MiniJinja with HTML auto-escaping),
//! the layout every page shares (navigation after the viewer's scopes, the anti-forgery token),
//! and the answers a handler gives — a page, a redirect after a form, a refusal.

use crate::session::Viewer;
use minijinja::value::Serde;
use minijinja::{Environment, Value};
use serde::Serialize;
use std::sync::OnceLock;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Reply;
use web::Scope;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("sign_in.html", include_str!("../templates/sign_in.html")),
    ("refused.html", include_str!("../templates/refused.html")),
    ("overview.html", include_str!("../templates/overview.html")),
    ("alerts.html", include_str!("../templates/alerts.html")),
    ("alert.html", include_str!("../templates/alert.html")),
    (
        "undelivered.html",
        include_str!("../templates/undelivered.html"),
    ),
    ("silences.html", include_str!("../templates/silences.html")),
    (
        "configuration.html",
        include_str!("../templates/configuration.html"),
    ),
    ("entity.html", include_str!("../templates/entity.html")),
    ("act.html", include_str!("../templates/act.html")),
];

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name}: {e}"));
        }
        env.add_filter("ms", |ms: i64| time(ms.div_euclid(1000)));
        env.add_filter("seconds", time);
        env
    })
}

/// An epoch time as people read it, in UTC.
fn time(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

/// What the layout needs to know about who looks.
#[derive(Serialize)]
struct Frame<'a> {
    client: &'a str,
    csrf: &'a str,
    responder: bool,
    consumer: bool,
    configuration: bool,
}

/// The page `template` for `viewer` (none on the sign-in page), with `context`.
pub fn page(
    template: &str,
    viewer: Option<&Viewer>,
    context: impl Serialize,
    status: StatusCode,
) -> Response {
    let frame = viewer.map(|v| Frame {
        client: &v.client,
        csrf: &v.csrf,
        responder: v.may(Scope::Responder),
        consumer: v.may(Scope::Consumer),
        configuration: v.may(Scope::Configuration),
    });
    let mut context = match serde_json::to_value(context) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    context.insert("me".into(), serde_json::to_value(frame).unwrap_or_default());
    let rendered = environment()
        .get_template(template)
        .and_then(|t| t.render(Value::from(Serde(context))));
    match rendered {
        Ok(html) => html_response(html, status),
        Err(e) => {
            tracing::error!(error = %e, template, "cannot render a console page");
            html_response(
                "<!doctype html><title>Error</title><p>This page cannot be shown.</p>".into(),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        }
    }
}

fn html_response(html: String, status: StatusCode) -> Response {
    let mut response = warp::reply::with_status(warp::reply::html(html), status).into_response();
    let headers = response.headers_mut();
    // Every asset is served from /ui itself: nothing else may load, and no one may frame it.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// A page that may show what was wrong with the form just sent: `error` goes into the
/// context, and makes the answer a 400.
pub fn form_page(
    template: &str,
    viewer: &Viewer,
    mut context: serde_json::Value,
    error: Option<String>,
) -> Response {
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    context["error"] = error.into();
    page(template, Some(viewer), context, status)
}

/// After a form: see `location` (303, so the browser GETs it).
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = header::HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A refusal page: `status` and why.
pub fn refused(viewer: Option<&Viewer>, status: StatusCode, why: &str) -> Response {
    page(
        "refused.html",
        viewer,
        serde_json::json!({"status": status.as_u16(), "why": why}),
        status,
    )
}

/// A path segment, percent-encoded (names and keys go into links).
pub fn encoded(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alert page says which attempts a digest made — its size and group — and shows a
    /// repeat as a line of its own, apart from the attempts of the delivery.
    #[test]
    fn the_alert_timeline_marks_digests_and_repeats() {
        let line = |kind: &str, outcome: &str, digest: serde_json::Value| {
            serde_json::json!({"kind": kind, "atMs": 1_000, "eventId": "e1", "action": "hook",
                "attempt": 1, "startedAtMs": 1_000, "durationMs": 3, "outcome": outcome,
                "digest": digest})
        };
        let group = r#"{"resource.resourceName":"db-1"}"#;
        let context = serde_json::json!({
            "me": {"client": "oncall", "csrf": "t", "responder": true},
            "found": {
                "alert": {"key": "a", "state": "firing", "severity": "ERROR", "firstSeenMs": 0,
                    "lastSeenMs": 0, "subject": "disk full"},
                "destinations": [],
                "timeline": [
                    line("delivery", "delivered", serde_json::Value::Null),
                    line("delivery", "delivered", serde_json::json!({"group": group, "events": 12})),
                    line("repeat", "failed", serde_json::json!({"group": "", "events": 1, "repeat": true})),
                ]
            }
        });
        let html = environment()
            .get_template("alert.html")
            .and_then(|t| t.render(Value::from(Serde(context))))
            .unwrap();
        let lines: Vec<&str> = html
            .lines()
            .filter(|l| l.contains(" to <strong>hook"))
            .collect();
        assert_eq!(lines.len(), 3, "{html}");
        assert!(lines[0].starts_with("      Delivery to") && !lines[0].contains("digest"));
        assert!(
            lines[1].contains(
                "in a digest of 12 events, group <code>{&quot;resource.resourceName&quot;:&quot;db-1&quot;}</code>"
            ),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("Repeated to <strong>hook</strong>"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("in a digest of 1 event") && !lines[2].contains("group"));
    }
}
