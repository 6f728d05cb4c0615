//! Checks of JavaScript arguments. Exported functions take loosely typed values and
//! check them here, so a wrong argument is an `ERR_INVALID_ARG` error that says what
//! was expected (not Node-API's generic `StringExpected`).

use std::time::Duration;

use napi::bindgen_prelude::{FromNapiValue, Function, JsObjectValue, JsValue, Object, Unknown};
use napi::{Env, ValueType};
use stunfwd_core::blocking::listen_addr;
use stunfwd_core::Config;
use tracing::level_filters::LevelFilter;

use crate::error::{core, invalid_arg, NapiExt, Result};

/// `typeof`-style name of a value, for messages.
pub fn kind(value: &Unknown) -> &'static str {
    match value.get_type() {
        Ok(ValueType::Undefined) => "undefined",
        Ok(ValueType::Null) => "null",
        Ok(ValueType::Boolean) => "a boolean",
        Ok(ValueType::Number) => "a number",
        Ok(ValueType::String) => "a string",
        Ok(ValueType::Symbol) => "a symbol",
        Ok(ValueType::Object) => "an object",
        Ok(ValueType::Function) => "a function",
        Ok(ValueType::External) => "an external",
        Ok(ValueType::BigInt) => "a bigint",
        _ => "an unknown value",
    }
}

fn is(value: &Unknown, t: ValueType) -> bool {
    value.get_type().is_ok_and(|v| v == t)
}

/// True for `undefined` and `null`.
pub fn is_nullish(value: &Unknown) -> bool {
    is(value, ValueType::Undefined) || is(value, ValueType::Null)
}

/// A string argument; `what` names it in the error, e.g. "`spec` (a mapping such as
/// \"tcp:8080:22\")".
pub fn string(value: &Unknown, what: &str) -> Result<String> {
    if !is(value, ValueType::String) {
        return Err(invalid_arg(format!(
            "{what} must be a string, got {}",
            kind(value)
        )));
    }
    // SAFETY: the value is a string of the environment that passed it in.
    unsafe { String::from_napi_value(value.value().env, value.raw()) }.js()
}

/// A number argument.
pub fn number(value: &Unknown, what: &str) -> Result<f64> {
    if !is(value, ValueType::Number) {
        return Err(invalid_arg(format!(
            "{what} must be a number, got {}",
            kind(value)
        )));
    }
    // SAFETY: the value is a number of the environment that passed it in.
    unsafe { f64::from_napi_value(value.value().env, value.raw()) }.js()
}

/// A timeout in milliseconds; `undefined`/`null` give `default`.
pub fn timeout_ms(value: Option<&Unknown>, what: &str, default: Duration) -> Result<Duration> {
    let Some(value) = value.filter(|v| !is_nullish(v)) else {
        return Ok(default);
    };
    let ms = number(value, what)?;
    if !ms.is_finite() || ms < 0.0 {
        return Err(invalid_arg(format!(
            "{what} must be a finite number of milliseconds >= 0, got {ms}"
        )));
    }
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid_arg(format!("{what} is too large: {ms} ms")))
}

/// A mapping id as returned by `addMapping`.
pub fn mapping_id(value: &Unknown) -> Result<u64> {
    let id = number(value, "`id` (a mapping id returned by addMapping)")?;
    if id.fract() != 0.0 || !(0.0..=9_007_199_254_740_991.0).contains(&id) {
        return Err(invalid_arg(format!(
            "`id` must be a mapping id returned by addMapping (an integer >= 0), got {id}"
        )));
    }
    Ok(id as u64)
}

/// A function argument.
pub fn function<'a>(
    value: &Unknown<'a>,
    what: &str,
) -> Result<Function<'a, napi::sys::napi_value, Unknown<'static>>> {
    if !is(value, ValueType::Function) {
        return Err(invalid_arg(format!(
            "{what} must be a function, got {}",
            kind(value)
        )));
    }
    // SAFETY: checked to be a function of the environment that passed it in.
    unsafe { Function::from_napi_value(value.value().env, value.raw()) }.js()
}

/// An engine config: a JSON string, or an object that is serialized with
/// `JSON.stringify` (so it reads exactly like the same config given as JSON text).
pub fn config(env: &Env, value: &Unknown) -> Result<Config> {
    let parsed = match value.get_type().js()? {
        ValueType::String => Config::from_json(&string(value, "`config`")?),
        ValueType::Object => {
            let json: Object = env.get_global().js()?.get_named_property("JSON").js()?;
            let stringify: Function<Unknown, Unknown> =
                json.get_named_property("stringify").js()?;
            let text = stringify.call(*value).map_err(|e| {
                invalid_arg(format!(
                    "`config` cannot be converted to JSON: {}",
                    e.reason
                ))
            })?;
            Config::from_json(&string(&text, "`config` as JSON")?)
        }
        _ => {
            return Err(invalid_arg(format!(
                "`config` must be an object or a JSON string, got {}",
                kind(value)
            )))
        }
    };
    parsed.map_err(|e| core(&e))
}

/// An optional `host:port` address option of `SignalServer.start`.
pub fn socket_addr(
    options: Option<&Object>,
    key: &str,
    default: Option<std::net::SocketAddr>,
) -> Result<Option<std::net::SocketAddr>> {
    let Some(options) = options else {
        return Ok(default);
    };
    let value: Unknown = options.get_named_property(key).js()?;
    if is(&value, ValueType::Undefined) {
        return Ok(default);
    }
    if is(&value, ValueType::Null) || (is(&value, ValueType::Boolean) && !bool_value(&value)?) {
        return Ok(None);
    }
    let text = string(&value, &format!("`{key}`"))?;
    listen_addr(key, &text).map(Some).map_err(|e| core(&e))
}

/// The `signal` of an options object such as `waitConnected`'s: an `AbortSignal`, or
/// `None` when there are no options or no signal.
pub fn abort_signal<'env>(options: Option<&Unknown<'env>>) -> Result<Option<Object<'env>>> {
    let Some(options) = options.filter(|v| !is_nullish(v)) else {
        return Ok(None);
    };
    if !is(options, ValueType::Object) {
        return Err(invalid_arg(format!(
            "`options` must be an object such as {{ signal: AbortSignal.timeout(5000) }}, got {}",
            kind(options)
        )));
    }
    // SAFETY: checked to be an object.
    let options: Object = unsafe { options.cast() }.js()?;
    let signal: Unknown = options.get_named_property("signal").js()?;
    if is_nullish(&signal) {
        return Ok(None);
    }
    let not_a_signal = || {
        invalid_arg(format!(
            "`options.signal` must be an AbortSignal, got {}",
            kind(&signal)
        ))
    };
    if !is(&signal, ValueType::Object) {
        return Err(not_a_signal());
    }
    // SAFETY: checked to be an object.
    let object: Object = unsafe { signal.cast() }.js()?;
    let aborted: Unknown = object.get_named_property("aborted").js()?;
    let add: Unknown = object.get_named_property("addEventListener").js()?;
    if !is(&aborted, ValueType::Boolean) || !is(&add, ValueType::Function) {
        return Err(not_a_signal());
    }
    Ok(Some(object))
}

/// The `level` of `setLogger`: `'error'`, `'warn'`, `'info'` (the default), `'debug'`
/// or `'trace'`.
pub fn log_level(value: Option<&Unknown>) -> Result<LevelFilter> {
    let Some(value) = value.filter(|v| !is_nullish(v)) else {
        return Ok(LevelFilter::INFO);
    };
    let what = "`level` ('error', 'warn', 'info', 'debug' or 'trace')";
    match string(value, what)?.as_str() {
        "error" => Ok(LevelFilter::ERROR),
        "warn" => Ok(LevelFilter::WARN),
        "info" => Ok(LevelFilter::INFO),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        other => Err(invalid_arg(format!(
            "unknown log level {other:?}; valid: 'error', 'warn', 'info', 'debug', 'trace'"
        ))),
    }
}

fn bool_value(value: &Unknown) -> Result<bool> {
    // SAFETY: checked to be a boolean by the caller.
    unsafe { bool::from_napi_value(value.value().env, value.raw()) }.js()
}
