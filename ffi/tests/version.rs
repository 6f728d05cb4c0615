//! One version number for every artefact: the workspace's `[workspace.package] version`.
//! The crates take it with `version.workspace = true`; this test checks every other place
//! that spells it (the header's macros, `stunfwd_version()`, the npm packages, the Python
//! package's metadata source). `stunfwd --version` is checked in `cli/tests/cli.rs`, and
//! the installed Python and Node packages check their own at run time.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ffi/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `version = "..."` line of the `[workspace.package]` table of the root Cargo.toml.
fn workspace_version() -> String {
    let toml = read("Cargo.toml");
    let table = toml
        .split("\n[")
        .find(|t| t.starts_with("workspace.package]"))
        .expect("Cargo.toml has [workspace.package]");
    let line = table
        .lines()
        .find(|l| l.starts_with("version = "))
        .expect("[workspace.package] has a version");
    line.trim_start_matches("version = ")
        .trim_matches('"')
        .to_string()
}

fn header_define(header: &str, name: &str) -> String {
    let prefix = format!("#define {name} ");
    header
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("include/stunfwd.h defines {name}"))
        .trim()
        .trim_matches('"')
        .to_string()
}

#[test]
fn every_crate_takes_the_workspace_version() {
    let version = workspace_version();
    assert_eq!(env!("CARGO_PKG_VERSION"), version, "stunfwd-ffi");
    for krate in [
        "core",
        "ffi",
        "cli",
        "bindings-python",
        "bindings-node",
        "lab",
    ] {
        let manifest = read(&format!("{krate}/Cargo.toml"));
        assert!(
            manifest.contains("\nversion.workspace = true"),
            "{krate}/Cargo.toml must take `version.workspace = true`"
        );
    }
    let root = read("Cargo.toml");
    let dep = format!("stunfwd-core = {{ path = \"core\", version = \"{version}\" }}");
    assert!(root.contains(&dep), "the workspace dependency is `{dep}`");
}

#[test]
fn the_header_and_the_library_say_the_workspace_version() {
    let version = workspace_version();
    let header = read("include/stunfwd.h");
    assert_eq!(header_define(&header, "STUNFWD_VERSION"), version);
    let parts: Vec<&str> = version.split(['.', '-', '+']).take(3).collect();
    assert_eq!(header_define(&header, "STUNFWD_VERSION_MAJOR"), parts[0]);
    assert_eq!(header_define(&header, "STUNFWD_VERSION_MINOR"), parts[1]);
    assert_eq!(header_define(&header, "STUNFWD_VERSION_PATCH"), parts[2]);
    // SAFETY: stunfwd_version returns a static NUL-terminated string.
    let from_lib = unsafe { CStr::from_ptr(stunfwd::stunfwd_version()) };
    assert_eq!(from_lib.to_str().expect("ASCII"), version);
}

#[test]
fn the_npm_packages_say_the_workspace_version() {
    let version = workspace_version();
    let main: serde_json::Value =
        serde_json::from_str(&read("bindings-node/package.json")).expect("package.json");
    assert_eq!(
        main["version"],
        version.as_str(),
        "bindings-node/package.json"
    );
    // The main package's optionalDependencies are written when it is packed
    // (scripts/package-node; __test__/pack.test.mjs checks them), never committed.
    assert!(
        main.get("optionalDependencies").is_none(),
        "bindings-node/package.json lists no platform package"
    );
    let npm = root().join("bindings-node/npm");
    let dirs = std::fs::read_dir(&npm).expect("bindings-node/npm holds the platform packages");
    let mut seen = 0;
    for dir in dirs {
        let path = dir.expect("read_dir entry").path().join("package.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let pkg: serde_json::Value = serde_json::from_str(&text).expect("platform package.json");
        assert_eq!(pkg["version"], version.as_str(), "{}", path.display());
        seen += 1;
    }
    assert!(seen > 0, "bindings-node/npm holds no platform package");
}

#[test]
fn the_python_package_takes_its_version_from_cargo() {
    // maturin fills the wheel's and sdist's version from bindings-python/Cargo.toml
    // (the workspace version, checked above) when pyproject.toml declares it dynamic.
    let pyproject = read("bindings-python/pyproject.toml");
    assert!(
        pyproject.contains("dynamic = [\"version\"]"),
        "pyproject.toml declares the version dynamic"
    );
    assert!(
        !pyproject.lines().any(|l| l.starts_with("version =")),
        "pyproject.toml spells no version of its own"
    );
}

#[test]
fn the_bench_and_fuzz_workspaces_lock_the_workspace_version() {
    // bench/ and fuzz/ are workspaces of their own that depend on stunfwd-core by path;
    // their `--locked` builds break when their lock files name another version.
    let version = workspace_version();
    for lock in ["bench/Cargo.lock", "fuzz/Cargo.lock"] {
        let text = read(lock);
        let locked = text
            .split("[[package]]")
            .find(|p| p.contains("\nname = \"stunfwd-core\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .unwrap_or_else(|| panic!("{lock} locks stunfwd-core"));
        assert_eq!(locked.trim_matches('"'), version, "{lock}");
    }
}
