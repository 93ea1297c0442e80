//! The `wa-status-sidecar` binary: CLI, logging, signals. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use wa_status_sidecar::config::{Config, LogFormat, ProcessEnv};
use wa_status_sidecar::Sidecar;

/// Watches WhatsApp gateway sessions and calls the backend webhook on real
/// connected/disconnected transitions.
#[derive(Parser)]
#[command(name = "wa-status-sidecar", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        /// The TOML config file.
        #[arg(long, short, env = "WA_SIDECAR_CONFIG")]
        config: PathBuf,
    },
    /// Validate the config and print a summary (the secret redacted); exit 2 listing every problem.
    Check {
        /// The TOML config file.
        #[arg(long, short, env = "WA_SIDECAR_CONFIG")]
        config: PathBuf,
    },
}

/// Exit code for an invalid config, so systemd's ExecStartPre and scripts can tell it apart.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config, &ProcessEnv) {
            Ok(config) => {
                println!("{}", config.summary());
                for warning in &config.warnings {
                    println!("warning: {warning}");
                }
                println!("config OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            let loaded = match Config::load(&config, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(loaded.log.format);
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config, loaded))
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(path: PathBuf, config: Config) -> ExitCode {
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let sidecar = match Sidecar::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                match Config::load(&path, &ProcessEnv) {
                    Ok(new) => {
                        if let Err(e) = sidecar.reload(new) {
                            tracing::error!("reload failed, keeping the old config: {e}");
                        }
                    }
                    Err(e) => tracing::error!("the new config is invalid; keeping the old one:\n{e}"),
                }
            }
        }
    }
    sidecar.shutdown().await;
    ExitCode::SUCCESS
}
