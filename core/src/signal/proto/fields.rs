//! Reading an offer's JSON fields: each helper names the field and what a valid value
//! is when it refuses one.

use super::{OfferError, MAX_PREDICTED};

/// A required unsigned integer field of at most `max`.
pub(super) fn count_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    max: u64,
) -> Result<u64, OfferError> {
    obj.get(name)
        .ok_or_else(|| malformed(format!("missing field `{name}`")))?
        .as_u64()
        .filter(|n| *n <= max)
        .ok_or_else(|| malformed(format!("field `{name}` is not a count of at most {max}")))
}

/// An optional list of at most [`MAX_PREDICTED`] ports.
pub(super) fn ports_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<Vec<u16>>, OfferError> {
    let Some(value) = obj.get(name) else {
        return Ok(None);
    };
    let bad = || {
        malformed(format!(
            "field `{name}` is not a list of at most {MAX_PREDICTED} ports (1-65535)"
        ))
    };
    let list = value.as_array().ok_or_else(bad)?;
    if list.len() > MAX_PREDICTED {
        return Err(bad());
    }
    list.iter()
        .map(|p| {
            p.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u16>, _>>()
        .map(Some)
}

pub(super) fn malformed(what: impl Into<String>) -> OfferError {
    OfferError::Malformed(what.into())
}

pub(super) fn str_field<'a>(
    obj: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<&'a str, OfferError> {
    obj.get(name)
        .ok_or_else(|| malformed(format!("missing field `{name}`")))?
        .as_str()
        .ok_or_else(|| malformed(format!("field `{name}` is not a string")))
}

pub(super) fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(super) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An optional string field of at most `max` bytes, without control characters.
pub(super) fn text_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, OfferError> {
    let Some(value) = obj.get(name) else {
        return Ok(None);
    };
    value
        .as_str()
        .filter(|s| s.len() <= max && !s.chars().any(char::is_control))
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| {
            malformed(format!(
                "field `{name}` is not a string of at most {max} bytes without control characters"
            ))
        })
}
