//! Reading a request body as JSON bytes, with a size limit that holds for chunked bodies too
//! and a clear 413/415 instead of warp's plain-text rejections.

use crate::errors::ApiError;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use warp::http::StatusCode;
use warp::{Buf, Filter, Rejection};

/// Extracts the whole body, refusing one over `limit` bytes (413) or one whose
/// `Content-Type` is present and not JSON (415).
pub fn json(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(
            move |content_type: Option<String>, length: Option<u64>, stream| async move {
                if let Some(content_type) = content_type {
                    if !is_json(&content_type) {
                        return Err(warp::reject::custom(ApiError::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            format!("Content-Type must be application/json, got `{content_type}`"),
                        )));
                    }
                }
                if length.is_some_and(|length| length > limit) {
                    return Err(too_large(limit));
                }
                collect(stream, limit).await
            },
        )
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5 && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn too_large(limit: u64) -> Rejection {
    warp::reject::custom(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body exceeds the limit of {limit} bytes"),
    ))
}

async fn collect<S, B>(stream: S, limit: u64) -> Result<Bytes, Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::bad_request(format!("cannot read the body: {e}")))
        })?;
        if (body.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}
