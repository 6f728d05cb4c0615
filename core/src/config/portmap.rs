//! `portMapping`: whether the engine asks the router to forward a port to it.

use serde_json::Value;

use super::values::expect_str;
use crate::error::{Error, Result};

const PORT_MAPPING_EXPECTED: &str = "\"auto\" or \"off\"";

/// Whether to ask the default gateway for a port mapping (`portMapping`), with PCP,
/// NAT-PMP or UPnP-IGD ([`crate::portmap`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortMapping {
    /// Ask the default gateway, and offer the public address it maps as a candidate.
    #[default]
    Auto,
    /// Send nothing to the router.
    Off,
}

impl PortMapping {
    /// `auto` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortMapping::Auto => "auto",
            PortMapping::Off => "off",
        }
    }

    /// The `portMapping` value at `key`, in any case.
    pub(super) fn from_value(key: &str, v: &Value) -> Result<PortMapping> {
        let text = expect_str(key, v, PORT_MAPPING_EXPECTED)?;
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(PortMapping::Auto),
            "off" => Ok(PortMapping::Off),
            _ => Err(Error::config(
                key,
                text,
                "is not a port mapping setting",
                PORT_MAPPING_EXPECTED,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::PortMapping;
    use crate::config::test_support::{parse, with};
    use crate::config::Config;
    use crate::error::Error;

    #[test]
    fn auto_by_default_off_when_asked_and_nothing_else() {
        assert_eq!(parse(with(json!({}))).port_mapping, PortMapping::Auto);
        assert_eq!(
            parse(with(json!({"portMapping": "OFF"}))).port_mapping,
            PortMapping::Off
        );
        match Config::from_value(with(json!({"portMapping": "upnp"}))) {
            Err(Error::Config {
                key,
                value,
                expected,
                ..
            }) => {
                assert_eq!(key, "portMapping");
                assert_eq!(value, "upnp");
                assert_eq!(expected, "\"auto\" or \"off\"");
            }
            other => panic!("{other:?}"),
        }
    }
}
