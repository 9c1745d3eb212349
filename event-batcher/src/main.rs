//! `event-batcher`: see the library documentation (`cargo doc -p event-batcher --open`) and
//! `event-batcher --help`.

use std::process::ExitCode;

use clap::Parser;
use event_batcher::cli::{Cli, execute};

#[tokio::main]
async fn main() -> ExitCode {
    execute(Cli::parse()).await
}
