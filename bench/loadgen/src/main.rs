//! `headcount-loadgen load ...` and `headcount-loadgen upstream ...`: see
//! `args::USAGE` and bench/README.md.

use headcount_loadgen::args::{self, Command};
use headcount_loadgen::{load, upstream};
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "--help" || a == "-h") {
        println!("{}", args::USAGE);
        return ExitCode::SUCCESS;
    }
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headcount-loadgen: {e}\n{}", args::USAGE);
            ExitCode::from(2)
        }
    }
}

fn run(argv: &[String]) -> Result<(), String> {
    let command = args::parse(argv)?;
    // One thread: the generator must take as little of the machine as it can
    // (the precise timer adds a second, asleep but for its wake-ups).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    match command {
        Command::Load(cfg) => {
            let summary = rt.block_on(load::run(&cfg))?;
            println!("LOADGEN {}", summary.to_json());
            Ok(())
        }
        Command::Upstream { listen, delay } => rt.block_on(async {
            let listener = upstream::bind(listen).await?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            println!("headcount-loadgen upstream listening on {addr}");
            upstream::serve(listener, delay).await
        }),
    }
}
