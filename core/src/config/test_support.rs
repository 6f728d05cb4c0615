//! Config documents for the unit tests of the config files.

use serde_json::{json, Value};

use super::{AllowRule, Config};
use crate::error::{Error, Result};

/// The smallest valid config: a client with a room and a rendezvous URL.
pub(super) fn minimal() -> Value {
    json!({"mode": "client", "room": "r", "signalUrl": "https://h.example/signal"})
}

/// [`minimal`] with `extra`'s keys added or replaced.
pub(super) fn with(extra: Value) -> Value {
    let mut v = minimal();
    if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
        base.extend(extra);
    }
    v
}

/// The config `v`, which must parse.
pub(super) fn parse(v: Value) -> Config {
    Config::from_value(v).expect("config parses")
}

/// The key of the config error that `r` must be.
pub(super) fn config_key(r: Result<Config>) -> String {
    match r {
        Err(Error::Config { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// The allow rule `s`, which must parse.
pub(super) fn rule(s: &str) -> AllowRule {
    AllowRule::parse(s).expect("rule parses")
}
