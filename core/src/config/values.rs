//! Typed reads of JSON values: strings, arrays, objects, whole numbers and durations,
//! each failing with an error that names the key; and the range checks on them.

use std::time::Duration;

use serde_json::{Map, Value};

use super::diagnostics::{shown, wrong_type};
use crate::error::{Error, Result};

pub(super) fn expect_str<'v>(key: &str, v: &'v Value, expected: &str) -> Result<&'v str> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(wrong_type(key, other, "a string", expected)),
    }
}

pub(super) fn expect_array<'v>(key: &str, v: &'v Value, expected: &str) -> Result<&'v [Value]> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(wrong_type(key, other, "an array", expected)),
    }
}

pub(super) fn expect_object<'v>(
    key: &str,
    v: &'v Value,
    expected: &str,
) -> Result<&'v Map<String, Value>> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(wrong_type(key, other, "an object", expected)),
    }
}

pub(super) fn parse_uint(key: &str, v: &Value, expected: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            Error::config(
                key,
                n.to_string(),
                "not a non-negative whole number",
                expected,
            )
        }),
        other => Err(wrong_type(key, other, "a number", expected)),
    }
}

pub(super) fn parse_usize(key: &str, v: &Value, expected: &str) -> Result<usize> {
    let n = parse_uint(key, v, expected)?;
    usize::try_from(n)
        .map_err(|_| Error::config(key, n.to_string(), "the number is too large", expected))
}

const DURATION_FORMS: &str =
    "a duration such as \"500ms\", \"10s\", \"5m\" or \"1h 30m\", or a number of seconds";

pub(super) fn parse_duration(key: &str, v: &Value) -> Result<Duration> {
    let seconds = |text: String, secs: f64| {
        Duration::try_from_secs_f64(secs).map_err(|_| {
            Error::config(
                key,
                text,
                "not a valid duration: seconds must be a non-negative finite number",
                DURATION_FORMS,
            )
        })
    };
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(secs) => Ok(Duration::from_secs(secs)),
            None => seconds(n.to_string(), n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => {
            if let Ok(secs) = s.trim().parse::<f64>() {
                return seconds(s.clone(), secs);
            }
            humantime::parse_duration(s.trim()).map_err(|e| {
                Error::config(
                    key,
                    s,
                    format!("`{}` is not a duration: {e}", shown(s)),
                    DURATION_FORMS,
                )
            })
        }
        other => Err(wrong_type(
            key,
            other,
            "a string or a number",
            DURATION_FORMS,
        )),
    }
}

pub(super) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub(super) fn check_duration(key: &str, d: Duration, min: Duration, max: Duration) -> Result<()> {
    if d < min || d > max {
        return Err(Error::config(
            key,
            fmt_duration(d),
            "the duration is out of range",
            format!(
                "a duration from {} to {} (e.g. \"500ms\", \"10s\", \"5m\")",
                fmt_duration(min),
                fmt_duration(max)
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_int(key: &str, n: u64, min: u64, max: u64, unit: &str) -> Result<()> {
    if n < min || n > max {
        return Err(Error::config(
            key,
            n.to_string(),
            format!("{n} is out of range"),
            format!("a whole number of {unit} from {min} to {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::config::test_support::{config_key, parse, with};
    use crate::config::Config;

    #[test]
    fn durations_accept_strings_and_seconds() {
        for (v, want) in [
            (json!("10s"), Duration::from_secs(10)),
            (json!("1m 30s"), Duration::from_secs(90)),
            (json!(7), Duration::from_secs(7)),
            (json!(2.5), Duration::from_millis(2500)),
            (json!("3"), Duration::from_secs(3)),
        ] {
            let c = parse(with(json!({"punchTimeout": v})));
            assert_eq!(c.punch_timeout, want);
        }
        for bad in [
            json!(-1),
            json!("-1"),
            json!("soon"),
            json!(true),
            json!("0s"),
        ] {
            let r = Config::from_value(with(json!({"punchTimeout": bad})));
            assert_eq!(config_key(r), "punchTimeout");
        }
    }
}
