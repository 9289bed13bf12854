//! Configuration: heartbeat and transport settings, and the worker's environment.
//!
//! Defaults follow the design: heartbeat every 250 ms, peer declared dead after
//! 1.5 s of silence, frames up to 16 MiB, connect timeout 5 s, Hello within 5 s.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variable: `host:port` of the allocator.
pub const ENV_ALLOCATOR_ADDR: &str = "QUICMESH_ALLOCATOR_ADDR";
/// Environment variable: the name the allocator's certificate must carry.
pub const ENV_SERVER_NAME: &str = "QUICMESH_SERVER_NAME";
/// Environment variable: this worker's index in the allocation.
pub const ENV_INDEX: &str = "QUICMESH_INDEX";
/// Environment variable: the secret issued by the allocator for this index.
pub const ENV_TOKEN: &str = "QUICMESH_TOKEN";
/// Environment variable: PEM path of the mesh CA.
pub const ENV_CA: &str = "QUICMESH_CA";
/// Environment variable: PEM path of this worker's certificate.
pub const ENV_CERT: &str = "QUICMESH_CERT";
/// Environment variable: PEM path of this worker's private key.
pub const ENV_KEY: &str = "QUICMESH_KEY";

/// A configuration value that is missing or unusable; names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required environment variable (or flag) is not set.
    #[error("{name} is not set")]
    Missing {
        /// The variable's name.
        name: &'static str,
    },
    /// A setting is present but its value cannot be used.
    #[error("{name}={value:?} is invalid: {problem}")]
    Invalid {
        /// The setting's name.
        name: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// How often heartbeats are sent and how long silence means death.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatConfig {
    /// Time between two heartbeats sent by each side.
    pub interval: Duration,
    /// Silence after which the peer is declared dead.
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_millis(250),
            timeout: Duration::from_millis(1500),
        }
    }
}

impl HeartbeatConfig {
    /// Checks that the interval is positive and the timeout spans at least two intervals.
    ///
    /// A timeout shorter than two intervals would declare a peer dead after a
    /// single lost datagram, which ordinary packet loss makes routine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::Invalid {
                name: "heartbeat interval",
                value: format!("{:?}", self.interval),
                problem: "must be positive".into(),
            });
        }
        if self.timeout < self.interval * 2 {
            return Err(ConfigError::Invalid {
                name: "heartbeat timeout",
                value: format!("{:?}", self.timeout),
                problem: format!("must be at least twice the interval ({:?})", self.interval),
            });
        }
        Ok(())
    }
}

/// Limits both sides enforce on what the peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame body accepted on any stream, in bytes.
    pub max_frame: u32,
    /// Most procs one worker may host (also bounds its mailbox streams).
    pub max_procs_per_worker: u32,
    /// Byte budget of each mailbox queue: an actor's mailbox, a proc's
    /// outbound queue, and the allocator's undelivered envelopes per proc.
    pub mailbox_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 * 1024 * 1024,
            max_procs_per_worker: 1024,
            mailbox_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Largest frame accepted before a peer has been admitted (Hello is small).
///
/// Until the Hello's token is checked the peer is only known to hold a
/// certificate of the mesh CA; it gets no more than this much memory.
pub const MAX_PRE_ADMISSION_FRAME: u32 = 64 * 1024;

/// Timeouts of the QUIC transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportConfig {
    /// Longest a worker waits for its connection to be established and welcomed.
    pub connect_timeout: Duration,
    /// Longest the allocator waits for a Hello after the handshake.
    pub hello_timeout: Duration,
    /// Longest an allocator waits for a worker to leave after `StopAndExit`.
    pub stop_timeout: Duration,
    /// Most handshakes the allocator runs at once; more are refused.
    pub max_pending_handshakes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
        }
    }
}

/// Everything a worker needs to find and join its allocator (design §4).
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl WorkerEnv {
    /// Reads the worker's settings from the process environment.
    ///
    /// Errors name the first variable that is missing or invalid.
    pub fn from_env() -> Result<WorkerEnv, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads the worker's settings through `get` (a variable name to its value).
    ///
    /// This is [`WorkerEnv::from_env`] without the process environment, for
    /// flags that override variables and for tests.
    pub fn from_lookup(
        get: impl Fn(&'static str) -> Option<String>,
    ) -> Result<WorkerEnv, ConfigError> {
        let required = |name: &'static str| -> Result<String, ConfigError> {
            match get(name) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
                Some(v) => Err(ConfigError::Invalid {
                    name,
                    value: v,
                    problem: "is empty".into(),
                }),
                None => Err(ConfigError::Missing { name }),
            }
        };
        let allocator_addr = required(ENV_ALLOCATOR_ADDR)?;
        if split_host_port(&allocator_addr).is_none() {
            return Err(ConfigError::Invalid {
                name: ENV_ALLOCATOR_ADDR,
                value: allocator_addr,
                problem: "expected host:port, e.g. 127.0.0.1:4433 or [::1]:4433".into(),
            });
        }
        let server_name = required(ENV_SERVER_NAME)?;
        if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(ConfigError::Invalid {
                name: ENV_SERVER_NAME,
                value: server_name,
                problem: "not a valid DNS name or IP address".into(),
            });
        }
        let index_text = required(ENV_INDEX)?;
        let index = index_text
            .parse::<u32>()
            .map_err(|e| ConfigError::Invalid {
                name: ENV_INDEX,
                value: index_text.clone(),
                problem: format!("not a non-negative integer ({e})"),
            })?;
        let token = required(ENV_TOKEN)?;
        Ok(WorkerEnv {
            allocator_addr,
            server_name,
            index,
            token,
            ca: required(ENV_CA)?.into(),
            cert: required(ENV_CERT)?.into(),
            key: required(ENV_KEY)?.into(),
        })
    }
}

/// Splits `host:port` (IPv6 hosts in brackets) into host and port.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    if host.is_empty() {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn full() -> HashMap<&'static str, String> {
        [
            (ENV_ALLOCATOR_ADDR, "127.0.0.1:4433"),
            (ENV_SERVER_NAME, "localhost"),
            (ENV_INDEX, "3"),
            (ENV_TOKEN, "secret"),
            (ENV_CA, "certs/ca.pem"),
            (ENV_CERT, "certs/worker.pem"),
            (ENV_KEY, "certs/worker.key"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    #[test]
    fn complete_environment_parses() {
        let vars = full();
        let env = WorkerEnv::from_lookup(|n| vars.get(n).cloned()).unwrap();
        assert_eq!(env.index, 3);
        assert_eq!(env.allocator_addr, "127.0.0.1:4433");
    }

    #[test]
    fn each_missing_variable_is_named() {
        for name in [
            ENV_ALLOCATOR_ADDR,
            ENV_SERVER_NAME,
            ENV_INDEX,
            ENV_TOKEN,
            ENV_CA,
            ENV_CERT,
            ENV_KEY,
        ] {
            let mut vars = full();
            vars.remove(name);
            let err = WorkerEnv::from_lookup(|n| vars.get(n).cloned()).unwrap_err();
            assert_eq!(err, ConfigError::Missing { name });
            assert!(err.to_string().contains(name));
        }
    }

    #[test]
    fn malformed_values_are_named() {
        for (name, value) in [
            (ENV_ALLOCATOR_ADDR, "nowhere"),
            (ENV_ALLOCATOR_ADDR, "::1:80"),
            (ENV_INDEX, "-1"),
            (ENV_INDEX, "three"),
            (ENV_SERVER_NAME, "bad name!"),
            (ENV_TOKEN, "  "),
        ] {
            let mut vars = full();
            vars.insert(name, value.to_string());
            let err = WorkerEnv::from_lookup(|n| vars.get(n).cloned()).unwrap_err();
            assert!(
                matches!(err, ConfigError::Invalid { name: n, .. } if n == name),
                "{err}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("localhost:1"), Some(("localhost", 1)));
        assert_eq!(split_host_port("[::1]:443"), Some(("::1", 443)));
        assert_eq!(split_host_port("::1:443"), None);
        assert_eq!(split_host_port(":443"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[test]
    fn heartbeat_validation() {
        assert!(HeartbeatConfig::default().validate().is_ok());
        let bad = HeartbeatConfig {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(600),
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("heartbeat timeout"));
    }
}
