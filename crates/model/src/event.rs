//! The resource event, as producers send it and as Tocsin echoes and stores it (ANS §1).

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Free-form string tags. Sorted, so that serialized events are deterministic.
pub type Tags = BTreeMap<String, String>;

/// Reserved tag: the source's own id for the thing the event is about; events sharing it form an
/// ordered, stateful chain (open, update, close).
pub const TAG_SOURCE_EVENT_ID: &str = "ans:sourceEventId";
/// Reserved tag: correlates related events.
pub const TAG_CORRELATION_ID: &str = "ans:correlationId";
/// Reserved tag: what an incident-management target should do (CREATE_OR_UPDATE, CLOSE, …).
pub const TAG_STATUS: &str = "ans:status";

/// Declares a closed enum of wire strings with `ALL`, `as_str`, `Display` and `FromStr`.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $wire)] $variant),+ }

        impl $name {
            /// Every value, in the order the API documents them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or(())
            }
        }
    };
}
pub(crate) use wire_enum;

wire_enum!(
    /// The impact of the event on the affected resource.
    Severity { Info => "INFO", Notice => "NOTICE", Warning => "WARNING", Error => "ERROR", Fatal => "FATAL" }
);

wire_enum!(
    /// What kind of event this is.
    Category { Alert => "ALERT", Exception => "EXCEPTION", Notification => "NOTIFICATION" }
);

/// The resource the event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AffectedResource {
    pub resource_name: String,
    pub resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_instance: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_tags"
    )]
    pub tags: Option<Tags>,
}

/// An event as accepted: validated, with its server-assigned `id` and an `eventTimestamp`.
/// This is exactly what the producer API echoes and what the consumer API returns around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceEvent {
    pub id: String,
    pub event_type: String,
    pub severity: Severity,
    pub category: Category,
    pub subject: String,
    pub body: String,
    pub resource: AffectedResource,
    /// Seconds since the epoch at the source; the ingestion time when the producer sent none.
    pub event_timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_tags"
    )]
    pub tags: Option<Tags>,
}

impl ResourceEvent {
    /// The value of an event-level tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.as_ref()?.get(key).map(String::as_str)
    }

    pub fn source_event_id(&self) -> Option<&str> {
        self.tag(TAG_SOURCE_EVENT_ID)
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.tag(TAG_CORRELATION_ID)
    }

    /// The alert this event belongs to: its `ans:sourceEventId`, else the event alone (its id).
    pub fn alert_key(&self) -> &str {
        self.source_event_id().unwrap_or(&self.id)
    }
}

/// What an event does to its alert, as its `ans:status` tag says (`CREATE_OR_UPDATE`,
/// `CREATE`, `UPDATE`, `COMMENT`, `CLOSE`): `CLOSE` closes the alert, `COMMENT` only adds to
/// it, anything else (or no tag) opens it or keeps it open. The OCI source sets it from the
/// alarm's type: OK_TO_FIRING and REPEAT open, FIRING_TO_OK and RESET close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The alert is (still) firing: open it, or add to it.
    Open,
    /// Add to the alert, change nothing else.
    Comment,
    /// The alert is over.
    Close,
}

impl Transition {
    pub fn of(event: &ResourceEvent) -> Self {
        let status = event.tag(TAG_STATUS).map(str::trim).unwrap_or_default();
        if status.eq_ignore_ascii_case("CLOSE") {
            Transition::Close
        } else if status.eq_ignore_ascii_case("COMMENT") {
            Transition::Comment
        } else {
            Transition::Open
        }
    }
}

/// Tags are string→string, but some producers (the Go client in SAP's Piper, for one) send
/// numbers and booleans: those are kept as their JSON text rather than rejected. Objects and
/// arrays are still an error, since flattening them would invent a format.
pub(crate) fn lenient_tags<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Tags>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Number(serde_json::Number),
        Flag(bool),
    }
    let raw: Option<BTreeMap<String, Option<Scalar>>> = Option::deserialize(de)?;
    Ok(raw.map(|map| {
        map.into_iter()
            .filter_map(|(key, value)| {
                let text = match value? {
                    Scalar::Text(text) => text,
                    Scalar::Number(number) => number.to_string(),
                    Scalar::Flag(flag) => flag.to_string(),
                };
                Some((key, text))
            })
            .collect()
    }))
}
