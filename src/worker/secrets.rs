//! Settings on standard input, and the environment scrubbed after reading.
//!
//! A command line is readable by every user of the machine (`ps`,
//! `/proc/PID/cmdline`), for the process's whole life: no secret may travel
//! there. The environment of a local child is private to its user, but it
//! does not cross `ssh` without server configuration (`AcceptEnv`), which a
//! user launching workers usually cannot change. Standard input crosses
//! `ssh` as it is. So a launcher may write a worker's settings to its
//! standard input: `NAME=value` lines, one per `QUICMESH_*` variable, ended
//! by an empty line or by the end of input.
//!
//! The input is bounded ([`MAX_SECRETS_BYTES`], [`MAX_SECRETS_LINES`]); an
//! error names the line by its number and says what is wrong with it, but
//! never repeats its value, which may be the token.

use std::io::BufRead;

/// Most bytes read from standard input for settings.
pub const MAX_SECRETS_BYTES: usize = 64 * 1024;

/// Most lines read from standard input for settings (the empty last one
/// included).
pub const MAX_SECRETS_LINES: usize = 64;

/// Settings on standard input that cannot be used. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretsError {
    /// A line is not `NAME=value`, or names no `QUICMESH_*` variable, or
    /// names one twice.
    #[error("settings on standard input, line {line}: {problem}")]
    BadLine {
        /// The line's number, from 1.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// More than [`MAX_SECRETS_BYTES`] bytes or [`MAX_SECRETS_LINES`] lines
    /// came before the end.
    #[error("settings on standard input: more than {MAX_SECRETS_BYTES} bytes or {MAX_SECRETS_LINES} lines")]
    TooLong,
    /// Standard input could not be read.
    #[error("settings on standard input: cannot read: {0}")]
    Read(String),
    /// The settings did not end (empty line or end of input) in time.
    #[error("settings on standard input: not ended by an empty line or the end of input within {0:?} (the join timeout)")]
    Timeout(std::time::Duration),
}

/// Reads `NAME=value` lines until an empty line or the end of input.
///
/// Every name must start with `QUICMESH_` and appear once; blanks around
/// the name are not allowed, the value is taken as written (an `=` in it is
/// kept) without its line end (`\n` or `\r\n`). Reads no further than the
/// empty line, so what follows stays for the program. Errors: see
/// [`SecretsError`].
pub(crate) fn parse_secrets(
    mut input: impl BufRead,
) -> Result<Vec<(String, String)>, SecretsError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut total = 0usize;
    let mut raw = Vec::new();
    for line_no in 1..=MAX_SECRETS_LINES {
        raw.clear();
        let budget = (MAX_SECRETS_BYTES - total) as u64 + 1;
        let n = std::io::Read::take(&mut input, budget)
            .read_until(b'\n', &mut raw)
            .map_err(|e| SecretsError::Read(e.to_string()))?;
        total += n;
        if total > MAX_SECRETS_BYTES {
            return Err(SecretsError::TooLong);
        }
        if n == 0 {
            return Ok(pairs);
        }
        let bad = |problem: &str| SecretsError::BadLine {
            line: line_no,
            problem: problem.to_owned(),
        };
        let ended = raw.last() == Some(&b'\n');
        let mut body: &[u8] = &raw;
        if ended {
            body = &body[..body.len() - 1];
            if body.last() == Some(&b'\r') {
                body = &body[..body.len() - 1];
            }
        }
        if body.is_empty() {
            return Ok(pairs);
        }
        let text = std::str::from_utf8(body).map_err(|_| bad("is not valid UTF-8"))?;
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=value (no '=' found)"))?;
        if !name.starts_with("QUICMESH_")
            || !name[9..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            || name.len() == 9
        {
            return Err(bad(
                "the name must be a QUICMESH_ variable (QUICMESH_ then A-Z, 0-9 or _)",
            ));
        }
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(bad(&format!("{name} is given twice")));
        }
        pairs.push((name.to_owned(), value.to_owned()));
        if !ended {
            return Ok(pairs);
        }
    }
    Err(SecretsError::TooLong)
}

/// Reads the settings from this process's standard input ([`parse_secrets`]),
/// giving up after `timeout`: a launcher that never writes them, or never
/// ends them, must not leave the worker waiting for ever.
///
/// Reads one byte at a time straight from descriptor 0 (at most
/// [`MAX_SECRETS_BYTES`] of them), after `poll` says one is there, so
/// nothing past the empty line is taken from the program and no thread is
/// needed for the deadline.
#[cfg(unix)]
pub(crate) fn read_stdin_secrets(
    timeout: std::time::Duration,
) -> Result<Vec<(String, String)>, SecretsError> {
    let deadline = std::time::Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut line_start = 0;
    while raw.len() <= MAX_SECRETS_BYTES {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(SecretsError::Timeout(timeout));
        }
        let mut fd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, its count, a timeout.
        let ready = unsafe { libc::poll(&mut fd, 1, ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SecretsError::Read(e.to_string()));
        }
        if ready == 0 {
            continue;
        }
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a valid one-byte buffer.
        let n = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SecretsError::Read(e.to_string()));
        }
        if n == 0 {
            break;
        }
        raw.push(byte);
        if byte == b'\n' {
            let line = &raw[line_start..raw.len() - 1];
            if line.is_empty() || line == b"\r" {
                break;
            }
            line_start = raw.len();
        }
    }
    parse_secrets(&raw[..])
}

#[cfg(not(unix))]
pub(crate) fn read_stdin_secrets(
    _timeout: std::time::Duration,
) -> Result<Vec<(String, String)>, SecretsError> {
    parse_secrets(std::io::stdin().lock())
}

/// Removes every `QUICMESH_*` variable from this process's environment, so
/// that the programs an actor starts do not inherit the token (nor try to
/// join as this worker).
///
/// Changing the environment races with any other thread that reads it
/// (`getenv` in C code included): call this while the process has one
/// thread, before any runtime starts. [`bootstrap_or_die`](super::bootstrap_or_die)
/// and [`run_and_exit`](super::run_and_exit) call it once the settings are
/// read and before their runtimes start. Linux's `/proc/PID/environ` keeps
/// showing the environment the process started with (only to its own user
/// and root); what the process and its children see is the scrubbed one.
pub(crate) fn scrub_environment() {
    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| name.as_encoded_bytes().starts_with(b"QUICMESH_"))
        .collect();
    for name in names {
        std::env::remove_var(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<(String, String)>, SecretsError> {
        parse_secrets(text.as_bytes())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lines_until_blank_line_or_end() {
        let want = pairs(&[("QUICMESH_TOKEN", "a=b c"), ("QUICMESH_INDEX", "3")]);
        assert_eq!(
            parse("QUICMESH_TOKEN=a=b c\nQUICMESH_INDEX=3\n"),
            Ok(want.clone())
        );
        assert_eq!(
            parse("QUICMESH_TOKEN=a=b c\r\nQUICMESH_INDEX=3"),
            Ok(want.clone())
        );
        assert_eq!(
            parse("QUICMESH_TOKEN=a=b c\nQUICMESH_INDEX=3\n\nnot read\n"),
            Ok(want)
        );
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("QUICMESH_CA=\n"), Ok(pairs(&[("QUICMESH_CA", "")])));
    }

    #[test]
    fn stops_reading_at_the_blank_line() {
        let mut input: &[u8] = b"QUICMESH_INDEX=1\n\nrest of input\n";
        parse_secrets(&mut input).expect("valid");
        assert_eq!(input, b"rest of input\n");
    }

    #[test]
    fn bad_lines_are_named_by_number_without_their_value() {
        for (text, line, says) in [
            ("QUICMESH_INDEX=1\nhunter2secret\n", 2, "no '='"),
            ("PATH=hunter2secret\n", 1, "QUICMESH_ variable"),
            ("QUICMESH_=hunter2secret\n", 1, "QUICMESH_ variable"),
            (" QUICMESH_TOKEN=hunter2secret\n", 1, "QUICMESH_ variable"),
            ("QUICMESH_token=hunter2secret\n", 1, "QUICMESH_ variable"),
            (
                "QUICMESH_TOKEN=x\nQUICMESH_INDEX=1\nQUICMESH_TOKEN=hunter2secret\n",
                3,
                "given twice",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                matches!(&err, SecretsError::BadLine { line: l, problem } if *l == line && problem.contains(says)),
                "{text:?}: {err:?}"
            );
            let shown = err.to_string();
            assert!(shown.contains(&format!("line {line}")), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let err = parse_secrets(&b"QUICMESH_TOKEN=\xff\xfe\n"[..]).expect_err("not UTF-8");
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn input_is_bounded() {
        let long = format!("QUICMESH_TOKEN={}\n", "x".repeat(MAX_SECRETS_BYTES));
        assert_eq!(parse(&long), Err(SecretsError::TooLong));
        let many: String = (0..MAX_SECRETS_LINES + 1)
            .map(|i| format!("QUICMESH_X{i}=1\n"))
            .collect();
        assert_eq!(parse(&many), Err(SecretsError::TooLong));
        // An endless stream of one line stops at the bound instead of reading on.
        let endless = std::io::BufReader::new(std::io::repeat(b'a'));
        assert_eq!(parse_secrets(endless), Err(SecretsError::TooLong));
        let fits: String = (0..MAX_SECRETS_LINES - 1)
            .map(|i| format!("QUICMESH_X{i}=1\n"))
            .collect();
        assert_eq!(parse(&fits).map(|p| p.len()), Ok(MAX_SECRETS_LINES - 1));
    }
}
