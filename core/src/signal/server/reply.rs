//! The responses of the rendezvous server: JSON status bodies (as the PHP mailbox
//! answers), mailbox data with its version, and refusals with `Retry-After`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::StatusCode;

use super::store::StoreError;
use super::VERSION_HEADER;
use crate::signal::request::BadRequest;

/// What every request is answered with: the whole body at once.
pub(super) type Response = hyper::Response<Full<Bytes>>;

/// `Retry-After` when too many long-polls or a full store refuse a request.
pub(super) const RETRY_LATER: Duration = Duration::from_secs(1);

/// `200` with `{"status": "ok"}`, the PHP mailbox's answer to a post.
pub(super) fn ok() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `200` with the data of a mailbox and its version in [`VERSION_HEADER`].
pub(super) fn found(data: String, version: u64) -> Response {
    let mut resp = text(StatusCode::OK, "text/plain; charset=utf-8", data);
    let headers = resp.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static(VERSION_HEADER),
        HeaderValue::from(version),
    );
    resp
}

/// `400` saying what is wrong with the request.
pub(super) fn bad_request(e: BadRequest) -> Response {
    error(StatusCode::BAD_REQUEST, e.0)
}

/// `status` with a `body` of type `content_type`.
pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// `status` with `value` as the JSON body.
fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    text(status, "application/json", value.to_string())
}

/// `404`: no (newer) data in this mailbox, also the answer of a long-poll that ran out.
pub(super) fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no data for this room and role")
}

/// `429` or `503` with `Retry-After` for a store that refused or failed.
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

/// Whole seconds, rounded up, at least 1.
fn retry_after(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// `status` with `{"status": "error", "error": message}`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(
        status,
        &serde_json::json!({"status": "error", "error": message.into()}),
    )
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
