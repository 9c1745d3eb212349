//! Compensation: the LIFO stack of undo actions behind
//! [`for_each_compensated`](crate::ResultStreamExt::for_each_compensated).
//!
//! A [`CompensationScope`] holds registered [`Compensation`]s; an [`ItemScope`] is the
//! handle of one item of a run and a [`ChildScope`] a nested unit of work. When the unit of
//! work they protect fails, [`Rollback`] runs them newest first under a [`RetryPolicy`] and
//! reports the outcome as a [`RollbackReport`]; [`ForEachCompensated`] does this for every
//! item of a stream and resolves to a [`CompensatedError`] carrying the [`Cause`] and that
//! report.

mod action;
mod config;
mod error;
mod for_each;
mod options;
mod policy;
mod report;
mod rollback;
mod scope;
mod stack;
mod trace;
mod wake;

pub use action::{BoxError, Compensation};
pub use error::{Cause, CompensatedError};
pub use for_each::ForEachCompensated;
pub use options::{Completion, UnitOfWork};
pub use policy::{Backoff, RetryPolicy};
pub use report::{CompensationFailure, FailureKind, RollbackReport};
pub use rollback::Rollback;
pub use scope::{ChildScope, CompensationScope, ItemScope};
