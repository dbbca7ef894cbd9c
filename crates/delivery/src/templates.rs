//! Templates: one engine (MiniJinja, Jinja syntax) for every subject, body and payload a
//! channel renders, from its built-in default or from the action's `…Template` property.
//!
//! A channel builds a [`Scope`] from the job and the action — `event` (the event exactly as
//! accepted: `event.subject`, `event.resource.resourceName`, `event.tags["ans:detailsLink"]`,
//! …), `action` (its name), `resolved` (whether the event closes its alert, see
//! [`crate::lifecycle`]) and `links` (`title` and `url` of the event's details and
//! recommended-action links) — and renders a source in a [`Format`]:
//! plain text as is, HTML with every value HTML-escaped, JSON with every value written as JSON
//! (so `{"text": {{ event.subject }}}` is valid JSON whatever the subject holds). Helpers:
//! `limit(n)` cuts to `n` characters with an ellipsis, `datetime` writes epoch seconds as
//! `YYYY-MM-DD HH:MM:SS UTC`, `mrkdwn` escapes `&`, `<`, `>` for Slack. A template that does
//! not parse is refused when the action is saved ([`check`]); one that fails to render (a
//! filter given the wrong value, say) is the action's fault: a permanent 906 failure naming
//! the property. So is one that runs away: a render may execute [`FUEL`] instructions and
//! write [`MAX_OUTPUT`] bytes at most, so that a template loop cannot tie up a worker.

use crate::failure::Failure;
use crate::lifecycle::Transition;
use crate::properties::{Properties, PropertyError};
use minijinja::value::{Serde, Value};
use minijinja::{Environment, UndefinedBehavior};
use model::{Action, DeliveryJob};

/// How rendered values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Html,
    Json,
}

/// The event as plain text, for channels that show it whole (an email's text part, a B2C
/// incident thread).
pub const EVENT_AS_TEXT: &str = "{% if resolved %}Resolved: {% endif %}{{ event.subject }}

{{ event.body }}

Severity:   {{ event.severity }}
Resource:   {{ event.resource.resourceName }} ({{ event.resource.resourceType }})
Time:       {{ event.eventTimestamp | datetime }}
Event type: {{ event.eventType }}
{% for link in links %}{{ link.title }}: {{ link.url }}
{% endfor %}";

/// Instructions one render may execute (MiniJinja's fuel): thousands of times what Tocsin's
/// templates need, and milliseconds of work.
pub const FUEL: u64 = 100_000;

/// Bytes one render may produce: no destination takes a message anywhere near this.
pub const MAX_OUTPUT: usize = 256 * 1024;

pub struct Templates {
    env: Environment<'static>,
}

/// Refuses a template that does not parse, naming its property.
pub fn check(property: &str, source: &str) -> Result<(), PropertyError> {
    Environment::new()
        .template_from_str(source)
        .map(drop)
        .map_err(|e| PropertyError::property(property, format!("is not a valid template: {e}")))
}

/// An action's own subject and body templates (`subjectTemplate`, `bodyTemplate`); `None`
/// stands for the channel's default.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub subject: Option<String>,
    pub body: Option<String>,
}

impl Texts {
    pub fn read(properties: &Properties) -> Result<Self, PropertyError> {
        Ok(Texts {
            subject: properties.template("subjectTemplate")?,
            body: properties.template("bodyTemplate")?,
        })
    }
}

/// The templates of a chat message: subject and body, or `payloadTemplate` for the whole JSON
/// payload (Slack, Teams).
#[derive(Debug, Clone, Default)]
pub struct MessageTemplates {
    pub texts: Texts,
    pub payload: Option<String>,
}

impl MessageTemplates {
    pub fn read(properties: &Properties) -> Result<Self, PropertyError> {
        Ok(MessageTemplates {
            texts: Texts::read(properties)?,
            payload: properties.template("payloadTemplate")?,
        })
    }
}

/// The variables a template sees.
#[derive(Debug, Clone)]
pub struct Scope {
    vars: serde_json::Map<String, serde_json::Value>,
}

impl Scope {
    pub fn new(job: &DeliveryJob, action: &Action) -> Self {
        let mut vars = serde_json::Map::new();
        vars.insert(
            "event".into(),
            serde_json::to_value(&job.event).expect("events serialize"),
        );
        vars.insert("action".into(), action.name.clone().into());
        vars.insert(
            "resolved".into(),
            (Transition::of(&job.event) == Transition::Close).into(),
        );
        let links = event_links(&job.event)
            .into_iter()
            .map(|(title, url)| serde_json::json!({"title": title, "url": url}))
            .collect();
        vars.insert("links".into(), serde_json::Value::Array(links));
        Scope { vars }
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env.add_filter("limit", |text: String, chars: usize| limit(&text, chars));
        env.add_filter("datetime", datetime);
        env.add_filter("mrkdwn", |text: String| mrkdwn(&text));
        Templates { env }
    }

    /// Renders `source` (the value of, or the default for, the property `property`).
    pub fn render(
        &self,
        property: &str,
        format: Format,
        source: &str,
        scope: &Scope,
    ) -> Result<String, Failure> {
        // The name's extension selects the escaping (MiniJinja's default callback).
        let name = match format {
            Format::Text => format!("{property}.txt"),
            Format::Html => format!("{property}.html"),
            Format::Json => format!("{property}.json"),
        };
        let text = self
            .env
            .render_named_str(&name, source, Value::from(Serde(&scope.vars)))
            .map_err(|e| Failure::bad_action(format!("`{property}` does not render: {e}")))?;
        if text.len() > MAX_OUTPUT {
            return Err(Failure::bad_action(format!(
                "`{property}` renders more than {MAX_OUTPUT} bytes"
            )));
        }
        Ok(text)
    }

    /// Renders the action's subject and body templates as text, or the channel's defaults for
    /// them.
    pub fn subject_and_body(
        &self,
        texts: &Texts,
        scope: &Scope,
        default_subject: &'static str,
        default_body: &'static str,
    ) -> Result<(String, String), Failure> {
        let render = |property: &str, own: &Option<String>, default: &'static str| {
            self.render(
                property,
                Format::Text,
                own.as_deref().unwrap_or(default),
                scope,
            )
        };
        Ok((
            render("subjectTemplate", &texts.subject, default_subject)?,
            render("bodyTemplate", &texts.body, default_body)?,
        ))
    }

    /// Renders a JSON template and parses the result.
    pub fn render_json(
        &self,
        property: &str,
        source: &str,
        scope: &Scope,
    ) -> Result<serde_json::Value, Failure> {
        let text = self.render(property, Format::Json, source, scope)?;
        serde_json::from_str(&text)
            .map_err(|e| Failure::bad_action(format!("`{property}` does not render to JSON: {e}")))
    }
}

/// The links an event carries (`ans:detailsLink`, `ans:recommendedActionLink`), titled.
pub fn event_links(event: &model::ResourceEvent) -> Vec<(&'static str, &str)> {
    [
        ("Details", "ans:detailsLink"),
        ("Recommended action", "ans:recommendedActionLink"),
    ]
    .into_iter()
    .filter_map(|(title, tag)| Some((title, event.tag(tag)?)))
    .filter(|(_, url)| url.starts_with("https://") || url.starts_with("http://"))
    .collect()
}

/// At most `chars` characters of `text`; a cut text ends with `…` (within the limit).
pub fn limit(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Slack's escaping for text that is not markup.
pub fn mrkdwn(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Epoch seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn datetime(seconds: i64) -> String {
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::{Code, Retry};

    fn scope(subject: &str, tags: serde_json::Value) -> Scope {
        let job: DeliveryJob = serde_json::from_value(serde_json::json!({
            "event": {
                "id": "e1", "eventType": "HighCPU", "severity": "FATAL", "category": "ALERT",
                "subject": subject, "body": "b", "eventTimestamp": 1_700_000_000,
                "resource": {"resourceName": "web-1", "resourceType": "vm"},
                "tags": tags
            },
            "acceptedAtMs": 0,
            "action": "a"
        }))
        .unwrap();
        let action: Action = serde_json::from_value(
            serde_json::json!({"name": "a", "type": "WEB_HOOK", "state": "ENABLED"}),
        )
        .unwrap();
        Scope::new(&job, &action)
    }

    #[test]
    fn each_format_escapes_its_way() {
        let t = Templates::new();
        let s = scope(r#"CPU "high" <90%> & more"#, serde_json::json!({}));
        let text = t.render(
            "subjectTemplate",
            Format::Text,
            "[{{ event.severity }}] {{ event.subject }}",
            &s,
        );
        assert_eq!(text.unwrap(), r#"[FATAL] CPU "high" <90%> & more"#);
        let html = t.render(
            "bodyTemplate",
            Format::Html,
            "<b>{{ event.subject }}</b>",
            &s,
        );
        assert_eq!(
            html.unwrap(),
            "<b>CPU &quot;high&quot; &lt;90%&gt; &amp; more</b>"
        );
        let json = t.render_json(
            "payloadTemplate",
            r#"{"text": {{ event.subject }}, "n": {{ event.eventTimestamp }}}"#,
            &s,
        );
        assert_eq!(
            json.unwrap(),
            serde_json::json!({"text": r#"CPU "high" <90%> & more"#, "n": 1_700_000_000})
        );
    }

    #[test]
    fn a_runaway_template_fails_fast_naming_its_property() {
        let t = Templates::new();
        let s = scope("x", serde_json::json!({}));
        let started = std::time::Instant::now();
        let endless =
            "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}";
        let failure = t
            .render("payloadTemplate", Format::Text, endless, &s)
            .unwrap_err();
        assert_eq!(
            (failure.code, failure.retry),
            (Code::BadAction, Retry::Never)
        );
        assert!(
            failure
                .reason
                .starts_with("`payloadTemplate` does not render")
                && failure.reason.contains("fuel"),
            "{}",
            failure.reason
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        let huge = "{% for a in range(10000) %}0123456789012345678901234567890{% endfor %}";
        let failure = t
            .render("bodyTemplate", Format::Text, huge, &s)
            .unwrap_err();
        assert!(
            failure.reason.contains("renders more than"),
            "{}",
            failure.reason
        );
    }

    #[test]
    fn helpers_and_missing_values() {
        let t = Templates::new();
        let s = scope("x", serde_json::json!({"ans:status": "CLOSE"}));
        let out = t.render(
            "bodyTemplate",
            Format::Text,
            "{{ 'abcdefgh' | limit(5) }}|{{ event.eventTimestamp | datetime }}|{{ '<a&b>' | mrkdwn }}|{{ resolved }}|{{ event.tags.missing.deeper }}|{{ links | length }}",
            &s,
        );
        assert_eq!(
            out.unwrap(),
            "abcd…|2023-11-14 22:13:20 UTC|&lt;a&amp;b&gt;|True||0"
        );
        assert_eq!(datetime(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(datetime(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn broken_templates_are_refused_or_fail_naming_the_property() {
        let refused = check("subjectTemplate", "{{ event.subject").unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("`properties.subjectTemplate` is not a valid template"),
            "{refused}"
        );
        assert!(check("subjectTemplate", "{{ event.subject }}").is_ok());
        let t = Templates::new();
        let s = scope("x", serde_json::json!({}));
        let failure = t
            .render(
                "subjectTemplate",
                Format::Text,
                "{{ event.subject | limit('x') }}",
                &s,
            )
            .unwrap_err();
        assert_eq!(
            (failure.code, failure.retry),
            (Code::BadAction, Retry::Never)
        );
        assert!(
            failure
                .reason
                .starts_with("`subjectTemplate` does not render"),
            "{}",
            failure.reason
        );
        let failure = t
            .render_json("payloadTemplate", "{\"a\": \"{{ event.subject }}\"}", &s)
            .unwrap_err();
        assert!(
            failure.reason.contains("does not render to JSON"),
            "{}",
            failure.reason
        );
    }
}
