//! Compensation: the LIFO stack of undo actions behind
//! [`for_each_compensated`](crate::ResultStreamExt::for_each_compensated).
//!
//! A [`CompensationScope`] holds registered [`Compensation`]s. When the unit of work they
//! protect fails, [`Rollback`] runs them newest first under a [`RollbackPolicy`] and reports
//! the outcome as a [`RollbackReport`]; [`ForEachCompensated`] does this for every item of a
//! stream and resolves to a [`CompensatedError`] carrying the [`Cause`] and that report.

mod action;
mod for_each;
mod policy;
mod rollback;
mod scope;

pub use action::{BoxError, Compensation};
pub use for_each::{Cause, CompensatedError, Completion, ForEachCompensated, UnitOfWork};
pub use policy::{Backoff, RollbackPolicy};
pub use rollback::{CompensationFailure, FailureKind, Rollback, RollbackReport};
pub use scope::CompensationScope;
