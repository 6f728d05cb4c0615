//! Gives the shared library a versioned soname, so that a program linked against it
//! keeps loading a compatible version when an incompatible one is installed beside it
//! (`scripts/install-c` makes the symlinks). Compatible as Cargo reads versions:
//! `libstunfwd.so.<major>` from 1.0 on, `libstunfwd.so.0.<minor>` before, where each
//! minor release may break the ABI.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
    let soversion = if major == "0" {
        format!("0.{minor}")
    } else {
        major
    };
    if os == "linux" || os == "android" || os.ends_with("bsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libstunfwd.so.{soversion}");
    }
}
