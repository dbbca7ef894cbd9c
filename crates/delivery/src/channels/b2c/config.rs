//! An `ORACLE_B2C_INCIDENT` action's properties, checked and parsed when the action is saved:
//! where the site is and how to reach it ([`Site`]), and how incidents are kept there
//! ([`IncidentRules`]).

use crate::properties::{Properties, PropertyError};
use crate::templates::Texts;
use reqwest::header::HeaderValue;
use reqwest::Url;
use std::collections::HashMap;

/// Where and how to reach one site.
pub(super) struct Site {
    /// `…/services/rest/connect/{version}/`
    pub(super) base: Url,
    pub(super) username: String,
    pub(super) password: String,
    pub(super) context: String,
    pub(super) trust_all: bool,
}

/// How incidents are kept on that site: the action's incident properties, parsed.
pub(super) struct IncidentRules {
    pub(super) primary_contact: i64,
    pub(super) queue: Option<i64>,
    /// Lookup names by severity name (`severity_CRITICAL` → `CRITICAL`).
    pub(super) severities: HashMap<String, String>,
    pub(super) status_firing: String,
    pub(super) status_ok: String,
    pub(super) key_field: String,
    pub(super) reopen: bool,
    pub(super) entry_type: String,
    pub(super) texts: Texts,
}

/// An `ORACLE_B2C_INCIDENT` action's properties, parsed.
pub struct B2cConfig {
    pub(super) site: Site,
    pub(super) rules: IncidentRules,
}

pub(super) fn rules(p: &Properties) -> Result<IncidentRules, PropertyError> {
    let key_field = p
        .text("keyField")
        .unwrap_or_else(|| "oci_dedupe_key".into());
    if !key_field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(PropertyError::property(
            "keyField",
            "must be a custom field name (letters, digits, `_`)",
        ));
    }
    let primary_contact = p
        .required("primaryContactId")?
        .trim()
        .parse()
        .map_err(|_| {
            PropertyError::property("primaryContactId", "must be a contact id (a number)")
        })?;
    Ok(IncidentRules {
        primary_contact,
        queue: p.parsed("queueId")?,
        severities: p
            .prefixed("severity_")
            .map(|(name, lookup)| (name.to_owned(), lookup))
            .collect(),
        status_firing: p
            .text("status_FIRING")
            .unwrap_or_else(|| "Unresolved".into()),
        status_ok: p.text("status_OK").unwrap_or_else(|| "Solved".into()),
        key_field,
        reopen: p.flag("reopen", true)?,
        entry_type: p.text("threadEntryType").unwrap_or_else(|| "Note".into()),
        texts: Texts::read(p)?,
    })
}

pub(super) fn site(p: &Properties) -> Result<Site, PropertyError> {
    let mut root = match (p.url("baseUrl")?, p.text("hostname")) {
        (Some(url), _) => url,
        (None, Some(host)) => p.url_in("hostname", &format!("https://{}", host.trim()))?,
        (None, None) => {
            return Err(PropertyError::property(
                "hostname",
                "or `baseUrl` is required for ORACLE_B2C_INCIDENT actions",
            ))
        }
    };
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let version = p.text("apiVersion").unwrap_or_else(|| "v1.4".into());
    if !version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return Err(PropertyError::property(
            "apiVersion",
            format!("`{version}` is not a version like v1.4"),
        ));
    }
    let base = root
        .join(&format!("services/rest/connect/{version}/"))
        .expect("a relative path joins");
    let context = p
        .text("applicationContext")
        .unwrap_or_else(|| "Tocsin".into());
    if context.chars().count() > 40 || HeaderValue::from_str(&context).is_err() {
        return Err(PropertyError::property(
            "applicationContext",
            "must be at most 40 plain characters",
        ));
    }
    Ok(Site {
        base,
        username: p.required("username")?,
        password: p.required("password")?,
        context,
        trust_all: p.flag("sslTrustAll", false)?,
    })
}
