//! A `SERVICE_NOW` action's properties, checked and parsed when the action is saved: where the
//! instance is and how to sign in ([`Instance`]), and how records are kept there ([`Rules`]).

use crate::properties::{Properties, PropertyError};
use crate::templates::Texts;
use model::Severity;
use reqwest::Url;
use std::collections::HashMap;

/// Where and how to reach one instance's table.
pub(super) struct Instance {
    /// `{instanceUrl}/api/now/table/{table}`
    pub(super) table_url: Url,
    /// `{instanceUrl}/oauth_token.do`
    pub(super) token_url: Url,
    pub(super) username: String,
    pub(super) password: String,
    /// The OAuth client, when the instance is reached with bearer tokens instead of Basic.
    pub(super) oauth: Option<OAuthClient>,
    pub(super) trust_all: bool,
}

pub(super) struct OAuthClient {
    pub(super) id: String,
    pub(super) secret: String,
}

/// How records are kept on that table: the action's record properties, parsed.
pub(super) struct Rules {
    /// `urgency` and `impact` (`1`–`3`) by the event's severity.
    pub(super) urgency: HashMap<Severity, String>,
    pub(super) impact: HashMap<Severity, String>,
    pub(super) assignment_group: Option<String>,
    pub(super) caller_id: Option<String>,
    pub(super) resolve_state: String,
    pub(super) reopen_state: String,
    pub(super) close_code_field: String,
    pub(super) close_code: String,
    pub(super) close_notes: Option<String>,
    pub(super) texts: Texts,
}

/// A `SERVICE_NOW` action's properties, parsed.
pub struct ServiceNowConfig {
    pub(super) instance: Instance,
    pub(super) rules: Rules,
}

/// ServiceNow's urgency and impact by severity when the action does not say: FATAL is high
/// (1), ERROR medium (2), WARNING medium urgency and low impact, NOTICE and INFO low (3).
fn default_levels(severity: Severity) -> (&'static str, &'static str) {
    match severity {
        Severity::Fatal => ("1", "1"),
        Severity::Error => ("2", "2"),
        Severity::Warning => ("2", "3"),
        Severity::Notice | Severity::Info => ("3", "3"),
    }
}

/// A table or field name: letters, digits, `_` (it goes into a URL path or a query).
fn name(p: &Properties, property: &str, default: &str) -> Result<String, PropertyError> {
    let value = p.text(property).unwrap_or_else(|| default.into());
    let value = value.trim().to_owned();
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(PropertyError::property(
            property,
            "must be a table or field name (letters, digits, `_`)",
        ));
    }
    Ok(value)
}

/// A state's number (choice value), as ServiceNow takes it: a string of digits.
fn state(p: &Properties, property: &str, default: u32) -> Result<String, PropertyError> {
    let state = p.parsed::<u32>(property)?.unwrap_or(default);
    Ok(state.to_string())
}

/// `urgency_<SEVERITY>` or `impact_<SEVERITY>`: `1`, `2` or `3` for each severity named.
fn levels(
    p: &Properties,
    prefix: &'static str,
    pick: fn((&'static str, &'static str)) -> &'static str,
) -> Result<HashMap<Severity, String>, PropertyError> {
    let mut levels: HashMap<Severity, String> = Severity::ALL
        .iter()
        .map(|s| (*s, pick(default_levels(*s)).to_owned()))
        .collect();
    for (suffix, value) in p.prefixed(prefix) {
        let property = format!("{prefix}{suffix}");
        let severity = suffix.parse::<Severity>().map_err(|()| {
            PropertyError::property(
                &property,
                "must name an event severity: FATAL, ERROR, WARNING, NOTICE or INFO",
            )
        })?;
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if !matches!(value, "1" | "2" | "3") {
            return Err(PropertyError::property(
                &property,
                format!("must be 1 (high), 2 (medium) or 3 (low), not `{value}`"),
            ));
        }
        levels.insert(severity, value.to_owned());
    }
    Ok(levels)
}

pub(super) fn rules(p: &Properties) -> Result<Rules, PropertyError> {
    Ok(Rules {
        urgency: levels(p, "urgency_", |(urgency, _)| urgency)?,
        impact: levels(p, "impact_", |(_, impact)| impact)?,
        assignment_group: p.text("assignmentGroup").map(|s| s.trim().to_owned()),
        caller_id: p.text("callerId").map(|s| s.trim().to_owned()),
        resolve_state: state(p, "resolveState", 6)?,
        reopen_state: state(p, "reopenState", 2)?,
        close_code_field: name(p, "closeCodeField", "close_code")?,
        close_code: p
            .text("closeCode")
            .unwrap_or_else(|| "Solved (Permanently)".into()),
        close_notes: p.template("closeNotesTemplate")?,
        texts: Texts::read(p)?,
    })
}

pub(super) fn instance(p: &Properties) -> Result<Instance, PropertyError> {
    let mut root = p.required_url("instanceUrl")?;
    if root.query().is_some() || root.fragment().is_some() {
        return Err(PropertyError::property(
            "instanceUrl",
            "must be the instance's address, e.g. https://acme.service-now.com, without a query",
        ));
    }
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let table = name(p, "table", "incident")?;
    let oauth = match (p.text("oauthClientId"), p.text("oauthClientSecret")) {
        (None, None) => None,
        (Some(id), Some(secret)) => Some(OAuthClient {
            id: id.trim().to_owned(),
            secret,
        }),
        (Some(_), None) => {
            return Err(PropertyError::property(
                "oauthClientSecret",
                "is required with `oauthClientId`",
            ))
        }
        (None, Some(_)) => {
            return Err(PropertyError::property(
                "oauthClientId",
                "is required with `oauthClientSecret`",
            ))
        }
    };
    Ok(Instance {
        table_url: root
            .join(&format!("api/now/table/{table}"))
            .expect("a relative path joins"),
        token_url: root.join("oauth_token.do").expect("a relative path joins"),
        username: p.required("username")?,
        password: p.required("password")?,
        oauth,
        trust_all: p.flag("sslTrustAll", false)?,
    })
}
