//! Errors as JavaScript sees them: an `Error` whose `code` is the core's stable
//! `Error::code()` (`ERR_CONFIG`, `ERR_ADDR_IN_USE`, ...), `ERR_INVALID_ARG` for a
//! JavaScript value of the wrong kind, and whose `message` is the core's message.

use std::borrow::Cow;

use napi::bindgen_prelude::{JsError, ToNapiValue, Unknown};
use napi::{sys, Env, Status};

/// Code of an argument that is not what the function accepts (a number where a
/// string is expected, an unknown event name, a negative timeout...).
pub const ERR_INVALID_ARG: &str = "ERR_INVALID_ARG";

/// The `code` property of a thrown or rejected error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code(Cow<'static, str>);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Status> for Code {
    /// Node-API's own failures keep Node-API's status name (`PendingException` must stay
    /// as it is: napi-rs then rethrows the JavaScript exception unchanged).
    fn from(status: Status) -> Self {
        Code(Cow::Owned(status.as_ref().to_owned()))
    }
}

/// The error type of every exported function.
pub type Error = napi::Error<Code>;

/// Result alias of every exported function.
pub type Result<T> = std::result::Result<T, Error>;

/// An error with `code` and `message`.
pub fn coded(code: &'static str, message: impl Into<String>) -> Error {
    napi::Error::new(Code(Cow::Borrowed(code)), message.into())
}

/// `ERR_INVALID_ARG` with `message`.
pub fn invalid_arg(message: impl Into<String>) -> Error {
    coded(ERR_INVALID_ARG, message)
}

/// A core error as thrown to JavaScript.
pub fn core(e: &stunfwd_core::Error) -> Error {
    coded(e.code(), e.to_string())
}

/// Converts Node-API failures (`napi::Result`) into this crate's errors.
pub trait NapiExt<T> {
    /// The same result with a [`Code`] error.
    fn js(self) -> Result<T>;
}

impl<T> NapiExt<T> for napi::Result<T> {
    fn js(self) -> Result<T> {
        self.map_err(|e| napi::Error::new(Code::from(e.status), e.reason))
    }
}

/// An error in a form that can cross threads: built into a JavaScript `Error` only
/// once it is back on the main thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The `code` property.
    pub code: Code,
    /// The `message`.
    pub message: String,
}

impl From<stunfwd_core::Error> for Failure {
    fn from(e: stunfwd_core::Error) -> Self {
        Failure {
            code: Code(Cow::Borrowed(e.code())),
            message: e.to_string(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure {
            code: e.status,
            message: e.reason,
        }
    }
}

impl ToNapiValue for Failure {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let error = JsError::from(napi::Error::new(val.code, val.message));
        // SAFETY: `env` is the live environment Node-API passed to this conversion.
        Ok(unsafe { error.into_value(env) })
    }
}

impl Failure {
    /// The JavaScript `Error` object (main thread only).
    pub fn to_js<'env>(&self, env: &Env) -> Unknown<'env> {
        JsError::from(napi::Error::new(self.code.clone(), self.message.clone())).into_unknown(*env)
    }

    /// As a `napi::Error` that carries the JavaScript `Error` itself, so a promise
    /// rejected with it rejects with exactly that object (main thread only).
    pub fn to_rejection(&self, env: &Env) -> napi::Error {
        napi::Error::from(self.to_js(env))
    }
}
