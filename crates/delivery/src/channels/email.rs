//! `EMAIL`: sends the event as a mail (plain-text and HTML parts) through an SMTP server.
//!
//! Properties: `destination` (one or more recipients, separated by `,` or `;`), `from`,
//! `smtpHost`, `smtpPort` (default 587, 465 with `TLS`, 25 with `NONE`), `smtpSecurity`
//! (`STARTTLS`, required — the default; `TLS`, TLS from the first byte; `NONE`, plaintext
//! for a trusted local relay), `username` + `password` (SMTP AUTH), `sslTrustAll`,
//! `subjectTemplate`, `bodyTemplate` (the plain-text part; ANS calls it `payloadTemplate`,
//! which is taken when `bodyTemplate` is not set), `htmlTemplate` (the HTML part,
//! values HTML-escaped) and `controls` (default `true`). The defaults show the subject (marked
//! `Resolved:` when the event closes its alert), the body, severity, resource, time, event type
//! and the event's links.
//!
//! Action links: while the alert fires and `[links] public_url` is set, a recipient whose
//! address is mapped to a Tocsin identity (`chat.identities`, `email:{address}=…`) gets a mail
//! of their own ending with Acknowledge, Resolve and Silence 1 h links — signed, expiring,
//! single-use, and bound to that address, so that the link acts as that identity
//! (`web::act_link`); the other recipients share one mail without them. A retry sends every
//! mail of the event again.
//!
//! An action that names no `smtpHost` goes through the site's SMTP relay, `[channels.email]`
//! ([`RelaySettings`]: host, port, security, credentials, sender), so that an action needs only
//! its `destination`, as in ANS; an action's own `from` still overrides the relay's. The relay is
//! the operator's, so the outbound policy applies to the servers actions name, not to it.
//!
//! Grouped (and storm-held) events go out as one digest mail: the subject is its headline
//! (`[Tocsin] 12 alerts firing on db-1`), both parts list every event — severity, subject,
//! resource, time and its details link — under *Firing* and *Resolved*. A digest of one event
//! is that event's own mail. Storm control: none unless `messagesPerMinute` is set (a mail
//! server takes far more than a reader does; group instead).
//!
//! The mail goes through `lettre`'s async SMTP client, one connection per mail, within the
//! destination's in-flight limit and the request timeout (per SMTP command). An SMTP refusal
//! keeps its reply code: 4xx (e.g. 451) is retryable, 5xx (e.g. 550 no such mailbox) is not.
//! A server that does not offer STARTTLS when it is required is a permanent 906: the mail and
//! the credentials are never sent in plaintext.

use super::{Channel, Tools};
use crate::failure::{Code, Failure};
use crate::grouping::Digest;
use crate::http::chain;
use crate::lifecycle::Transition;
use crate::properties::{Properties, PropertyError};
use crate::templates::{datetime, event_links, Format, Scope, Texts, EVENT_AS_TEXT};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use model::{Action, DeliveryJob};
use serde::{Deserialize, Serialize};
use web::act_link::{ActLinks, Audience};

const SUBJECT: &str =
    "[{{ event.severity }}] {% if resolved %}Resolved: {% endif %}{{ event.subject }}";
const HTML: &str = "<html><body>
<h2>{% if resolved %}Resolved: {% endif %}{{ event.subject }}</h2>
<p style=\"white-space: pre-wrap\">{{ event.body }}</p>
<table>
<tr><th align=\"left\">Severity</th><td>{{ event.severity }}</td></tr>
<tr><th align=\"left\">Resource</th>
<td>{{ event.resource.resourceName }} ({{ event.resource.resourceType }})</td></tr>
<tr><th align=\"left\">Time</th><td>{{ event.eventTimestamp | datetime }}</td></tr>
<tr><th align=\"left\">Event type</th><td>{{ event.eventType }}</td></tr>
</table>
{% for link in links %}<p><a href=\"{{ link.url }}\">{{ link.title }}</a></p>
{% endfor %}</body></html>
";

pub struct EmailChannel {
    tools: Tools,
    /// `[channels.email]`, when it names a host.
    relay: Option<Relay>,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Security {
    /// STARTTLS, required.
    #[default]
    #[serde(rename = "STARTTLS")]
    StartTls,
    /// TLS from the first byte.
    #[serde(rename = "TLS")]
    Tls,
    /// Plaintext, for a trusted local relay.
    #[serde(rename = "NONE")]
    Plain,
}

impl Security {
    fn default_port(self) -> u16 {
        match self {
            Security::StartTls => 587,
            Security::Tls => 465,
            Security::Plain => 25,
        }
    }
}

/// `[channels.email]`: the SMTP relay for `EMAIL` actions that name no `smtpHost`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// The relay's host name or address; empty: no relay, every action names its server.
    pub host: String,
    /// 0: the port for `security` (587, 465 or 25).
    pub port: u16,
    pub security: Security,
    /// SMTP AUTH, when set.
    pub username: String,
    pub password: Password,
    /// The sender of actions that name none, e.g. `Tocsin <alerts@example.com>`.
    pub from: String,
}

/// A password that `Debug` never shows.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// The relay, ready to use.
struct Relay {
    server: Server,
    /// Its sender, as written (checked when an action relies on it).
    from: String,
}

/// Where a mail goes and how.
#[derive(Clone)]
struct Server {
    host: String,
    port: u16,
    security: Security,
    trust_all: bool,
    credentials: Option<Credentials>,
    /// Named in the settings, not by an action: the outbound policy is not asked.
    from_settings: bool,
}

impl EmailChannel {
    pub fn new(tools: Tools, relay: &RelaySettings) -> Self {
        let relay = (!relay.host.trim().is_empty()).then(|| Relay {
            server: Server {
                host: relay.host.trim().to_ascii_lowercase(),
                port: match relay.port {
                    0 => relay.security.default_port(),
                    port => port,
                },
                security: relay.security,
                trust_all: false,
                credentials: (!relay.username.is_empty())
                    .then(|| Credentials::new(relay.username.clone(), relay.password.0.clone())),
                from_settings: true,
            },
            from: relay.from.clone(),
        });
        EmailChannel { tools, relay }
    }

    /// The event's subject and its plain-text and HTML parts.
    fn parts(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &EmailConfig,
    ) -> Result<(String, String, String), Failure> {
        let scope = Scope::new(job, action);
        let render = |property: &str,
                      format: Format,
                      own: &Option<String>,
                      default: &'static str| {
            self.tools
                .templates
                .render(property, format, own.as_deref().unwrap_or(default), &scope)
        };
        let subject = render(
            "subjectTemplate",
            Format::Text,
            &config.texts.subject,
            SUBJECT,
        )?;
        let text = render(
            "bodyTemplate",
            Format::Text,
            &config.texts.body,
            EVENT_AS_TEXT,
        )?;
        let html = render("htmlTemplate", Format::Html, &config.html, HTML)?;
        Ok((subject, text, html))
    }

    /// The action links minter, if this event's mails carry links: the alert fires, the
    /// action keeps its controls, and links are set up.
    fn act_links(&self, job: &DeliveryJob, config: &EmailConfig) -> Option<&ActLinks> {
        let fires = Transition::of(&job.event) != Transition::Close;
        self.tools
            .act_links
            .as_deref()
            .filter(|_| config.controls && fires)
    }
}

/// `text` and `html` ending with `to`'s own action links for `alert`, made at `now`.
fn with_act_links(
    links: &ActLinks,
    alert: &str,
    to: &str,
    now: i64,
    (mut text, html): (String, String),
) -> (String, String) {
    let hours = links.lifetime_seconds() / 3600;
    let urls = links.for_alert(alert, &Audience::Mailbox(to.to_ascii_lowercase()), now);
    let note = format!(
        "These links act as you ({to}), once each, for {hours} h; each asks you to confirm."
    );
    text.push_str("\nAct on this alert:\n");
    for (label, url) in &urls {
        text.push_str(&format!("{label}: {url}\n"));
    }
    text.push_str(&format!("{note}\n"));
    let anchors: Vec<String> = urls
        .iter()
        .map(|(label, url)| format!("<a href=\"{}\">{label}</a>", escape(url)))
        .collect();
    let block = format!(
        "<p>Act on this alert: {}<br><small>{}</small></p>\n",
        anchors.join(" · "),
        escape(&note)
    );
    // Inside the body when the part has one (the default's and most templates' do).
    let html = match html.rfind("</body>") {
        Some(at) => format!("{}{block}{}", &html[..at], &html[at..]),
        None => html + &block,
    };
    (text, html)
}

/// The mail from the action's sender to `to` with `subject` and both parts.
fn mail(
    config: &EmailConfig,
    to: &[&Mailbox],
    subject: &str,
    text: String,
    html: String,
) -> Result<Message, Failure> {
    let mut builder = Message::builder().from(config.from.clone());
    for recipient in to {
        builder = builder.to((*recipient).clone());
    }
    builder
        .subject(subject.replace(['\r', '\n'], " "))
        .multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| Failure::bad_action(format!("cannot build the mail: {e}")))
}

/// The digest mail of several events: the headline as its subject, a line per event under
/// *Firing* and *Resolved* in both parts.
fn digest_mail(digest: &Digest, config: &EmailConfig) -> Result<Message, Failure> {
    let headline = digest.headline();
    let mut text = format!("{headline}\n");
    let mut html = format!("<html><body>\n<h2>{}</h2>\n", escape(&headline));
    for (title, jobs) in [
        ("Firing", digest.firing().collect::<Vec<_>>()),
        ("Resolved", digest.resolved().collect()),
    ] {
        if jobs.is_empty() {
            continue;
        }
        text.push_str(&format!("\n{title}:\n"));
        html.push_str(&format!("<h3>{title}</h3>\n<ul>\n"));
        for job in jobs {
            let event = &job.event;
            let line = format!(
                "[{}] {} · {} ({}) · {}",
                event.severity,
                event.subject,
                event.resource.resource_name,
                event.resource.resource_type,
                datetime(event.event_timestamp)
            );
            let link = event_links(event).first().map(|(_, url)| *url);
            text.push_str(&format!("- {line}\n"));
            if let Some(url) = link {
                text.push_str(&format!("  {url}\n"));
            }
            html.push_str(&match link {
                Some(url) => format!(
                    "<li><a href=\"{}\">{}</a></li>\n",
                    escape(url),
                    escape(&line)
                ),
                None => format!("<li>{}</li>\n", escape(&line)),
            });
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body></html>\n");
    let to: Vec<&Mailbox> = config.to.iter().collect();
    mail(config, &to, &format!("[Tocsin] {headline}"), text, html)
}

/// `text` safe inside HTML, in an element or a quoted attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An `EMAIL` action's properties, parsed.
pub struct EmailConfig {
    server: Server,
    from: Mailbox,
    to: Vec<Mailbox>,
    texts: Texts,
    html: Option<String>,
    /// Whether a firing alert's mail carries action links for its mapped recipients.
    controls: bool,
}

impl Channel for EmailChannel {
    const TYPE: &'static str = "EMAIL";
    const PROPERTIES: &'static [&'static str] = &[
        "destination",
        "from",
        "smtpHost",
        "smtpPort",
        "smtpSecurity",
        "username",
        "password",
        "sslTrustAll",
        "subjectTemplate",
        "bodyTemplate",
        "payloadTemplate",
        "htmlTemplate",
        "controls",
    ];
    const DIGESTS: Option<u32> = Some(0);
    type Config = EmailConfig;

    fn configure(&self, p: &Properties) -> Result<EmailConfig, PropertyError> {
        let mailbox = |property: &str, text: &str| {
            text.trim().parse::<Mailbox>().map_err(|e| {
                PropertyError::property(property, format!("has an invalid address `{text}`: {e}"))
            })
        };
        let to = p
            .required("destination")?
            .split([',', ';'])
            .filter(|r| !r.trim().is_empty())
            .map(|r| mailbox("destination", r))
            .collect::<Result<Vec<_>, _>>()?;
        let (server, relay_from) = match (p.text("smtpHost"), &self.relay) {
            (None, Some(relay)) => (relay.server.clone(), Some(relay.from.as_str())),
            _ => (own_server(p)?, None),
        };
        let from = match (p.text("from"), relay_from) {
            (Some(from), _) => mailbox("from", &from)?,
            (None, Some(from)) if !from.trim().is_empty() => from.trim().parse().map_err(|e| {
                PropertyError::property(
                    "from",
                    format!("is not set, and the relay's ([channels.email] from `{from}`) is invalid: {e}"),
                )
            })?,
            (None, _) => p.required("from").and_then(|from| mailbox("from", &from))?,
        };
        let mut texts = Texts::read(p)?;
        if texts.body.is_none() {
            texts.body = p.template("payloadTemplate")?;
        }
        Ok(EmailConfig {
            server,
            from,
            to,
            texts,
            html: p.template("htmlTemplate")?,
            controls: p.flag("controls", true)?,
        })
    }

    async fn deliver(
        &self,
        job: &DeliveryJob,
        action: &Action,
        config: &EmailConfig,
    ) -> Result<(), Failure> {
        let (subject, text, html) = self.parts(job, action, config)?;
        let links = self.act_links(job, config);
        let (linked, shared): (Vec<&Mailbox>, Vec<&Mailbox>) = config
            .to
            .iter()
            .partition(|to| links.is_some_and(|l| l.serves_mailbox(to.email.as_ref())));
        if !shared.is_empty() {
            let message = mail(config, &shared, &subject, text.clone(), html.clone())?;
            self.send(message, config).await?;
        }
        if let Some(links) = links {
            let now = clock::now_epoch_seconds();
            for to in linked {
                let address = to.email.to_string();
                let parts = (text.clone(), html.clone());
                let (text, html) =
                    with_act_links(links, job.event.alert_key(), &address, now, parts);
                self.send(mail(config, &[to], &subject, text, html)?, config)
                    .await?;
            }
        }
        Ok(())
    }

    async fn deliver_digest(
        &self,
        digest: &Digest,
        _: &Action,
        config: &EmailConfig,
    ) -> Result<(), Failure> {
        self.send(digest_mail(digest, config)?, config).await
    }
}

impl EmailChannel {
    /// Sends `message` through the action's SMTP server (or the relay).
    async fn send(&self, message: Message, config: &EmailConfig) -> Result<(), Failure> {
        let server = &config.server;
        let host = &server.host;
        let tls_parameters = || {
            TlsParameters::builder(host.clone())
                .dangerous_accept_invalid_certs(server.trust_all)
                .build_rustls()
                .map_err(|e| Failure::bad_action(format!("TLS for `smtpHost`: {}", chain(&e))))
        };
        let tls = match server.security {
            Security::StartTls => Tls::Required(tls_parameters()?),
            Security::Tls => Tls::Wrapper(tls_parameters()?),
            Security::Plain => Tls::None,
        };
        let timeout = self.tools.http.timeout();
        // Connect to the address the outbound policy checked; TLS still verifies the name.
        let address = if server.from_settings {
            host.clone()
        } else {
            let checked = self.tools.http.permitted_address(host, server.port).await?;
            checked.to_string()
        };
        let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(address)
            .port(server.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some(credentials) = &server.credentials {
            transport = transport.credentials(credentials.clone());
        }
        let transport = transport.build();

        let shown = format!("smtp://{host}:{}", server.port);
        let _slot = self.tools.http.reserve(&shown, &shown, timeout).await?;
        transport.send(message).await.map(drop).map_err(|e| {
            let detail = chain(&e);
            match e.status() {
                Some(code) => {
                    let code = Code::Smtp(u16::from(code));
                    let reason = format!("{shown} answered {detail}");
                    if e.is_transient() {
                        Failure::transient(code, reason)
                    } else {
                        Failure::permanent(code, reason)
                    }
                }
                None if e.is_timeout() => Failure::transient(
                    Code::Timeout,
                    format!("{shown}: no answer within {} ms", timeout.as_millis()),
                ),
                None if e.is_client() => Failure::bad_action(format!("{shown}: {detail}")),
                None => Failure::transient(Code::Connection, format!("{shown}: {detail}")),
            }
        })
    }
}

/// The SMTP server an action names, with its own port, security and credentials.
fn own_server(p: &Properties) -> Result<Server, PropertyError> {
    let security = match p.one_of("smtpSecurity", &["STARTTLS", "TLS", "NONE"])? {
        None | Some("STARTTLS") => Security::StartTls,
        Some("TLS") => Security::Tls,
        Some(_) => Security::Plain,
    };
    let credentials = match p.text("username") {
        Some(username) => Some(Credentials::new(username, p.required("password")?)),
        None => None,
    };
    Ok(Server {
        host: p.required_host("smtpHost")?,
        port: p
            .parsed::<u16>("smtpPort")?
            .unwrap_or(security.default_port()),
        security,
        trust_all: p.flag("sslTrustAll", false)?,
        credentials,
        from_settings: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::tests::{action, attempt, digest, job, job_with_id, loopback, tools};
    use crate::channels::Registered;
    use crate::failure::{Code, Retry};
    use crate::outbound::OutboundPolicy;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::Engine;
    use model::alert::Control;
    use serde_json::json;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::TlsAcceptor;

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    /// How the test server takes connections.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Listen {
        Plain,
        /// Plaintext, offering STARTTLS.
        StartTls,
        /// TLS from the first byte.
        Tls,
    }

    /// What one SMTP session received: the commands, the DATA, and whether MAIL FROM came
    /// encrypted.
    #[derive(Debug, Default, Clone)]
    struct Session {
        commands: Vec<String>,
        data: String,
        mail_over_tls: Option<bool>,
    }

    /// TLS with the self-signed test certificate in `testdata/`.
    fn acceptor() -> TlsAcceptor {
        let cert =
            CertificateDer::from_pem_slice(include_bytes!("../../testdata/smtp-test-cert.pem"));
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../testdata/smtp-test-key.pem"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.unwrap()], key.unwrap())
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// A minimal SMTP server on loopback: advertises AUTH PLAIN (and STARTTLS when listening
    /// so), refuses recipients whose address starts with `nobody` (550) or `busy` (451), and
    /// records every session.
    async fn smtp_server(listen: Listen) -> (u16, Arc<Mutex<Vec<Session>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&sessions);
        let acceptor = acceptor();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let sessions = Arc::clone(&recorded);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = listen == Listen::Tls;
                    let stream: Box<dyn Io> = if tls {
                        let Ok(encrypted) = acceptor.accept(socket).await else {
                            return; // the client refused the certificate
                        };
                        Box::new(encrypted)
                    } else {
                        Box::new(socket)
                    };
                    let mut stream = BufReader::new(stream);
                    let mut session = Session::default();
                    stream.write_all(b"220 test ESMTP\r\n").await.unwrap();
                    let mut line = String::new();
                    while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let command = line.trim_end().to_owned();
                        line.clear();
                        session.commands.push(command.clone());
                        let verb = command
                            .split(' ')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_uppercase();
                        let answer = match verb.as_str() {
                            "EHLO" if listen == Listen::StartTls && !tls => {
                                "250-test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n"
                            }
                            "EHLO" => "250-test\r\n250 AUTH PLAIN\r\n",
                            "STARTTLS" if listen == Listen::StartTls && !tls => {
                                stream
                                    .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                                    .await
                                    .unwrap();
                                let plain = stream.into_inner();
                                let Ok(encrypted) = acceptor.accept(plain).await else {
                                    return;
                                };
                                stream = BufReader::new(Box::new(encrypted));
                                tls = true;
                                continue;
                            }
                            "AUTH" => "235 2.7.0 Authentication successful\r\n",
                            "MAIL" => {
                                session.mail_over_tls = Some(tls);
                                "250 2.1.0 Ok\r\n"
                            }
                            "RCPT" if command.contains("<nobody") => {
                                "550 5.1.1 No such user here\r\n"
                            }
                            "RCPT" if command.contains("<busy") => "451 4.3.0 Try again later\r\n",
                            "RCPT" => "250 2.1.5 Ok\r\n",
                            "DATA" => {
                                stream
                                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                                    .await
                                    .unwrap();
                                while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                                    if line.trim_end() == "." {
                                        break;
                                    }
                                    session.data.push_str(line.trim_end_matches(['\r', '\n']));
                                    session.data.push('\n');
                                    line.clear();
                                }
                                line.clear();
                                "250 2.0.0 Ok: queued\r\n"
                            }
                            "QUIT" => {
                                stream.write_all(b"221 2.0.0 Bye\r\n").await.unwrap();
                                break;
                            }
                            _ => "250 Ok\r\n",
                        };
                        stream.write_all(answer.as_bytes()).await.unwrap();
                    }
                    sessions.lock().unwrap().push(session);
                });
            }
        });
        (port, sessions)
    }

    fn email_action(port: u16, destination: &str, extra: serde_json::Value) -> Action {
        let mut properties = json!({
            "destination": destination, "from": "Tocsin <alerts@example.com>",
            "smtpHost": "127.0.0.1", "smtpPort": port.to_string(), "smtpSecurity": "NONE",
        });
        properties
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        action("mail", "EMAIL", properties)
    }

    async fn wait_for_sessions(sessions: &Arc<Mutex<Vec<Session>>>, n: usize) -> Vec<Session> {
        for _ in 0..100 {
            if sessions.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        sessions.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_digest_mail_lists_every_event_in_both_parts() {
        let (port, sessions) = smtp_server(Listen::Plain).await;
        let (tools, _dir) = tools();
        let channel = EmailChannel::new(tools, &RelaySettings::default());
        let action = email_action(port, "ops@example.com", json!({}));
        let config =
            Registered::prepare(&channel, &action, &OutboundPolicy::new(loopback())).unwrap();
        let jobs = vec![
            job_with_id(
                "e1",
                json!({"ans:detailsLink": "https://console.example/1"}),
            ),
            job_with_id("e2", json!({"ans:status": "CLOSE"})),
        ];
        let digest = digest(json!({"resource.resourceName": "web-1"}), jobs);
        assert_eq!(
            Registered::deliver_digest(&channel, &digest, &action, &config).await,
            Ok(())
        );
        let data = wait_for_sessions(&sessions, 1).await.remove(0).data;
        let data = data.replace("=\n", "").replace("=3D", "=");
        for expected in [
            "Subject: [Tocsin] 1 alert firing, 1 resolved on web-1",
            "Firing:\n- [FATAL] CPU above 90%",
            "  https://console.example/1",
            "Resolved:\n- [FATAL] CPU above 90%",
            "<li><a href=\"https://console.example/1\">[FATAL] CPU above 90%",
        ] {
            assert!(data.contains(expected), "missing {expected:?} in:\n{data}");
        }
    }

    #[tokio::test]
    async fn a_mapped_recipient_gets_a_mail_of_their_own_with_action_links() {
        let (port, sessions) = smtp_server(Listen::Plain).await;
        let (mut tools, _dir) = tools();
        let links = crate::channels::tests::act_links();
        tools.act_links = Some(Arc::clone(&links));
        let channel = EmailChannel::new(tools, &RelaySettings::default());
        let action = email_action(port, "ops@example.com, Alice@Example.com", json!({}));
        let firing = job(json!({"ans:sourceEventId": "disk-db-1"}));
        assert_eq!(attempt(&channel, &firing, &action).await, Ok(()));
        let mails = wait_for_sessions(&sessions, 2).await;
        assert_eq!(mails.len(), 2, "one shared mail, one of Alice's own");
        let recipients = |mail: &Session| -> Vec<String> {
            let rcpt = mail.commands.iter().filter(|c| c.starts_with("RCPT"));
            rcpt.cloned().collect()
        };
        let (alices, shared): (Vec<&Session>, Vec<&Session>) = mails
            .iter()
            .partition(|m| recipients(m) == ["RCPT TO:<Alice@Example.com>"]);
        assert_eq!(recipients(shared[0]), ["RCPT TO:<ops@example.com>"]);
        assert!(
            !shared[0].data.contains("/tocsin/v1/act/"),
            "no links for ops@"
        );
        let data = alices[0].data.replace("=\n", "").replace("=3D", "=");
        let tokens: Vec<&str> = data
            .lines()
            .filter_map(|l| l.split_once(": https://tocsin.example/tocsin/v1/act/"))
            .map(|(label, token)| {
                assert!(
                    ["Acknowledge", "Resolve", "Silence 1 h"].contains(&label),
                    "{label}"
                );
                token
            })
            .collect();
        assert_eq!(tokens.len(), 3, "three links in the text part:\n{data}");
        for (token, control) in tokens.iter().zip(Control::ALL) {
            let claims = links.read(token, clock::now_epoch_seconds()).unwrap();
            assert_eq!(claims.control(), Some(control));
            assert_eq!(claims.alert, "disk-db-1");
            assert_eq!(
                claims.audience,
                Audience::Mailbox("alice@example.com".into())
            );
        }
        assert!(
            data.contains("Act on this alert: <a href=\"https://tocsin.example/tocsin/v1/act/"),
            "and in the HTML part:\n{data}"
        );

        // A resolve has nothing left to act on: one mail to all, no links.
        let closing = job(json!({"ans:sourceEventId": "disk-db-1", "ans:status": "CLOSE"}));
        assert_eq!(attempt(&channel, &closing, &action).await, Ok(()));
        let mails = wait_for_sessions(&sessions, 3).await;
        assert_eq!(recipients(&mails[2]).len(), 2);
        assert!(!mails[2].data.contains("/tocsin/v1/act/"));
        // Nor does an action whose controls are off.
        let quiet = email_action(port, "alice@example.com", json!({"controls": "false"}));
        assert_eq!(attempt(&channel, &firing, &quiet).await, Ok(()));
        assert!(!wait_for_sessions(&sessions, 4).await[3]
            .data
            .contains("/tocsin/v1/act/"));
    }

    #[tokio::test]
    async fn sends_both_parts_to_every_recipient_with_auth() {
        let (port, sessions) = smtp_server(Listen::Plain).await;
        let (tools, _dir) = tools();
        let channel = EmailChannel::new(tools, &RelaySettings::default());
        let action = email_action(
            port,
            "ops@example.com; oncall@example.com",
            json!({"username": "mailer", "password": "pw"}),
        );
        let job = job(json!({"ans:detailsLink": "https://console.example/a?x=1&y=2"}));
        assert_eq!(attempt(&channel, &job, &action).await, Ok(()));

        let session = wait_for_sessions(&sessions, 1).await.remove(0);
        let auth = format!("AUTH PLAIN {}", BASE64.encode("\0mailer\0pw"));
        let envelope: Vec<&str> = session
            .commands
            .iter()
            .map(String::as_str)
            .filter(|c| !c.starts_with("EHLO"))
            .collect();
        assert_eq!(
            envelope,
            [
                auth.as_str(),
                "MAIL FROM:<alerts@example.com>",
                "RCPT TO:<ops@example.com>",
                "RCPT TO:<oncall@example.com>",
                "DATA",
                "QUIT"
            ]
        );
        // The HTML part is quoted-printable: undo soft line breaks and `=XX` escapes.
        let data = session.data.replace("=\n", "");
        let data = &data.replace("=3D", "=");
        assert!(
            data.contains("Content-Transfer-Encoding: quoted-printable"),
            "{data}"
        );
        for expected in [
            "From: Tocsin <alerts@example.com>",
            "To: ops@example.com, oncall@example.com",
            "Subject: [FATAL] CPU above 90%",
            "Content-Type: multipart/alternative;",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Type: text/html; charset=utf-8",
            "CPU has been above 90% for 5 minutes",
            "Resource:   web-1 (vm)",
            "Time:       2023-11-14 22:13:20 UTC",
            "Details: https://console.example/a?x=1&y=2",
            "<tr><th align=\"left\">Severity</th><td>FATAL</td></tr>",
            "<p><a href=\"https:&#x2f;&#x2f;console.example&#x2f;a?x=1&amp;y=2\">Details</a></p>",
        ] {
            assert!(data.contains(expected), "missing {expected:?} in:\n{data}");
        }
    }

    #[tokio::test]
    async fn an_action_with_only_a_destination_goes_through_the_relay() {
        let (port, sessions) = smtp_server(Listen::Plain).await;
        let (tools, _dir) = tools();
        let relay = RelaySettings {
            host: "127.0.0.1".into(),
            port,
            security: Security::Plain,
            username: "relay".into(),
            password: Password("relay-pw".into()),
            from: "Tocsin <alerts@example.com>".into(),
        };
        assert_eq!(format!("{:?}", relay.password), "<redacted>");
        let channel = EmailChannel::new(tools.clone(), &relay);
        let only_destination = action("mail", "EMAIL", json!({"destination": "ops@example.com"}));
        assert_eq!(
            attempt(&channel, &job(json!({})), &only_destination).await,
            Ok(())
        );
        let own_sender = action(
            "mail",
            "EMAIL",
            json!({"destination": "ops@example.com", "from": "db-team@example.com"}),
        );
        assert_eq!(
            attempt(&channel, &job(json!({})), &own_sender).await,
            Ok(())
        );
        let sessions = wait_for_sessions(&sessions, 2).await;
        let auth = format!("AUTH PLAIN {}", BASE64.encode("\0relay\0relay-pw"));
        assert!(
            sessions[0].commands.contains(&auth),
            "{:?}",
            sessions[0].commands
        );
        assert!(sessions[0]
            .commands
            .contains(&"MAIL FROM:<alerts@example.com>".to_owned()));
        assert!(sessions[1]
            .commands
            .contains(&"MAIL FROM:<db-team@example.com>".to_owned()));

        // Without a relay, an action must name its server and its sender.
        let alone = EmailChannel::new(tools, &RelaySettings::default());
        let outbound = crate::outbound::OutboundPolicy::default();
        let refused = alone
            .configure(&Properties::of(&only_destination, &outbound))
            .err()
            .expect("refused");
        assert!(
            refused.to_string().contains("`properties.smtpHost`"),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn smtp_refusals_keep_their_codes() {
        let (port, _sessions) = smtp_server(Listen::Plain).await;
        let (tools, _dir) = tools();
        let channel = EmailChannel::new(tools, &RelaySettings::default());
        let fail = |destination: &'static str| {
            let action = email_action(port, destination, json!({}));
            let channel = &channel;
            async move {
                match attempt(channel, &job(json!({})), &action).await {
                    Err(f) => f,
                    Ok(()) => panic!("{destination} delivered"),
                }
            }
        };
        let unknown = fail("nobody@example.com").await;
        assert_eq!(
            (unknown.code, unknown.retry),
            (Code::Smtp(550), Retry::Never)
        );
        assert!(
            unknown.reason.contains("No such user here"),
            "{}",
            unknown.reason
        );
        let busy = fail("busy@example.com").await;
        assert_eq!(
            (busy.code, busy.retry),
            (Code::Smtp(451), Retry::OnSchedule)
        );
        let bad = fail("not an address").await;
        assert_eq!((bad.code, bad.retry), (Code::BadAction, Retry::Never));
        assert!(
            bad.reason.contains("`properties.destination`"),
            "{}",
            bad.reason
        );
    }

    #[tokio::test]
    async fn required_starttls_never_falls_back_to_plaintext() {
        let (port, sessions) = smtp_server(Listen::Plain).await;
        let (tools, _dir) = tools();
        let channel = EmailChannel::new(tools, &RelaySettings::default());
        let action = email_action(
            port,
            "ops@example.com",
            json!({"smtpSecurity": "STARTTLS", "username": "mailer", "password": "pw"}),
        );
        let Err(failure) = attempt(&channel, &job(json!({})), &action).await else {
            panic!("delivered without STARTTLS");
        };
        assert_eq!(
            (failure.code, failure.retry),
            (Code::BadAction, Retry::Never),
            "{}",
            failure.reason
        );
        let sessions = wait_for_sessions(&sessions, 1).await;
        assert!(
            sessions[0]
                .commands
                .iter()
                .all(|c| !c.starts_with("AUTH") && !c.starts_with("MAIL")),
            "{:?}",
            sessions[0].commands
        );

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let action = email_action(closed_port, "ops@example.com", json!({}));
        let Err(failure) = attempt(&channel, &job(json!({})), &action).await else {
            panic!("delivered to a closed port");
        };
        assert_eq!(
            (failure.code, failure.retry),
            (Code::Connection, Retry::OnSchedule),
            "{}",
            failure.reason
        );
    }

    #[tokio::test]
    async fn starttls_and_tls_carry_the_mail_encrypted() {
        let (tools, _dir) = tools();
        let channel = EmailChannel::new(tools, &RelaySettings::default());
        for (listen, security) in [(Listen::StartTls, "STARTTLS"), (Listen::Tls, "TLS")] {
            let (port, sessions) = smtp_server(listen).await;
            let action = email_action(
                port,
                "ops@example.com",
                json!({"smtpSecurity": security, "sslTrustAll": true, "username": "mailer", "password": "pw"}),
            );
            let outcome = attempt(&channel, &job(json!({})), &action).await;
            assert_eq!(outcome, Ok(()), "{security}");
            let session = wait_for_sessions(&sessions, 1).await.remove(0);
            assert_eq!(
                session.mail_over_tls,
                Some(true),
                "{security}: {:?}",
                session.commands
            );
            assert!(session.data.contains("Subject: [FATAL] CPU above 90%"));
            if listen == Listen::StartTls {
                let verbs: Vec<&str> = session.commands.iter().map(|c| &c[..4]).collect();
                assert_eq!(
                    verbs,
                    ["EHLO", "STAR", "EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
                );
            }
        }
        // Without sslTrustAll, the self-signed certificate is refused before anything is sent.
        let (port, sessions) = smtp_server(Listen::Tls).await;
        let action = email_action(port, "ops@example.com", json!({"smtpSecurity": "TLS"}));
        let Err(failure) = attempt(&channel, &job(json!({})), &action).await else {
            panic!("an untrusted certificate was accepted");
        };
        assert_eq!(failure.code, Code::Connection);
        assert!(failure.reason.contains("certificate"), "{}", failure.reason);
        assert!(sessions.lock().unwrap().is_empty());
    }
}
