//! Room names: the one length limit that the config, the rendezvous client and the
//! rendezvous server apply ([`MAX_ROOM_LEN`]), and [`RoomName`], a name checked once
//! when a config is read.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Longest room name the protocol allows, in bytes (servers may be configured lower).
pub const MAX_ROOM_LEN: usize = 128;

/// A room name as a config holds it: 1 to [`MAX_ROOM_LEN`] bytes, without whitespace
/// or control characters. Checked when it is made, so every `RoomName` is valid.
///
/// It reads as a `&str` (`Deref`, `AsRef<str>`, `Display`) and compares equal to
/// strings with the same text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomName(String);

impl RoomName {
    /// Checks `name`; errors use the key `room`.
    pub fn new(name: impl Into<String>) -> Result<RoomName> {
        RoomName::parse_at("room", name.into())
    }

    /// Checks `name` found at config key `key`.
    pub(crate) fn parse_at(key: &str, name: String) -> Result<RoomName> {
        let problem = if name.is_empty() {
            "the room name is empty".to_owned()
        } else if name.len() > MAX_ROOM_LEN {
            format!(
                "the room name is {} bytes long, at most {MAX_ROOM_LEN}",
                name.len()
            )
        } else if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
            format!(
                "the room name contains whitespace or a control character (`{}`)",
                c.escape_debug()
            )
        } else {
            return Ok(RoomName(name));
        };
        Err(Error::config(key, name, problem, RoomName::expected()))
    }

    /// What a valid room name is, for error messages.
    pub(crate) fn expected() -> String {
        format!("a room name of 1-{MAX_ROOM_LEN} bytes without whitespace or control characters")
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for RoomName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoomName {
    type Err = Error;

    fn from_str(name: &str) -> Result<RoomName> {
        RoomName::new(name)
    }
}

impl TryFrom<String> for RoomName {
    type Error = Error;

    fn try_from(name: String) -> Result<RoomName> {
        RoomName::new(name)
    }
}

impl From<RoomName> for String {
    fn from(name: RoomName) -> String {
        name.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    /// Like the string: `"room-1"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for RoomName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RoomName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for RoomName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> String {
        match RoomName::new(name) {
            Err(Error::Config {
                key,
                value,
                problem,
                expected,
            }) => {
                assert_eq!(key, "room");
                assert_eq!(value, name);
                assert!(expected.contains("1-128 bytes"), "{expected}");
                problem
            }
            other => panic!("{name:?}: {other:?}"),
        }
    }

    #[test]
    fn names_are_checked_once_when_made() {
        let name = RoomName::new("room-1/ü").expect("valid");
        assert_eq!(name, "room-1/ü");
        assert_eq!(name.len(), "room-1/ü".len());
        assert_eq!(format!("{name} {name:?}"), "room-1/ü \"room-1/ü\"");
        let longest = "r".repeat(MAX_ROOM_LEN);
        assert_eq!(longest.parse::<RoomName>().expect("at the limit"), longest);
        assert_eq!(problem(""), "the room name is empty");
        assert_eq!(
            problem(&"r".repeat(MAX_ROOM_LEN + 1)),
            "the room name is 129 bytes long, at most 128"
        );
        assert!(problem("my room").contains("whitespace"));
        assert!(problem("a\u{7}b").contains("control character (`\\u{7}`)"));
    }
}
