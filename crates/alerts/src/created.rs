//! What the stateful channels created for an alert — the Slack thread, the B2C incident, the
//! ServiceNow record — as one alert's answer shows it, read from the link map
//! ([`store::links`]) by the keys the channels file it under: the alert's key (B2C and
//! ServiceNow: `ans:sourceEventId`) and its latest event's `ans:correlationId` (Slack threads
//! by it first).
//!
//! A link's scope is `<action name>|<destination>`; only the action's name is shown, with its
//! type from the catalog, never the destination (a URL may carry more than it should), and the
//! target is read as the action's channel wrote it. An action removed since shows its raw
//! target, an id. A link is the alert's only under the key its channel would file the alert
//! under: a B2C incident filed under this alert's correlation id belongs to another alert
//! (whose key that is), and so does a Slack thread filed under the alert key when the alert's
//! threads go by a correlation id.

use model::{Action, ResourceEvent, SharedCatalog};
use serde::Serialize;
use store::alerts::Alert;
use store::links::{Link, LinkState, LinkStore, Scoped};
use store::StoreError;

/// The type of the only channel that files by the correlation id.
const SLACK_THREADED: &str = "SLACK_THREADED";

/// One action's thing at its destination.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub action: String,
    /// The action's type; absent when the action no longer exists.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    /// The alert key the channel filed it under.
    pub key: String,
    /// `pending` (a create was sent, its answer never came), `open` or `closed`.
    pub state: &'static str,
    /// The last event of the alert the channel applied to it.
    pub last_event_id: String,
    /// What the destination holds; absent while a create is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Created>,
}

/// The destination's ids, by the channel that wrote them.
#[derive(Debug, Serialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Created {
    /// `SLACK_THREADED`: the thread's parent message (the channel writes `<channel> <ts>`).
    SlackThread { channel: String, ts: String },
    /// `ORACLE_B2C_INCIDENT`: the incident's id and reference number (`lookupName`), when the
    /// site named it.
    Incident {
        incident_id: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        lookup_name: Option<String>,
    },
    /// `SERVICE_NOW`: the record's `sys_id` and number, when the instance named it.
    Record {
        sys_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        number: Option<String>,
    },
    /// Any other (or a removed) action: the target as written.
    Other { id: String },
}

impl Created {
    /// `None` while pending: the target then is at most an earlier one, being replaced.
    fn read(action_type: Option<&str>, link: &Link) -> Option<Created> {
        let target = link.target.as_str();
        if link.state == LinkState::Pending || target.is_empty() {
            return None;
        }
        let name = Some(link.name.clone()).filter(|name| !name.is_empty());
        let created = match action_type {
            Some(SLACK_THREADED) => {
                target
                    .split_once(' ')
                    .map(|(channel, ts)| Created::SlackThread {
                        channel: channel.to_owned(),
                        ts: ts.to_owned(),
                    })
            }
            Some("ORACLE_B2C_INCIDENT") => {
                target.parse().ok().map(|incident_id| Created::Incident {
                    incident_id,
                    lookup_name: name,
                })
            }
            Some("SERVICE_NOW") => Some(Created::Record {
                sys_id: target.to_owned(),
                number: name,
            }),
            _ => None,
        };
        Some(created.unwrap_or_else(|| Created::Other {
            id: target.to_owned(),
        }))
    }
}

/// Everything the stateful channels created for `alert`, by action.
pub async fn of_alert(
    links: &LinkStore,
    catalog: &SharedCatalog,
    alert: &Alert,
) -> Result<Vec<Destination>, StoreError> {
    let correlation = serde_json::from_str::<ResourceEvent>(&alert.latest_event)
        .ok()
        .and_then(|event| event.correlation_id().map(str::to_owned));
    let keys = Keys {
        alert: &alert.key,
        thread: correlation.as_deref().unwrap_or(&alert.key),
    };
    let found = links.of_keys(&[keys.alert, keys.thread]).await?;
    let catalog = catalog.load();
    let actions = &catalog.configuration().actions;
    Ok(found
        .into_iter()
        .filter_map(|scoped| destination(actions, keys, scoped))
        .collect())
}

/// The keys the channels file one alert's things under.
#[derive(Clone, Copy)]
struct Keys<'a> {
    /// B2C and ServiceNow (and any other): the alert key.
    alert: &'a str,
    /// `SLACK_THREADED`: the correlation id, else the alert key.
    thread: &'a str,
}

/// A link as shown, its action found among `actions` by the scope's name; `None` if it is
/// another alert's (filed under a key its channel does not file this alert under).
fn destination(
    actions: &[Action],
    keys: Keys,
    Scoped { scope, key, link }: Scoped,
) -> Option<Destination> {
    // Names may hold `|`: the longest name the scope starts with is the action's.
    let action = actions
        .iter()
        .filter(|a| {
            scope
                .strip_prefix(a.name.as_str())
                .is_some_and(|rest| rest.starts_with('|'))
        })
        .max_by_key(|a| a.name.len());
    let name = match action {
        Some(action) => action.name.clone(),
        None => scope
            .split_once('|')
            .map_or(&*scope, |(name, _)| name)
            .to_owned(),
    };
    let action_type = action.map(|a| a.action_type.clone());
    let filed_under = match action_type.as_deref() {
        Some(SLACK_THREADED) => keys.thread,
        _ => keys.alert,
    };
    if key != filed_under {
        return None;
    }
    Some(Destination {
        created: Created::read(action_type.as_deref(), &link),
        action: name,
        action_type,
        key,
        state: match link.state {
            LinkState::Pending => "pending",
            LinkState::Open => "open",
            LinkState::Closed => "closed",
        },
        last_event_id: link.last_event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(name: &str, action_type: &str) -> Action {
        serde_json::from_value(
            serde_json::json!({"name": name, "type": action_type, "state": "ENABLED"}),
        )
        .unwrap()
    }

    /// The link as shown for alert `k`, whose Slack threads go by `k` too.
    fn shown(actions: &[Action], scope: &str, link: Link) -> serde_json::Value {
        let keys = Keys {
            alert: "k",
            thread: "k",
        };
        let scoped = Scoped {
            scope: scope.into(),
            key: "k".into(),
            link,
        };
        serde_json::to_value(destination(actions, keys, scoped)).unwrap()
    }

    #[test]
    fn each_channel_s_target_is_read_as_it_wrote_it_and_never_the_destination() {
        let actions = [
            action("slack", "SLACK_THREADED"),
            action("b2c", "ORACLE_B2C_INCIDENT"),
            action("b2c|eu", "ORACLE_B2C_INCIDENT"),
            action("snow", "SERVICE_NOW"),
        ];
        let link = |state: LinkState, target: &str, name: &str| Link {
            state,
            target: target.into(),
            last_event: "e1".into(),
            name: name.into(),
        };
        let open = LinkState::Open;
        let slack = link(open, "C0ALERTS 1700000000.000001", "");
        assert_eq!(
            shown(&actions, "slack|C0ALERTS", slack),
            serde_json::json!({"action": "slack", "type": "SLACK_THREADED", "key": "k",
                "state": "open", "lastEventId": "e1",
                "created": {"channel": "C0ALERTS", "ts": "1700000000.000001"}})
        );
        let incident = link(LinkState::Closed, "42", "240101-000042");
        let b2c = shown(&actions, "b2c|eu|https://u:p@eu.example/", incident);
        let longest = "the longest name the scope starts with";
        assert_eq!(b2c["action"], "b2c|eu", "{longest}");
        assert_eq!(
            b2c["created"],
            serde_json::json!({"incidentId": 42, "lookupName": "240101-000042"})
        );
        assert!(!b2c.to_string().contains("example"), "{b2c}");
        let unnamed = shown(&actions, "b2c|https://site/", link(open, "43", ""));
        assert_eq!(unnamed["created"], serde_json::json!({"incidentId": 43}));
        let record = link(open, "9d3f", "INC0010042");
        let snow = shown(&actions, "snow|https://x/api/now/table/incident", record);
        assert_eq!(
            snow["created"],
            serde_json::json!({"sysId": "9d3f", "number": "INC0010042"})
        );
        let pending = shown(
            &actions,
            "b2c|https://site/",
            link(LinkState::Pending, "41", ""),
        );
        assert_eq!(pending["state"], "pending");
        let replaced = "an earlier incident, being replaced";
        assert_eq!(pending.get("created"), None, "{replaced}");
        // Alert `k` whose threads go by correlation id `c`: the incident of alert `c` and a
        // thread of correlation id `k` are others'.
        let keys = Keys {
            alert: "k",
            thread: "c",
        };
        let filed = |scope: &str, key: &str| {
            let scoped = Scoped {
                scope: scope.into(),
                key: key.into(),
                link: link(open, "7", ""),
            };
            destination(&actions, keys, scoped).map(|d| d.key)
        };
        assert_eq!(filed("b2c|https://site/", "k").as_deref(), Some("k"));
        assert_eq!(filed("b2c|https://site/", "c"), None, "alert c's incident");
        assert_eq!(filed("slack|C0ALERTS", "c").as_deref(), Some("c"));
        assert_eq!(
            filed("slack|C0ALERTS", "k"),
            None,
            "correlation id k's thread"
        );
        let gone = shown(&actions, "old|https://site/", link(open, "7", ""));
        assert_eq!(
            gone,
            serde_json::json!({"action": "old", "key": "k", "state": "open",
                "lastEventId": "e1", "created": {"id": "7"}})
        );
    }
}
