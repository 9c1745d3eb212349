//! The pieces every batching adapter shares: the limits a batch is closed by (a count and an
//! optional weight), why a batch closed ([`FlushReason`]) and what is reported with it
//! ([`BatchInfo`]).
//!
//! The structs and traits here are type-state parameters of the batching adapters: you name
//! them only when you write out an adapter's type, for example
//! `ChunksTimeoutResult<S, MaxWeight<F>, WithInfo>`. Their traits are sealed.

pub(crate) mod info;
pub(crate) mod limiter;
pub(crate) mod state;
pub(crate) mod timer;
pub(crate) mod trace;
pub(crate) mod upstream;

pub use info::{BatchInfo, BatchOutput, FlushReason, NoInfo, WithInfo};
pub use limiter::{MaxWeight, NoWeight, Weigh};

pub(crate) use limiter::Limiter;
pub(crate) use state::BatchState;
pub(crate) use timer::{Timer, deadline_after};
pub(crate) use upstream::{Drained, Upstream};

/// The most values one `poll_next` of a batcher takes from the upstream. When it has taken
/// that many without closing a batch, it wakes its task and returns `Pending` (a cooperative
/// yield), so that a `poll_next` always returns after a bounded amount of work and a
/// deadline that passed meanwhile is honoured at the next poll.
pub(crate) const BUDGET: usize = 4_096;
