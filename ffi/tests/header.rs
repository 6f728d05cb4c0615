//! The committed `include/stunfwd.h` is exactly what the pinned cbindgen generates from
//! this crate, and its version macros equal the crate version.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("../include/stunfwd.h")
}

fn generate() -> String {
    let mut config = cbindgen::Config::from_file(crate_dir().join("cbindgen.toml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    let (major, minor, patch) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap().split('-').next().unwrap(),
    );
    config.after_includes = Some(format!(
        "\n#define STUNFWD_VERSION \"{version}\"\n#define STUNFWD_VERSION_MAJOR {major}\n#define STUNFWD_VERSION_MINOR {minor}\n#define STUNFWD_VERSION_PATCH {patch}\n"
    ));
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir())
        .with_config(config)
        .generate()
        .unwrap()
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn committed_header_is_current() {
    let generated = generate();
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(header_path(), &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(header_path()).unwrap_or_default();
    assert!(
        committed == generated,
        "include/stunfwd.h is stale: regenerate it with\n  UPDATE_HEADER=1 cargo test -p stunfwd-ffi --test header\nand commit the result"
    );
}

#[test]
fn header_version_equals_crate_version() {
    let committed = std::fs::read_to_string(header_path()).unwrap();
    let line = committed
        .lines()
        .find(|l| l.starts_with("#define STUNFWD_VERSION "))
        .expect("STUNFWD_VERSION macro");
    assert_eq!(
        line,
        format!("#define STUNFWD_VERSION \"{}\"", env!("CARGO_PKG_VERSION"))
    );
    for (name, value) in ["MAJOR", "MINOR", "PATCH"]
        .iter()
        .zip(env!("CARGO_PKG_VERSION").split('.'))
    {
        let want = format!("#define STUNFWD_VERSION_{name} {value}");
        assert!(committed.contains(&want), "missing `{want}`");
    }
}
