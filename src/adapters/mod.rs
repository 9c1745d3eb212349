//! The stream adapters: one per file, each a hand-written, pin-projected `Stream`.

/// `get_ref`, `get_mut`, `get_pin_mut` and `into_inner` for an adapter whose `$field`
/// wraps the user's stream (as futures-util's `delegate_access_inner!`): `$ind` lists the
/// layers to look through.
macro_rules! delegate_access_inner {
    ($field:ident, $inner:ty, ($($ind:tt)*)) => {
        /// Acquires a reference to the underlying stream.
        pub fn get_ref(&self) -> &$inner {
            (&self.$field) $($ind get_ref())*
        }

        /// Acquires a mutable reference to the underlying stream.
        ///
        /// Pulling items out of it directly bypasses this adapter.
        pub fn get_mut(&mut self) -> &mut $inner {
            (&mut self.$field) $($ind get_mut())*
        }

        /// Acquires a pinned mutable reference to the underlying stream.
        pub fn get_pin_mut(self: core::pin::Pin<&mut Self>) -> core::pin::Pin<&mut $inner> {
            self.project().$field $($ind get_pin_mut())*
        }

        /// Consumes the adapter and returns the underlying stream.
        ///
        /// The adapter holds its timer inline, so it is `!Unpin`: this is only for an
        /// adapter that was never pinned. Buffered values and a held-back error are dropped;
        /// `take_remainder` takes them out of a pinned adapter.
        pub fn into_inner(self) -> $inner {
            self.$field $($ind into_inner())*
        }
    };
}

pub mod batch;
mod by_key;
mod chunks_timeout_result;
mod map_ok_stream;

pub use batch::{BatchInfo, FlushReason};
pub use by_key::ChunksTimeoutByKeyResult;
pub use chunks_timeout_result::ChunksTimeoutResult;
pub use map_ok_stream::MapOkStream;
