//! The stream adapters: one per file, each a hand-written, pin-projected `Stream`.

mod by_key;
mod chunks_timeout_result;
mod map_ok_stream;

pub use by_key::ChunksTimeoutByKeyResult;
pub use chunks_timeout_result::{ChunksTimeoutResult, FlushReason};
pub use map_ok_stream::MapOkStream;
