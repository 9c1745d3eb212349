use std::future::Future;

use async_trait::async_trait;

/// The error a [`Compensation`] may fail with: any `std::error::Error` that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An action that undoes one effect.
///
/// It may be run more than once (a failed attempt is retried under the
/// [`RetryPolicy`](crate::RetryPolicy)), so it should be idempotent: deleting rows by
/// id, not "the last N rows".
///
/// Implemented for every closure `Fn() -> impl Future<Output = Result<(), Er>>` whose error
/// converts into [`BoxError`] (that includes `std::io::Error`, `String` and `&'static str`),
/// so most code registers closures; implement it for a type of your own (with the re-exported
/// [`#[result_stream::async_trait]`](crate::async_trait)) when the undo needs state of its own.
///
/// A closure must be `Fn` (it may run more than once), `Send + Sync + 'static`, and return a
/// `Send` future: write `move || { let ids = ids.clone(); async move { .. } }` and clone what
/// each run consumes. When the closure's body is only `Ok(())`, name the error type
/// (`Ok::<(), std::io::Error>(())`) so that it can be inferred.
///
/// ```
/// use result_stream::{BoxError, Compensation, CompensationScope};
///
/// struct DropTable(&'static str);
///
/// #[result_stream::async_trait]
/// impl Compensation for DropTable {
///     async fn compensate(&self) -> Result<(), BoxError> {
///         println!("DROP TABLE {}", self.0);
///         Ok(())
///     }
/// }
///
/// let scope = CompensationScope::new();
/// scope.register(DropTable("staging"));
/// scope.register(|| async { Ok::<(), std::io::Error>(()) });
/// assert_eq!(scope.len(), 2);
/// ```
#[async_trait]
pub trait Compensation: Send + Sync {
    /// Undoes the effect. An `Err` counts as a failed attempt.
    async fn compensate(&self) -> Result<(), BoxError>;
}

#[async_trait]
impl<F, Fut, Er> Compensation for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<(), Er>> + Send,
    Er: Into<BoxError>,
{
    async fn compensate(&self) -> Result<(), BoxError> {
        (self)().await.map_err(Into::into)
    }
}

/// A shared compensation, such as [`CompensationFailure::action`](crate::CompensationFailure::action),
/// can be registered again.
#[async_trait]
impl<C: Compensation + ?Sized> Compensation for std::sync::Arc<C> {
    async fn compensate(&self) -> Result<(), BoxError> {
        (**self).compensate().await
    }
}
