//! The `quicmesh` command: certificates, the demo mesh, and the worker.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quicmesh::tls::DevCertOptions;
use quicmesh::worker::{self, WorkerSettings};

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
    /// Run as a worker: each setting from its flag, else its QUICMESH_*
    /// variable, else its default.
    Worker(WorkerSettings),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match &cli.command {
        Command::Demo(args) => quicmesh::init_logging_with_default(args.log_default()),
        _ => quicmesh::init_logging(),
    }
    match cli.command {
        Command::Certs { dir, force, sans } => {
            let options = DevCertOptions::new().sans(sans).force(force);
            match quicmesh::tls::generate_dev_certs(&dir, &options) {
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
        Command::Worker(settings) => {
            worker::run_and_exit(&settings, &quicmesh::actor::builtin::registry())
        }
    }
}

/// Prints a command-line error (or the help or version asked for) and
/// returns clap's exit code, except for `quicmesh worker`: a worker's flags
/// are its configuration, and whoever launched it reads a configuration
/// error from exit code 78, whether it came from a flag or a variable.
fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    let is_worker = std::env::args_os().nth(1).is_some_and(|a| a == "worker");
    let code = if e.use_stderr() && is_worker {
        quicmesh::exit_code::CONFIG
    } else {
        e.exit_code()
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
