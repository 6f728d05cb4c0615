//! The responses of the rendezvous server: JSON status bodies (as the PHP mailbox
//! answers), mailbox data with its version, and refusals with `Retry-After`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::store::StoreError;
use super::VERSION_HEADER;
use crate::signal::request::BadRequest;

/// `Retry-After` when too many long-polls or a full store refuse a request.
pub(super) const RETRY_LATER: Duration = Duration::from_secs(1);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

pub(super) fn ok() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

pub(super) fn found(data: String, version: u64) -> Response {
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::HeaderName::from_static(VERSION_HEADER),
                HeaderValue::from(version),
            ),
        ],
        data,
    )
        .into_response()
}

pub(super) fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no data for this room and role")
}

pub(super) fn store_error(e: StoreError) -> Response {
    let msg = match e {
        StoreError::ClientFull(m) => return too_many(RETRY_LATER, m),
        StoreError::Full(m) => m,
        StoreError::Unavailable(m) => {
            tracing::warn!("{m}");
            m
        }
    };
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, retry_after(RETRY_LATER));
    resp
}

/// `429 Too Many Requests` with `Retry-After` in whole seconds (at least 1).
pub(super) fn too_many(retry: Duration, message: String) -> Response {
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, retry_after(retry));
    resp
}

fn retry_after(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"status": "error", "error": message.into()});
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1500)), "2");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }
}
