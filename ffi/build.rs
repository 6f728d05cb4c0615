//! Gives the shared library a versioned soname, `libstunfwd.so.<major>`, so that a
//! program linked against it keeps loading that major version when a later,
//! incompatible one is installed beside it (`scripts/install-c` makes the symlinks).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    if os == "linux" || os == "android" || os.ends_with("bsd") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libstunfwd.so.{major}");
    }
}
