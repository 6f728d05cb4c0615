//! Issue #14, finding 5: secrets stay out of logs. Engines run at trace level with a
//! secret, a TURN credential, a rendezvous URL with a user name and password and a
//! `?token=`; no log line, event, error or stats JSON may contain any of them: not
//! while connecting through a working rendezvous, and not in the errors of one that
//! cannot be reached.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use stunfwd_core::{Config, Engine, Event};

const SECRET: &str = "s3cret-value-9f1c";
const URL_PASSWORD: &str = "urlpassw0rd-77ab";
const URL_TOKEN: &str = "t0ken-value-4e2d";
const TURN_CREDENTIAL: &str = "turnpassw0rd-c0de";

/// `base` (`http://127.0.0.1:PORT/`) with credentials and a token.
fn with_credentials(base: &str) -> String {
    let rest = base.strip_prefix("http://").unwrap();
    format!("http://stunfwd:{URL_PASSWORD}@{rest}signal?token={URL_TOKEN}")
}

fn config(url: &str, stun: std::net::SocketAddr, mode: &str, room: &str) -> Config {
    config_for(
        url,
        stun,
        mode,
        room,
        SECRET,
        &["tcp:0:9".into()][..usize::from(mode == "client")],
        serde_json::json!({
            "relay": {"url": "turn:127.0.0.1:9", "username": "u", "credential": TURN_CREDENTIAL},
            "performance": {"signalBackoff": "50ms"},
        }),
    )
}

#[test]
fn no_secret_reaches_a_log_line_an_event_an_error_or_the_stats() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let rv = Rendezvous::start();
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut texts: Vec<String> = Vec::new();

    // A working rendezvous, reached with credentials and a token in its URL.
    let url = with_credentials(&rv.url);
    let room = room();
    let seen = events.clone();
    let record = move |e: &Event| seen.lock().unwrap().push(format!("{e:?}"));
    let server =
        Engine::start_with_events(config(&url, rv.stun, "server", &room), record.clone()).unwrap();
    let client =
        Engine::start_with_events(config(&url, rv.stun, "client", &room), record.clone()).unwrap();
    client.wait_connected(Duration::from_secs(20)).unwrap();
    texts.push(client.stats_json());
    texts.push(server.stats_json());
    texts.push(format!("{:?}", config(&url, rv.stun, "client", &room)));

    // One that refuses connections: its errors reach states, events and last_error.
    let dead = with_credentials("http://127.0.0.1:9/");
    let lonely =
        Engine::start_with_events(config(&dead, rv.stun, "client", &room), record).unwrap();
    let err = lonely.wait_connected(Duration::from_secs(2)).unwrap_err();
    texts.push(err.to_string());
    texts.push(lonely.stats_json());
    texts.push(format!("{:?}", lonely.state()));
    assert!(
        lonely
            .stats()
            .last_error
            .unwrap_or_default()
            .contains("127.0.0.1:9"),
        "the error still names the server"
    );
    // A config error quoting the URL.
    let bad = Config::from_value(serde_json::json!({
        "mode": "client", "room": "r",
        "signalUrl": format!("gopher://u:{URL_PASSWORD}@h/?token={URL_TOKEN}"),
    }))
    .unwrap_err();
    texts.push(bad.to_string());
    drop(lonely);
    drop(client);
    drop(server);

    let log = logs.text();
    let lines = log.lines().count();
    assert!(lines > 100, "trace logging produced only {lines} lines");
    texts.push(log);
    texts.extend(events.lock().unwrap().iter().cloned());
    for secret in [SECRET, URL_PASSWORD, URL_TOKEN, TURN_CREDENTIAL] {
        for text in &texts {
            if let Some(at) = text.find(secret) {
                let from = at.saturating_sub(200);
                panic!(
                    "{secret:?} appears: …{}…",
                    &text[from..(at + 100).min(text.len())]
                );
            }
        }
    }
    println!("checked {lines} log lines, {} other texts", texts.len() - 1);
}

/// Config errors quote the offending value, but never a secret: not under a
/// misspelled key, not a wrongly typed one, not inside an object, not in a URL.
#[test]
fn config_errors_never_echo_a_secret() {
    let url = format!("https://user:{URL_PASSWORD}@h/?token={URL_TOKEN}");
    let base =
        || serde_json::json!({"mode": "client", "room": "r", "signalUrl": "http://127.0.0.1:1/"});
    let relay = serde_json::json!({"url": "turn:127.0.0.1:3478", "username": "u", "credential": TURN_CREDENTIAL});
    let cases: Vec<(&str, serde_json::Value)> = vec![
        (
            "misspelled signalUrl",
            serde_json::json!({"signalurl": url}),
        ),
        ("two spellings", serde_json::json!({"signalURL": url})),
        ("misspelled secret", serde_json::json!({"Secret": SECRET})),
        (
            "secret of the wrong type",
            serde_json::json!({"secret": [SECRET]}),
        ),
        (
            "relay password",
            serde_json::json!({"relay": {"url": "turn:127.0.0.1:3478", "username": "u", "password": TURN_CREDENTIAL}}),
        ),
        ("relay as an array", serde_json::json!({"relay": [relay]})),
        (
            "credentials in the TURN URL",
            serde_json::json!({"relay": {"url": format!("turn:u:{TURN_CREDENTIAL}@127.0.0.1:3478"), "username": "u", "credential": "c"}}),
        ),
        (
            "a password with a slash",
            serde_json::json!({"signalUrl": format!("https://user:pa/{URL_PASSWORD}@h/")}),
        ),
    ];
    for (what, change) in cases {
        let mut v = base();
        v.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let err = Config::from_value(v).expect_err(what).to_string();
        for secret in [SECRET, URL_PASSWORD, URL_TOKEN, TURN_CREDENTIAL] {
            assert!(!err.contains(secret), "{what}: {secret:?} in {err}");
        }
        println!("{what}: {err}");
    }
}
