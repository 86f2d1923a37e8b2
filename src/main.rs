//! `corekv-server [configfile] [--directive value ...]`

use std::process::ExitCode;

use corekv::config::{self, Invocation};
use corekv::telemetry::alloc::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let invocation = match config::from_args(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("\n{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match invocation {
        Invocation::Help => {
            print!("{}", config::help_text());
            return ExitCode::SUCCESS;
        }
        Invocation::Version => {
            println!("corekv-server v={}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Invocation::Run(config) => *config,
    };
    let config_file = args
        .first()
        .filter(|a| !a.starts_with('-'))
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match corekv::server::run(config, config_file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
