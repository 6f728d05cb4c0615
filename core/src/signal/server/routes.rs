//! The mailbox over HTTP: routing (`/healthz`, `/metrics`, everything else the mailbox)
//! and the `GET` (with long-polling), `POST` and `DELETE` handlers, after the
//! per-client rate limit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};
use tokio::time::Instant;

use super::limits::{self, SlotRefused};
use super::reply::{
    bad_request, error, found, not_found, ok, store_error, text, too_many, Response, RETRY_LATER,
};
use super::{stopped, Shared};
use crate::signal::request;

/// A long-poll re-reads its mailbox at least this often, whatever notifications say.
const RECHECK: Duration = Duration::from_secs(5);

/// Answers one request and counts its status.
pub(super) async fn dispatch(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response {
    let client = client_ip(peer, req.headers(), shared.config.trust_forwarded_for);
    let resp = route(shared, client, req).await;
    shared.counters.count(resp.status().as_u16());
    resp
}

/// The client's address: the TCP peer, or the last `X-Forwarded-For` entry when the
/// server is configured to trust it.
fn client_ip(peer: SocketAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> IpAddr {
    if trust_forwarded_for {
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if let Some(ip) = last.and_then(|s| s.parse::<IpAddr>().ok()) {
            return ip;
        }
    }
    peer.ip()
}

/// Every method and path is the mailbox, except `GET /healthz` and `GET /metrics`
/// without a `room` parameter.
async fn route(shared: &Shared, client: IpAddr, req: Request<Incoming>) -> Response {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    if method == Method::GET && !request::names_a_room(&query) {
        match req.uri().path() {
            "/healthz" => return text(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
            "/metrics" => {
                return text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    shared.metrics(),
                )
            }
            _ => {}
        }
    }
    if let Err(retry) = shared.limiter.check(client, Instant::now()) {
        return too_many(
            retry,
            format!(
                "more than {} requests per second from {client}; retry later",
                shared.config.rate_per_ip
            ),
        );
    }
    let max_room_len = shared.config.max_room_len;
    if method == Method::POST {
        return post(shared, client, req).await;
    }
    if method != Method::GET && method != Method::DELETE {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} is not supported; use GET, POST or DELETE"),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
        return resp;
    }
    let q = match request::parse_query(&query, max_room_len) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    if method == Method::GET {
        get(shared, client, q).await
    } else {
        match shared.store.delete(&q.room, q.role).await {
            Ok(()) => ok(),
            Err(e) => store_error(e),
        }
    }
}

async fn post(shared: &Shared, client: IpAddr, req: Request<Incoming>) -> Response {
    let max_body = shared.config.max_body;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max_body} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return too_large();
    }
    let read = async {
        let mut body = req.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Some(e.to_string()))?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
            };
            if bytes.len() + chunk.len() > max_body {
                return Err(None::<String>);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = match tokio::time::timeout(shared.config.body_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(None)) => return too_large(),
        Ok(Err(Some(e))) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    shared.config.body_timeout
                ),
            )
        }
    };
    let msg = match request::parse_post(&bytes, shared.config.max_room_len) {
        Ok(m) => m,
        Err(e) => return bad_request(e),
    };
    let key = limits::client_key(client);
    match shared.store.post(&msg.room, msg.role, msg.data, key).await {
        Ok(_) => ok(),
        Err(e) => store_error(e),
    }
}

async fn get(shared: &Shared, client: IpAddr, q: request::Query) -> Response {
    let wait = q
        .wait
        .map(|w| w.min(shared.config.max_wait))
        .filter(|w| !w.is_zero());
    let Some(wait) = wait else {
        return match shared.store.get(&q.room, q.role).await {
            Ok(Some((data, version))) if q.since != Some(version) => found(data, version),
            Ok(_) => not_found(),
            Err(e) => store_error(e),
        };
    };
    let _slot = match shared.polls.take(client) {
        Ok(slot) => slot,
        Err(why) => {
            let msg = match why {
                SlotRefused::Total(n) => {
                    format!("the server already holds its maximum of {n} long-polls")
                }
                SlotRefused::PerClient(n) => {
                    format!("{client} already holds its maximum of {n} long-polls")
                }
            };
            return too_many(RETRY_LATER, format!("{msg}; retry later"));
        }
    };
    let deadline = Instant::now() + wait;
    let mut shutdown = shared.shutdown.clone();
    // Registered before the first read, so a post right after the read still wakes us.
    let mut waiter = shared.notifier.watch(&q.room, q.role);
    loop {
        match shared.store.get(&q.room, q.role).await {
            // Versions never repeat, so "differs from since" means "newer".
            Ok(Some((data, version))) if q.since != Some(version) => return found(data, version),
            Ok(_) => {}
            Err(e) => return store_error(e),
        }
        let now = Instant::now();
        if now >= deadline || *shutdown.borrow() {
            return not_found();
        }
        tokio::select! {
            _ = waiter.changed() => {}
            _ = tokio::time::sleep_until((now + RECHECK).min(deadline)) => {}
            _ = stopped(&mut shutdown) => return not_found(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "3.3.3.3 , 4.4.4.4".parse().unwrap());
        assert_eq!(client_ip(peer, &h, false), peer.ip());
        assert_eq!(
            client_ip(peer, &h, true),
            "4.4.4.4".parse::<IpAddr>().unwrap()
        );
        let mut bad = HeaderMap::new();
        bad.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(client_ip(peer, &bad, true), peer.ip());
    }
}
