//! How config errors show what was given: values cut to a readable length and never a
//! secret, the JSON type that was found, the document line of a parse error, and the
//! edit distance behind "did you mean" hints.

use serde_json::Value;

use crate::error::Error;

/// Text for a problem message, cut to a readable length.
pub(super) fn shown(text: &str) -> String {
    truncate(text, 64)
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", text.get(..i).unwrap_or("")),
        None => text.to_owned(),
    }
}

/// The offending value of `key` for an error, never a secret: `<redacted>` under a
/// key that names one (also misspelled), else [`preview`].
pub(super) fn shown_value(key: &str, v: &Value) -> String {
    if crate::redact::is_secret_key(key) {
        "<redacted>".to_owned()
    } else {
        preview(v)
    }
}

/// The offending value for an error: strings as they are (URLs without credentials or
/// query), anything else as short compact JSON in which the values of secret keys are
/// `<redacted>`.
pub(super) fn preview(v: &Value) -> String {
    match v {
        Value::String(s) => crate::redact::value("", &truncate(s, 1024)),
        other => {
            let mut out = String::new();
            write_compact(other, 0, &mut out);
            truncate(&out, 200)
        }
    }
}

fn write_compact(v: &Value, depth: usize, out: &mut String) {
    if out.len() > 200 {
        return;
    }
    match v {
        Value::Array(items) if depth >= 3 => {
            out.push_str(if items.is_empty() { "[]" } else { "[…]" })
        }
        Value::Object(map) if depth >= 3 => {
            out.push_str(if map.is_empty() { "{}" } else { "{…}" })
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if out.len() > 200 {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                write_compact(item, depth + 1, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if out.len() > 200 {
                    break;
                }
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(truncate(k, 64)).to_string());
                out.push(':');
                if crate::redact::is_secret_key(k) {
                    out.push_str("\"<redacted>\"");
                } else {
                    write_compact(item, depth + 1, out);
                }
            }
            out.push('}');
        }
        Value::String(s) => {
            out.push_str(&Value::String(crate::redact::value("", &truncate(s, 200))).to_string())
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Line `line` (1-based) of a document, for a parse error.
pub(super) fn document_line(text: &str, line: usize) -> String {
    line.checked_sub(1)
        .and_then(|i| text.lines().nth(i))
        .map(|l| truncate(l.trim(), 80))
        .unwrap_or_default()
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn wrong_type(key: &str, v: &Value, want: &str, expected: &str) -> Error {
    Error::config(
        key,
        shown_value(key, v),
        format!("expected {want}, got {}", type_name(v)),
        expected,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_works() {
        assert_eq!(edit_distance("mapings", "mappings"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
