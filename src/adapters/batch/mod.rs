//! The pieces every batching adapter shares: the limits a batch is closed by (a count and an
//! optional weight), why a batch closed ([`FlushReason`]) and what is reported with it
//! ([`BatchInfo`]).
//!
//! The structs and traits here are type-state parameters of the batching adapters: you name
//! them only when you write out an adapter's type, for example
//! `ChunksTimeoutResult<S, MaxWeight<F>, WithInfo>`. Their traits are sealed.

pub(crate) mod info;
pub(crate) mod limiter;

pub use info::{BatchInfo, BatchOutput, FlushReason, NoInfo, WithInfo};
pub use limiter::{MaxWeight, NoWeight, Weigh};

pub(crate) use limiter::Limiter;
