//! The stream adapters: one per file, each a hand-written, pin-projected `Stream`.

pub mod batch;
mod by_key;
mod chunks_timeout_result;
mod map_ok_stream;

pub use batch::{BatchInfo, FlushReason};
pub use by_key::ChunksTimeoutByKeyResult;
pub use chunks_timeout_result::ChunksTimeoutResult;
pub use map_ok_stream::MapOkStream;
