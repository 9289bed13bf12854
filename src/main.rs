//! The `quicmesh` command: certificates, the demo mesh, and the worker.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quicmesh::tls::{CertPaths, DevCertOptions};
use quicmesh::worker::{self, WorkerSettings};

/// A mesh of worker processes over QUIC with mutual TLS.
#[derive(Parser, Debug)]
#[command(name = "quicmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the worker's settings costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a development CA, allocator and worker certificates (PEM);
    /// the CA key goes into a folder of its own (DIR/ca-private/).
    Certs {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Folder for the CA private key (default DIR/ca-private, mode 0700).
        #[arg(long, value_name = "DIR")]
        ca_key_dir: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
        /// Extra DNS name or IP address for the allocator certificate (repeatable).
        #[arg(long = "san", value_name = "NAME")]
        sans: Vec<String>,
        #[command(subcommand)]
        action: Option<CertsAction>,
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
        Command::Certs {
            dir,
            ca_key_dir,
            force,
            sans,
            action,
        } => certs(dir, ca_key_dir, force, sans, action),
        Command::Demo(args) => demo::main(args),
        Command::Worker(settings) => {
            worker::run_and_exit(&settings, &quicmesh::actor::builtin::registry())
        }
    }
}

/// What `quicmesh certs` does besides generating a development mesh.
#[derive(Subcommand, Debug)]
enum CertsAction {
    /// Issue a worker certificate and key for one host from the existing CA.
    Issue {
        /// The host's name (DNS name or IP address), put in the certificate.
        name: String,
        /// Certificate directory holding ca.pem.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Folder of the CA private key (default DIR/ca-private).
        #[arg(long, value_name = "DIR")]
        ca_key_dir: Option<PathBuf>,
        /// Where to write NAME.pem and NAME.key (default DIR/workers).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Add certificates to the CA's revocation list (DIR/revoked.crl by
    /// default); reload the allocator (SIGHUP) to put it in force.
    Revoke {
        /// Certificate files (PEM) to revoke.
        #[arg(required = true)]
        certs: Vec<PathBuf>,
        /// Certificate directory holding ca.pem.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Folder of the CA private key (default DIR/ca-private).
        #[arg(long, value_name = "DIR")]
        ca_key_dir: Option<PathBuf>,
        /// The revocation list to update (default DIR/revoked.crl).
        #[arg(long, value_name = "FILE")]
        crl: Option<PathBuf>,
    },
}

/// Runs `quicmesh certs` and its subcommands.
fn certs(
    dir: PathBuf,
    ca_key_dir: Option<PathBuf>,
    force: bool,
    sans: Vec<String>,
    action: Option<CertsAction>,
) -> ExitCode {
    let paths_in = |dir: &PathBuf, ca_key_dir: &Option<PathBuf>| {
        let paths = CertPaths::in_dir(dir);
        match ca_key_dir {
            Some(ca) => paths.with_ca_key_dir(ca),
            None => paths,
        }
    };
    let result = match action {
        None => {
            let mut options = DevCertOptions::new().sans(sans).force(force);
            if let Some(ca) = ca_key_dir {
                options = options.ca_key_dir(ca);
            }
            quicmesh::tls::generate_dev_certs(&dir, &options).map(|paths| {
                for p in paths.all() {
                    println!("wrote {}", p.display());
                }
                println!(
                    "the CA key {} is only needed to issue certificates: keep it off worker machines",
                    paths.ca_key.display()
                );
            })
        }
        Some(CertsAction::Issue {
            name,
            dir,
            ca_key_dir,
            out,
            force,
        }) => {
            let paths = paths_in(&dir, &ca_key_dir);
            let out = out.unwrap_or_else(|| dir.join(quicmesh::tls::ISSUED_DIR));
            quicmesh::tls::issue_worker_cert(&paths.ca_cert, &paths.ca_key, &name, &out, force).map(
                |issued| {
                    println!("wrote {}", issued.cert.display());
                    println!("wrote {}", issued.key.display());
                },
            )
        }
        Some(CertsAction::Revoke {
            certs,
            dir,
            ca_key_dir,
            crl,
        }) => {
            let paths = paths_in(&dir, &ca_key_dir);
            let crl = crl.unwrap_or_else(|| dir.join("revoked.crl"));
            let revoked: Vec<&std::path::Path> = certs.iter().map(PathBuf::as_path).collect();
            quicmesh::tls::revoke_certs(&paths.ca_cert, &paths.ca_key, &revoked, &crl).map(|crl| {
                println!("wrote {}", crl.display());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quicmesh certs: {e}");
            ExitCode::FAILURE
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
