//! Time intervals through the real binary: a configuration imported with a time interval that
//! contains every instant (all weekdays, `00:00`–`24:00` UTC) as one subscription's mute
//! interval keeps that subscription's webhook stand-in empty while another subscription's gets
//! every event; a subscription active only in a month that is not the current one gets nothing
//! either; `tocsin_events_muted_total` counts the events; and an import with a bad interval, or
//! a subscription naming one that does not exist, is refused 400 naming the field, changing
//! nothing. And on both stacks: a `CLOSE` reaches a muted subscription that heard its alert
//! open, the timeline names what a window muted, and when the window ends (here: the
//! configuration no longer mutes) an alert still firing is delivered to the muted
//! subscription once, in its latest state, while one resolved meanwhile is not.

use crate::common::{
    error_message, event, postgres_schema, webhook, Backend, Destination, Received, Tocsin,
};
use crate::shared_store::shared_store;
use serde_json::{json, Value};
use std::time::Duration;

/// A month that is not the current one (in UTC), by number.
fn another_month() -> u32 {
    let now = clock::now_epoch_millis() / 1000;
    // Days since the epoch to a civil month, as in Howard Hinnant's `civil_from_days`.
    let days = now.div_euclid(86_400) + 719_468;
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    (month as u32 % 12) + 1
}

fn configuration(open: &str, muted: &str, inactive: &str) -> Value {
    json!({
        "actions": [webhook("open", open, json!({})), webhook("muted", muted, json!({})), webhook("inactive", inactive, json!({}))],
        "subscriptions": [
            {"name": "open", "state": "ENABLED", "actions": ["open"]},
            {"name": "muted", "state": "ENABLED", "actions": ["muted"], "muteTimeIntervals": ["always"]},
            {"name": "inactive", "state": "ENABLED", "actions": ["inactive"], "activeTimeIntervals": ["another-month"]}
        ],
        "timeIntervals": [
            {"name": "always", "intervals": [{"weekdays": ["sunday:saturday"], "times": [{"startTime": "00:00", "endTime": "24:00"}], "location": "UTC"}]},
            {"name": "another-month", "intervals": [{"months": [another_month().to_string()], "location": "Europe/Berlin"}]}
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_and_inactive_subscriptions_deliver_nothing_and_bad_intervals_are_refused() {
    let open = Destination::start(|_| 200).await;
    let muted = Destination::start(|_| 200).await;
    let inactive = Destination::start(|_| 200).await;
    let tocsin = Tocsin::start(
        Backend::Embedded,
        &configuration(&open.url, &muted.url, &inactive.url),
        &[],
    )
    .await;
    const PATH: &str = "/cf/configuration/v1/configuration";
    let exported = || async {
        tocsin
            .get(PATH)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = exported().await;
    assert_eq!(
        before["timeIntervals"].as_array().unwrap().len(),
        2,
        "{before}"
    );

    for id in ["a", "b"] {
        tocsin.send(&event("HighCPU", id)).await;
    }
    open.wait_for("both events on the open subscription", |r| r.len() == 2)
        .await;
    tocsin.wait_until_idle().await;
    assert_eq!(
        muted.received().len(),
        0,
        "the muted subscription delivered"
    );
    assert_eq!(
        inactive.received().len(),
        0,
        "the inactive subscription delivered"
    );
    let counted = tocsin
        .metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix("tocsin_events_muted_total "))
        .map(|value| value.parse::<f64>().unwrap());
    assert_eq!(counted, Some(2.0));

    // Bad intervals are refused naming the field, and nothing changes.
    let mut bad_time = before.clone();
    bad_time["timeIntervals"][0]["intervals"][0]["times"][0]["startTime"] = json!("25:00");
    let mut unknown_zone = before.clone();
    unknown_zone["timeIntervals"][1]["intervals"][0]["location"] = json!("Europe/Atlantis");
    let mut unknown_name = before.clone();
    unknown_name["subscriptions"][1]["muteTimeIntervals"] = json!(["nights"]);
    let mut removed = before.clone();
    removed["timeIntervals"].as_array_mut().unwrap().remove(0);
    for (body, expected) in [
        (
            bad_time,
            "time interval `always`: `intervals[0].times[0].startTime`",
        ),
        (
            unknown_zone,
            "time interval `another-month`: `intervals[0].location`",
        ),
        (
            unknown_name,
            "subscription `muted`: `muteTimeIntervals` names time interval `nights`",
        ),
        (
            removed,
            "subscription `muted`: `muteTimeIntervals` names time interval `always`",
        ),
    ] {
        let response = tocsin.post(PATH, &body).send().await.unwrap();
        let message = error_message(response, 400).await;
        assert!(message.contains(expected), "{message} lacks {expected}");
    }
    assert_eq!(exported().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_lets_a_close_through_and_its_end_releases_what_it_muted_embedded_and_sqlite() {
    window_end(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_lets_a_close_through_and_its_end_releases_what_it_muted_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    window_end(Backend::Rabbitmq, &shared_store(&url)).await;
}

/// Subscription `night` sends to `pager`, muted by `mute` (`always` or `never`); `day` sends
/// every event to `chat`.
fn night_and_day(pager: &str, chat: &str, mute: &str) -> Value {
    json!({
        "actions": [webhook("pager", pager, json!({})), webhook("chat", chat, json!({}))],
        "subscriptions": [
            {"name": "night", "state": "ENABLED", "actions": ["pager"], "muteTimeIntervals": [mute]},
            {"name": "day", "state": "ENABLED", "actions": ["chat"]}
        ],
        "timeIntervals": [
            {"name": "always", "intervals": [{"weekdays": ["sunday:saturday"]}]},
            {"name": "never", "intervals": [{"years": ["2000"]}]}
        ]
    })
}

/// An event of alert `key` whose subject says which and its status.
fn alert_event(key: &str, status: &str) -> Value {
    let mut e = event("DiskFull", key);
    e["subject"] = json!(format!("{key} {status}"));
    e["tags"]["ans:status"] = json!(status);
    e
}

fn subjects(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.body["subject"].as_str().unwrap().to_owned())
        .collect()
}

async fn window_end(backend: Backend, env: &[(&str, &str)]) {
    const PATH: &str = "/cf/configuration/v1/configuration";
    let pager = Destination::start(|_| 200).await;
    let chat = Destination::start(|_| 200).await;
    let tocsin = Tocsin::start(backend, &night_and_day(&pager.url, &chat.url, "never"), env).await;
    let import = |mute: &'static str| {
        let body = night_and_day(&pager.url, &chat.url, mute);
        let tocsin = &tocsin;
        async move {
            let response = tocsin.post(PATH, &body).send().await.unwrap();
            assert!(
                response.status().is_success(),
                "{}",
                response.text().await.unwrap()
            );
        }
    };

    // `heard` opens while `night` listens.
    tocsin.send(&alert_event("heard", "CREATE")).await;
    pager.wait_for("heard opening", |r| r.len() == 1).await;

    // The window opens: `quiet` opens and changes, `gone` opens and closes, `heard` closes.
    import("always").await;
    for (key, status) in [
        ("quiet", "CREATE"),
        ("quiet", "UPDATE"),
        ("gone", "CREATE"),
        ("gone", "CLOSE"),
        ("heard", "CLOSE"),
    ] {
        tocsin.send(&alert_event(key, status)).await;
    }
    chat.wait_for("every event on the unmuted subscription", |r| r.len() == 6)
        .await;
    tocsin.wait_until_idle().await;
    assert_eq!(
        subjects(&pager.received()),
        ["heard CREATE", "heard CLOSE"],
        "the muted subscription heard only the close of what it heard open"
    );
    let quiet = tocsin.page("/tocsin/v1/alerts/quiet").await;
    assert_eq!(quiet["alert"]["mutedFor"], json!(["night"]), "{quiet}");
    let marks: Vec<&Value> = quiet["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == "event")
        .map(|line| &line["mutedFor"])
        .collect();
    assert_eq!(marks, [&json!(["night"]), &json!(["night"])], "{quiet}");

    // The window ends: `quiet`, still firing, reaches `night` once, as it is now; `gone`,
    // resolved meanwhile, does not.
    import("never").await;
    let released = pager
        .wait_for("the release of quiet", |r| r.len() == 3)
        .await;
    assert_eq!(released[2].body["subject"], "quiet UPDATE");
    assert_eq!(released[2].body["tags"]["ans:sourceEventId"], "quiet");
    // Two more looks of the releaser: nothing again.
    tokio::time::sleep(2 * router::mutes::release::LOOK_EVERY + Duration::from_secs(1)).await;
    tocsin.wait_until_idle().await;
    assert_eq!(
        pager.received().len(),
        3,
        "{:?}",
        subjects(&pager.received())
    );
    let quiet = tocsin.page("/tocsin/v1/alerts/quiet").await;
    assert!(quiet["alert"].get("mutedFor").is_none(), "{quiet}");
}
