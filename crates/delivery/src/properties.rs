//! Reading an action's `properties` (a string map; ANS also allows booleans and numbers) when
//! its channel checks it at configuration time, with errors that name the property. An empty
//! value counts as absent. A channel reads every property it uses here, once per configuration
//! change, into its typed configuration; attempts read only that.

use crate::outbound::OutboundPolicy;
use model::config::PropertyValue;
use model::{Action, ActionTypeError};
use reqwest::Url;
use std::str::FromStr;

/// What a channel's check returns when a property is wrong: 400 at configuration time.
pub type PropertyError = ActionTypeError;

/// Properties every action type accepts: overrides of the retry schedule ([`crate::retry`]).
pub const COMMON: &[&str] = &["retryMaxAttempts", "retryInitialDelayMs", "retryMaxDelayMs"];

#[derive(Clone, Copy)]
pub struct Properties<'a> {
    action: &'a Action,
    /// Where URL properties may point.
    outbound: &'a OutboundPolicy,
}

impl<'a> Properties<'a> {
    pub fn of(action: &'a Action, outbound: &'a OutboundPolicy) -> Self {
        Properties { action, outbound }
    }

    /// The value as text, if set and not empty.
    pub fn text(&self, name: &str) -> Option<String> {
        let value = self.action.properties.get(name)?.to_text();
        (!value.trim().is_empty()).then_some(value)
    }

    pub fn required(&self, name: &str) -> Result<String, PropertyError> {
        self.text(name).ok_or_else(|| {
            PropertyError::property(
                name,
                format!("is required for {} actions", self.action.action_type),
            )
        })
    }

    /// A boolean: JSON `true`/`false` or the text `true`/`false`.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, PropertyError> {
        match self.action.properties.get(name) {
            None => Ok(default),
            Some(PropertyValue::Flag(flag)) => Ok(*flag),
            Some(other) => match other.to_text().trim().to_ascii_lowercase().as_str() {
                "" => Ok(default),
                "true" => Ok(true),
                "false" => Ok(false),
                text => Err(PropertyError::property(
                    name,
                    format!("must be true or false, not `{text}`"),
                )),
            },
        }
    }

    /// A number (or any `FromStr` value), if set.
    pub fn parsed<T: FromStr>(&self, name: &str) -> Result<Option<T>, PropertyError> {
        self.text(name)
            .map(|text| {
                text.trim().parse().map_err(|_| {
                    PropertyError::property(name, format!("has an invalid value `{text}`"))
                })
            })
            .transpose()
    }

    /// One of `allowed` (compared without case), if set.
    pub fn one_of(
        &self,
        name: &str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, PropertyError> {
        let Some(text) = self.text(name) else {
            return Ok(None);
        };
        let wanted = text.trim();
        allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(wanted))
            .copied()
            .map(Some)
            .ok_or_else(|| {
                PropertyError::property(
                    name,
                    format!("must be one of {}, not `{wanted}`", allowed.join(", ")),
                )
            })
    }

    /// An `http` or `https` URL with a host the outbound policy lets actions reach, if set.
    pub fn url(&self, name: &str) -> Result<Option<Url>, PropertyError> {
        self.text(name)
            .map(|text| self.url_in(name, &text))
            .transpose()
    }

    pub fn required_url(&self, name: &str) -> Result<Url, PropertyError> {
        self.url_in(name, &self.required(name)?)
    }

    /// `text`, read from property `name`, as a URL the outbound policy lets actions reach.
    pub fn url_in(&self, name: &str, text: &str) -> Result<Url, PropertyError> {
        let url = parse_url(name, text)?;
        self.outbound
            .check_url(&url)
            .map_err(|why| PropertyError::property(name, why))?;
        Ok(url)
    }

    /// A host (name or address) the outbound policy lets actions reach.
    pub fn required_host(&self, name: &str) -> Result<String, PropertyError> {
        let host = self.required(name)?.trim().to_ascii_lowercase();
        self.outbound
            .check_host(&host)
            .map_err(|why| PropertyError::property(name, why))?;
        Ok(host)
    }

    /// The template in property `name`, if set, once it compiles.
    pub fn template(&self, name: &str) -> Result<Option<String>, PropertyError> {
        let Some(source) = self.text(name) else {
            return Ok(None);
        };
        crate::templates::check(name, &source)?;
        Ok(Some(source))
    }

    /// The properties named `{prefix}{rest}`, as `(rest, value)`.
    pub fn prefixed(&self, prefix: &'a str) -> impl Iterator<Item = (&'a str, String)> + 'a {
        self.action
            .properties
            .iter()
            .filter_map(move |(name, value)| Some((name.strip_prefix(prefix)?, value.to_text())))
    }

    /// Refuses a property that is neither in `known` (where `name.*` stands for every name
    /// with that prefix) nor [`COMMON`]: a typo such as `destinaton` is caught when the action
    /// is saved, not when its first alarm is lost.
    pub fn only(&self, known: &[&str]) -> Result<(), PropertyError> {
        let is_known = |key: &str| {
            COMMON.contains(&key)
                || known.iter().any(|k| match k.strip_suffix('*') {
                    Some(prefix) => key.len() > prefix.len() && key.starts_with(prefix),
                    None => *k == key,
                })
        };
        match self.action.properties.keys().find(|key| !is_known(key)) {
            None => Ok(()),
            Some(unknown) => Err(PropertyError::property(
                unknown.as_str(),
                format!(
                    "is not a property of {} actions; known: {}",
                    self.action.action_type,
                    known
                        .iter()
                        .chain(COMMON)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

/// `value` as an `http` or `https` URL with a host.
pub fn parse_url(property: &str, value: &str) -> Result<Url, PropertyError> {
    let url = Url::parse(value.trim())
        .map_err(|e| PropertyError::property(property, format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(PropertyError::property(
            property,
            format!(
                "must be an http or https URL with a host, not a `{}:` URL",
                url.scheme()
            ),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_errors_name_the_property() {
        let action: Action = serde_json::from_value(serde_json::json!({
            "name": "hook", "type": "WEB_HOOK", "state": "ENABLED",
            "properties": {"destination": "https://x", "sslTrustAll": false, "retries": "3",
                           "on": "TRUE", "empty": " ", "header.X-A": "1", "header.X-B": "2",
                           "bad": "maybe", "file": "file:///etc/passwd", "method": "put",
                           "template": "{{ event.subject"}
        }))
        .unwrap();
        let outbound = OutboundPolicy::default();
        let p = Properties::of(&action, &outbound);
        assert_eq!(p.required("destination").unwrap(), "https://x");
        assert_eq!(
            p.required("empty").unwrap_err().to_string(),
            "`properties.empty` is required for WEB_HOOK actions"
        );
        assert!(!p.flag("sslTrustAll", true).unwrap());
        assert!(p.flag("on", false).unwrap());
        assert!(p.flag("absent", true).unwrap());
        assert!(p
            .flag("bad", false)
            .unwrap_err()
            .to_string()
            .contains("`properties.bad`"));
        assert_eq!(p.parsed::<u32>("retries").unwrap(), Some(3));
        assert!(p.parsed::<u32>("destination").is_err());
        assert_eq!(
            p.prefixed("header.").collect::<Vec<_>>(),
            [("X-A", "1".to_owned()), ("X-B", "2".to_owned())]
        );
        assert_eq!(p.one_of("method", &["POST", "PUT"]).unwrap(), Some("PUT"));
        assert!(p
            .one_of("bad", &["POST"])
            .unwrap_err()
            .to_string()
            .contains("one of POST"));
        assert!(p
            .required_url("file")
            .unwrap_err()
            .to_string()
            .contains("not a `file:` URL"));
        assert!(p
            .template("template")
            .unwrap_err()
            .to_string()
            .contains("`properties.template`"));
        let typo = p
            .only(&["destination", "header.*"])
            .unwrap_err()
            .to_string();
        assert!(typo.starts_with("`properties.bad` is not a property of WEB_HOOK actions; known: destination, header.*, retryMaxAttempts"), "{typo}");
    }
}
