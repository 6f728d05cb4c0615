//! Which TURN server to use and how to authenticate to it, from the `relay` config.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};

use crate::config::{RelayConfig, TurnUrl};

/// Where the relay is and how to authenticate.
#[derive(Clone)]
pub(crate) struct RelayTarget {
    /// The TURN server's resolved address.
    pub server: SocketAddr,
    /// The relay URL as configured (shown in stats).
    pub url: TurnUrl,
    /// The long-term credential's user name.
    pub username: String,
    /// The long-term credential's password.
    pub password: String,
}

impl std::fmt::Debug for RelayTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTarget")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Credentials from the config: long-term, or derived from the REST-API secret
/// (valid for a day).
pub(crate) fn credentials(cfg: &RelayConfig) -> (String, String) {
    match &cfg.auth_secret {
        Some(secret) => {
            let expiry = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                + 86_400;
            let user = format!("{expiry}:{}", cfg.username.as_deref().unwrap_or("stunfwd"));
            let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes keys of any length");
            mac.update(user.as_bytes());
            let password =
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            (user, password)
        }
        None => (
            cfg.username.clone().unwrap_or_default(),
            cfg.credential.clone().unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_api_credentials() {
        let cfg = RelayConfig {
            url: TurnUrl::parse("turn:h").expect("a TURN URL"),
            username: Some("alice".into()),
            credential: None,
            auth_secret: Some("s3cret".into()),
        };
        let (user, pass) = credentials(&cfg);
        assert!(user.ends_with(":alice"), "{user}");
        let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(b"s3cret").expect("key");
        mac.update(user.as_bytes());
        assert_eq!(
            pass,
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
    }
}
