//! The `kvgate-sync` binary: parses the command line, sets up logging and maps failures
//! to exit codes — 2 for configuration errors (the message names the flag or key), 1 for
//! runtime errors.

use clap::Parser;
use kvgate_sync::cli::{Cli, Command};
use kvgate_sync::settings::{process_env, Settings};
use std::process::ExitCode;

const CONFIG_ERROR: u8 = 2;

/// `async_nats` logs the server address with its user and password at debug level, so its
/// lines are capped at info whatever `RUST_LOG` asks for: credentials never reach the log.
const NATS_LOG_CAP: &str = "async_nats=info";

fn init_logging(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if let Ok(cap) = NATS_LOG_CAP.parse() {
        filter = filter.add_directive(cap);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Hash(args) => match kvgate_sync::hash_cmd::hash_json(&args) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kvgate-sync: {e}");
                ExitCode::from(CONFIG_ERROR)
            }
        },
        Command::Serve(args) => {
            init_logging(args.log_json);
            let settings = match Settings::from_args(&args, &process_env()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kvgate-sync: {e}");
                    return ExitCode::from(CONFIG_ERROR);
                }
            };
            let prepared = match kvgate_sync::serve::prepare(settings) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("kvgate-sync: {e}");
                    return ExitCode::from(CONFIG_ERROR);
                }
            };
            let result = runtime()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(kvgate_sync::serve::run(prepared)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kvgate-sync: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain(args) => explain(&args),
        Command::CheckConfig(args) => check_config(&args),
        Command::VmConfig(args) => vm_config(&args),
    }
}

/// Parses every file with the filter's configuration parser; exit 2 if any is invalid.
fn check_config(args: &kvgate_sync::cli::CheckConfigArgs) -> ExitCode {
    let mut failed = false;
    for file in &args.files {
        let result = std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|b| kvgate_core::config::Config::from_json(&b).map_err(|e| e.to_string()));
        match result {
            Ok(_) => println!("ok {}", file.display()),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(CONFIG_ERROR)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(feature = "explain")]
fn vm_config(args: &kvgate_sync::cli::VmConfigArgs) -> ExitCode {
    match kvgate_sync::models::vm_config_json(&args.models, args.block_size) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvgate-sync: {e}");
            ExitCode::from(CONFIG_ERROR)
        }
    }
}

#[cfg(not(feature = "explain"))]
fn vm_config(_args: &kvgate_sync::cli::VmConfigArgs) -> ExitCode {
    eprintln!("kvgate-sync: built without the `explain` feature");
    ExitCode::from(CONFIG_ERROR)
}

#[cfg(feature = "explain")]
fn explain(args: &kvgate_sync::cli::ExplainArgs) -> ExitCode {
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(kvgate_sync::explain::run(args)));
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kvgate-sync: {e:#}");
            let config = e
                .downcast_ref::<kvgate_sync::settings::SettingsError>()
                .is_some()
                || e.to_string().starts_with("invalid value for");
            ExitCode::from(if config { CONFIG_ERROR } else { 1 })
        }
    }
}

#[cfg(not(feature = "explain"))]
fn explain(_args: &kvgate_sync::cli::ExplainArgs) -> ExitCode {
    eprintln!("kvgate-sync: built without the `explain` feature");
    ExitCode::from(CONFIG_ERROR)
}
