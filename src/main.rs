//! The `quicmesh` command: certificates, the demo mesh, and the worker.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quicmesh::config::{self, WorkerEnv};
use quicmesh::worker::{self, WorkerExit};

/// A mesh of worker processes over QUIC with mutual TLS.
#[derive(Parser, Debug)]
#[command(name = "quicmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a development CA, allocator and worker certificates (PEM).
    Certs {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Extra DNS name or IP address for the allocator certificate (repeatable).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
    },
    /// Run a local mesh: allocator plus worker processes, then stop it.
    Demo(demo::DemoArgs),
    /// Run as a worker (settings from QUICMESH_* variables; flags override).
    Worker(WorkerArgs),
}

/// Flags of `quicmesh worker`; each overrides the variable of the same meaning.
#[derive(Parser, Debug)]
struct WorkerArgs {
    /// Allocator `host:port` (QUICMESH_ALLOCATOR_ADDR).
    #[arg(long)]
    allocator: Option<String>,
    /// Name in the allocator's certificate (QUICMESH_SERVER_NAME).
    #[arg(long)]
    server_name: Option<String>,
    /// This worker's index (QUICMESH_INDEX).
    #[arg(long)]
    index: Option<String>,
    /// Secret for this index (QUICMESH_TOKEN); prefer the variable, flags show in `ps`.
    #[arg(long)]
    token: Option<String>,
    /// Mesh CA PEM (QUICMESH_CA).
    #[arg(long)]
    ca: Option<String>,
    /// Worker certificate PEM (QUICMESH_CERT).
    #[arg(long)]
    cert: Option<String>,
    /// Worker key PEM (QUICMESH_KEY).
    #[arg(long)]
    key: Option<String>,
    /// How long to keep trying to join, e.g. 30s, 500ms, 2m (QUICMESH_JOIN_TIMEOUT; default 60s).
    #[arg(long, value_name = "DURATION")]
    join_timeout: Option<String>,
    /// Link setting: lan, wan, or changes such as wan,window=32MiB (QUICMESH_LINK; default lan).
    #[arg(long, value_name = "SETTING")]
    link: Option<String>,
    /// Heartbeat interval this worker expects (QUICMESH_HEARTBEAT_INTERVAL); the allocator's applies.
    #[arg(long, value_name = "DURATION")]
    heartbeat_interval: Option<String>,
    /// Heartbeat timeout this worker expects (QUICMESH_HEARTBEAT_TIMEOUT); the allocator's applies.
    #[arg(long, value_name = "DURATION")]
    heartbeat_timeout: Option<String>,
}

impl WorkerArgs {
    fn env(&self) -> Result<WorkerEnv, config::ConfigError> {
        WorkerEnv::from_lookup(|name| {
            let flag = match name {
                config::ENV_ALLOCATOR_ADDR => &self.allocator,
                config::ENV_SERVER_NAME => &self.server_name,
                config::ENV_INDEX => &self.index,
                config::ENV_TOKEN => &self.token,
                config::ENV_CA => &self.ca,
                config::ENV_CERT => &self.cert,
                config::ENV_KEY => &self.key,
                config::ENV_JOIN_TIMEOUT => &self.join_timeout,
                config::ENV_LINK => &self.link,
                config::ENV_HEARTBEAT_INTERVAL => &self.heartbeat_interval,
                config::ENV_HEARTBEAT_TIMEOUT => &self.heartbeat_timeout,
                _ => &None,
            };
            flag.clone().or_else(|| std::env::var(name).ok())
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    quicmesh::logging::init();
    match cli.command {
        Command::Certs { dir, force, sans } => {
            match quicmesh::tls::generate_dev_certs(&dir, &sans, force) {
                Ok(paths) => {
                    for p in paths.all() {
                        println!("wrote {}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("quicmesh certs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => demo::main(args),
        Command::Worker(args) => {
            let exit = match args.env() {
                Ok(env) => worker::run_blocking(env, quicmesh::actor::builtin::registry()),
                Err(e) => WorkerExit::new(
                    quicmesh::exit_code::CONFIG,
                    format!("configuration error: {e}"),
                ),
            };
            worker::finish(exit)
        }
    }
}
