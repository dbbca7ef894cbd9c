//! Action links in Teams cards and emails (issue 15), through the real binary: an alert goes
//! to a Teams stand-in and, by a real SMTP exchange on loopback, to two mailboxes, one of them
//! mapped to the identity `alice`.
//!
//! - The card carries Acknowledge, Resolve and Silence 1 h links for its channel; Alice's mail
//!   (hers alone) carries the same acts bound to her address; the unmapped mailbox's carries
//!   none.
//! - Opening a link (GET) shows a confirmation page and changes nothing; its POST needs the
//!   page's anti-forgery token and this site's origin; it acts once (then 410), as `alice` for
//!   her mail's link — in the timeline and the audit log.
//! - A Teams link's POST sends the person to sign in to the console and back, and acts as the
//!   signed-in client.
//! - An expired link is 410, a forged one 404.
//!
//! On the embedded bus with SQLite, and on RabbitMQ with PostgreSQL where a second process
//! serves the links the first one minted (a link used on one is used on both).

use crate::alerts::{Client, CLIENTS};
use crate::common::{event, postgres_schema, route_everything_to, Backend, Destination, Tocsin};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use web::act_link::{ActLinks, Audience, LinkSettings};

const TOKEN_SECRET: &str = "act-links-e2e-token-secret";
const PUBLIC_URL: &str = "https://tocsin.example";

fn settings() -> String {
    format!(
        r#"{CLIENTS}
[auth]
token_secret = "{TOKEN_SECRET}"
[links]
public_url = "{PUBLIC_URL}"
[chat]
identities = ["email:Alice@Example.com=alice:responder", "email:bob@example.com=bob:consumer"]
"#
    )
}

/// One mail as the SMTP stand-in took it: its recipients and its data, quoted-printable undone.
#[derive(Debug, Clone)]
struct Mail {
    to: Vec<String>,
    data: String,
}

/// A real SMTP server on loopback (plain, as a local relay) that accepts every mail.
async fn smtp_server() -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&mails);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let kept = Arc::clone(&kept);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 stand-in ESMTP\r\n").await.unwrap();
                let mut to = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or_default().to_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" => b"250 stand-in\r\n",
                        "RCPT" => {
                            to.push(line.trim_start_matches("RCPT TO:").to_owned());
                            b"250 2.1.5 Ok\r\n"
                        }
                        "DATA" => {
                            write.write_all(b"354 go ahead\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(&line);
                                data.push('\n');
                            }
                            let data = data.replace("=\n", "").replace("=3D", "=");
                            let to = std::mem::take(&mut to);
                            kept.lock().unwrap().push(Mail { to, data });
                            b"250 2.0.0 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 Ok\r\n",
                    };
                    write.write_all(answer).await.unwrap();
                }
            });
        }
    });
    (port, mails)
}

async fn wait_for_mails(mails: &Arc<Mutex<Vec<Mail>>>, n: usize) -> Vec<Mail> {
    for _ in 0..300 {
        if mails.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let got = mails.lock().unwrap().clone();
    assert!(got.len() >= n, "{n} mails expected: {got:#?}");
    got
}

/// The path of every action link in `text`, by its label (`Acknowledge: https://…`).
fn mail_links(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (label, url) = line.split_once(": ")?;
            let path = url.strip_prefix(PUBLIC_URL)?;
            path.starts_with("/tocsin/v1/act/")
                .then(|| (label.to_owned(), path.to_owned()))
        })
        .collect()
}

/// A browser-like client that does not follow redirects and sends this site's `Origin`.
struct Browser {
    http: reqwest::Client,
}

impl Browser {
    fn new() -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser { http }
    }

    async fn get(&self, tocsin: &Tocsin, path: &str) -> (u16, String) {
        let response = self.http.get(tocsin.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// POSTs the form `pairs` to `path` from `origin` (this site's own when `None`), with
    /// `cookie`: the status, the `Location` and `Set-Cookie` headers, and the page.
    async fn post(
        &self,
        tocsin: &Tocsin,
        path: &str,
        pairs: &[(&str, &str)],
        origin: Option<&str>,
        cookie: Option<&str>,
    ) -> (u16, String, String, String) {
        let own = tocsin.url("");
        let own = own.trim_end_matches('/');
        let mut request = self
            .http
            .post(tocsin.url(path))
            .header("origin", origin.unwrap_or(own))
            .form(pairs);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (location, set_cookie) = (header("location"), header("set-cookie"));
        let status = response.status().as_u16();
        (status, location, set_cookie, response.text().await.unwrap())
    }
}

/// The anti-forgery token in a confirmation page.
fn form_token(page: &str) -> String {
    let (_, rest) = page
        .split_once("name=\"form\" value=\"")
        .unwrap_or_else(|| panic!("no confirmation form in:\n{page}"));
    rest.split('"').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_and_email_links_confirm_then_act_once_embedded_and_sqlite() {
    links(Backend::Embedded, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_and_email_links_confirm_then_act_once_rabbitmq_and_postgres() {
    let url = postgres_schema().await;
    links(Backend::Rabbitmq, &crate::shared_store::shared_store(&url)).await;
}

async fn links(backend: Backend, env: &[(&str, &str)]) {
    let teams = Destination::start(|_| 200).await;
    let (smtp_port, mails) = smtp_server().await;
    let routing = route_everything_to(vec![
        json!({"name": "teams-ops", "type": "MICROSOFT_TEAMS", "state": "ENABLED",
               "properties": {"webhookUrl": format!("{}/workflows/ops", teams.url)}}),
        json!({"name": "mail-ops", "type": "EMAIL", "state": "ENABLED",
               "properties": {"destination": "alice@example.com, ops@example.com",
                              "from": "tocsin@example.com", "smtpHost": "127.0.0.1",
                              "smtpPort": smtp_port.to_string(), "smtpSecurity": "NONE"}}),
    ]);
    let first = Tocsin::start_with_settings(backend, &routing, &settings(), env).await;
    // On PostgreSQL a second process serves the links the first minted.
    let sibling = match backend {
        Backend::Rabbitmq => Some(first.sibling().await),
        Backend::Embedded => None,
    };
    let tocsin = sibling.as_ref().unwrap_or(&first);
    let ops = Client {
        tocsin: &first,
        name: "ops",
        password: "ops-password",
    };
    let oncall = Client {
        tocsin,
        name: "oncall",
        password: "oncall-password",
    };
    let mut open = event("DiskFull", "disk-db-1");
    open["subject"] = json!("Disk full on db-1");
    let (status, body) = ops
        .post("/cf/producer/v1/resource-events", Some(open))
        .await;
    assert_eq!(status, 202, "{body}");

    // The card: the acts as links for its channel.
    let card = teams.wait_for("the card", |r| !r.is_empty()).await[0]
        .body
        .clone();
    let card_links: Vec<(String, String)> = card["attachments"][0]["content"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| {
            let path = a["url"].as_str()?.strip_prefix(PUBLIC_URL)?;
            Some((a["title"].as_str()?.to_owned(), path.to_owned()))
        })
        .collect();
    let titles: Vec<&str> = card_links.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(titles, ["Acknowledge", "Resolve", "Silence 1 h"], "{card}");

    // The mails: Alice's own with her links, the shared one without.
    let sent = wait_for_mails(&mails, 2).await;
    let (alices, others): (Vec<&Mail>, Vec<&Mail>) =
        sent.iter().partition(|m| m.to == ["<alice@example.com>"]);
    assert_eq!(others.len(), 1, "{sent:#?}");
    assert_eq!(others[0].to, ["<ops@example.com>"]);
    assert!(mail_links(&others[0].data).is_empty(), "{}", others[0].data);
    let alice_links = mail_links(&alices[0].data);
    let labels: Vec<&str> = alice_links.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["Acknowledge", "Resolve", "Silence 1 h"]);
    let acknowledge = &alice_links[0].1;

    // Opening a link changes nothing, however often.
    let browser = Browser::new();
    for _ in 0..2 {
        let (status, page) = browser.get(tocsin, acknowledge).await;
        assert_eq!(status, 200, "{page}");
        assert!(
            page.contains("Confirm to act as <strong>alice</strong>"),
            "{page}"
        );
        assert!(page.contains("Disk full on db-1"), "{page}");
    }
    let (_, found) = oncall.get("/tocsin/v1/alerts/disk-db-1").await;
    assert_eq!(found["alert"]["state"], "firing", "{found}");

    // The POST needs the page's token and this site's origin.
    let (_, page) = browser.get(tocsin, acknowledge).await;
    let token = form_token(&page);
    let (status, ..) = browser
        .post(tocsin, acknowledge, &[("form", "forged")], None, None)
        .await;
    assert_eq!(status, 403, "a form without the page's token");
    let evil = Some("https://evil.example");
    let (status, ..) = browser
        .post(tocsin, acknowledge, &[("form", &token)], evil, None)
        .await;
    assert_eq!(status, 403, "a form from another site");
    let (_, found) = oncall.get("/tocsin/v1/alerts/disk-db-1").await;
    assert_eq!(found["alert"]["state"], "firing", "{found}");

    // Confirmed: acknowledged as alice, once.
    let (status, _, _, page) = browser
        .post(tocsin, acknowledge, &[("form", &token)], None, None)
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("acknowledged by alice"), "{page}");
    let found = oncall.wait_for_state("disk-db-1", "acknowledged").await;
    let acts: Vec<&Value> = found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["kind"] == "action")
        .collect();
    assert_eq!(acts.len(), 1, "{found}");
    assert_eq!(
        (&acts[0]["who"], &acts[0]["via"]),
        (&json!("alice"), &json!("email"))
    );
    let (status, ..) = browser
        .post(tocsin, acknowledge, &[("form", &token)], None, None)
        .await;
    assert_eq!(status, 410, "a link acts once");
    let (status, page) = browser.get(&first, acknowledge).await;
    assert_eq!(
        status, 410,
        "and says so when opened again, on any process: {page}"
    );
    assert!(page.contains("used already"), "{page}");
    let (status, audit) = ops.get("/tocsin/v1/audit?target=disk-db-1").await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["results"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["who"] == "alice" && e["via"] == "email" && e["action"] == "acknowledge"),
        "{audit}"
    );

    // A Teams link: whoever uses it signs in first, and acts as themselves.
    let resolve = &card_links[1].1;
    let (status, page) = browser.get(tocsin, resolve).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("sign in to the console"), "{page}");
    let token = form_token(&page);
    let (status, location, ..) = browser
        .post(tocsin, resolve, &[("form", &token)], None, None)
        .await;
    assert_eq!(status, 303);
    assert_eq!(location, format!("/ui/sign-in?next={resolve}"));
    let (status, page) = browser.get(tocsin, &location).await;
    assert_eq!(status, 200);
    // MiniJinja writes `/` as `&#x2f;` in attributes; the browser reads it back.
    let kept = format!("name=\"next\" value=\"{}\"", resolve.replace('/', "&#x2f;"));
    assert!(page.contains(&kept), "{page}");
    let signed_in = [
        ("client", "oncall"),
        ("secret", "oncall-password"),
        ("next", resolve.as_str()),
    ];
    let (status, back, cookie, _) = browser
        .post(tocsin, "/ui/sign-in", &signed_in, None, None)
        .await;
    assert_eq!(
        (status, back.as_str()),
        (303, resolve.as_str()),
        "back to the link"
    );
    assert!(cookie.contains("Path=/;"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let (status, _, _, page) = browser
        .post(tocsin, resolve, &[("form", &token)], None, Some(&cookie))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("resolved by oncall"), "{page}");
    let found = oncall.wait_for_state("disk-db-1", "resolved").await;
    let last = found["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|line| line["kind"] == "action")
        .cloned()
        .unwrap();
    assert_eq!(
        (&last["who"], &last["via"]),
        (&json!("oncall"), &json!("teams"))
    );

    // Alice's Silence link: a silence of the alert for an hour, made by alice.
    let silence = &alice_links[2].1;
    let (_, page) = browser.get(tocsin, silence).await;
    let (status, _, _, page) = browser
        .post(tocsin, silence, &[("form", &form_token(&page))], None, None)
        .await;
    assert_eq!(status, 200, "{page}");
    let (_, silences) = oncall.get("/tocsin/v1/silences?state=active").await;
    let made = &silences["results"][0];
    assert_eq!(made["createdBy"], "alice", "{silences}");
    assert_eq!(
        made["matchers"][0]["propertyValue"], "disk-db-1",
        "{silences}"
    );
    let id = made["id"].as_str().unwrap();
    let (_, audit) = ops.get(&format!("/tocsin/v1/audit?target={id}")).await;
    let entry = &audit["results"][0];
    assert_eq!(
        (&entry["who"], &entry["via"], &entry["action"]),
        (&json!("alice"), &json!("email"), &json!("silence")),
        "{audit}"
    );

    // Expired and forged links.
    let links = ActLinks::new(
        &LinkSettings {
            public_url: PUBLIC_URL.into(),
            lifetime_minutes: 60,
        },
        web::Authenticator::new(&[], TOKEN_SECRET.as_bytes().to_vec(), Default::default())
            .unwrap()
            .derived_key("action link"),
        [],
    )
    .unwrap();
    let two_hours_ago = clock::now_epoch_millis() / 1000 - 7_200;
    let audience = Audience::Mailbox("alice@example.com".into());
    let expired = links.url(
        model::alert::Control::Acknowledge,
        "disk-db-1",
        audience,
        two_hours_ago,
    );
    let expired = expired.strip_prefix(PUBLIC_URL).unwrap();
    let (status, page) = browser.get(tocsin, expired).await;
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("expired"), "{page}");
    let (status, ..) = browser
        .post(tocsin, expired, &[("form", "x")], None, None)
        .await;
    assert_eq!(status, 410);
    let forged = format!("{}x", &card_links[0].1);
    let (status, _) = browser.get(tocsin, &forged).await;
    assert_eq!(status, 404);

    if let Some(sibling) = sibling {
        sibling.shutdown().await;
    }
    first.shutdown().await;
}
