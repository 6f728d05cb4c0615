//! STUN: messages, the client side of the engine (transactions over the shared socket,
//! discovery against several servers, cached) and an in-process Binding responder.

pub mod allocation;
pub mod client;
pub mod message;
pub mod responder;

pub use allocation::Allocation;
pub use client::{
    detect_nat, detect_nat_and_allocation, Discovery, FilteringBehavior, MappingBehavior, NatType,
};
pub use responder::StunResponder;
