//! `pixmesh`: the CLI. Parses arguments, sets up logging, and hands off to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pixmesh::cli::Cli::parse();
    pixmesh::cli::init_tracing(cli.verbose, cli.log_format);
    match pixmesh::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(pixmesh::cli::EXIT_USAGE)
        }
    }
}
