//! STUN: messages, the client side of the engine (transactions over the shared socket,
//! discovery against several servers, cached) and an in-process Binding responder.

pub mod client;
pub mod message;
pub mod responder;

pub use client::{detect_nat, Discovery, FilteringBehavior, MappingBehavior, NatType};
pub use responder::StunResponder;
