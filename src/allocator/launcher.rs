//! Starting worker processes: local children or any command template.
//!
//! A [`Launcher`] is a program and its arguments. Arguments may contain
//! placeholders that are filled in per launch: `{index}` (per-worker form
//! only), `{n}` (group form only: the number of workers), `{addr}`,
//! `{server_name}`, `{ca}`, `{cert}` and `{key}`. No placeholder expands to
//! a secret: a command line is readable by every user of the machine (`ps`)
//! for the process's whole life, so `{token}` and `{env}` are refused when a
//! launch starts. The child gets its variables (docs/design.md §6.1) in its
//! environment, or on its standard input ([`Launcher::secrets_stdin`]),
//! which is how they cross `ssh`.
//!
//! The per-worker form ([`Launcher::program`]) starts one process per
//! worker. The group form ([`Launcher::group`]) starts one command for N
//! workers, e.g. `srun -n {n} ...`: every copy it starts reads its index
//! from the engine's variable ([`Launcher::index_from`]) and derives its
//! token from the group's allocation secret.
//!
//! Children are tied to the allocator: they are killed when the allocator
//! is dropped, and on Linux they get a parent-death signal so that even a
//! SIGKILLed allocator leaves no orphan. Every line a child prints on stdout
//! or stderr until its log stream is up is passed through, prefixed with
//! `[worker N]` (`[workers A-B]` for a group), each line whole in one
//! write. Each child has a supervisor task ([`supervise`]) that reaps it,
//! kills it when its worker is lost and does not exit by itself, and
//! reports how it ended.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::events::AllocEvent;
use super::session::WorkerCommand;
use super::shared::{ChildSlot, GroupSlot, Shared};
use crate::reason::ExitReport;
use crate::sync::lock;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::line_cut::{cut_bytes, MAX_LINE};

/// How a launched worker gets its variables (docs/design.md §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SecretsDelivery {
    /// In the child's environment (the default): private to the user, and
    /// forwarded by `srun` (its default `--export=ALL`).
    #[default]
    Environment,
    /// On the child's standard input, as `NAME=value` lines ended by an
    /// empty line; the child's environment gets only
    /// `QUICMESH_SECRETS_STDIN=1`. Crosses `ssh` with no server
    /// configuration; the remote command must read them (`quicmesh worker
    /// --secrets-stdin`, or `env QUICMESH_SECRETS_STDIN=1 program` for a
    /// program calling [`crate::bootstrap_or_die`]).
    Stdin,
}

/// How to start a worker process, or a group of them.
#[derive(Debug, Clone)]
pub struct Launcher {
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    delivery: SecretsDelivery,
    group: bool,
    index_from: Option<String>,
    remote: bool,
}

/// Placeholders that would put a secret into a command line, and what to
/// use instead.
const SECRET_PLACEHOLDERS: [(&str, &str); 3] = [
    (
        "{token}",
        "the token reaches the worker in its environment, or on its standard input with Launcher::secrets_stdin (quicmesh worker --secrets-stdin)",
    ),
    (
        "{env}",
        "for ssh, deliver the variables on standard input with Launcher::secrets_stdin and run `quicmesh worker --secrets-stdin` (or `env QUICMESH_SECRETS_STDIN=1 PROGRAM`) on the remote host",
    ),
    (
        "{group_secret}",
        "the group secret reaches the workers in their environment (srun forwards it) or on standard input",
    ),
];

impl Launcher {
    /// Re-runs the current executable as worker (its `main` must call
    /// [`crate::bootstrap_or_die`] first).
    ///
    /// Errors: the current executable cannot be determined.
    pub fn current_exe() -> std::io::Result<Launcher> {
        Ok(Launcher::program(std::env::current_exe()?))
    }

    /// Runs `program` once per worker, with no arguments so far.
    pub fn program(program: impl Into<PathBuf>) -> Launcher {
        Launcher {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            delivery: SecretsDelivery::Environment,
            group: false,
            index_from: None,
            remote: false,
        }
    }

    /// Runs `program` once for a whole group of workers (see
    /// [`Allocator::launch_group`](super::Allocator::launch_group)): e.g.
    /// `Launcher::group("srun").args(["-n", "{n}", "--overcommit",
    /// "quicmesh", "worker"]).index_from("SLURM_PROCID")`. Its workers are
    /// told the address for other hosts, as with [`Launcher::remote`].
    pub fn group(program: impl Into<PathBuf>) -> Launcher {
        Launcher {
            group: true,
            remote: true,
            ..Launcher::program(program)
        }
    }

    /// Adds an argument (placeholders allowed).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments (placeholders allowed).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an extra environment variable for every worker (not a secret's
    /// place for a command such as `ssh`, which does not forward it).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Delivers the variables on the child's standard input instead of its
    /// environment (see [`SecretsDelivery::Stdin`]).
    pub fn secrets_stdin(mut self) -> Self {
        self.delivery = SecretsDelivery::Stdin;
        self
    }

    /// Chooses how the variables reach the child.
    pub fn delivery(mut self, delivery: SecretsDelivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Group form: the variable in which the engine gives each copy its
    /// index, e.g. `SLURM_PROCID`, `JOB_COMPLETION_INDEX`,
    /// `OMPI_COMM_WORLD_RANK`, `PMI_RANK` ([`crate::config::ENGINE_INDEX_VARS`]).
    pub fn index_from(mut self, var: impl Into<String>) -> Self {
        self.index_from = Some(var.into());
        self
    }

    /// The workers run on other hosts (e.g. through `ssh`): when the
    /// allocator listens on an unspecified address they are told its
    /// address for other hosts rather than loopback (see
    /// [`AllocatorConfig::advertise`](super::AllocatorConfig::advertise)).
    pub fn remote(mut self) -> Self {
        self.remote = true;
        self
    }

    pub(crate) fn is_group(&self) -> bool {
        self.group
    }

    pub(crate) fn is_remote(&self) -> bool {
        self.remote
    }

    pub(crate) fn index_var(&self) -> Option<&str> {
        self.index_from.as_deref()
    }

    /// Checks the template before anything is started: no placeholder that
    /// expands to a secret, `{index}` only in the per-worker form, `{n}` only
    /// in the group form, and a group names its index variable. The error
    /// says what to use instead.
    pub(crate) fn check(&self) -> Result<(), String> {
        for arg in &self.args {
            for (placeholder, instead) in SECRET_PLACEHOLDERS {
                if arg.contains(placeholder) {
                    return Err(format!(
                        "the placeholder {placeholder} in argument {arg:?} would put a secret on a command line, which every user of the machine can read (ps); {instead}"
                    ));
                }
            }
            if self.group && arg.contains("{index}") {
                return Err(format!(
                    "argument {arg:?}: a group launch runs one command for every worker, so there is no {{index}}; each copy reads its index from the engine's variable (Launcher::index_from)"
                ));
            }
            if !self.group && arg.contains("{n}") {
                return Err(format!(
                    "argument {arg:?}: {{n}} is the worker count of a group launch (Launcher::group)"
                ));
            }
        }
        if self.group && self.index_from.is_none() {
            return Err("a group launch needs the variable that gives each copy its index, e.g. Launcher::index_from(\"SLURM_PROCID\")".into());
        }
        Ok(())
    }

    /// The argument list, placeholders filled from `vars`; `number` is the
    /// worker's index (per-worker form) or the worker count (group form).
    pub(crate) fn expand_args(&self, number: u32, vars: &[(&'static str, String)]) -> Vec<String> {
        let get = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let count_placeholder = if self.group { "{n}" } else { "{index}" };
        self.args
            .iter()
            .map(|arg| {
                arg.replace(count_placeholder, &number.to_string())
                    .replace("{addr}", &get(crate::config::ENV_ALLOCATOR_ADDR))
                    .replace("{server_name}", &get(crate::config::ENV_SERVER_NAME))
                    .replace("{ca}", &get(crate::config::ENV_CA))
                    .replace("{cert}", &get(crate::config::ENV_CERT))
                    .replace("{key}", &get(crate::config::ENV_KEY))
            })
            .collect()
    }

    /// What is written to the child's standard input with
    /// [`SecretsDelivery::Stdin`]: one `NAME=value` line per variable and an
    /// empty line.
    pub(crate) fn stdin_text(vars: &[(&'static str, String)]) -> String {
        let mut text: String = vars.iter().map(|(n, v)| format!("{n}={v}\n")).collect();
        text.push('\n');
        text
    }

    /// Starts one child with the given variables (docs/design.md §6.1):
    /// one worker (`number` its index) or a group (`number` its size);
    /// `label` prefixes its output lines.
    pub(crate) fn spawn(
        &self,
        number: u32,
        label: String,
        vars: &[(&'static str, String)],
    ) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(self.expand_args(number, vars));
        match self.delivery {
            SecretsDelivery::Environment => {
                cmd.envs(
                    vars.iter()
                        .map(|(n, v)| (OsString::from(n), OsString::from(v))),
                )
                .stdin(Stdio::null());
            }
            SecretsDelivery::Stdin => {
                cmd.env(crate::config::ENV_SECRETS_STDIN, "1")
                    .stdin(Stdio::piped());
            }
        }
        cmd.envs(self.envs.iter().map(|(n, v)| (n, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            let text = Self::stdin_text(vars);
            // Written and closed at once: the worker reads up to the empty
            // line. A child that never reads makes the write fail or wait;
            // it then fails to join and is reported as any such worker.
            tokio::spawn(async move {
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let label: Arc<str> = label.into();
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pass_through(out, label.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pass_through(err, label, true));
        }
        Ok(child)
    }
}

/// How long a reaped worker's exit waits for its session to end: the
/// session may be draining the streams of a worker that said `Leaving`
/// (for up to the stop timeout) before it reports its procs stopped; past
/// that, ending takes one pass of its loop, and the margin only guards
/// against a session that is stuck.
fn session_end_limit(shared: &Shared) -> Duration {
    shared.config.transport.stop_timeout + Duration::from_secs(10)
}

/// Takes charge of launched worker `index`: records its pid, SIGKILLs it
/// when asked (after the grace period the request carries, so a worker that
/// is merely cut off can still exit with its own code), reaps it, fails its
/// procs at once (its connection is dead too) and then reports how it
/// ended: `WorkerExited` comes after the final state of each of its procs.
pub(crate) fn supervise(
    shared: Arc<Shared>,
    index: u32,
    mut child: tokio::process::Child,
) -> JoinHandle<()> {
    let (kill, mut kill_requests) = mpsc::unbounded_channel::<Duration>();
    lock(&shared.children).insert(
        index,
        ChildSlot {
            pid: child.id(),
            kill,
        },
    );
    tokio::spawn(async move {
        let status = tokio::select! {
            status = child.wait() => status,
            Some(grace) = kill_requests.recv() => tokio::select! {
                status = child.wait() => status,
                _ = tokio::time::sleep(grace) => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            },
        };
        if let Some(slot) = lock(&shared.children).get_mut(&index) {
            slot.pid = None;
        }
        let status = ExitReport::from(status);
        // Its connection is dead too: fail its procs now rather than after
        // the heartbeat timeout, and report the exit after them.
        shared.command(index, WorkerCommand::ProcessExited(status));
        shared.until_left(index, session_end_limit(&shared)).await;
        shared.emit(AllocEvent::WorkerExited { index, status });
    })
}

/// Takes charge of the one command started for the workers `indexes`:
/// records its pid (killed with the allocator), reaps it, and then reports
/// every worker of the group exited with its status. A worker still
/// connected has its procs failed at once (its process is gone with the
/// command); an index that never joined is closed, so that a late copy
/// cannot join, and named in the log.
pub(crate) fn supervise_group(
    shared: Arc<Shared>,
    indexes: Vec<u32>,
    mut child: tokio::process::Child,
) -> JoinHandle<()> {
    let slot = {
        let mut groups = lock(&shared.groups);
        groups.push(GroupSlot {
            indexes: indexes.clone(),
            pid: child.id(),
        });
        groups.len() - 1
    };
    tokio::spawn(async move {
        let status = ExitReport::from(child.wait().await);
        if let Some(group) = lock(&shared.groups).get_mut(slot) {
            group.pid = None;
        }
        let never_joined: Vec<u32> = {
            let mut admission = shared.lock_admission();
            let waiting: Vec<u32> = indexes
                .iter()
                .copied()
                .filter(|i| admission.is_waiting(*i))
                .collect();
            for index in &waiting {
                admission.finish(*index);
            }
            waiting
        };
        if !never_joined.is_empty() {
            tracing::warn!(
                "group command of workers {indexes:?} {status}; workers {never_joined:?} never joined"
            );
        }
        for &index in &indexes {
            shared.command(index, WorkerCommand::ProcessExited(status));
        }
        // All at once: one deadline for the whole group.
        let limit = session_end_limit(&shared);
        futures::future::join_all(indexes.iter().map(|&i| shared.until_left(i, limit))).await;
        for index in indexes {
            shared.emit(AllocEvent::WorkerExited { index, status });
        }
    })
}

/// Asks Linux to SIGKILL the child when the thread that spawned it dies.
///
/// Also exits at once if the parent died before the signal was armed. The
/// death signal fires when the spawning *thread* exits: spawn from a
/// long-lived runtime thread (any tokio worker or the main thread), not from
/// a short-lived blocking-pool thread.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only
    // calls async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(crate::exit_code::CONNECTION_LOST);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut tokio::process::Command) {}

/// Copies a child's output line by line, prefixed with `[label]`.
///
/// Each line leaves whole, prefix and line end included, in one write on
/// the locked handle, so lines of several children and of the controller
/// never interleave. A line longer than [`MAX_LINE`] is cut with a marker
/// and the rest of it skipped: nothing is buffered without bound. Once the
/// child's log stream is up its output goes there instead (see
/// `worker/log_forward.rs`), so this only carries what it prints before
/// (and after) that, and no line arrives twice.
async fn pass_through(stream: impl AsyncRead + Unpin, label: Arc<str>, is_stderr: bool) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") && line.len() > MAX_LINE && !skip_rest_of_line(&mut reader).await
        {
            // The stream ended inside the skipped part: print what was kept.
            write_line(&label, is_stderr, &line);
            return;
        }
        write_line(&label, is_stderr, &line);
    }
}

/// Reads and forgets up to the end of the current line; false at the end of the stream.
async fn skip_rest_of_line(reader: &mut (impl AsyncBufReadExt + Unpin)) -> bool {
    let mut rest = Vec::new();
    loop {
        rest.clear();
        match reader.take(64 * 1024).read_until(b'\n', &mut rest).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if rest.ends_with(b"\n") => return true,
            Ok(_) => {}
        }
    }
}

/// Writes `[worker N] text` and its newline in one write.
fn write_line(label: &str, is_stderr: bool, raw: &[u8]) {
    let line = format!("[{label}] {}\n", cut_bytes(raw, MAX_LINE));
    let _ = if is_stderr {
        std::io::stderr().lock().write_all(line.as_bytes())
    } else {
        std::io::stdout().lock().write_all(line.as_bytes())
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(&'static str, String)> {
        vec![
            (crate::config::ENV_ALLOCATOR_ADDR, "10.0.0.1:9".to_string()),
            (crate::config::ENV_TOKEN, "abc".to_string()),
            (crate::config::ENV_CA, "/c/ca.pem".to_string()),
        ]
    }

    #[test]
    fn placeholders_are_filled_without_secrets() {
        let l = Launcher::program("ssh").args(["node{index}", "quicmesh", "worker", "--ca={ca}"]);
        assert_eq!(l.check(), Ok(()));
        assert_eq!(
            l.expand_args(4, &vars()),
            vec!["node4", "quicmesh", "worker", "--ca=/c/ca.pem"]
        );
        let g = Launcher::group("srun")
            .args(["-n", "{n}", "--overcommit", "w", "{addr}"])
            .index_from("SLURM_PROCID");
        assert_eq!(g.check(), Ok(()));
        assert_eq!(
            g.expand_args(8, &vars()),
            vec!["-n", "8", "--overcommit", "w", "10.0.0.1:9"]
        );
    }

    #[test]
    fn secret_placeholders_are_refused_with_what_to_use_instead() {
        for (arg, says) in [
            ("--token={token}", "secrets_stdin"),
            ("{env}", "--secrets-stdin"),
            ("x{group_secret}", "environment"),
        ] {
            for launcher in [
                Launcher::program("ssh").args(["host", arg]),
                Launcher::group("srun").index_from("SLURM_PROCID").arg(arg),
            ] {
                let err = launcher.check().expect_err(arg);
                assert!(err.contains(arg) && err.contains("command line"), "{err}");
                assert!(err.contains(says), "{err}");
            }
        }
    }

    #[test]
    fn index_and_count_belong_to_their_form() {
        let err = Launcher::group("srun")
            .index_from("SLURM_PROCID")
            .arg("node{index}")
            .check()
            .expect_err("{index} in a group");
        assert!(err.contains("index_from"), "{err}");
        let err = Launcher::program("w")
            .arg("-n{n}")
            .check()
            .expect_err("{n}");
        assert!(err.contains("Launcher::group"), "{err}");
        let err = Launcher::group("srun")
            .check()
            .expect_err("no index variable");
        assert!(err.contains("SLURM_PROCID"), "{err}");
    }

    #[test]
    fn stdin_text_is_lines_then_an_empty_line() {
        assert_eq!(
            Launcher::stdin_text(&vars()),
            "QUICMESH_ALLOCATOR_ADDR=10.0.0.1:9\nQUICMESH_TOKEN=abc\nQUICMESH_CA=/c/ca.pem\n\n"
        );
    }
}
