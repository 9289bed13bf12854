//! Link settings: how much data may be in flight on a connection, and which
//! congestion controller decides how fast it goes.
//!
//! QUIC can only keep a path busy if the receiver lets the sender have a
//! whole bandwidth-delay product (BDP) unacknowledged: a stream whose window
//! is `W` bytes moves at most `W` per round trip, however fast the path.
//! A 1 MiB window is 10 GB/s at 100 us of round trip (a LAN) but only
//! 10 MB/s at 100 ms (across an ocean). So the windows follow one setting,
//! [`LinkConfig::window`], the BDP one stream should be able to fill:
//!
//! - each stream's receive window is `window`;
//! - once a peer is admitted, the connection's receive window is one
//!   `window` per stream it may have open, plus two
//!   ([`LinkConfig::connection_window`]), so one stream whose data is not
//!   read never takes the credit of the others;
//! - the send window (what this side keeps buffered until it is
//!   acknowledged, over all streams) is eight windows
//!   ([`LinkConfig::send_window`]), as quinn's own default is.
//!
//! Before admission none of this applies: a peer that has not been admitted
//! may have only [`crate::config::PRE_ADMISSION_RECEIVE_WINDOW`] unread on
//! the whole connection, whatever the link setting.
//!
//! Windows only let a sender go fast; the congestion controller decides how
//! fast it actually goes. Cubic (the default, as in TCP) reads every lost
//! packet as congestion and halves its rate: on a path with random loss its
//! throughput is about `MSS / RTT * 1.2 / sqrt(loss)`, 0.3 MB/s at 50 ms of
//! round trip and 1 % loss, whatever the window. BBR estimates the path's bandwidth and
//! round trip instead and keeps sending at that rate through random loss;
//! quinn's BBR (BBRv1) is marked experimental by quinn, so it is an option,
//! not the default.
//!
//! Two presets cover most cases: [`LinkConfig::lan`] (the default: 1 MiB
//! windows, Cubic) and [`LinkConfig::wan`] (8 MiB windows, BBR), for links
//! between datacenters: 8 MiB per stream is about 670 Mbit/s at 100 ms of
//! round trip, and BBR holds it through random loss. Written as text (the
//! `QUICMESH_LINK` variable, the `--link` flag) a setting is a preset, a list
//! of `key=value` changes, or both: `wan`, `lan,congestion=bbr`,
//! `wan,window=32MiB`, `window=4MiB` (changes apply to `lan` when no preset
//! is named).
//!
//! **Which side's setting applies.** Each side's receive windows and its
//! congestion controller are fixed when its QUIC connection is created,
//! before any message can be exchanged, so each side uses its own setting:
//! the allocator its `AllocatorConfig::link`, a worker the `QUICMESH_LINK`
//! of its environment. The allocator puts its own setting in the environment
//! of every worker it launches and of every join ticket it issues, so both
//! ends of a connection agree unless a worker started by hand is given
//! another value. A mismatch costs speed, never correctness: data towards a
//! side is limited by that side's windows, data from a side by its
//! congestion controller.

use std::fmt;
use std::str::FromStr;

use crate::config::ConfigError;

/// The congestion controller of a connection (its sending side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Congestion {
    /// Cubic (RFC 9438), loss-based, as TCP's default: the right choice on
    /// a LAN and on paths where loss means congestion.
    Cubic,
    /// BBR (version 1), model-based: keeps a long path full through random
    /// loss. quinn calls its implementation experimental.
    Bbr,
}

impl Congestion {
    /// The name used in settings: `cubic` or `bbr`.
    pub fn name(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        }
    }
}

impl fmt::Display for Congestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Smallest stream window accepted: below it a stream would crawl even on a LAN.
pub const MIN_WINDOW: u32 = 64 * 1024;

/// Largest stream window accepted: one stream of a worker that reads
/// nothing can pin this much memory on the other side.
pub const MAX_WINDOW: u32 = 1024 * 1024 * 1024;

/// The stream window of [`LinkConfig::lan`].
pub const LAN_WINDOW: u32 = 1024 * 1024;

/// The stream window of [`LinkConfig::wan`].
pub const WAN_WINDOW: u32 = 8 * 1024 * 1024;

/// Flow-control windows and congestion controller of a connection.
///
/// Every window follows `window`: each stream may hold `window` bytes
/// unread, the connection one window per proc stream plus the control
/// stream's, and the send window covers the connection. Each side applies
/// its own setting to the connection it creates (docs/design.md §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkConfig {
    /// Bytes one stream may have unacknowledged: the bandwidth-delay
    /// product one stream should be able to fill (bandwidth x round trip).
    pub window: u32,
    /// The congestion controller of this side's sending.
    pub congestion: Congestion,
}

impl Default for LinkConfig {
    /// [`LinkConfig::lan`].
    fn default() -> Self {
        LinkConfig::lan()
    }
}

impl LinkConfig {
    /// For a LAN or one datacenter: 1 MiB per stream (10 GB/s at 100 us of
    /// round trip, 100 MB/s at 10 ms), Cubic.
    pub const fn lan() -> LinkConfig {
        LinkConfig {
            window: LAN_WINDOW,
            congestion: Congestion::Cubic,
        }
    }

    /// For links between datacenters: 8 MiB per stream (about 670 Mbit/s at
    /// 100 ms of round trip), BBR, which keeps such a path full through
    /// random loss where Cubic slows to a crawl.
    pub const fn wan() -> LinkConfig {
        LinkConfig {
            window: WAN_WINDOW,
            congestion: Congestion::Bbr,
        }
    }

    /// Checks that the window is within 64 KiB and 1 GiB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return Err(ConfigError::Invalid {
                name: "link window",
                value: self.window.to_string(),
                problem: format!(
                    "must be {} to {}",
                    Size(u64::from(MIN_WINDOW)),
                    Size(u64::from(MAX_WINDOW))
                ),
            });
        }
        Ok(())
    }

    /// The connection receive window for a peer that may have `streams`
    /// streams open: one stream window for each, plus two (the control
    /// stream and one spare).
    ///
    /// Smaller would let a few streams whose data is not read right away use
    /// up the connection's credit and block the others, the control stream
    /// included. The arithmetic saturates, and the result never exceeds
    /// QUIC's largest window (2^62 - 1).
    pub fn connection_window(&self, streams: u32) -> u64 {
        u64::from(streams)
            .saturating_add(2)
            .saturating_mul(u64::from(self.window))
            .min((1 << 62) - 1)
    }

    /// Bytes this side keeps buffered until acknowledged, over all streams
    /// of a connection: eight stream windows, so several streams can each
    /// keep a path full while lost data waits to be sent again.
    pub fn send_window(&self) -> u64 {
        u64::from(self.window).saturating_mul(8)
    }
}

impl fmt::Display for LinkConfig {
    /// The text form [`LinkConfig::from_str`] reads back: `lan`, `wan`, or
    /// `window=...,congestion=...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == LinkConfig::lan() {
            f.write_str("lan")
        } else if *self == LinkConfig::wan() {
            f.write_str("wan")
        } else {
            write!(
                f,
                "window={},congestion={}",
                Size(u64::from(self.window)),
                self.congestion
            )
        }
    }
}

impl FromStr for LinkConfig {
    type Err = String;

    /// Reads a preset (`lan`, `wan`), `key=value` changes (`window=8MiB`,
    /// `congestion=bbr`), or a preset followed by changes, separated by
    /// commas. Changes apply to `lan` when no preset comes first.
    ///
    /// Errors (a sentence for [`ConfigError::Invalid`]): an unknown preset,
    /// key or controller, a size that is not a number with an optional unit
    /// (`B`, `KiB`, `MiB`, `GiB`), or a window out of bounds.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut link = LinkConfig::lan();
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        if parts.iter().all(|p| p.is_empty()) {
            return Err("is empty (use lan, wan, or window=SIZE,congestion=cubic|bbr)".into());
        }
        for (i, part) in parts.iter().enumerate() {
            match part.split_once('=') {
                None if i == 0 => {
                    link = match part.to_ascii_lowercase().as_str() {
                        "lan" => LinkConfig::lan(),
                        "wan" => LinkConfig::wan(),
                        other => return Err(format!("unknown preset {other:?} (use lan or wan)")),
                    }
                }
                None => {
                    return Err(format!(
                        "{part:?} is not key=value (a preset may only come first)"
                    ))
                }
                Some((key, value)) => match key.trim().to_ascii_lowercase().as_str() {
                    "window" => link.window = parse_window(value.trim())?,
                    "congestion" => {
                        link.congestion = match value.trim().to_ascii_lowercase().as_str() {
                            "cubic" => Congestion::Cubic,
                            "bbr" => Congestion::Bbr,
                            other => {
                                return Err(format!(
                                    "unknown congestion controller {other:?} (use cubic or bbr)"
                                ))
                            }
                        }
                    }
                    other => {
                        return Err(format!("unknown key {other:?} (use window or congestion)"))
                    }
                },
            }
        }
        link.validate().map_err(|e| match e {
            ConfigError::Invalid { problem, .. } => format!("window {problem}"),
            other => other.to_string(),
        })?;
        Ok(link)
    }
}

/// Parses a byte count with an optional binary unit: `65536`, `512KiB`, `8MiB`, `1GiB`.
fn parse_window(text: &str) -> Result<u32, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let not_a_size = || format!("window {text:?} is not a size such as 8MiB");
    if number.is_empty() {
        return Err(not_a_size());
    }
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    let number: u64 = number.parse().map_err(|_| not_a_size())?;
    let bytes = number
        .checked_mul(scale)
        .and_then(|b| u32::try_from(b).ok())
        .ok_or_else(|| format!("window {text:?} is too large"))?;
    Ok(bytes)
}

/// A byte count printed with the largest binary unit that divides it.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n >= 1 << shift && n % (1 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> LinkConfig {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} refused: {e}"))
    }

    #[test]
    fn presets_and_changes_parse() {
        assert_eq!(parse("lan"), LinkConfig::lan());
        assert_eq!(parse(" WAN "), LinkConfig::wan());
        assert_eq!(
            parse("lan,congestion=bbr"),
            LinkConfig {
                window: LAN_WINDOW,
                congestion: Congestion::Bbr
            }
        );
        assert_eq!(
            parse("wan, window=32MiB"),
            LinkConfig {
                window: 32 << 20,
                congestion: Congestion::Bbr
            }
        );
        assert_eq!(
            parse("window=512KiB"),
            LinkConfig {
                window: 512 << 10,
                congestion: Congestion::Cubic
            }
        );
        assert_eq!(parse("window=65536").window, MIN_WINDOW);
        assert_eq!(parse("window=1GiB").window, MAX_WINDOW);
        assert_eq!(parse("congestion=CUBIC,window=2m").window, 2 << 20);
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        for (text, words) in [
            ("", "empty"),
            (" , ", "empty"),
            ("metro", "unknown preset"),
            ("lan,wan", "not key=value"),
            ("speed=fast", "unknown key"),
            ("congestion=reno", "unknown congestion"),
            ("window=lots", "not a size"),
            ("window=8TiB", "unknown size unit"),
            ("window=-1", "not a size"),
            ("window=4GiB", "too large"),
            ("window=99999999999999999999999", "not a size"),
            ("window=1KiB", "must be 64KiB to 1GiB"),
            ("window=2GiB", "must be 64KiB to 1GiB"),
        ] {
            let err = text.parse::<LinkConfig>().expect_err(text);
            assert!(err.contains(words), "{text:?}: {err}");
        }
    }

    #[test]
    fn text_form_reads_back() {
        for link in [
            LinkConfig::lan(),
            LinkConfig::wan(),
            LinkConfig {
                window: 3 << 20,
                congestion: Congestion::Cubic,
            },
            LinkConfig {
                window: 100_000,
                congestion: Congestion::Bbr,
            },
            LinkConfig {
                window: MAX_WINDOW,
                congestion: Congestion::Bbr,
            },
        ] {
            let text = link.to_string();
            assert_eq!(parse(&text), link, "{text}");
        }
        assert_eq!(LinkConfig::default().to_string(), "lan");
        assert_eq!(
            LinkConfig {
                window: 3 << 20,
                congestion: Congestion::Bbr
            }
            .to_string(),
            "window=3MiB,congestion=bbr"
        );
    }

    #[test]
    fn windows_follow_the_setting_and_saturate() {
        let wan = LinkConfig::wan();
        assert_eq!(wan.connection_window(1), 3 * u64::from(WAN_WINDOW));
        assert_eq!(wan.send_window(), 8 * u64::from(WAN_WINDOW));
        let huge = LinkConfig {
            window: u32::MAX,
            congestion: Congestion::Cubic,
        };
        assert!(huge.connection_window(u32::MAX) < 1 << 62);
        assert!(huge.validate().is_err());
        // The pre-admission bound stays far below any admitted window.
        let smallest = LinkConfig {
            window: MIN_WINDOW,
            congestion: Congestion::Cubic,
        };
        assert!(
            u64::from(crate::config::PRE_ADMISSION_RECEIVE_WINDOW) <= smallest.connection_window(0)
        );
    }
}
