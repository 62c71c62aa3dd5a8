//! The binary's edge: parse the command line, run the command, turn its result into an exit
//! code: 0 done, 1 a cycle, check or health probe failed, 2 the configuration is invalid, 3
//! another connector runs on the same state file or download folder.

use std::process::ExitCode;

use clap::Parser;
use falcon_vmray_connector::cli::Cli;
use falcon_vmray_connector::commands::{self, CommandError, Outcome};
use falcon_vmray_connector::instance;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(usage) = cli.validate() {
        usage.exit();
    }
    match commands::execute(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::FAILURE,
        Err(error) => {
            let code = match error {
                CommandError::Config(_) => ExitCode::from(2),
                CommandError::Locked(_) => ExitCode::from(instance::LOCKED_EXIT_CODE),
                _ => ExitCode::FAILURE,
            };
            eprintln!("error: {:#}", anyhow::Error::from(error));
            code
        }
    }
}
