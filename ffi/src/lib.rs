//! C ABI for stunfwd. Placeholder until the C API issue lands: only the version is exported.

use std::ffi::c_char;

/// The library version as a NUL-terminated static string (never freed by the caller).
#[no_mangle]
pub extern "C" fn stunfwd_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
