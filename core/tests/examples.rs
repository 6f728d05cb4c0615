//! Every config in examples/configs parses as written.
#![allow(clippy::unwrap_used)]

use stunfwd_core::{Config, Mode};

#[test]
fn example_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = Config::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if path.file_name().unwrap() == "go-tool-sender.json" {
            assert_eq!(cfg.mode, Mode::Client);
            assert_eq!(cfg.room, "my-room");
            assert_eq!(
                cfg.mappings[0].to_string(),
                "tcp:127.0.0.1:5001:127.0.0.1:5000"
            );
        }
        n += 1;
    }
    assert!(n >= 3, "found {n} example configs");
}
