//! A form and an entity, both ways: the form's fields laid over the stored entity as the
//! JSON the API takes ([`from_form`]); the entity and the API's error as the form shows them,
//! each field with the error that names it ([`entity_context`]).

use super::kind::{Input, Kind, NEW_PROPERTY_ROWS};
use crate::render::encoded;
use crate::session::Form;
use router::store::ChangeError;
use serde_json::{Map, Value};

/// `stored` with the form's fields laid over it.
pub(super) fn from_form(kind: Kind, stored: &Value, form: &Form) -> Value {
    let mut entity = stored.as_object().cloned().unwrap_or_default();
    for field in kind.fields() {
        let text = form.get(field.key).unwrap_or_default();
        let value = match field.input {
            Input::Flag => Some(Value::Bool(text == "on")),
            Input::List => Some(Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_owned()))
                    .collect(),
            )),
            Input::Text | Input::Suggest(_) | Input::Choice(_) => {
                (!text.is_empty() || field.key == "name").then(|| Value::String(text.to_owned()))
            }
        };
        match value {
            Some(value) => entity.insert(field.key.to_owned(), value),
            None => entity.remove(field.key),
        };
    }
    if kind == Kind::Action {
        let before = stored["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let mut properties = Map::new();
        for (key, text) in form.fields() {
            if let Some(property) = key.strip_prefix("property.") {
                if !text.trim().is_empty() {
                    properties.insert(
                        property.to_owned(),
                        typed(before.get(property), text.trim()),
                    );
                }
            }
        }
        for n in 0..NEW_PROPERTY_ROWS {
            if let (Some(key), Some(value)) = (
                form.get(&format!("newKey{n}")),
                form.get(&format!("newValue{n}")),
            ) {
                properties.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        entity.insert("properties".into(), Value::Object(properties));
    }
    Value::Object(entity)
}

/// A property's text as the type it had (a flag stays a flag, a number a number).
fn typed(before: Option<&Value>, text: &str) -> Value {
    match (before, serde_json::from_str::<Value>(text)) {
        (Some(Value::Bool(_)), Ok(flag @ Value::Bool(_))) => flag,
        (Some(Value::Number(_)), Ok(number @ Value::Number(_))) => number,
        _ => Value::String(text.to_owned()),
    }
}

/// Whether `message` names `key` (`` `key` ``, or a path into it).
fn names(message: &str, key: &str) -> bool {
    message.contains(&format!("`{key}`")) || message.contains(&format!("`{key}."))
}

/// What the entity form shows: each field with its value and the error that names it.
pub(super) fn entity_context(
    kind: Kind,
    name: Option<&str>,
    entity: &Value,
    notice: Option<&str>,
    error: Option<&ChangeError>,
) -> Map<String, Value> {
    let message = error.map(ToString::to_string);
    let error_of = |key: &str| {
        message
            .as_deref()
            .filter(|m| names(m, key))
            .map(str::to_owned)
    };
    let fields: Vec<Value> = kind
        .fields()
        .iter()
        .map(|f| {
            let value = match &entity[f.key] {
                Value::String(text) => text.clone(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                Value::Bool(flag) => flag.to_string(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let (input, options): (&str, &[&str]) = match f.input {
                Input::Text => ("text", &[]),
                Input::List => ("text", &[]),
                Input::Suggest(options) => ("suggest", options),
                Input::Choice(options) => ("choice", options),
                Input::Flag => ("flag", &[]),
            };
            serde_json::json!({
                "key": f.key, "label": f.label, "input": input, "options": options,
                "value": value, "error": error_of(f.key),
                // A name is the entity's address: fixed once it exists.
                "readonly": f.key == "name" && name.is_some(),
            })
        })
        .collect();
    let properties: Vec<Value> = entity["properties"]
        .as_object()
        .map(|properties| {
            properties
                .iter()
                .map(|(key, value)| {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    serde_json::json!({"key": key, "value": text, "error": error_of(key)})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut context = Map::new();
    context.insert(
        "title".into(),
        match name {
            Some(name) => format!("{} {name}", kind.as_str()),
            None => format!("New {}", kind.as_str()),
        }
        .into(),
    );
    context.insert("kind".into(), kind.as_str().into());
    context.insert("name".into(), name.into());
    context.insert(
        "path".into(),
        match name {
            Some(name) => format!("/ui/configuration/{}/{}", kind.as_str(), encoded(name)),
            None => format!("/ui/configuration/{}", kind.as_str()),
        }
        .into(),
    );
    context.insert("fields".into(), fields.into());
    context.insert("action".into(), (kind == Kind::Action).into());
    context.insert("properties".into(), properties.into());
    context.insert(
        "newRows".into(),
        (0..NEW_PROPERTY_ROWS).collect::<Vec<_>>().into(),
    );
    context.insert("notice".into(), notice.into());
    context.insert("error".into(), message.into());
    context
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_lays_its_fields_over_the_stored_entity() {
        let stored = serde_json::json!({
            "name": "hook", "type": "WEB_HOOK", "state": "ENABLED", "labels": ["keep"],
            "properties": {"destination": "http://old", "sslTrustAll": false, "token": "****"}
        });
        let form = Form::from_pairs(&[
            ("name", "hook"),
            ("type", "WEB_HOOK"),
            ("state", "DISABLED"),
            ("description", ""),
            ("property.destination", "http://new"),
            ("property.sslTrustAll", "true"),
            ("property.token", "****"),
            ("newKey0", "extra"),
            ("newValue0", "x"),
        ]);
        let entity = from_form(Kind::Action, &stored, &form);
        assert_eq!(entity["state"], "DISABLED");
        assert_eq!(
            entity["labels"],
            serde_json::json!(["keep"]),
            "fields the form lacks stay"
        );
        assert!(
            entity.get("description").is_none(),
            "a blank field is left out"
        );
        assert_eq!(
            entity["properties"],
            serde_json::json!({"destination": "http://new", "sslTrustAll": true, "token": "****", "extra": "x"})
        );
    }

    #[test]
    fn an_error_belongs_to_the_fields_it_names() {
        let message = "invalid condition: `predicate`: unknown variant `SOMETIMES`";
        assert!(names(message, "predicate"));
        assert!(!names(message, "propertyKey"));
        assert!(names("`properties.destination` is required", "properties"));
    }
}
