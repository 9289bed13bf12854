//! A worker's settings: every `QUICMESH_*` variable a worker reads, defined
//! once, with its flag, default and check.
//!
//! [`WorkerSettings`] is a clap argument group: each setting has a flag and a
//! variable, the flag winning when both are given, and `--help` lists the
//! variables. The same definition serves `quicmesh worker` (flags and
//! variables), [`bootstrap_or_die`](super::bootstrap_or_die) (variables only,
//! through [`WorkerSettings::from_env`]) and any program that flattens it into
//! its own command line. Clap only collects the text; [`WorkerSettings::validate`]
//! checks it and produces the typed [`WorkerEnv`], so that every error names
//! both the variable and the flag, whichever was used.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};

use crate::config::{
    parse_duration, split_host_port, ConfigError, HeartbeatConfig, DEFAULT_JOIN_TIMEOUT,
    DEFAULT_SERVER_NAME, ENV_ALLOCATOR_ADDR, ENV_CA, ENV_CERT, ENV_GROUP_SECRET,
    ENV_HEARTBEAT_INTERVAL, ENV_HEARTBEAT_TIMEOUT, ENV_INDEX, ENV_INDEX_FROM, ENV_INDEX_OFFSET,
    ENV_JOIN_TIMEOUT, ENV_KEY, ENV_LINK, ENV_SECRETS_STDIN, ENV_SERVER_NAME, ENV_TOKEN,
    ENV_WORKER_RUNTIME, ENV_WORKER_THREADS,
};
use crate::link::LinkConfig;

use super::runtimes::WorkerRuntime;

/// Threads of a worker's tokio runtime when nothing says otherwise: enough
/// that a handler busy for a moment does not hold up the heartbeats.
pub(crate) const DEFAULT_WORKER_THREADS: usize = 2;

/// The most runtime threads a worker accepts: more is a typo, and each
/// thread costs a stack.
pub(crate) const MAX_WORKER_THREADS: usize = 1024;

/// A worker's settings as given: flags, else `QUICMESH_*` variables, else
/// defaults. Unchecked text; [`WorkerSettings::validate`] checks it.
///
/// Flatten it into a command of your own to give your binary a worker mode
/// with the same flags and variables as `quicmesh worker`:
///
/// ```no_run
/// use clap::Parser;
/// use quicmesh::worker::{self, WorkerSettings};
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     worker: WorkerSettings,
/// }
///
/// let cli = Cli::parse();
/// worker::run_and_exit(&cli.worker, &quicmesh::Registry::new());
/// ```
#[derive(Args, Clone)]
pub struct WorkerSettings {
    /// Address of the allocator, host:port, IPv6 hosts in brackets (required).
    #[arg(long = "allocator", env = ENV_ALLOCATOR_ADDR, value_name = "HOST:PORT")]
    allocator_addr: Option<OsString>,

    /// Name the allocator's certificate must carry (a DNS name or an IP
    /// address).
    #[arg(long, env = ENV_SERVER_NAME, value_name = "NAME", default_value = DEFAULT_SERVER_NAME)]
    server_name: OsString,

    /// This worker's index in the allocation (required).
    #[arg(long, env = ENV_INDEX, value_name = "N")]
    index: Option<OsString>,

    /// Name of the variable holding this worker's index within a group
    /// launch, e.g. SLURM_PROCID, JOB_COMPLETION_INDEX, OMPI_COMM_WORLD_RANK
    /// or PMI_RANK (used when no index is given).
    #[arg(long, env = ENV_INDEX_FROM, value_name = "VAR")]
    index_from: Option<OsString>,

    /// Added to the index read from --index-from's variable (default 0).
    #[arg(long, env = ENV_INDEX_OFFSET, value_name = "N")]
    index_offset: Option<OsString>,

    /// Secret issued by the allocator for this index (required unless a
    /// group secret is given). Never on a command line: other users of the
    /// machine can read command lines (ps); give it in the variable or on
    /// standard input (--secrets-stdin).
    #[arg(long, env = ENV_TOKEN, value_name = "SECRET", hide_env_values = true)]
    token: Option<OsString>,

    /// Allocation secret of a group launch, from which this worker derives
    /// its token (variable or standard input only; never on a command line).
    #[arg(long, env = ENV_GROUP_SECRET, value_name = "SECRET", hide_env_values = true, hide = true)]
    group_secret: Option<OsString>,

    /// Read the settings as NAME=value lines (QUICMESH_* variables) from
    /// standard input, up to an empty line or the end of input; they win
    /// over the environment. How secrets cross ssh.
    #[arg(long, env = ENV_SECRETS_STDIN, value_name = "BOOL", num_args = 0..=1, default_missing_value = "1")]
    secrets_stdin: Option<OsString>,

    /// PEM file of the mesh CA (required).
    #[arg(long, env = ENV_CA, value_name = "PEM")]
    ca: Option<OsString>,

    /// PEM file of this worker's certificate (required).
    #[arg(long, env = ENV_CERT, value_name = "PEM")]
    cert: Option<OsString>,

    /// PEM file of this worker's private key (required).
    #[arg(long, env = ENV_KEY, value_name = "PEM")]
    key: Option<OsString>,

    /// How long to keep trying to join, e.g. 30s, 500ms, 2m or a number of
    /// seconds (default 60s).
    #[arg(long, env = ENV_JOIN_TIMEOUT, value_name = "DURATION")]
    join_timeout: Option<OsString>,

    /// Threads of the worker's async runtime, 1 to 1024 (default 2).
    #[arg(long, env = ENV_WORKER_THREADS, value_name = "N")]
    worker_threads: Option<OsString>,

    /// `split` (default): the connection and heartbeats on a thread of their
    /// own, out of reach of a blocked actor; `shared`: everything on the
    /// worker's runtime threads, quicker round trips, but a handler that
    /// blocks every thread silences the worker.
    #[arg(long, env = ENV_WORKER_RUNTIME, value_name = "split|shared")]
    worker_runtime: Option<OsString>,

    /// Link setting of the connection: `lan` (default), `wan`, or either
    /// with changes such as `wan,window=32MiB` (see the README).
    #[arg(long, env = ENV_LINK, value_name = "LINK")]
    link: Option<OsString>,

    /// Heartbeat interval this worker expects, e.g. 250ms (checked; the
    /// allocator's value, sent when it admits the worker, is the one used).
    #[arg(long, env = ENV_HEARTBEAT_INTERVAL, value_name = "DURATION")]
    heartbeat_interval: Option<OsString>,

    /// Heartbeat timeout this worker expects, e.g. 1500ms (checked; the
    /// allocator's value is the one used).
    #[arg(long, env = ENV_HEARTBEAT_TIMEOUT, value_name = "DURATION")]
    heartbeat_timeout: Option<OsString>,
}

/// The token is a secret: never printed, not even by `{:?}`.
impl fmt::Debug for WorkerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerSettings")
            .field("allocator_addr", &self.allocator_addr)
            .field("server_name", &self.server_name)
            .field("index", &self.index)
            .field("index_from", &self.index_from)
            .field("index_offset", &self.index_offset)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field(
                "group_secret",
                &self.group_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("secrets_stdin", &self.secrets_stdin)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("join_timeout", &self.join_timeout)
            .field("worker_threads", &self.worker_threads)
            .field("worker_runtime", &self.worker_runtime)
            .field("link", &self.link)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .finish()
    }
}

/// A worker's settings, checked: everything it needs to find and join its
/// allocator, and to run.
///
/// [`WorkerSettings::validate`] produces it from flags and variables; a
/// program that has the values some other way builds it directly and hands
/// it to [`run`](super::run).
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerEnv {
    /// `host:port` of the allocator.
    pub allocator_addr: String,
    /// Name the allocator's certificate must carry.
    pub server_name: String,
    /// This worker's index in the allocation.
    pub index: u32,
    /// Secret issued for this index.
    pub token: String,
    /// PEM path of the mesh CA.
    pub ca: PathBuf,
    /// PEM path of this worker's certificate.
    pub cert: PathBuf,
    /// PEM path of this worker's key.
    pub key: PathBuf,
    /// How long the worker keeps trying to join before it gives up (exit 69).
    pub join_timeout: Duration,
    /// Threads of the runtime that runs the worker's actors.
    pub worker_threads: usize,
    /// Whether the connection has a thread of its own (the default) or
    /// shares the actors' threads; see [`WorkerRuntime`]. Applies to a
    /// worker that owns its process (`run_and_exit`, `bootstrap_or_die`,
    /// `quicmesh worker`); [`run`](super::run) runs on the caller's runtime
    /// and ignores it.
    pub runtime: WorkerRuntime,
    /// The heartbeat settings this worker expects, if it was given any
    /// (a missing one of the two takes its default).
    ///
    /// The allocator's values, sent in the Welcome, are the ones used: the
    /// allocator judges every worker by its own setting, so a worker that
    /// beat at another pace would be declared dead, and both ends of a
    /// connection must judge silence alike. A worker whose values differ
    /// from the Welcome's says so in its log, naming both, so whoever set
    /// them by hand learns which apply. They are checked at start-up with
    /// the bounds an allocator applies (a bad value is exit 78).
    pub heartbeat: Option<HeartbeatConfig>,
    /// The link setting of this worker's connection (default `lan`): its
    /// receive windows and congestion controller, fixed when the connection
    /// is created (see [`LinkConfig`]).
    pub link: LinkConfig,
}

/// The token is a secret: never printed, not even by `{:?}`.
impl fmt::Debug for WorkerEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerEnv")
            .field("allocator_addr", &self.allocator_addr)
            .field("server_name", &self.server_name)
            .field("index", &self.index)
            .field("token", &"<hidden>")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("join_timeout", &self.join_timeout)
            .field("worker_threads", &self.worker_threads)
            .field("runtime", &self.runtime)
            .field("heartbeat", &self.heartbeat)
            .field("link", &self.link)
            .finish()
    }
}

/// A worker setting that is missing or unusable. Every variant names the
/// variable and the flag, since either may have supplied the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A required setting is given neither as a flag nor as a variable.
    #[error("{var} is not set and {flag} is not given")]
    Missing {
        /// The environment variable.
        var: &'static str,
        /// The flag.
        flag: &'static str,
    },
    /// A setting is given but empty (or only blanks). Its value is not
    /// repeated, as it may be the token.
    #[error("{var} (or {flag}) is empty")]
    Empty {
        /// The environment variable.
        var: &'static str,
        /// The flag.
        flag: &'static str,
    },
    /// A setting is given but its value cannot be used.
    #[error("invalid value {value:?} for {var} (or {flag}): {problem}")]
    Invalid {
        /// The environment variable.
        var: &'static str,
        /// The flag.
        flag: &'static str,
        /// The offending value (lossily converted if it is not UTF-8).
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The settings could not be collected at all (clap refused them).
    #[error("cannot read the worker settings: {0}")]
    Unreadable(String),
    /// The settings on standard input could not be used.
    #[error(transparent)]
    Stdin(#[from] super::secrets::SecretsError),
}

/// One setting: its variable and flag, for errors.
#[derive(Clone, Copy)]
struct Setting {
    var: &'static str,
    flag: &'static str,
}

const ALLOCATOR_ADDR: Setting = Setting {
    var: ENV_ALLOCATOR_ADDR,
    flag: "--allocator",
};
const SERVER_NAME: Setting = Setting {
    var: ENV_SERVER_NAME,
    flag: "--server-name",
};
const INDEX: Setting = Setting {
    var: ENV_INDEX,
    flag: "--index",
};
const TOKEN: Setting = Setting {
    var: ENV_TOKEN,
    flag: "--token",
};
const INDEX_FROM: Setting = Setting {
    var: ENV_INDEX_FROM,
    flag: "--index-from",
};
const INDEX_OFFSET: Setting = Setting {
    var: ENV_INDEX_OFFSET,
    flag: "--index-offset",
};
const GROUP_SECRET: Setting = Setting {
    var: ENV_GROUP_SECRET,
    flag: "--group-secret",
};
const SECRETS_STDIN: Setting = Setting {
    var: ENV_SECRETS_STDIN,
    flag: "--secrets-stdin",
};
const CA: Setting = Setting {
    var: ENV_CA,
    flag: "--ca",
};
const CERT: Setting = Setting {
    var: ENV_CERT,
    flag: "--cert",
};
const KEY: Setting = Setting {
    var: ENV_KEY,
    flag: "--key",
};
const JOIN_TIMEOUT: Setting = Setting {
    var: ENV_JOIN_TIMEOUT,
    flag: "--join-timeout",
};
const WORKER_THREADS: Setting = Setting {
    var: ENV_WORKER_THREADS,
    flag: "--worker-threads",
};
const WORKER_RUNTIME: Setting = Setting {
    var: ENV_WORKER_RUNTIME,
    flag: "--worker-runtime",
};
const LINK: Setting = Setting {
    var: ENV_LINK,
    flag: "--link",
};
const HEARTBEAT_INTERVAL: Setting = Setting {
    var: ENV_HEARTBEAT_INTERVAL,
    flag: "--heartbeat-interval",
};
const HEARTBEAT_TIMEOUT: Setting = Setting {
    var: ENV_HEARTBEAT_TIMEOUT,
    flag: "--heartbeat-timeout",
};

impl Setting {
    fn missing(self) -> SettingsError {
        SettingsError::Missing {
            var: self.var,
            flag: self.flag,
        }
    }

    fn invalid(self, value: &str, problem: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            var: self.var,
            flag: self.flag,
            value: value.to_owned(),
            problem: problem.into(),
        }
    }

    /// The value as text without surrounding blanks; empty or not UTF-8 is
    /// an error.
    fn text(self, value: &OsStr) -> Result<&str, SettingsError> {
        let text = value
            .to_str()
            .ok_or_else(|| self.invalid(&value.to_string_lossy(), "is not valid UTF-8"))?
            .trim();
        if text.is_empty() {
            return Err(SettingsError::Empty {
                var: self.var,
                flag: self.flag,
            });
        }
        Ok(text)
    }

    /// A required value as text, see [`Setting::text`].
    fn required(self, value: &Option<OsString>) -> Result<&str, SettingsError> {
        self.text(value.as_deref().ok_or_else(|| self.missing())?)
    }

    /// A required path. Paths need not be UTF-8; blanks around a UTF-8
    /// path are dropped (they are never meant).
    fn path(self, value: &Option<OsString>) -> Result<PathBuf, SettingsError> {
        let value = value.as_deref().ok_or_else(|| self.missing())?;
        if value.to_str().is_none() {
            return Ok(PathBuf::from(value));
        }
        Ok(PathBuf::from(self.text(value)?))
    }
}

impl WorkerSettings {
    /// The settings from the process environment alone (no flags), as
    /// [`bootstrap_or_die`](super::bootstrap_or_die) reads them.
    ///
    /// Only collects; [`WorkerSettings::validate`] checks. Errors with
    /// [`SettingsError::Unreadable`] if clap refuses the environment, which
    /// the settings' definitions leave no way for (kept so that it could
    /// never be a panic).
    pub fn from_env() -> Result<WorkerSettings, SettingsError> {
        let command = WorkerSettings::augment_args(
            clap::Command::new("quicmesh-worker").no_binary_name(true),
        );
        let matches = command
            .try_get_matches_from(std::iter::empty::<OsString>())
            .map_err(|e| SettingsError::Unreadable(e.to_string()))?;
        WorkerSettings::from_arg_matches(&matches)
            .map_err(|e| SettingsError::Unreadable(e.to_string()))
    }

    /// Checks every setting and returns them typed.
    ///
    /// Errors name the variable and the flag of the first setting that is
    /// [missing](SettingsError::Missing) (allocator address, index, token,
    /// CA, certificate and key are required), [empty](SettingsError::Empty)
    /// or [invalid](SettingsError::Invalid): an address that is not
    /// `host:port`, a server name that is neither a DNS name nor an IP
    /// address, an index that is not a `u32`, a join timeout that
    /// [`parse_duration`] refuses, a thread count outside 1 to 1024. Files
    /// are not read here: loading them names the file that is missing or
    /// wrong.
    pub fn validate(&self) -> Result<WorkerEnv, SettingsError> {
        self.validate_with(|name| std::env::var_os(name))
    }

    /// Whether the settings ask for more on standard input
    /// (`--secrets-stdin` or `QUICMESH_SECRETS_STDIN=1`).
    ///
    /// Errors: [`SettingsError::Invalid`] for a value other than `1`, `0`,
    /// `true` or `false`.
    pub fn wants_stdin(&self) -> Result<bool, SettingsError> {
        match &self.secrets_stdin {
            None => Ok(false),
            Some(value) => match SECRETS_STDIN.text(value)? {
                "1" | "true" => Ok(true),
                "0" | "false" => Ok(false),
                other => Err(SECRETS_STDIN.invalid(other, "expected 1 or 0")),
            },
        }
    }

    /// The join timeout as given so far (flag or variable; default
    /// [`DEFAULT_JOIN_TIMEOUT`]): how long settings on standard input may take.
    pub(crate) fn join_timeout_given(&self) -> Result<Duration, SettingsError> {
        match &self.join_timeout {
            None => Ok(DEFAULT_JOIN_TIMEOUT),
            Some(value) => {
                let text = JOIN_TIMEOUT.text(value)?;
                parse_duration(text).map_err(|problem| JOIN_TIMEOUT.invalid(text, problem))
            }
        }
    }

    /// Takes the `NAME=value` settings read from standard input (see the
    /// README, "Secrets delivery"); each wins over the flag or variable of
    /// the same setting.
    ///
    /// Errors: [`SettingsError::Invalid`] naming a variable that is no worker
    /// setting (its value is not repeated).
    pub fn apply_pairs(&mut self, pairs: Vec<(String, String)>) -> Result<(), SettingsError> {
        for (name, value) in pairs {
            let value = OsString::from(value);
            let field = match name.as_str() {
                ENV_ALLOCATOR_ADDR => &mut self.allocator_addr,
                ENV_SERVER_NAME => {
                    self.server_name = value;
                    continue;
                }
                ENV_INDEX => &mut self.index,
                ENV_INDEX_FROM => &mut self.index_from,
                ENV_INDEX_OFFSET => &mut self.index_offset,
                ENV_TOKEN => &mut self.token,
                ENV_GROUP_SECRET => &mut self.group_secret,
                ENV_CA => &mut self.ca,
                ENV_CERT => &mut self.cert,
                ENV_KEY => &mut self.key,
                ENV_JOIN_TIMEOUT => &mut self.join_timeout,
                ENV_WORKER_THREADS => &mut self.worker_threads,
                ENV_WORKER_RUNTIME => &mut self.worker_runtime,
                ENV_LINK => &mut self.link,
                ENV_HEARTBEAT_INTERVAL => &mut self.heartbeat_interval,
                ENV_HEARTBEAT_TIMEOUT => &mut self.heartbeat_timeout,
                ENV_SECRETS_STDIN => continue,
                _ => {
                    return Err(SettingsError::Invalid {
                        var: ENV_SECRETS_STDIN,
                        flag: "--secrets-stdin",
                        value: name,
                        problem: "is not a worker setting".into(),
                    })
                }
            };
            *field = Some(value);
        }
        Ok(())
    }

    /// The index: `--index`, else the variable `--index-from` names (read
    /// through `lookup`) plus `--index-offset`.
    fn index(&self, lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<u32, SettingsError> {
        if self.index.is_some() || self.index_from.is_none() {
            let index_text = INDEX.required(&self.index)?;
            return index_text.parse::<u32>().map_err(|e| {
                INDEX.invalid(index_text, format!("not a non-negative integer ({e})"))
            });
        }
        let var = INDEX_FROM.required(&self.index_from)?;
        let var_ok = !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !var_ok {
            return Err(INDEX_FROM.invalid(var, "not a variable name (A-Z, a-z, 0-9, _)"));
        }
        let Some(raw) = lookup(var) else {
            return Err(INDEX_FROM.invalid(
                var,
                format!("{var} is not set in this process's environment (is it started by the engine that sets {var}?)"),
            ));
        };
        let raw = raw.to_string_lossy();
        let base = raw.trim().parse::<u32>().map_err(|e| {
            INDEX_FROM.invalid(
                var,
                format!("{var}={raw:?} is not a non-negative integer ({e})"),
            )
        })?;
        let offset = match &self.index_offset {
            None => 0,
            Some(value) => {
                let text = INDEX_OFFSET.text(value)?;
                text.parse::<u32>().map_err(|e| {
                    INDEX_OFFSET.invalid(text, format!("not a non-negative integer ({e})"))
                })?
            }
        };
        base.checked_add(offset).ok_or_else(|| {
            INDEX_OFFSET.invalid(
                &offset.to_string(),
                format!("{var} ({base}) plus the offset is beyond {}", u32::MAX),
            )
        })
    }

    /// [`WorkerSettings::validate`], reading the variable `--index-from`
    /// names through `lookup`.
    pub(crate) fn validate_with(
        &self,
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<WorkerEnv, SettingsError> {
        let allocator_addr = ALLOCATOR_ADDR.required(&self.allocator_addr)?;
        if split_host_port(allocator_addr).is_none() {
            return Err(ALLOCATOR_ADDR.invalid(
                allocator_addr,
                "expected host:port, e.g. 127.0.0.1:4433 or [::1]:4433",
            ));
        }
        let server_name = SERVER_NAME.text(&self.server_name)?;
        if rustls_pki_types::ServerName::try_from(server_name).is_err() {
            return Err(SERVER_NAME.invalid(server_name, "not a valid DNS name or IP address"));
        }
        let index = self.index(&lookup)?;
        let token = match (&self.token, &self.group_secret) {
            (None, Some(secret)) => {
                crate::join_token::derive_token(GROUP_SECRET.text(secret)?, index)
            }
            (token, _) => TOKEN.required(token)?.to_owned(),
        };
        let ca = CA.path(&self.ca)?;
        let cert = CERT.path(&self.cert)?;
        let key = KEY.path(&self.key)?;
        let join_timeout = match &self.join_timeout {
            None => DEFAULT_JOIN_TIMEOUT,
            Some(value) => {
                let text = JOIN_TIMEOUT.text(value)?;
                parse_duration(text).map_err(|problem| JOIN_TIMEOUT.invalid(text, problem))?
            }
        };
        let worker_threads = match &self.worker_threads {
            None => DEFAULT_WORKER_THREADS,
            Some(value) => {
                let text = WORKER_THREADS.text(value)?;
                let problem =
                    || format!("expected a number of threads from 1 to {MAX_WORKER_THREADS}");
                let n = text
                    .parse::<usize>()
                    .map_err(|_| WORKER_THREADS.invalid(text, problem()))?;
                if !(1..=MAX_WORKER_THREADS).contains(&n) {
                    return Err(WORKER_THREADS.invalid(text, problem()));
                }
                n
            }
        };
        let runtime = match &self.worker_runtime {
            None => WorkerRuntime::default(),
            Some(value) => {
                let text = WORKER_RUNTIME.text(value)?;
                text.parse()
                    .map_err(|problem| WORKER_RUNTIME.invalid(text, problem))?
            }
        };
        let link = match &self.link {
            None => LinkConfig::default(),
            Some(value) => {
                let text = LINK.text(value)?;
                text.parse()
                    .map_err(|problem| LINK.invalid(text, problem))?
            }
        };
        let heartbeat = self.heartbeat()?;
        Ok(WorkerEnv {
            allocator_addr: allocator_addr.to_owned(),
            server_name: server_name.to_owned(),
            index,
            token,
            ca,
            cert,
            key,
            join_timeout,
            worker_threads,
            runtime,
            heartbeat,
            link,
        })
    }

    /// The heartbeat settings given: `None` if neither is, else both (a
    /// missing one takes its default), checked as an allocator checks its own.
    fn heartbeat(&self) -> Result<Option<HeartbeatConfig>, SettingsError> {
        let read = |setting: Setting, value: &Option<OsString>| match value {
            None => Ok(None),
            Some(value) => {
                let text = setting.text(value)?;
                parse_duration(text)
                    .map(Some)
                    .map_err(|problem| setting.invalid(text, problem))
            }
        };
        let interval = read(HEARTBEAT_INTERVAL, &self.heartbeat_interval)?;
        let timeout = read(HEARTBEAT_TIMEOUT, &self.heartbeat_timeout)?;
        if interval.is_none() && timeout.is_none() {
            return Ok(None);
        }
        let defaults = HeartbeatConfig::default();
        let heartbeat = HeartbeatConfig {
            interval: interval.unwrap_or(defaults.interval),
            timeout: timeout.unwrap_or(defaults.timeout),
        };
        heartbeat.validate().map_err(|e| match e {
            // Name the setting given, with the bound it breaks.
            ConfigError::Invalid { name, problem, .. } => {
                let (setting, value) = if name == "heartbeat interval" {
                    (HEARTBEAT_INTERVAL, heartbeat.interval)
                } else {
                    (HEARTBEAT_TIMEOUT, heartbeat.timeout)
                };
                setting.invalid(&format!("{value:?}"), problem)
            }
            other => SettingsError::Unreadable(other.to_string()),
        })?;
        Ok(Some(heartbeat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A command with only the worker settings, reading flags and never the
    /// process environment (so that the tests do not depend on it).
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        settings: WorkerSettings,
    }

    fn parse<S: AsRef<str>>(args: &[S]) -> WorkerSettings {
        let command = <Cli as clap::CommandFactory>::command()
            .no_binary_name(true)
            .mut_args(|arg| arg.env(None));
        let matches = command
            .try_get_matches_from(args.iter().map(AsRef::as_ref))
            .expect("flags parse");
        Cli::from_arg_matches(&matches).expect("settings").settings
    }

    const FULL: [&str; 12] = [
        "--allocator",
        "127.0.0.1:4433",
        "--index",
        "3",
        "--token",
        "secret",
        "--ca",
        "certs/ca.pem",
        "--cert",
        "certs/worker.pem",
        "--key",
        "certs/worker.key",
    ];

    /// [`FULL`] plus `extra` (a later flag of the same name is refused by
    /// clap, so `extra` replaces the pair it names).
    fn full_with(extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let replaced: Vec<&str> = extra.iter().step_by(2).copied().collect();
        for pair in FULL.chunks(2) {
            if !replaced.contains(&pair[0]) {
                args.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        // `--flag=value`, so that a value starting with `-` is one.
        args.extend(extra.chunks(2).map(|pair| pair.join("=")));
        args
    }

    fn validate(args: &[String]) -> Result<WorkerEnv, SettingsError> {
        parse(args).validate()
    }

    #[test]
    fn complete_settings_validate_with_defaults() {
        let env = validate(&full_with(&[])).expect("valid");
        assert_eq!(env.allocator_addr, "127.0.0.1:4433");
        assert_eq!(env.server_name, DEFAULT_SERVER_NAME);
        assert_eq!(env.server_name, "localhost");
        assert_eq!(env.index, 3);
        assert_eq!(env.token, "secret");
        assert_eq!(env.ca, PathBuf::from("certs/ca.pem"));
        assert_eq!(env.cert, PathBuf::from("certs/worker.pem"));
        assert_eq!(env.key, PathBuf::from("certs/worker.key"));
        assert_eq!(env.join_timeout, DEFAULT_JOIN_TIMEOUT);
        assert_eq!(env.worker_threads, DEFAULT_WORKER_THREADS);
        assert_eq!(env.runtime, WorkerRuntime::Split);

        let env = validate(&full_with(&[
            "--worker-runtime",
            " shared ",
            "--server-name",
            "mesh.example",
            "--join-timeout",
            "2500ms",
            "--worker-threads",
            "4",
            "--allocator",
            " [::1]:9 ",
        ]))
        .expect("valid");
        assert_eq!(env.server_name, "mesh.example");
        assert_eq!(env.join_timeout, Duration::from_millis(2500));
        assert_eq!(env.worker_threads, 4);
        assert_eq!(env.runtime, WorkerRuntime::Shared);
        assert_eq!(env.allocator_addr, "[::1]:9", "blanks are trimmed");
    }

    #[test]
    fn each_missing_setting_names_variable_and_flag() {
        for (setting, flag) in [
            (ALLOCATOR_ADDR, "--allocator"),
            (INDEX, "--index"),
            (TOKEN, "--token"),
            (CA, "--ca"),
            (CERT, "--cert"),
            (KEY, "--key"),
        ] {
            let args: Vec<String> = FULL
                .chunks(2)
                .filter(|pair| pair[0] != flag)
                .flatten()
                .map(|s| s.to_string())
                .collect();
            let err = validate(&args).expect_err(flag);
            assert_eq!(err, setting.missing());
            let text = err.to_string();
            assert!(text.contains(setting.var) && text.contains(flag), "{text}");
        }
    }

    #[test]
    fn each_invalid_value_names_variable_and_flag() {
        for (flag, value, var) in [
            ("--allocator", "nowhere", ENV_ALLOCATOR_ADDR),
            ("--allocator", "::1:80", ENV_ALLOCATOR_ADDR),
            ("--allocator", "host:99999", ENV_ALLOCATOR_ADDR),
            ("--server-name", "bad name!", ENV_SERVER_NAME),
            ("--index", "-1", ENV_INDEX),
            ("--index", "three", ENV_INDEX),
            ("--index", "4294967296", ENV_INDEX),
            ("--join-timeout", "soon", ENV_JOIN_TIMEOUT),
            ("--join-timeout", "0", ENV_JOIN_TIMEOUT),
            ("--join-timeout", "1h", ENV_JOIN_TIMEOUT),
            ("--worker-threads", "0", ENV_WORKER_THREADS),
            ("--worker-threads", "1025", ENV_WORKER_THREADS),
            ("--worker-threads", "two", ENV_WORKER_THREADS),
            ("--worker-runtime", "both", ENV_WORKER_RUNTIME),
            ("--worker-runtime", "Shared", ENV_WORKER_RUNTIME),
        ] {
            let err = validate(&full_with(&[flag, value])).expect_err(value);
            assert!(
                matches!(&err, SettingsError::Invalid { var: v, flag: f, value: got, .. }
                    if *v == var && *f == flag && got == value),
                "{flag} {value}: {err:?}"
            );
            let text = err.to_string();
            assert!(text.contains(var) && text.contains(flag), "{text}");
            assert!(text.contains(value), "{text}");
        }
    }

    #[test]
    fn empty_values_are_refused_without_echoing_them() {
        for (setting, flag) in [
            (ALLOCATOR_ADDR, "--allocator"),
            (SERVER_NAME, "--server-name"),
            (INDEX, "--index"),
            (TOKEN, "--token"),
            (CA, "--ca"),
            (CERT, "--cert"),
            (KEY, "--key"),
            (JOIN_TIMEOUT, "--join-timeout"),
            (WORKER_THREADS, "--worker-threads"),
            (WORKER_RUNTIME, "--worker-runtime"),
        ] {
            for blank in ["", "   "] {
                let err = validate(&full_with(&[flag, blank])).expect_err(flag);
                assert_eq!(
                    err,
                    SettingsError::Empty {
                        var: setting.var,
                        flag
                    }
                );
                assert_eq!(
                    err.to_string(),
                    format!("{} (or {flag}) is empty", setting.var)
                );
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_are_named() {
        use std::os::unix::ffi::OsStringExt;
        let mut settings = parse(&FULL);
        settings.index = Some(OsString::from_vec(vec![b'3', 0xff]));
        let err = settings.validate().expect_err("not UTF-8");
        assert!(
            matches!(&err, SettingsError::Invalid { var: ENV_INDEX, problem, .. }
                if problem.contains("UTF-8")),
            "{err:?}"
        );
        // A path need not be UTF-8.
        let mut settings = parse(&FULL);
        settings.ca = Some(OsString::from_vec(vec![b'c', 0xff]));
        let env = settings.validate().expect("non-UTF-8 path");
        assert_eq!(env.ca.as_os_str().len(), 2);
    }

    /// FULL without the index and the token.
    fn group_args(extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = FULL
            .chunks(2)
            .filter(|pair| pair[0] != "--index" && pair[0] != "--token")
            .flatten()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.chunks(2).map(|pair| pair.join("=")));
        args
    }

    fn lookup(var: &'static str, value: &'static str) -> impl Fn(&str) -> Option<OsString> {
        move |name| (name == var).then(|| OsString::from(value))
    }

    #[test]
    fn a_group_worker_takes_its_index_from_the_engine_and_derives_its_token() {
        let mut settings = parse(&group_args(&[
            "--index-from",
            "SLURM_PROCID",
            "--index-offset",
            "10",
        ]));
        settings.group_secret = Some("example-secret".into());
        let env = settings
            .validate_with(lookup("SLURM_PROCID", "3"))
            .expect("valid");
        assert_eq!(env.index, 13);
        assert_eq!(
            env.token,
            crate::join_token::derive_token("example-secret", 13)
        );
        // No offset: the engine's index as it is.
        let mut settings = parse(&group_args(&["--index-from", "JOB_COMPLETION_INDEX"]));
        settings.group_secret = Some("s".into());
        let env = settings
            .validate_with(lookup("JOB_COMPLETION_INDEX", " 0 "))
            .expect("valid");
        assert_eq!(env.index, 0);
        // An index given outright wins over the variable; a token over the secret.
        let mut settings = parse(&full_with(&["--index-from", "PMI_RANK"]));
        settings.group_secret = Some("s".into());
        let env = settings
            .validate_with(lookup("PMI_RANK", "5"))
            .expect("valid");
        assert_eq!((env.index, env.token.as_str()), (3, "secret"));
    }

    #[test]
    fn a_bad_engine_index_is_named() {
        let settings = {
            let mut s = parse(&group_args(&["--index-from", "SLURM_PROCID"]));
            s.group_secret = Some("s".into());
            s
        };
        for (value, says) in [
            ("x", "not a non-negative integer"),
            ("-1", "not a non-negative"),
        ] {
            let leaked: &'static str = Box::leak(value.to_string().into_boxed_str());
            let err = settings
                .validate_with(lookup("SLURM_PROCID", leaked))
                .expect_err(value);
            let text = err.to_string();
            assert!(
                text.contains("SLURM_PROCID") && text.contains(says),
                "{text}"
            );
            assert!(text.contains(ENV_INDEX_FROM), "{text}");
        }
        let err = settings.validate_with(|_| None).expect_err("unset");
        assert!(err.to_string().contains("SLURM_PROCID is not set"), "{err}");
        let mut bad_name = settings.clone();
        bad_name.index_from = Some("NOT-A-NAME".into());
        assert!(bad_name.validate_with(|_| None).is_err());
        let mut overflow = settings.clone();
        overflow.index_offset = Some("4294967295".into());
        let err = overflow
            .validate_with(lookup("SLURM_PROCID", "1"))
            .expect_err("overflow");
        assert!(err.to_string().contains(ENV_INDEX_OFFSET), "{err}");
        // Neither token nor secret: the token is missing.
        let mut no_secret = settings.clone();
        no_secret.group_secret = None;
        let err = no_secret
            .validate_with(lookup("SLURM_PROCID", "1"))
            .expect_err("no token");
        assert_eq!(err, TOKEN.missing());
    }

    #[test]
    fn settings_from_stdin_win_and_unknown_names_are_refused() {
        let mut settings = parse(&full_with(&[]));
        settings
            .apply_pairs(vec![
                (ENV_TOKEN.into(), "from-stdin".into()),
                (ENV_INDEX.into(), "9".into()),
                (ENV_SERVER_NAME.into(), "mesh.example".into()),
                (ENV_SECRETS_STDIN.into(), "1".into()),
            ])
            .expect("known names");
        let env = settings.validate().expect("valid");
        assert_eq!(env.token, "from-stdin");
        assert_eq!(env.index, 9);
        assert_eq!(env.server_name, "mesh.example");
        let err = settings
            .apply_pairs(vec![("QUICMESH_NOPE".into(), "hunter2".into())])
            .expect_err("unknown");
        let text = err.to_string();
        assert!(
            text.contains("QUICMESH_NOPE") && !text.contains("hunter2"),
            "{text}"
        );
        assert!(!parse(&full_with(&[])).wants_stdin().expect("unset"));
        assert!(parse(&full_with(&["--secrets-stdin", "1"]))
            .wants_stdin()
            .expect("1"));
        assert!(parse(&full_with(&["--secrets-stdin", "maybe"]))
            .wants_stdin()
            .is_err());
    }

    #[test]
    fn the_token_is_never_printed() {
        let settings = parse(&full_with(&["--token", "hunter2-secret"]));
        assert!(!format!("{settings:?}").contains("hunter2"));
        let env = settings.validate().expect("valid");
        assert_eq!(env.token, "hunter2-secret");
        assert!(!format!("{env:?}").contains("hunter2"));
    }

    #[test]
    fn help_names_every_variable_and_hides_the_token() {
        let mut command = <Cli as clap::CommandFactory>::command();
        let help = command.render_long_help().to_string();
        for var in [
            ENV_ALLOCATOR_ADDR,
            ENV_SERVER_NAME,
            ENV_INDEX,
            ENV_TOKEN,
            ENV_CA,
            ENV_CERT,
            ENV_KEY,
            ENV_JOIN_TIMEOUT,
            ENV_WORKER_THREADS,
        ] {
            assert!(help.contains(&format!("[env: {var}")), "{var}:\n{help}");
        }
        // The defaults the help states are the ones applied.
        assert!(
            help.contains(&format!("[default: {DEFAULT_SERVER_NAME}]")),
            "{help}"
        );
        assert!(
            help.contains(&format!("(default {}s)", DEFAULT_JOIN_TIMEOUT.as_secs())),
            "{help}"
        );
        assert!(
            help.contains(&format!("(default {DEFAULT_WORKER_THREADS})")),
            "{help}"
        );
        assert!(
            help.contains(&format!("1 to {MAX_WORKER_THREADS}")),
            "{help}"
        );
    }
}
