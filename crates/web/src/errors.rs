//! Every error Tocsin's APIs return is JSON `{"message": "…"}` with a 4xx/5xx status, naming
//! the field at fault where there is one. Handlers reject with [`ApiError`]; [`recover`] turns
//! it, and warp's own rejections (unknown path, wrong method, bad query), into that shape.

use std::convert::Infallible;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl warp::reject::Reject for ApiError {}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        json_error(self.status, &self.message)
    }
}

/// A JSON error answer.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        message: &'a str,
    }
    warp::reply::with_status(warp::reply::json(&Body { message }), status).into_response()
}

/// The one rejection handler, installed at the top of the route tree.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    if let Some(error) = rejection.find::<ApiError>() {
        return Ok(error.clone().into_response());
    }
    if let Some(challenge) = rejection.find::<crate::auth::Unauthorized>() {
        let mut response = json_error(StatusCode::UNAUTHORIZED, &challenge.message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"tocsin\", Bearer"),
        );
        return Ok(response);
    }
    if let Some(forbidden) = rejection.find::<crate::auth::Forbidden>() {
        return Ok(json_error(StatusCode::FORBIDDEN, &forbidden.message));
    }
    if let Some(limited) = rejection.find::<crate::rate_limit::RateLimited>() {
        let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, &limited.message);
        let seconds = crate::rate_limit::retry_after_seconds(limited.retry_after);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        return Ok(response);
    }
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_owned())
    } else if let Some(query) = rejection.find::<warp::reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid query string: {query}"),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "this method is not allowed on this endpoint".to_owned(),
        )
    } else if let Some(header) = rejection.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, header.to_string())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error".to_owned(),
        )
    };
    Ok(json_error(status, &message))
}
