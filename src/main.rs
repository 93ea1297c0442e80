//! The `wa-status-sidecar` binary: CLI, logging, signals. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use wa_status_sidecar::config::{Config, LogFormat, ProcessEnv};
use wa_status_sidecar::{logging, status, system, Sidecar};

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
    /// Show every tenant's state from a running sidecar's admin API.
    Status {
        /// The admin API's base URL.
        #[arg(
            long,
            env = "WA_SIDECAR_ADMIN",
            default_value = "http://127.0.0.1:9464"
        )]
        admin: String,
    },
    /// Exit 0 if a running sidecar's admin API answers `GET /livez` with 200, else 1. For
    /// container HEALTHCHECKs in images that have no curl or shell.
    Healthcheck {
        /// The admin API's base URL.
        #[arg(
            long,
            env = "WA_SIDECAR_ADMIN",
            default_value = "http://127.0.0.1:9464"
        )]
        admin: String,
    },
    /// Run the real engine against an embedded simulated gateway and webhook receiver, printing
    /// each webhook call. No other service needed.
    Demo {
        /// Stop after this long (e.g. "45s", "2m").
        #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

/// Exit code for an invalid config, so systemd's ExecStartPre and scripts can tell it apart.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config, &ProcessEnv) {
            Ok(config) => {
                // The summary lists the warnings too.
                println!("{}", config.summary());
                println!("config OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Status { admin } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime starts");
            match runtime.block_on(status::fetch(&admin)) {
                Ok(views) => {
                    print!("{}", status::table(&views));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { admin } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime starts");
            match runtime.block_on(status::healthcheck(&admin)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo { duration } => {
            // The engine's own logs would drown the story; RUST_LOG still overrides.
            logging::init(LogFormat::Text, "warn");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("the runtime starts");
            let mut out = std::io::stdout();
            match runtime.block_on(wa_status_sidecar::demo::run(duration, &mut out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let loaded = match Config::load(&config, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            logging::init(loaded.log.format, "info");
            system::limit_malloc_arenas();
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
            let code = runtime.block_on(run(config, loaded));
            // Whatever still runs has been told to stop and its state is on disk; a config read
            // stuck on a hung mount must not keep the process from exiting.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            code
        }
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
    // Logged once SIGTERM is handled: whoever reads the log (an operator, a test) and then stops
    // the sidecar gets a clean exit, not death by the signal's default action.
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let links_needed = config.tenants.ids.len() as u64 + system::NOFILE_OVERHEAD;
    match system::raise_nofile_limit() {
        Ok(limit) if limit < links_needed => tracing::warn!(
            limit,
            needed = links_needed,
            "the open-files limit is lower than the tenant count needs; raise LimitNOFILE= (systemd) or ulimit -n"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
    let sidecar = match Sidecar::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(admin = %sidecar.admin_addr(), "admin API listening");
    system::notify("READY=1");
    if let Some(every) = system::watchdog_interval() {
        // Sent from a task on the runtime: if the runtime wedges, systemd stops hearing it.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                system::notify("WATCHDOG=1");
            }
        });
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                system::notify("RELOADING=1");
                // Read off the runtime: a config, secret or tenants file on a mount that hangs
                // must not keep this loop from SIGTERM.
                let load = tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || Config::load(&path, &ProcessEnv)
                });
                let loaded = tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    loaded = load => loaded,
                };
                match loaded {
                    Ok(Ok(new)) => {
                        for warning in &new.warnings {
                            tracing::warn!("{warning}");
                        }
                        if let Err(e) = sidecar.reload(new) {
                            tracing::error!("reload failed, keeping the old config: {e}");
                        }
                    }
                    Ok(Err(e)) => {
                        // One line per problem: a log line never holds a line break.
                        for problem in &e.problems {
                            tracing::error!(config = %e.source_name, problem = %problem, "the new config is invalid; keeping the old one");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "reading the new config failed; keeping the old one"),
                }
                system::notify("READY=1");
            }
        }
    }
    system::notify("STOPPING=1");
    sidecar.shutdown().await;
    ExitCode::SUCCESS
}
