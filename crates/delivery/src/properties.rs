//! Reading an action's `properties` (a string map; ANS also allows booleans and numbers) with
//! errors that name the property: a missing or malformed one is a permanent 906 failure, since
//! only fixing the action helps. An empty value counts as absent.

use crate::channels::Failure;
use model::config::PropertyValue;
use model::Action;
use std::borrow::Cow;
use std::str::FromStr;

#[derive(Clone, Copy)]
pub struct Properties<'a> {
    action: &'a Action,
}

impl<'a> Properties<'a> {
    pub fn of(action: &'a Action) -> Self {
        Properties { action }
    }

    /// The value as text, if set and not empty.
    pub fn text(&self, name: &str) -> Option<String> {
        let value = self.action.properties.get(name)?.to_text();
        (!value.trim().is_empty()).then_some(value)
    }

    pub fn required(&self, name: &str) -> Result<String, Failure> {
        self.text(name).ok_or_else(|| {
            Failure::bad_action(format!(
                "{} action `{}` needs the property `{name}`",
                self.action.action_type, self.action.name
            ))
        })
    }

    /// A boolean: JSON `true`/`false` or the text `true`/`false`.
    pub fn flag(&self, name: &str, default: bool) -> Result<bool, Failure> {
        match self.action.properties.get(name) {
            None => Ok(default),
            Some(PropertyValue::Flag(flag)) => Ok(*flag),
            Some(other) => match other.to_text().trim().to_ascii_lowercase().as_str() {
                "" => Ok(default),
                "true" => Ok(true),
                "false" => Ok(false),
                text => Err(Failure::bad_action(format!(
                    "`{name}` must be true or false, not `{text}`"
                ))),
            },
        }
    }

    /// A number (or any `FromStr` value), if set.
    pub fn parsed<T: FromStr>(&self, name: &str) -> Result<Option<T>, Failure> {
        self.text(name)
            .map(|text| {
                text.trim().parse().map_err(|_| {
                    Failure::bad_action(format!("`{name}` has an invalid value `{text}`"))
                })
            })
            .transpose()
    }

    /// The properties named `{prefix}{rest}`, as `(rest, value)`.
    pub fn prefixed(&self, prefix: &'a str) -> impl Iterator<Item = (&'a str, String)> + 'a {
        self.action
            .properties
            .iter()
            .filter_map(move |(name, value)| Some((name.strip_prefix(prefix)?, value.to_text())))
    }

    /// The template in property `name`, or `default`.
    pub fn template(&self, name: &str, default: &'static str) -> Cow<'static, str> {
        self.text(name).map_or(Cow::Borrowed(default), Cow::Owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::CODE_BAD_ACTION;

    #[test]
    fn values_and_errors_name_the_property() {
        let action: Action = serde_json::from_value(serde_json::json!({
            "name": "hook", "type": "WEB_HOOK", "state": "ENABLED",
            "properties": {"destination": "https://x", "sslTrustAll": false, "retries": "3",
                           "on": "TRUE", "empty": " ", "header.X-A": "1", "header.X-B": "2",
                           "bad": "maybe"}
        }))
        .unwrap();
        let p = Properties::of(&action);
        assert_eq!(p.required("destination").unwrap(), "https://x");
        let missing = p.required("empty").unwrap_err();
        assert_eq!(missing.code, CODE_BAD_ACTION);
        assert_eq!(
            missing.reason,
            "WEB_HOOK action `hook` needs the property `empty`"
        );
        assert!(!p.flag("sslTrustAll", true).unwrap());
        assert!(p.flag("on", false).unwrap());
        assert!(p.flag("absent", true).unwrap());
        assert!(p.flag("bad", false).unwrap_err().reason.contains("`bad`"));
        assert_eq!(p.parsed::<u32>("retries").unwrap(), Some(3));
        assert!(p.parsed::<u32>("destination").is_err());
        assert_eq!(
            p.prefixed("header.").collect::<Vec<_>>(),
            [("X-A", "1".to_owned()), ("X-B", "2".to_owned())]
        );
        assert_eq!(p.template("empty", "default"), "default");
    }
}
