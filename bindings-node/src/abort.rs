//! `AbortSignal`s of promise-returning calls: an abort cancels the core's wait
//! ([`WaitCancel`]), and the listener is removed again once the promise settles (a
//! signal reused for many waits must not collect listeners).

use napi::bindgen_prelude::{
    FnArgs, Function, FunctionRef, JsObjectValue, Object, ObjectRef, Unknown,
};
use napi::Env;
use stunfwd_core::WaitCancel;

use crate::error::{NapiExt, Result};

/// `addEventListener` / `removeEventListener` of a signal.
type ListenerMethod<'env> =
    Function<'env, FnArgs<(&'static str, Function<'env, (), ()>)>, Unknown<'env>>;

/// An `abort` listener on a signal, removed with [`Watch::end`].
pub struct Watch {
    signal: ObjectRef<false>,
    listener: FunctionRef<(), ()>,
}

/// Cancels `cancel` when `signal` aborts; at once if it already has (then there is
/// nothing to remove later, and this returns `None`).
pub fn watch(env: &Env, signal: &Object, cancel: &WaitCancel) -> Result<Option<Watch>> {
    let aborted: bool = signal.get_named_property("aborted").js()?;
    if aborted {
        cancel.cancel();
        return Ok(None);
    }
    let token = cancel.clone();
    let listener = env
        .create_function_from_closure::<(), (), _>("stunfwdAbort", move |_| {
            token.cancel();
            Ok(())
        })
        .js()?;
    let add: ListenerMethod = signal.get_named_property("addEventListener").js()?;
    add.apply(signal, FnArgs::from(("abort", listener))).js()?;
    Ok(Some(Watch {
        signal: signal.create_ref().js()?,
        listener: listener.create_ref().js()?,
    }))
}

impl Watch {
    /// Removes the listener (main thread).
    pub fn end(self, env: &Env) {
        if let (Ok(signal), Ok(listener)) =
            (self.signal.get_value(env), self.listener.borrow_back(env))
        {
            let remove = signal.get_named_property::<ListenerMethod>("removeEventListener");
            if let Ok(remove) = remove {
                let _ = remove.apply(signal, FnArgs::from(("abort", listener)));
            }
        }
        let _ = self.signal.unref(env);
    }
}
