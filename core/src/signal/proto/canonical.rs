//! An offer's canonical bytes: what its MAC covers (`docs/protocol.md` §3).

use hmac::Mac;

use super::{RoomKey, OFFER_MAC_DOMAIN};

/// The authenticated content of an offer, as fed to the MAC.
pub(super) struct Canonical<'a> {
    pub(super) room: &'a str,
    pub(super) role: &'a str,
    pub(super) id: &'a str,
    pub(super) nonce: &'a str,
    pub(super) ts: u64,
    pub(super) candidates: &'a [String],
    pub(super) host: usize,
    pub(super) relay: usize,
    pub(super) turn: bool,
    pub(super) fp: &'a str,
    pub(super) nat: &'a str,
    pub(super) predict: Option<&'a [u16]>,
    pub(super) comb: Option<&'a [u16]>,
    pub(super) client: Option<&'a str>,
    pub(super) refused: Option<&'a str>,
}

impl Canonical<'_> {
    /// The canonical bytes (`docs/protocol.md` §3): the domain tag, then every field as
    /// a 4-byte big-endian length and its bytes, in a fixed order. The candidate list
    /// is one field whose bytes are each candidate, length-prefixed the same way.
    pub(super) fn bytes(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, bytes: &[u8]) {
            // Offers are at most 16 KiB, so every length fits in 4 bytes.
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        let mut list = Vec::new();
        for c in self.candidates {
            field(&mut list, c.as_bytes());
        }
        let mut out = Vec::with_capacity(256 + list.len());
        out.extend_from_slice(OFFER_MAC_DOMAIN);
        field(&mut out, self.room.as_bytes());
        field(&mut out, self.role.as_bytes());
        field(&mut out, self.id.as_bytes());
        field(&mut out, self.nonce.as_bytes());
        field(&mut out, self.ts.to_string().as_bytes());
        field(&mut out, &list);
        field(&mut out, self.host.to_string().as_bytes());
        field(&mut out, self.relay.to_string().as_bytes());
        field(&mut out, if self.turn { b"1" } else { b"0" });
        field(&mut out, self.fp.as_bytes());
        field(&mut out, self.nat.as_bytes());
        // Port prediction's lists only when the offer has either (so offers without
        // them keep the bytes they always had): each as its ports joined by commas,
        // `none` when absent.
        if self.predict.is_some() || self.comb.is_some() {
            for list in [self.predict, self.comb] {
                let text = match list {
                    None => "none".to_owned(),
                    Some(ports) => ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                };
                field(&mut out, text.as_bytes());
            }
        }
        // The client's identity and a refusal likewise, each tagged with its name (so
        // neither can be read as the other, or as a port list).
        if self.client.is_some() || self.refused.is_some() {
            for (tag, value) in [("client=", self.client), ("refused=", self.refused)] {
                let text = value.map_or_else(|| "none".to_owned(), |v| format!("{tag}{v}"));
                field(&mut out, text.as_bytes());
            }
        }
        out
    }

    pub(super) fn mac(&self, key: &RoomKey) -> [u8; 32] {
        let mut mac = key.mac();
        mac.update(&self.bytes());
        mac.finalize().into_bytes().into()
    }
}
