//! Control from Slack (issue 15), through the real binary: an OCI alarm opens a Slack thread
//! (its parent carries the controls) and a B2C incident; interaction payloads and slash
//! commands are signed here as Slack signs them (HMAC-SHA256 of `v0:{ts}:{body}` with the
//! signing secret) and posted to `/slack/v1/…`.
//!
//! - A button click acknowledges the alert: the message is updated through its
//!   `response_url`, the Slack thread and the B2C incident get the acknowledgement, the
//!   timeline and the audit log name the mapped identity; the same click sent again acts once.
//! - A forged, stale or replayed signature is 401 and changes nothing; an unmapped user, a
//!   user without the scope, a channel or workspace not allow-listed are refused, ephemerally,
//!   saying why.
//! - The slash command's `status`, `ack`, `resolve`, `silence` and `help` do what they say: a
//!   silence made from Slack holds back the alert's next event.
//! - A webhook that refuses an event makes it undelivered; its delivery-status event, routed to
//!   a `SLACK` action, carries a Redeliver button; a click by an administrator sends the event
//!   again and the message says so; a responder's click is refused.
//!
//! On the embedded bus with SQLite, and on RabbitMQ with PostgreSQL.

use crate::alert_lifecycle::{incident, routing, FakeSlack};
use crate::alerts::{Client, CLIENTS};
use crate::b2c_incident_lifecycle::{post_alarm, seed_pair_with_a_repeat, FakeB2c};
use crate::common::{
    event, postgres_schema, route_everything_to, webhook, Backend, Destination, Tocsin,
};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use wiremock::MockServer;

const SECRET: &str = "e2e-slack-signing-secret";
const TEAM: &str = "T0TEAM";
const CHANNEL: &str = "C0ALERTS";

/// Chat control on: the workspace and channel allowed, alice a responder and an administrator,
/// carol a responder only, bob a reader only.
fn settings() -> String {
    format!(
        r#"{CLIENTS}
[chat]
identities = ["slack:{TEAM}/U0ALICE=alice:responder+configuration", "slack:{TEAM}/U0CAROL=carol:responder", "slack:{TEAM}/U0BOB=bob:consumer"]
[chat.slack]
signing_secret = "{SECRET}"
allowed_teams = ["{TEAM}"]
allowed_channels = ["{CHANNEL}"]
response_hosts = ["127.0.0.1"]
"#
    )
}

/// `pairs` as an `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params("http://form.invalid/", pairs).unwrap();
    url.query().unwrap().to_owned()
}

fn now_s() -> i64 {
    clock::now_epoch_millis() / 1000
}

/// Slack's signature of `body` sent at `ts`.
fn sign(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v0={hex}")
}

/// Posts `body` to `path` with the headers given; the status and the body.
async fn post_signed(tocsin: &Tocsin, path: &str, body: &str, ts: i64, sig: &str) -> (u16, Value) {
    let response = tocsin
        .http
        .post(tocsin.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", ts.to_string())
        .header("X-Slack-Signature", sig)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Posts `body` to `path` signed as Slack signs it, now.
async fn post(tocsin: &Tocsin, path: &str, body: &str) -> (u16, Value) {
    let ts = now_s();
    post_signed(tocsin, path, body, ts, &sign(SECRET, ts, body)).await
}

/// A `block_actions` payload: `user` of `team` clicked `action_id` (value `key`) in `channel`,
/// click `action_ts`, follow-ups to `response_url`.
fn click(
    team: &str,
    channel: &str,
    user: &str,
    action_id: &str,
    key: &str,
    action_ts: &str,
    response_url: &str,
) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": team},
        "api_app_id": "A0TOCSIN",
        "team": {"id": team, "domain": "example"},
        "container": {"type": "message", "message_ts": "1700000000.000001", "channel_id": channel, "is_ephemeral": false},
        "trigger_id": format!("trigger-{action_ts}"),
        "channel": {"id": channel, "name": "alerts"},
        "message": {"type": "message", "ts": "1700000000.000001", "text": "[FATAL] Disk full",
                    "attachments": [{"color": "#a30200", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*Disk full*"}}]}]},
        "response_url": response_url,
        "actions": [{"action_id": action_id, "block_id": "tocsin_controls", "type": "button",
                     "value": key, "text": {"type": "plain_text", "text": "Acknowledge"},
                     "action_ts": action_ts}]
    });
    form(&[("payload", &payload.to_string())])
}

/// A `/tocsin` slash command by `user` in `channel`.
fn command(user: &str, channel: &str, text: &str, trigger_id: &str) -> String {
    form(&[
        ("token", "deprecated"),
        ("team_id", TEAM),
        ("team_domain", "example"),
        ("channel_id", channel),
        ("channel_name", "alerts"),
        ("user_id", user),
        ("user_name", "someone"),
        ("command", "/tocsin"),
        ("text", text),
        ("response_url", "http://127.0.0.1:9/commands"),
        ("trigger_id", trigger_id),
        ("api_app_id", "A0TOCSIN"),
    ])
}

/// The audit log's entries for `target`, as an administrator reads them.
async fn audit_of(ops: &Client<'_>, target: &str) -> Vec<Value> {
    let (status, page) = ops.get(&format!("/tocsin/v1/audit?target={target}")).await;
    assert_eq!(status, 200, "{page}");
    page["results"].as_array().unwrap().clone()
}

/// The stand-ins (Slack's Web API, the B2C site) and Tocsin routing every event to both,
/// with chat control on; requests as `ops` (producer).
struct Stage {
    _slack_server: MockServer,
    slack: FakeSlack,
    _site_server: MockServer,
    site: FakeB2c,
    tocsin: Tocsin,
}

impl Stage {
    async fn start(backend: Backend, env: &[(&str, &str)]) -> Stage {
        let (slack_server, slack) = FakeSlack::serve().await;
        let (site_server, site) = FakeB2c::serve().await;
        let routing = routing(&slack_server.uri(), &site_server.uri());
        let mut tocsin = Tocsin::start_with_settings(backend, &routing, &settings(), env).await;
        (tocsin.user, tocsin.password) = ("ops".into(), "ops-password".into());
        Stage {
            _slack_server: slack_server,
            slack,
            _site_server: site_server,
            site,
            tocsin,
        }
    }
}

/// The on-call client of `CLIENTS` (scope `responder`).
fn oncall(tocsin: &Tocsin) -> Client<'_> {
    Client {
        tocsin,
        name: "oncall",
        password: "oncall-password",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_click_acknowledges_once_and_forgeries_are_refused_embedded_and_sqlite() {
    clicks(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_click_acknowledges_once_and_forgeries_are_refused_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    clicks(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn clicks(backend: Backend, env: &[(&str, &str)]) {
    let Stage {
        slack,
        site,
        tocsin,
        ..
    } = &Stage::start(backend, env).await;
    let hook = Destination::start(|_| 200).await;
    let ops = Client {
        tocsin,
        name: "ops",
        password: "ops-password",
    };
    let oncall = oncall(tocsin);
    let (firing, _, _) = seed_pair_with_a_repeat();
    let key = firing["dedupeKey"].as_str().unwrap().to_owned();
    post_alarm(tocsin, &firing).await;
    let calls = slack.wait_for("the thread's parent", 1, tocsin).await;
    let controls = calls[0].body["attachments"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["block_id"] == "tocsin_controls")
        .cloned()
        .unwrap_or_else(|| panic!("no controls on the parent: {}", calls[0].body));
    assert_eq!(controls["elements"][0]["action_id"], "tocsin_acknowledge");
    assert_eq!(controls["elements"][0]["value"], key.as_str());
    incident(site, "the incident is created", tocsin, &key, |_| true).await;

    // Forged, stale, unsigned: 401, and nothing changes.
    let alice = click(
        TEAM,
        CHANNEL,
        "U0ALICE",
        "tocsin_acknowledge",
        &key,
        "1.000001",
        &hook.url,
    );
    let ts = now_s();
    let forged = sign("not-the-secret", ts, &alice);
    let (status, refused) =
        post_signed(tocsin, "/slack/v1/interactions", &alice, ts, &forged).await;
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("signature"),
        "{refused}"
    );
    let stale = ts - 600;
    let (status, _) = post_signed(
        tocsin,
        "/slack/v1/interactions",
        &alice,
        stale,
        &sign(SECRET, stale, &alice),
    )
    .await;
    assert_eq!(status, 401, "more than five minutes old");
    let tampered = alice.replace("U0ALICE", "U0EVE00");
    let (status, _) = post_signed(
        tocsin,
        "/slack/v1/interactions",
        &tampered,
        ts,
        &sign(SECRET, ts, &alice),
    )
    .await;
    assert_eq!(status, 401, "a body that is not the one signed");
    let (status, _) = post_signed(tocsin, "/slack/v1/interactions", &alice, ts, "").await;
    assert_eq!(status, 401, "unsigned");

    // Refused, ephemerally, saying why: unmapped, without the scope, elsewhere.
    for (team, channel, user, why) in [
        (TEAM, CHANNEL, "U0EVE", "not mapped"),
        (TEAM, CHANNEL, "U0BOB", "lacks the `responder` scope"),
        (TEAM, "C0OTHER", "U0ALICE", "no commands in this channel"),
        ("T0OTHER", CHANNEL, "U0ALICE", "workspace (T0OTHER) may not"),
    ] {
        let before = hook.received().len();
        let body = click(
            team,
            channel,
            user,
            "tocsin_acknowledge",
            &key,
            "2.000001",
            &hook.url,
        );
        let (status, _) = post(tocsin, "/slack/v1/interactions", &body).await;
        assert_eq!(status, 200, "Slack is answered");
        let got = hook.wait_for(why, |r| r.len() > before).await;
        let told = &got[before].body;
        assert_eq!(told["response_type"], "ephemeral", "{told}");
        assert!(
            told["text"].as_str().unwrap().contains(why),
            "{why}: {told}"
        );
    }
    let (_, found) = oncall.get(&format!("/tocsin/v1/alerts/{key}")).await;
    assert_eq!(
        found["alert"]["state"], "firing",
        "nothing changed: {found}"
    );

    // Alice's click acknowledges; the message says who did it.
    let before = hook.received().len();
    let ts = now_s();
    let signature = sign(SECRET, ts, &alice);
    let (status, _) = post_signed(tocsin, "/slack/v1/interactions", &alice, ts, &signature).await;
    assert_eq!(status, 200);
    let found = oncall.wait_for_state(&key, "acknowledged").await;
    let updated = hook
        .wait_for("the message update", |r| r.len() > before)
        .await[before]
        .body
        .clone();
    assert_eq!(updated["replace_original"], true, "{updated}");
    assert_eq!(
        updated["attachments"][0]["color"], "#a30200",
        "the message is kept"
    );
    assert!(
        updated
            .to_string()
            .contains("Acknowledged by <@U0ALICE> (as `alice`)"),
        "{updated}"
    );
    let acts: Vec<&Value> = found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == "action")
        .collect();
    assert_eq!(acts.len(), 1, "{found}");
    assert_eq!(
        (&acts[0]["who"], &acts[0]["via"]),
        (&json!("alice"), &json!("slack"))
    );
    let calls = slack
        .wait_for("the acknowledgement's reply", 2, tocsin)
        .await;
    assert!(
        calls[1].body.to_string().contains("Acknowledged by alice"),
        "the thread hears of it: {:?}",
        calls[1]
    );
    let on_site = incident(site, "the acknowledgement's thread", tocsin, &key, |i| {
        i.threads.len() == 2
    })
    .await;
    assert!(
        on_site.threads[1].contains("Acknowledged by alice (slack)"),
        "{:?}",
        on_site.threads
    );

    // The same request again is a replay; the same click re-sent (re-signed) acts once.
    let (status, _) = post_signed(tocsin, "/slack/v1/interactions", &alice, ts, &signature).await;
    assert_eq!(status, 401, "a replayed signature");
    let before = hook.received().len();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // another timestamp
    let (status, _) = post(tocsin, "/slack/v1/interactions", &alice).await;
    assert_eq!(status, 200);
    let again = hook
        .wait_for("the repeat's answer", |r| r.len() > before)
        .await[before]
        .body
        .clone();
    assert_eq!(again["response_type"], "ephemeral", "{again}");
    assert!(
        again["text"].as_str().unwrap().contains("done already"),
        "{again}"
    );
    let audit = audit_of(&ops, &key).await;
    let done: Vec<&Value> = audit.iter().filter(|e| e["outcome"] == "done").collect();
    assert_eq!(done.len(), 1, "acted once: {audit:#?}");
    assert_eq!(done[0]["who"], "alice");
    assert_eq!(done[0]["via"], "slack");
    assert_eq!(done[0]["action"], "acknowledge");
    let (_, after) = oncall.get(&format!("/tocsin/v1/alerts/{key}")).await;
    assert_eq!(
        after["alert"]["events"], found["alert"]["events"],
        "no second act"
    );
    let refusals = audit_of(&ops, CHANNEL).await;
    assert!(
        refusals
            .iter()
            .any(|e| e["who"] == format!("slack:{TEAM}/U0EVE") && e["outcome"] == "refused"),
        "refusals are audited: {refusals:#?}"
    );
    // The audit log is an administrator's: a responder may not read it.
    let (status, _) = oncall.get("/tocsin/v1/audit").await;
    assert_eq!(status, 403);
    assert!(
        !tocsin.log().contains(SECRET),
        "the signing secret is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_commands_do_what_they_say_embedded_and_sqlite() {
    commands(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slash_commands_do_what_they_say_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    commands(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn commands(backend: Backend, env: &[(&str, &str)]) {
    let Stage {
        slack,
        site,
        tocsin,
        ..
    } = &Stage::start(backend, env).await;
    let oncall = oncall(tocsin);
    let (firing, repeat, _) = seed_pair_with_a_repeat();
    let key = firing["dedupeKey"].as_str().unwrap().to_owned();
    post_alarm(tocsin, &firing).await;
    slack.wait_for("the thread's parent", 1, tocsin).await;
    oncall.wait_for_state(&key, "firing").await;
    let run = |text: &str, trigger: &str| command("U0ALICE", CHANNEL, text, trigger);

    let (_, elsewhere) = post(
        tocsin,
        "/slack/v1/commands",
        &command("U0ALICE", "C0OTHER", "help", "t-elsewhere"),
    )
    .await;
    let elsewhere = elsewhere["text"].as_str().unwrap().to_owned();
    assert!(
        elsewhere.contains("no commands in this channel"),
        "not even help: {elsewhere}"
    );
    let (status, help) = post(tocsin, "/slack/v1/commands", &run("help", "t-help")).await;
    assert_eq!(status, 200);
    assert!(
        help["text"].as_str().unwrap().contains("/tocsin silence"),
        "{help}"
    );
    let (_, status_line) = post(tocsin, "/slack/v1/commands", &run("status", "t-status")).await;
    let text = status_line["text"].as_str().unwrap();
    assert!(text.contains("*1* firing") && text.contains(&key), "{text}");
    let (_, wrong) = post(tocsin, "/slack/v1/commands", &run("reboot db-1", "t-x")).await;
    assert!(
        wrong["text"]
            .as_str()
            .unwrap()
            .contains("unknown command `reboot`"),
        "{wrong}"
    );
    let (_, refused) = post(
        tocsin,
        "/slack/v1/commands",
        &command("U0EVE", CHANNEL, &format!("ack {key}"), "t-eve"),
    )
    .await;
    assert!(
        refused["text"].as_str().unwrap().contains("not mapped"),
        "{refused}"
    );
    let (status, _) = post_signed(
        tocsin,
        "/slack/v1/commands",
        &run(&format!("ack {key}"), "t-forged"),
        now_s(),
        "v0=00",
    )
    .await;
    assert_eq!(status, 401);

    // ack: once per command, even if Slack sends it twice.
    let ack = run(&format!("ack {key}"), "t-ack");
    let (_, acked) = post(tocsin, "/slack/v1/commands", &ack).await;
    assert!(
        acked["text"]
            .as_str()
            .unwrap()
            .contains("Acknowledged by <@U0ALICE>"),
        "{acked}"
    );
    oncall.wait_for_state(&key, "acknowledged").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, twice) = post(tocsin, "/slack/v1/commands", &ack).await;
    assert!(
        twice["text"].as_str().unwrap().contains("done already"),
        "{twice}"
    );

    // silence: the alert's next event is held back from its destinations.
    let (_, silenced) = post(
        tocsin,
        "/slack/v1/commands",
        &run(&format!("silence {key} 1h disk swap"), "t-silence"),
    )
    .await;
    assert!(
        silenced["text"]
            .as_str()
            .unwrap()
            .contains("Silenced for 60 min"),
        "{silenced}"
    );
    let (status, silences) = oncall.get("/tocsin/v1/silences?state=active").await;
    assert_eq!(status, 200);
    let silence = &silences["results"][0];
    assert_eq!(silence["createdBy"], "alice");
    assert_eq!(silence["comment"], "disk swap");
    post_alarm(tocsin, &repeat).await;
    let found = oncall
        .wait_for_alert(&key, "had the repeat", |found| {
            found["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|line| line["silencedBy"] == silence["id"])
        })
        .await;
    assert!(found.to_string().contains("silencedBy"), "{found}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let incidents = site.incidents_for(&key);
    assert_eq!(
        incidents[0].threads.len(),
        2,
        "the incident got the acknowledgement, not the silenced repeat: {:?}",
        incidents[0].threads
    );

    // resolve: the incident is solved.
    let (_, resolved) = post(
        tocsin,
        "/slack/v1/commands",
        &run(&format!("resolve {key}"), "t-resolve"),
    )
    .await;
    assert!(
        resolved["text"]
            .as_str()
            .unwrap()
            .contains("Resolved by <@U0ALICE>"),
        "{resolved}"
    );
    oncall.wait_for_state(&key, "resolved").await;
    site.wait_for("the incident is solved", tocsin, |s| {
        s.incidents
            .values()
            .any(|i| i.key == key && i.status != "Unresolved")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_are_listed_and_sent_again_from_slack_embedded_and_sqlite() {
    redelivery(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_are_listed_and_sent_again_from_slack_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    redelivery(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn redelivery(backend: Backend, env: &[(&str, &str)]) {
    let hook = Destination::start(|_| 500).await;
    let routing = route_everything_to(vec![webhook(
        "to-hook",
        &hook.url,
        json!({"retryMaxAttempts": "1"}),
    )]);
    let mut tocsin = Tocsin::start_with_settings(backend, &routing, &settings(), env).await;
    (tocsin.user, tocsin.password) = ("ops".into(), "ops-password".into());
    let tocsin = &tocsin;
    tocsin.send(&event("DiskFull", "disk-1")).await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;
    let run = |user: &str, text: &str, trigger: &str| command(user, CHANNEL, text, trigger);

    let (_, refused) = post(
        tocsin,
        "/slack/v1/commands",
        &run("U0BOB", "undelivered", "t-bob"),
    )
    .await;
    let refused = refused["text"].as_str().unwrap().to_owned();
    assert!(
        refused.contains("lacks the `configuration` scope"),
        "{refused}"
    );
    let (_, listed) = post(
        tocsin,
        "/slack/v1/commands",
        &run("U0ALICE", "undelivered", "t-list"),
    )
    .await;
    let listed = listed["text"].as_str().unwrap().to_owned();
    assert!(listed.contains("`to-hook`: 1"), "{listed}");

    hook.answer(200);
    let redeliver = run("U0ALICE", "redeliver to-hook since 1h", "t-redeliver");
    let (_, sent) = post(tocsin, "/slack/v1/commands", &redeliver).await;
    let sent = sent["text"].as_str().unwrap().to_owned();
    assert!(
        sent.contains("Sent 1 undelivered event(s) of `to-hook`"),
        "{sent}"
    );
    hook.wait_for("the redelivery", |r| r.iter().any(|got| got.status == 200))
        .await;
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 0)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, twice) = post(tocsin, "/slack/v1/commands", &redeliver).await;
    let twice = twice["text"].as_str().unwrap().to_owned();
    assert!(twice.contains("done already"), "{twice}");
    let ops = Client {
        tocsin,
        name: "ops",
        password: "ops-password",
    };
    let audit = audit_of(&ops, "to-hook").await;
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(
        (&audit[0]["who"], &audit[0]["action"], &audit[0]["outcome"]),
        (&json!("alice"), &json!("redeliver"), &json!("done"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeliver_button_sends_the_undelivered_events_again_embedded_and_sqlite() {
    redeliver_button(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeliver_button_sends_the_undelivered_events_again_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    redeliver_button(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn redeliver_button(backend: Backend, env: &[(&str, &str)]) {
    // The webhook refuses for good (a 4xx); its undelivered status events go to a SLACK
    // action, whose incoming webhook (and the clicks' response_url) are stand-ins.
    let hook = Destination::start(|_| 404).await;
    let slack = Destination::start(|_| 200).await;
    let responses = Destination::start(|_| 200).await;
    let mut to_hook = webhook("to-hook", &hook.url, json!({"retryMaxAttempts": "1"}));
    to_hook["enableDeliveryStatus"] = json!(true);
    let routing = json!({
        "actions": [
            to_hook,
            {"name": "slack", "type": "SLACK", "state": "ENABLED", "properties": {"webhookUrl": slack.url}}
        ],
        "conditions": [
            {"name": "disk", "propertyKey": "eventType", "predicate": "EQUALS", "propertyValue": "DiskFull"},
            {"name": "undelivered", "propertyKey": "tags.tocsin:deliveryStatus", "predicate": "EQUALS", "propertyValue": "UNDELIVERED"}
        ],
        "subscriptions": [
            {"name": "alerts", "state": "ENABLED", "conditions": ["disk"], "actions": ["to-hook"]},
            {"name": "watch-delivery", "state": "ENABLED", "conditions": ["undelivered"], "actions": ["slack"]}
        ]
    });
    let mut tocsin = Tocsin::start_with_settings(backend, &routing, &settings(), env).await;
    (tocsin.user, tocsin.password) = ("ops".into(), "ops-password".into());
    let tocsin = &tocsin;
    let ops = Client {
        tocsin,
        name: "ops",
        password: "ops-password",
    };
    let sent = tocsin.send(&event("DiskFull", "disk-1")).await;

    // The status event's message carries the button: to-hook, since that event's time.
    let posted = slack
        .wait_for("the undelivered status", |r| !r.is_empty())
        .await[0]
        .body
        .clone();
    assert!(
        posted["text"]
            .as_str()
            .unwrap()
            .contains("Undelivered by to-hook"),
        "{posted}"
    );
    let redeliver = posted["attachments"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["block_id"] == "tocsin_redeliver")
        .unwrap_or_else(|| panic!("no Redeliver button: {posted}"))
        .clone();
    let button = &redeliver["elements"][0];
    assert_eq!(button["action_id"], "tocsin_redeliver");
    assert_eq!(button["text"]["text"], "Redeliver to-hook");
    let value = button["value"].as_str().unwrap().to_owned();
    let control: Value = serde_json::from_str(&value).unwrap();
    assert_eq!(control["action"], "to-hook", "{value}");
    let since = control["since"].as_i64().unwrap();
    assert!((now_s() - 60..=now_s()).contains(&since), "{value}");
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 1)
        .await;

    // A responder may not redeliver: refused, ephemerally, and nothing is sent.
    let carol = click(
        TEAM,
        CHANNEL,
        "U0CAROL",
        "tocsin_redeliver",
        &value,
        "3.000001",
        &responses.url,
    );
    let (status, _) = post(tocsin, "/slack/v1/interactions", &carol).await;
    assert_eq!(status, 200);
    let told = responses
        .wait_for("carol's refusal", |r| r.len() == 1)
        .await[0]
        .body
        .clone();
    assert_eq!(told["response_type"], "ephemeral", "{told}");
    assert!(
        told["text"]
            .as_str()
            .unwrap()
            .contains("`carol` lacks the `configuration` scope"),
        "{told}"
    );
    assert_eq!(hook.received().len(), 1, "nothing was sent again");

    // Alice's click sends it again, to the webhook now answering 200; the message says so.
    hook.answer(200);
    let alice = click(
        TEAM,
        CHANNEL,
        "U0ALICE",
        "tocsin_redeliver",
        &value,
        "4.000001",
        &responses.url,
    );
    let (status, _) = post(tocsin, "/slack/v1/interactions", &alice).await;
    assert_eq!(status, 200);
    let got = hook
        .wait_for("the redelivery", |r| r.iter().any(|got| got.status == 200))
        .await;
    assert_eq!(
        got[1].body["id"], sent["id"],
        "the undelivered event itself"
    );
    let updated = responses
        .wait_for("the message update", |r| r.len() == 2)
        .await[1]
        .body
        .clone();
    assert_eq!(updated["replace_original"], true, "{updated}");
    assert!(
        updated
            .to_string()
            .contains("Sent 1 undelivered event(s) of `to-hook` again, by <@U0ALICE> (as `alice`)"),
        "{updated}"
    );
    tocsin
        .wait_for_count("/cf/consumer/v1/undelivered-events", 0)
        .await;

    // The same click re-sent acts once; the audit log names alice, and carol's refusal.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = post(tocsin, "/slack/v1/interactions", &alice).await;
    assert_eq!(status, 200);
    let again = responses
        .wait_for("the repeat's answer", |r| r.len() == 3)
        .await[2]
        .body
        .clone();
    assert!(
        again["text"].as_str().unwrap().contains("done already"),
        "{again}"
    );
    let audit = audit_of(&ops, "to-hook").await;
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(
        (
            &audit[0]["who"],
            &audit[0]["via"],
            &audit[0]["action"],
            &audit[0]["outcome"]
        ),
        (
            &json!("alice"),
            &json!("slack"),
            &json!("redeliver"),
            &json!("done")
        )
    );
    assert!(
        audit[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("reported since "),
        "{audit:#?}"
    );
    let refusals = audit_of(&ops, CHANNEL).await;
    assert!(
        refusals
            .iter()
            .any(|e| e["who"] == format!("slack:{TEAM}/U0CAROL")
                && e["action"] == "tocsin_redeliver"
                && e["outcome"] == "refused"),
        "{refusals:#?}"
    );
    assert_eq!(hook.received().len(), 2, "sent again once");
}

/// The rate limit is per process and per identity (in memory): one stack shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_chat_is_refused() {
    let tocsin = &Tocsin::start_with_settings(
        Backend::Embedded,
        &serde_json::Value::Null,
        &settings(),
        &[("TOCSIN_CHAT_ACTS_PER_MINUTE", "2")],
    )
    .await;
    let status = |user: &'static str, n: u32| async move {
        let body = command(user, CHANNEL, "status", &format!("t-{user}-{n}"));
        let (code, answer) = post(tocsin, "/slack/v1/commands", &body).await;
        assert_eq!(code, 200);
        answer["text"].as_str().unwrap().to_owned()
    };
    for n in 0..2 {
        let text = status("U0ALICE", n).await;
        assert!(text.contains("firing"), "{text}");
    }
    let third = status("U0ALICE", 2).await;
    assert!(
        third.contains("`alice` is acting too fast; retry in"),
        "{third}"
    );
    assert!(
        tocsin.log().contains("a chat request was refused"),
        "the refusal is logged"
    );
}
