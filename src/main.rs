//! The `weave` binary: the command line (`weave launch`, `status`, `connect`...), the
//! daemon it starts (`weave router`), the HTTP API between the two, and host plumbing.
//!
//! Client commands talk to the running daemon over its HTTP API only (127.0.0.1:6784), so
//! a script can do everything the CLI does with `curl`.

mod api;
mod cli;
mod control;
mod daemon;
mod dataplane;
mod report;
mod status;
#[allow(dead_code, unused_imports)]
mod sys;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors print clap's message and exit with 2; --help and --version exit 0.
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", cli::error_message(&err));
            ExitCode::FAILURE
        }
    }
}
