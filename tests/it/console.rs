//! The web console at `/ui/` against the real binary on the embedded bus with SQLite.
//!
//! `tests/console/console.mjs` drives the system's headless Chromium (puppeteer-core) through
//! the on-call scenario: sign in; see an undelivered event with its reason; fix the action's
//! destination on its configuration page; redeliver and see it delivered; acknowledge the
//! alert; silence alerts like it; submit an invalid condition and see the field's error; sign
//! out — axe-core checking every page, a screenshot of each saved under
//! `target/console-screenshots/`. Here: the stand-ins saw what the browser did (the webhook got
//! the redelivered event, Slack the acknowledgement), and the refusals a browser cannot show —
//! a form without its anti-forgery token or from another site, a client without the scope, a
//! session after sign-out. Needs `npm ci --prefix tests/console` first (`scripts/test` does it)
//! and Debian's `chromium`.
//!
//! And on RabbitMQ with PostgreSQL: a session signed in on one process works on another that
//! shares the signing key — pages, and a form with the session's token — and its sign-out on
//! one ends it on the other.

use crate::common::{
    event, postgres_schema, refusing_address, route_everything_to, stand_in, webhook, Backend,
    Tocsin,
};
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use wiremock::ResponseTemplate;

const CLIENTS: &str = r#"
[[auth.clients]]
name = "ops"
password = "ops-password"
scopes = ["producer", "consumer", "configuration", "responder"]

[[auth.clients]]
name = "oncall"
password = "oncall-password"
scopes = ["responder"]
"#;

/// The token signing key of the browser test's Tocsin, so that it can mint an action link.
const LINK_SECRET: &str = "console-e2e-token-secret";

/// The path of a Teams card's Resolve link for `alert`, as a Tocsin with `LINK_SECRET` mints it.
fn teams_resolve_link(alert: &str) -> String {
    let key = web::Authenticator::new(&[], LINK_SECRET.as_bytes().to_vec(), Default::default())
        .unwrap()
        .derived_key("action link");
    let settings = web::act_link::LinkSettings {
        public_url: "https://tocsin.example".into(),
        lifetime_minutes: 60,
    };
    let links = web::act_link::ActLinks::new(&settings, key, []).unwrap();
    let audience = web::act_link::Audience::Channel("teams".into());
    let now = clock::now_epoch_millis() / 1000;
    let url = links.url(model::alert::Control::Resolve, alert, audience, now);
    url.strip_prefix("https://tocsin.example")
        .unwrap()
        .to_owned()
}

/// A browser-like client that keeps no cookies and follows no redirects: each step is seen.
struct Visitor {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Visitor {
    async fn sign_in(tocsin: &Tocsin, client: &str, secret: &str) -> Visitor {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let response = http
            .post(tocsin.url("/ui/sign-in"))
            .form(&[("client", client), ("secret", secret)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{client} signs in");
        let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/;"] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
        Visitor {
            http,
            base: tocsin.base.clone(),
            cookie: set_cookie.split(';').next().unwrap().to_owned(),
        }
    }

    /// The same session, visiting `tocsin`.
    fn on(&self, tocsin: &Tocsin) -> Visitor {
        Visitor {
            http: self.http.clone(),
            base: tocsin.base.clone(),
            cookie: self.cookie.clone(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let body = response.text().await.unwrap();
        (status, location.unwrap_or(body))
    }

    /// The session's anti-forgery token, from a page's form.
    async fn csrf(&self) -> String {
        let (status, page) = self.get("/ui/silences").await;
        assert_eq!(status, 200, "{page}");
        let start = page.find(r#"name="csrf" value=""#).expect("a form") + 19;
        page[start..start + page[start..].find('"').unwrap()].to_owned()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .form(form);
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_call_session_in_a_real_browser_embedded_and_sqlite() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/puppeteer-core")
            .exists(),
        "puppeteer-core is not installed: run `npm ci --prefix tests/console`"
    );
    let fixed = stand_in(ResponseTemplate::new(200)).await;
    let slack = stand_in(ResponseTemplate::new(200).set_body_string("ok")).await;
    let configuration = json!({
        "actions": [
            webhook("hook", &format!("http://{}/refused", refusing_address()), json!({"retryMaxAttempts": "1"})),
            {"name": "slack", "type": "SLACK", "state": "ENABLED",
             "properties": {"webhookUrl": format!("{}/services/T000/B000/console", slack.uri())}}
        ],
        "subscriptions": [{"name": "everything", "state": "ENABLED", "conditions": [],
                           "actions": ["hook", "slack"]}]
    });
    let settings = format!(
        "{CLIENTS}\n[auth]\ntoken_secret = \"{LINK_SECRET}\"\n[links]\npublic_url = \"https://tocsin.example\"\n"
    );
    let tocsin =
        Tocsin::start_with_settings(Backend::Embedded, &configuration, &settings, &[]).await;
    let sent = tocsin
        .http
        .post(tocsin.url("/cf/producer/v1/resource-events"))
        .basic_auth("ops", Some("ops-password"))
        .json(&event("DiskFull", "disk-db-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);

    let screenshots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots");
    let output = Command::new("node")
        .arg("console.mjs")
        .current_dir(dir)
        .env("TOCSIN_URL", &tocsin.base)
        .env("TOCSIN_CLIENT", "ops")
        .env("TOCSIN_SECRET", "ops-password")
        .env("FIXED_DESTINATION", format!("{}/fixed", fixed.uri()))
        .env("SCREENSHOTS", screenshots)
        .env("ACT_LINK", teams_resolve_link("disk-db-1"))
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the browser scenario failed:\n{report}\n{}",
        tocsin.log()
    );
    eprintln!("{report}");
    for page in [
        "sign-in",
        "overview",
        "undelivered",
        "action",
        "alerts",
        "alert",
        "silences",
        "configuration",
        "condition-invalid",
        "alert-phone",
        "act-link",
        "act-done",
    ] {
        assert!(
            report.contains(&format!("ok - {page}: axe reports no serious")),
            "{page} was not checked:\n{report}"
        );
        let shot = std::path::Path::new(screenshots).join(format!("{page}.png"));
        assert!(shot.metadata().is_ok_and(|m| m.len() > 1000), "{shot:?}");
    }

    // The fixed destination got the redelivered event; Slack heard of the acknowledgement.
    let fixed_got = fixed.received_requests().await.unwrap();
    assert!(
        fixed_got
            .iter()
            .any(|r| r.url.path() == "/fixed"
                && String::from_utf8_lossy(&r.body).contains("disk-db-1")),
        "the fixed webhook did not get the event: {fixed_got:?}"
    );
    let started = Instant::now();
    loop {
        let calls = slack.received_requests().await.unwrap();
        if calls
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("Acknowledged by ops"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Slack never heard of the acknowledgement: {:?}",
            calls
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    the_other_forms(&tocsin, &fixed).await;
    refusals(&tocsin).await;
    tocsin.shutdown().await;
}

/// Export, import, the test event and redelivery of a whole action, as plain requests.
async fn the_other_forms(tocsin: &Tocsin, fixed: &wiremock::MockServer) {
    let ops = Visitor::sign_in(tocsin, "ops", "ops-password").await;
    let csrf = ops.csrf().await;
    let export = ops
        .http
        .get(tocsin.url("/ui/configuration/export"))
        .header(COOKIE, &ops.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert!(export.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));
    let exported = export.text().await.unwrap();
    let configuration: serde_json::Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(configuration["actions"][0]["name"], "hook");
    assert!(
        !exported.contains("B000/console"),
        "the Slack webhook URL is a secret: {exported}"
    );

    let (status, page) = ops
        .post(
            "/ui/configuration/import",
            &[("csrf", &csrf), ("document", "{not json")],
            None,
        )
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("malformed JSON"), "{page}");
    let (status, _) = ops.get("/ui/configuration/action/hook").await;
    assert_eq!(status, 200, "a refused import changed nothing");

    let before = fixed.received_requests().await.unwrap().len();
    let (status, page) = ops
        .post(
            "/ui/configuration/action/hook/test",
            &[("csrf", &csrf)],
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"test-outcome\""), "{page}");
    assert!(
        page.contains("delivered") && !page.contains("not delivered"),
        "{page}"
    );
    assert_eq!(fixed.received_requests().await.unwrap().len(), before + 1);

    let all = [
        ("csrf", csrf.as_str()),
        ("action", "hook"),
        ("since", "yesterday"),
    ];
    let (status, page) = ops.post("/ui/undelivered/redeliver", &all, None).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("`since` must be a date and time"), "{page}");
    let all = [
        ("csrf", csrf.as_str()),
        ("action", "hook"),
        ("since", "2020-01-01T00:00"),
    ];
    let (status, _) = ops.post("/ui/undelivered/redeliver", &all, None).await;
    assert_eq!(status, 303, "nothing left to redeliver is no error");
}

/// Forms without the session's token or from another site, and clients without the scope,
/// are refused and change nothing; a signed-out session is over.
async fn refusals(tocsin: &Tocsin) {
    let ops = Visitor::sign_in(tocsin, "ops", "ops-password").await;
    let csrf = ops.csrf().await;
    let condition = [
        ("name", "refused-condition"),
        ("propertyKey", "eventType"),
        ("predicate", "EQUALS"),
        ("propertyValue", "x"),
    ];
    let (status, page) = ops
        .post("/ui/configuration/condition", &condition, None)
        .await;
    assert_eq!(status, 403, "no token: {page}");
    assert!(page.contains("anti-forgery token"), "{page}");
    let mut with_token = condition.to_vec();
    with_token.push(("csrf", &csrf));
    let (status, page) = ops
        .post(
            "/ui/configuration/condition",
            &with_token,
            Some("https://elsewhere.example"),
        )
        .await;
    assert_eq!(status, 403, "another site: {page}");
    let oncall = Visitor::sign_in(tocsin, "oncall", "oncall-password").await;
    let (status, _) = oncall.get("/ui/configuration").await;
    assert_eq!(status, 403, "the page needs the configuration scope");
    let (status, _) = oncall.get("/ui/undelivered").await;
    assert_eq!(status, 403, "the page needs the consumer scope");
    let (_, overview) = oncall.get("/ui/").await;
    assert!(
        !overview.contains("/ui/configuration"),
        "no link to what it may not see"
    );
    let oncall_csrf = oncall.csrf().await;
    let mut oncall_form = condition.to_vec();
    oncall_form.push(("csrf", &oncall_csrf));
    let (status, page) = oncall
        .post("/ui/configuration/condition", &oncall_form, None)
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("lacks the `configuration` scope"), "{page}");
    let (status, _) = ops
        .get("/ui/configuration/condition/refused-condition")
        .await;
    assert_eq!(status, 404, "no refused form created anything");
    // The right form goes through, so the refusals above were for what they say.
    let (status, _) = ops
        .post("/ui/configuration/condition", &with_token, None)
        .await;
    assert_eq!(status, 303);

    let (status, location) = ops.post("/ui/sign-out", &[("csrf", &csrf)], None).await;
    assert_eq!(status, 303, "{location}");
    let (status, location) = ops.get("/ui/alerts").await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/ui/sign-in"),
        "the session is over"
    );
    let (status, _) = oncall.get("/ui/alerts").await;
    assert_eq!(status, 200, "another session goes on");

    // Guessing a client's secret: ten tries at once, then one every ten seconds.
    let mut statuses = Vec::new();
    for secret in (0..10)
        .map(|n| format!("guess-{n}"))
        .chain(["oncall-password".into()])
    {
        let (status, page) = oncall
            .post(
                "/ui/sign-in",
                &[("client", "oncall"), ("secret", &secret)],
                None,
            )
            .await;
        if status == 429 {
            assert!(page.contains("Too many attempts"), "{page}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "even the right secret waits: {statuses:?}"
    );
    assert!(statuses[..9].iter().all(|s| *s == 401), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_on_every_process_sharing_the_key_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    let mut env = crate::shared_store::shared_store(&url).to_vec();
    env.push((
        "TOCSIN_AUTH_TOKEN_SECRET",
        "console-test-shared-signing-key",
    ));
    let store = json!({"name": "store", "type": "STORE", "state": "ENABLED"});
    let first = Tocsin::start_with_settings(
        Backend::Rabbitmq,
        &route_everything_to(vec![store]),
        CLIENTS,
        &env,
    )
    .await;
    let second = first.sibling().await;
    let sent = first
        .http
        .post(first.url("/cf/producer/v1/resource-events"))
        .basic_auth("ops", Some("ops-password"))
        .json(&event("DiskFull", "shared-disk"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let on_first = Visitor::sign_in(&first, "oncall", "oncall-password").await;
    let on_second = on_first.on(&second);
    let started = Instant::now();
    loop {
        let (status, page) = on_second.get("/ui/alerts/shared-disk").await;
        if status == 200 {
            assert!(
                page.contains("Signed in as <strong>oncall</strong>"),
                "{page}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{status}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csrf = on_first.csrf().await;
    let act = [("act", "acknowledge"), ("csrf", csrf.as_str())];
    let (status, page) = on_second.post("/ui/alerts/shared-disk", &act, None).await;
    assert_eq!(
        status, 303,
        "the first process's token is good on the second: {page}"
    );
    let started = Instant::now();
    loop {
        let (_, page) = on_first.get("/ui/alerts/shared-disk").await;
        if page.contains("oncall</strong> acknowledge via console") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Signed out on the first, the same cookie is refused by the second too.
    let (status, location) = on_first
        .post("/ui/sign-out", &[("csrf", &csrf)], None)
        .await;
    assert_eq!(status, 303, "{location}");
    let (status, location) = on_second.get("/ui/alerts/shared-disk").await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/ui/sign-in"),
        "the session is over on every process"
    );
    second.shutdown().await;
    first.shutdown().await;
}

/// A silence made and expired with the console's forms is in the audit log, naming the
/// signed-in client, via `console` (plain requests: no browser needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_made_and_expired_in_the_console_are_audited_embedded_and_sqlite() {
    let tocsin = Tocsin::start_with_settings(Backend::Embedded, &json!({}), CLIENTS, &[]).await;
    let ops = Visitor::sign_in(&tocsin, "ops", "ops-password").await;
    let csrf = ops.csrf().await;
    let form = [
        ("csrf", csrf.as_str()),
        ("key0", "severity"),
        ("predicate0", "EQUALS"),
        ("value0", "FATAL"),
        ("hours", "1"),
        ("comment", "disk swap"),
    ];
    let (status, page) = ops.post("/ui/silences", &form, None).await;
    assert_eq!(status, 303, "{page}");
    let api = |path: String| {
        tocsin
            .http
            .get(tocsin.url(&path))
            .basic_auth("ops", Some("ops-password"))
            .send()
    };
    let silences: serde_json::Value = api("/tocsin/v1/silences".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = silences["results"][0]["id"].as_str().unwrap().to_owned();
    let expire = format!("/ui/silences/{id}/expire");
    let (status, page) = ops.post(&expire, &[("csrf", &csrf)], None).await;
    assert_eq!(status, 303, "{page}");
    let audit: serde_json::Value = api(format!("/tocsin/v1/audit?target={id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let acts: Vec<(&str, &str, &str, &str)> = audit["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap();
            (
                field("who"),
                field("via"),
                field("action"),
                field("outcome"),
            )
        })
        .collect();
    assert_eq!(
        acts,
        [
            ("ops", "console", "expire-silence", "done"),
            ("ops", "console", "silence", "done")
        ],
        "{audit}"
    );
    tocsin.shutdown().await;
}
