//! Identifiers shared by the wire protocol and the actor runtime.
//!
//! Every id prints in one canonical text form and parses back from it, so ids
//! can be logged, passed on command lines and compared by eye:
//!
//! | id | form | example |
//! |---|---|---|
//! | [`ProcId`] | `alloc[rank]` | `demo[3]` |
//! | [`ActorId`] | `alloc[rank].name[pid]` | `demo[3].pinger[0]` |
//! | [`PortId`] | `alloc[rank].name[pid]:port` | `demo[3].pinger[0]:17` |
//!
//! Allocation and actor names are restricted to ASCII letters, digits, `_`
//! and `-`, so the separators can never be ambiguous. Names are
//! `CompactString`s: up to 24 bytes they live inline, so the ids carried by
//! every envelope are copied and decoded without allocating.
//!
//! The same rules hold for ids decoded from the network: a name that is
//! empty, longer than [`MAX_NAME_LEN`] or has other characters fails to
//! decode, so a peer cannot slip a multi-megabyte "actor name" past the
//! checks that ids made here pass.

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// Why a text could not be parsed as an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {text:?}: {problem}")]
pub struct IdParseError {
    kind: &'static str,
    text: String,
    problem: &'static str,
}

/// Longest allocation or actor name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// Checks that `name` is a non-empty run of at most [`MAX_NAME_LEN`] `[A-Za-z0-9_-]`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// [`is_valid_name`] as a result: the error says what a name must be.
pub(crate) fn check_name(name: &str) -> Result<(), IdParseError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(IdParseError {
            kind: "name",
            text: name.to_string(),
            problem: "names are 1-128 characters of [A-Za-z0-9_-]",
        })
    }
}

/// Decodes a name and applies [`is_valid_name`] to it.
fn valid_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CompactString, D::Error> {
    let name = CompactString::deserialize(d)?;
    if is_valid_name(&name) {
        Ok(name)
    } else {
        Err(serde::de::Error::custom(format_args!(
            "invalid name of {} bytes: names are 1-{MAX_NAME_LEN} characters of [A-Za-z0-9_-]",
            name.len()
        )))
    }
}

/// Upper bound on the encoded size of a name (length prefix and bytes).
fn name_wire_size(name: &str) -> usize {
    9 + name.len()
}

/// A proc: the `rank`-th proc of the allocation named `alloc`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcId {
    /// Name of the allocation the proc belongs to.
    #[serde(deserialize_with = "valid_name")]
    pub alloc: CompactString,
    /// Rank of the proc within its allocation, from 0.
    pub rank: u32,
}

impl ProcId {
    /// Makes a proc id; `alloc` should be 1-128 characters of `[A-Za-z0-9_-]`
    /// (a proc id with another name is refused wherever it is decoded).
    pub fn new(alloc: impl Into<CompactString>, rank: u32) -> Self {
        ProcId {
            alloc: alloc.into(),
            rank,
        }
    }

    /// An upper bound on the encoded size of this id.
    pub fn wire_size(&self) -> usize {
        name_wire_size(&self.alloc) + 5
    }

    /// The id of the actor called `name` (instance `pid`) on this proc.
    pub fn actor(&self, name: impl Into<CompactString>, pid: u64) -> ActorId {
        ActorId {
            proc_id: self.clone(),
            name: name.into(),
            pid,
        }
    }
}

impl fmt::Display for ProcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.alloc, self.rank)
    }
}

/// Splits `name[number]` into its parts.
fn split_indexed(text: &str, kind: &'static str) -> Result<(CompactString, u64), IdParseError> {
    let err = |problem| IdParseError {
        kind,
        text: text.to_string(),
        problem,
    };
    let open = text.find('[').ok_or_else(|| err("missing '['"))?;
    let inner = text[open + 1..]
        .strip_suffix(']')
        .ok_or_else(|| err("missing closing ']'"))?;
    let name = &text[..open];
    if !is_valid_name(name) {
        return Err(err("name must be 1-128 characters of [A-Za-z0-9_-]"));
    }
    if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("index must be a decimal number"));
    }
    let n = inner.parse().map_err(|_| err("index out of range"))?;
    Ok((CompactString::from(name), n))
}

impl FromStr for ProcId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alloc, rank) = split_indexed(s, "proc id")?;
        let rank = u32::try_from(rank).map_err(|_| IdParseError {
            kind: "proc id",
            text: s.to_string(),
            problem: "rank out of range",
        })?;
        Ok(ProcId { alloc, rank })
    }
}

/// An actor: instance `pid` of the actor called `name` on proc `proc_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId {
    /// The proc hosting the actor.
    pub proc_id: ProcId,
    /// The actor's name within its proc.
    #[serde(deserialize_with = "valid_name")]
    pub name: CompactString,
    /// Distinguishes successive actors of the same name on one proc.
    pub pid: u64,
}

impl ActorId {
    /// An upper bound on the encoded size of this id.
    pub fn wire_size(&self) -> usize {
        self.proc_id.wire_size() + name_wire_size(&self.name) + 10
    }

    /// The id of port `port` of this actor.
    pub fn port(&self, port: u64) -> PortId {
        PortId {
            actor_id: self.clone(),
            port,
        }
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}[{}]", self.proc_id, self.name, self.pid)
    }
}

impl FromStr for ActorId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let dot = s.find("].").ok_or(IdParseError {
            kind: "actor id",
            text: s.to_string(),
            problem: "expected proc[rank].name[pid]",
        })?;
        let proc_id = s[..dot + 1].parse()?;
        let (name, pid) = split_indexed(&s[dot + 2..], "actor id")?;
        Ok(ActorId { proc_id, name, pid })
    }
}

/// A port: a typed inbox of an actor, used for replies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortId {
    /// The actor owning the port.
    pub actor_id: ActorId,
    /// The port number within the actor.
    pub port: u64,
}

impl PortId {
    /// An upper bound on the encoded size of this id.
    pub fn wire_size(&self) -> usize {
        self.actor_id.wire_size() + 10
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.actor_id, self.port)
    }
}

impl FromStr for PortId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| IdParseError {
            kind: "port id",
            text: s.to_string(),
            problem,
        };
        let colon = s.rfind(':').ok_or_else(|| err("missing ':port'"))?;
        let port_text = &s[colon + 1..];
        if port_text.is_empty() || !port_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("port must be a decimal number"));
        }
        let port = port_text.parse().map_err(|_| err("port out of range"))?;
        let actor_id = s[..colon].parse()?;
        Ok(PortId { actor_id, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_print_and_parse_back() {
        let p = ProcId::new("demo", 3);
        assert_eq!(p.to_string(), "demo[3]");
        assert_eq!("demo[3]".parse::<ProcId>(), Ok(p.clone()));
        let a = p.actor("pinger", 0);
        assert_eq!(a.to_string(), "demo[3].pinger[0]");
        assert_eq!(a.to_string().parse::<ActorId>(), Ok(a.clone()));
        let port = a.port(17);
        assert_eq!(port.to_string(), "demo[3].pinger[0]:17");
        assert_eq!(port.to_string().parse::<PortId>(), Ok(port));
    }

    #[test]
    fn bad_ids_are_rejected_with_a_reason() {
        for bad in [
            "",
            "demo",
            "demo[",
            "demo[x]",
            "[3]",
            "de mo[3]",
            "demo[3]x",
            "demo[99999999999]",
        ] {
            let e = bad.parse::<ProcId>().unwrap_err();
            assert!(e.to_string().contains("invalid proc id"), "{bad}: {e}");
        }
        assert!("demo[3].a".parse::<ActorId>().is_err());
        assert!("demo[3]a[1]".parse::<ActorId>().is_err());
        assert!("demo[3].a[1]:".parse::<PortId>().is_err());
        assert!("demo[3].a[1]:x".parse::<PortId>().is_err());
    }

    #[test]
    fn decoded_ids_obey_the_same_name_rules() {
        let good = ProcId::new("demo", 1).actor("a-b_9", 2).port(3);
        let bytes = crate::wire::codec::encode(&good).unwrap();
        assert_eq!(crate::wire::codec::decode::<PortId>(&bytes).unwrap(), good);
        for bad in ["", "has space", "dot.ted", &"x".repeat(MAX_NAME_LEN + 1)] {
            // Build the id without the checks, as a hostile peer would.
            let id = ActorId {
                proc_id: ProcId::new("demo", 0),
                name: CompactString::from(bad),
                pid: 0,
            };
            let bytes = crate::wire::codec::encode(&id).unwrap();
            let err = crate::wire::codec::decode::<ActorId>(&bytes).unwrap_err();
            assert!(err.to_string().contains("invalid name"), "{bad:?}: {err}");
            let proc_id = ProcId {
                alloc: CompactString::from(bad),
                rank: 0,
            };
            let bytes = crate::wire::codec::encode(&proc_id).unwrap();
            assert!(
                crate::wire::codec::decode::<ProcId>(&bytes).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wire_size_bounds_the_encoding() {
        let id = ProcId::new("a".repeat(100), u32::MAX)
            .actor("b".repeat(128), u64::MAX)
            .port(u64::MAX);
        let len = crate::wire::codec::encode(&id).unwrap().len();
        assert!(len <= id.wire_size(), "{len} > {}", id.wire_size());
    }

    proptest! {
        #[test]
        fn any_valid_port_id_round_trips(
            alloc in "[A-Za-z0-9_-]{1,20}", rank: u32,
            name in "[A-Za-z0-9_-]{1,20}", pid: u64, port: u64,
        ) {
            let id = ProcId::new(alloc, rank).actor(name, pid).port(port);
            prop_assert_eq!(id.to_string().parse::<PortId>(), Ok(id));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = s.parse::<PortId>();
            let _ = s.parse::<ActorId>();
            let _ = s.parse::<ProcId>();
        }
    }
}
