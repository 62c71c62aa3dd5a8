//! The binary's edge: parse the command line, run the command, turn its result into an exit
//! code: 0 done, 1 a cycle, check or health probe failed, 2 the configuration is invalid.

use std::process::ExitCode;

use clap::Parser;
use falcon_vmray_connector::cli::Cli;
use falcon_vmray_connector::commands::{self, CommandError, Outcome};

fn main() -> ExitCode {
    match commands::execute(Cli::parse()) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::FAILURE,
        Err(error) => {
            let bad_config = matches!(error, CommandError::Config(_));
            eprintln!("error: {:#}", anyhow::Error::from(error));
            if bad_config {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
