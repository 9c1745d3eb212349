//! `event-batcher`: see the library documentation (`cargo doc -p event-batcher --open`) and
//! `cargo run --release -p event-batcher -- --help`.

use std::process::ExitCode;

use clap::Parser;
use event_batcher::cli::{Cli, execute};

/// The allocator: mimalloc. Every event allocates its strings and every row its bound values
/// (the SQLite driver copies them to its worker thread, which frees them); glibc's
/// allocator spent about a sixth of a synthetic run's CPU time on that, mostly on memory
/// freed by another thread than the one that allocated it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    execute(Cli::parse()).await
}
