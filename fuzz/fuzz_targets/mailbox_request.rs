//! Mailbox request parsing: a `POST` body and a `GET`/`DELETE` query string, as the
//! rendezvous server parses them, on arbitrary bytes. Must never panic; whatever parses
//! must be within the limits it was parsed under.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stunfwd_core::signal::request::{names_a_room, parse_post, parse_query};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the room-name limit, like a server's `max_room_len`.
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max_room_len = usize::from(limit % 128) + 1;
    if let Ok(post) = parse_post(rest, max_room_len) {
        assert!(!post.room.is_empty() && post.room.len() <= max_room_len);
    }
    let query = String::from_utf8_lossy(rest);
    let named = names_a_room(&query);
    if let Ok(q) = parse_query(&query, max_room_len) {
        assert!(named, "a parsed query names a room");
        assert!(!q.room.is_empty() && q.room.len() <= max_room_len);
    }
});
