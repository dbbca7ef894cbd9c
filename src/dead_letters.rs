//! The dead-letters API, Tocsin's own (under `/tocsin/v1/`, beside the redelivery API):
//! - `GET /tocsin/v1/dead-letters[?page=N&pageSize=M]` (consumer scope) — the dead letters,
//!   newest first, in the consumer API's paged shape: which queue, why, when, after how many
//!   deliveries, and the payload (or, for one that is not JSON or is large, a preview);
//! - `POST /tocsin/v1/dead-letters/{id}/replay` (configuration scope) — put one back on its
//!   queue;
//! - `POST /tocsin/v1/dead-letters/replay` (configuration scope) — put back every one there is.
//!
//! Everything goes through the [`Bus`] trait: the same answers on both backends (the `bus`
//! crate's `dead_letters` module says where they wait and how a replay stays safe).

use bus::{Bus, BusError, DeadLetter};
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};
use web::{ApiError, Authenticator, Scope};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
/// A payload up to this size that is JSON is shown whole; any other, as a preview.
const INLINE_PAYLOAD_BYTES: usize = 64 * 1024;
/// Bytes of a payload shown in a preview.
const PREVIEW_BYTES: usize = 1024;

/// The dead-letter routes, reading and replaying through `bus`.
pub fn routes(bus: Arc<dyn Bus>, auth: &Arc<Authenticator>) -> BoxedFilter<(Response,)> {
    let base = warp::path!("tocsin" / "v1" / "dead-letters" / ..);
    let with_bus = warp::any().map(move || Arc::clone(&bus));
    let list = base
        .and(warp::path::end())
        .and(warp::get())
        .and(auth.require(Scope::Consumer))
        .and(warp::query::<HashMap<String, String>>())
        .and(with_bus.clone())
        .then(list);
    let replay_one = base
        .and(web::segment())
        .and(warp::path!("replay"))
        .and(warp::post())
        .and(auth.require(Scope::Configuration))
        .and(with_bus.clone())
        .then(|id: String, bus: Arc<dyn Bus>| async move {
            match bus.replay_dead_letter(&id).await {
                Ok(true) => replayed(1),
                Ok(false) => ApiError::not_found(format!("no dead letter `{id}`")).into_response(),
                Err(e) => failed(e),
            }
        });
    let replay_all = base
        .and(warp::path!("replay"))
        .and(warp::post())
        .and(auth.require(Scope::Configuration))
        .and(with_bus)
        .then(|bus: Arc<dyn Bus>| async move {
            match bus.replay_dead_letters().await {
                Ok(count) => replayed(count),
                Err(e) => failed(e),
            }
        });
    list.or(replay_all).unify().or(replay_one).unify().boxed()
}

async fn list(params: HashMap<String, String>, bus: Arc<dyn Bus>) -> Response {
    let (page, page_size) = match paging(&params) {
        Ok(paging) => paging,
        Err(e) => return e.into_response(),
    };
    let skip = page.saturating_mul(page_size);
    match bus.dead_letters(skip, page_size).await {
        Ok(found) => warp::reply::json(&serde_json::json!({
            "responseMetadata": {
                "page": page,
                "pageSize": page_size,
                "totalPages": found.total.div_ceil(page_size as u64),
                "totalResultsCount": found.total,
            },
            "results": found.letters.iter().map(shown).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}

/// `page` and `pageSize`, naming the one at fault. Other parameters are ignored.
fn paging(params: &HashMap<String, String>) -> Result<(usize, usize), ApiError> {
    let number = |key: &str, default: usize| match params.get(key) {
        None => Ok(default),
        Some(value) => value.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "`{key}` must be a non-negative integer, got `{value}`"
            ))
        }),
    };
    let page_size = number("pageSize", DEFAULT_PAGE_SIZE)?;
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::bad_request(format!(
            "`pageSize` must be between 1 and {MAX_PAGE_SIZE}, got {page_size}"
        )));
    }
    Ok((number("page", 0)?, page_size))
}

/// A dead letter as the API shows it.
fn shown(letter: &DeadLetter) -> serde_json::Value {
    let mut shown = serde_json::json!({
        "id": letter.id,
        "queue": letter.queue.map(|queue| queue.as_str()),
        "reason": letter.reason.as_str(),
        "deadAtMs": letter.dead_at_ms,
        "deliveries": letter.deliveries,
        "size": letter.payload.len(),
    });
    let json = (letter.payload.len() <= INLINE_PAYLOAD_BYTES)
        .then(|| serde_json::from_slice::<serde_json::Value>(&letter.payload).ok())
        .flatten();
    match json {
        Some(payload) => shown["payload"] = payload,
        None => {
            let end = letter.payload.len().min(PREVIEW_BYTES);
            shown["preview"] = String::from_utf8_lossy(&letter.payload[..end]).into();
        }
    }
    shown
}

fn replayed(count: u64) -> Response {
    warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "replayed": count })),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

fn failed(error: BusError) -> Response {
    match error {
        BusError::Unavailable(_) => {
            ApiError::unavailable(format!("the bus cannot answer now, retry later: {error}"))
        }
        BusError::NotReplayable(reason) => ApiError::new(StatusCode::CONFLICT, reason),
        other => {
            tracing::error!(error = %other, "cannot read or replay the dead letters");
            ApiError::internal("cannot read or replay the dead letters")
        }
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bus::{Queue, Reason};
    use bytes::Bytes;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            id: "7".into(),
            queue: Some(Queue::Events),
            payload: Bytes::copy_from_slice(payload),
            reason: Reason::Rejected,
            dead_at_ms: 1_700_000_000_000,
            deliveries: 1,
        }
    }

    #[test]
    fn json_payloads_show_whole_and_others_as_a_preview() {
        let json = shown(&letter(br#"{"eventType":"HighCPU"}"#));
        assert_eq!(json["payload"]["eventType"], "HighCPU");
        assert_eq!(
            (&json["queue"], &json["reason"], &json["size"]),
            (
                &serde_json::json!("events"),
                &serde_json::json!("rejected"),
                &serde_json::json!(23)
            )
        );
        let garbage = shown(&letter(&[b'x'; 5000]));
        assert!(garbage.get("payload").is_none());
        assert_eq!(garbage["preview"].as_str().unwrap().len(), PREVIEW_BYTES);
    }

    #[test]
    fn paging_names_the_parameter_at_fault() {
        let params = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(paging(&params(&[])).unwrap(), (0, DEFAULT_PAGE_SIZE));
        assert_eq!(
            paging(&params(&[("page", "2"), ("pageSize", "5")])).unwrap(),
            (2, 5)
        );
        let wrong = paging(&params(&[("page", "-1")])).unwrap_err();
        assert!(wrong.message.contains("`page`"), "{}", wrong.message);
        let wrong = paging(&params(&[("pageSize", "0")])).unwrap_err();
        assert!(wrong.message.contains("`pageSize`"), "{}", wrong.message);
    }
}
