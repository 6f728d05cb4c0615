//! Share tokens (issue #18): everything a client needs to reach a server peer, in one
//! string that `stunfwd expose` prints and `stunfwd connect` takes.
//!
//! `stunfwd1.<body>.<check>`: `1` is the format version, `<body>` the base64url (no
//! padding) of `{"u": rendezvous URL, "r": room, "s": secret, "t": [STUN servers]}`,
//! `<check>` the first 4 bytes of SHA-256 over `<body>`, in hex. The check tells a
//! token cut short or mangled in copying from one that is well-formed but wrong. A
//! token is as secret as the secret in it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The format this build writes and reads.
pub const VERSION: u32 = 1;
const PREFIX: &str = "stunfwd";

/// What a client needs to reach a server peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The rendezvous server's URL.
    pub signal_url: String,
    /// The room.
    pub room: String,
    /// The secret both peers share.
    pub secret: String,
    /// STUN servers, `host:port`.
    pub stun: Vec<String>,
}

impl fmt::Debug for Token {
    // Never prints the secret (nor the token, which holds it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("signal_url", &self.signal_url)
            .field("room", &self.room)
            .field("secret", &"<redacted>")
            .field("stun", &self.stun)
            .finish()
    }
}

/// Why a token could not be read; each names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Nothing was given.
    Empty,
    /// It does not start with `stunfwd<version>.`.
    NotAToken,
    /// A version this build does not read.
    Version(String),
    /// Fewer or more than three dot-separated parts.
    Parts(usize),
    /// The check does not match the body.
    Check,
    /// The body is not base64url, or not the JSON object expected.
    Body(String),
    /// A field is missing or has the wrong type.
    Field(&'static str, &'static str),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WHOLE: &str = "copy the whole token `stunfwd expose` printed";
        match self {
            TokenError::Empty => write!(f, "the token is empty; {WHOLE}"),
            TokenError::NotAToken => write!(
                f,
                "not a stunfwd share token: a token starts with `{PREFIX}{VERSION}.`; {WHOLE}"
            ),
            TokenError::Version(v) => write!(
                f,
                "token version `{v}` is not one this stunfwd reads (it reads version {VERSION}); run the same stunfwd version on both sides"
            ),
            TokenError::Parts(n) => write!(
                f,
                "the token has {n} dot-separated part(s) where it has 3 (`{PREFIX}{VERSION}.BODY.CHECK`): it was cut short or joined with something; {WHOLE}"
            ),
            TokenError::Check => write!(
                f,
                "the token's check (its last part) does not match its body: it was cut short or altered in copying; {WHOLE}"
            ),
            TokenError::Body(why) => write!(f, "the token's body is not valid ({why}); {WHOLE}"),
            TokenError::Field(name, what) => {
                write!(f, "the token's body lacks {what} (field `{name}`); {WHOLE}")
            }
        }
    }
}

impl std::error::Error for TokenError {}

fn check(body: &str) -> String {
    hex::encode(&Sha256::digest(body.as_bytes())[..4])
}

impl Token {
    /// The token string.
    pub fn encode(&self) -> String {
        let json = serde_json::json!({
            "u": self.signal_url,
            "r": self.room,
            "s": self.secret,
            "t": self.stun,
        });
        let body = URL_SAFE_NO_PAD.encode(json.to_string());
        format!("{PREFIX}{VERSION}.{}.{}", body, check(&body))
    }

    /// Reads a token, saying which part is wrong when it cannot.
    pub fn decode(text: &str) -> Result<Token, TokenError> {
        // What copying adds: line breaks and spaces where a terminal or a mail wrapped
        // it, quotes or <> around it, the `token ` label of the line `expose` prints.
        // None of these can be part of a token (base64url, hex and dots only).
        let cleaned: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut text = cleaned.as_str();
        for (open, close) in [('"', '"'), ('\'', '\''), ('`', '`'), ('<', '>')] {
            if let Some(inner) = text.strip_prefix(open).and_then(|t| t.strip_suffix(close)) {
                text = inner;
            }
        }
        if let Some(rest) = text.strip_prefix("token") {
            if rest.starts_with(PREFIX) {
                text = rest;
            }
        }
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        let Some(rest) = text.strip_prefix(PREFIX) else {
            return Err(TokenError::NotAToken);
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let version = parts[0];
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::NotAToken);
        }
        if version != VERSION.to_string() {
            return Err(TokenError::Version(version.chars().take(10).collect()));
        }
        if parts.len() != 3 {
            return Err(TokenError::Parts(parts.len()));
        }
        let (body, sum) = (parts[1], parts[2]);
        if check(body) != sum {
            return Err(TokenError::Check);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenError::Body(format!("not base64url: {e}")))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Body(format!("not JSON: {e}")))?;
        let text_field = |name: &'static str, what: &'static str| {
            value[name]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(TokenError::Field(name, what))
        };
        let stun = value["t"]
            .as_array()
            .and_then(|list| {
                list.iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<Vec<String>>>()
            })
            .ok_or(TokenError::Field("t", "the list of STUN servers"))?;
        Ok(Token {
            signal_url: text_field("u", "the rendezvous URL")?,
            room: text_field("r", "the room")?,
            secret: text_field("s", "the secret")?,
            stun,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token {
            signal_url: "https://rv.example.org/".into(),
            room: "0123456789abcdef".into(),
            secret: "s3cr3t-s3cr3t".into(),
            stun: vec!["rv.example.org:3478".into()],
        }
    }

    #[test]
    fn a_token_round_trips_and_debug_hides_the_secret() {
        let t = token();
        let text = t.encode();
        assert!(text.starts_with("stunfwd1."), "{text}");
        assert_eq!(Token::decode(&text).unwrap(), t);
        assert_eq!(Token::decode(&format!("  {text}\n")).unwrap(), t);
        // Wrapped, quoted or copied with its label: still the same token.
        let (a, b) = text.split_at(40);
        for copied in [
            format!("{a}\n{b}"),
            format!("{a}\r\n  {b}"),
            format!("\"{text}\""),
            format!("'{text}'"),
            format!("<{text}>"),
            format!("token {text}"),
        ] {
            assert_eq!(Token::decode(&copied).unwrap(), t, "{copied:?}");
        }
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn each_bad_part_is_named() {
        let text = token().encode();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("hello".into(), "not a stunfwd share token"),
            (text.replacen("stunfwd1", "stunfwd2", 1), "version `2`"),
            // Cut short inside the body: the check no longer matches.
            (
                format!("{}.{}", &text[..text.len() - 20], &text[text.len() - 8..]),
                "check",
            ),
            // Cut short before the check.
            (
                text[..text.rfind('.').unwrap()].to_owned(),
                "2 dot-separated",
            ),
            (format!("{text}.extra"), "4 dot-separated"),
            // The check alone altered.
            (format!("{}0000", &text[..text.len() - 4]), "check"),
        ];
        for (bad, expected) in cases {
            let e = Token::decode(&bad).unwrap_err().to_string();
            assert!(e.contains(expected), "{bad:?}: {e}");
        }
        // A well-formed token whose body lacks a field.
        let body = URL_SAFE_NO_PAD.encode(r#"{"u":"http://x/","r":"room","t":[]}"#);
        let e = Token::decode(&format!("stunfwd1.{body}.{}", check(&body))).unwrap_err();
        assert_eq!(e, TokenError::Field("s", "the secret"));
        let body = URL_SAFE_NO_PAD.encode("not json");
        let e = Token::decode(&format!("stunfwd1.{body}.{}", check(&body))).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }
}
