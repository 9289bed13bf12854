//! Which address workers are told to dial, and which name they verify.
//!
//! An allocator bound to an unspecified address (`0.0.0.0`, `[::]`) listens
//! on every interface, but that address cannot be dialled: a worker handed
//! `0.0.0.0:PORT` fails at once. So the address handed out is, in order:
//!
//! 1. the configured advertise address ([`AllocatorConfig::advertise`]), a
//!    port of 0 or none meaning the bound port, for every worker;
//! 2. when bound to an unspecified address: loopback for children started
//!    on this host, and this host's routable address ([`routable_host`])
//!    for workers started elsewhere (remote or group launchers, tickets);
//! 3. otherwise the bound address itself.
//!
//! Workers verify the advertised host in the allocator's certificate (for
//! loopback children: [`AllocatorConfig::server_name`]). A configured
//! advertise host the certificate does not name fails the bind, naming the
//! missing name and the fix; a routable host found automatically that the
//! certificate does not name is logged at bind, and workers elsewhere then
//! verify [`AllocatorConfig::server_name`] instead.
//!
//! [`AllocatorConfig::advertise`]: super::AllocatorConfig::advertise
//! [`AllocatorConfig::server_name`]: super::AllocatorConfig::server_name

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use crate::config::{split_host_port, ConfigError};

/// Where a worker dials and what name it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// `host:port` to dial.
    pub(crate) addr: String,
    /// The name to verify in the allocator's certificate.
    pub(crate) server_name: String,
}

/// The targets for workers on this host and on others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub(crate) local: Target,
    pub(crate) remote: Target,
}

/// What the certificate check needs to know about the chosen host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Configured: the certificate must name it.
    Configured,
    /// Found automatically: the certificate should name it.
    Found,
    /// The bound address itself.
    Bound,
}

/// The address of this host that other hosts reach it at, without sending
/// anything: the local address the kernel picks for a UDP socket
/// "connected" to a documentation address (RFC 5737 / RFC 3849; `connect`
/// on UDP only chooses a route), IPv4 first, then IPv6; else the host name.
pub fn routable_host() -> String {
    let probe = |bind: SocketAddr, to: SocketAddr| -> Option<IpAddr> {
        let socket = UdpSocket::bind(bind).ok()?;
        socket.connect(to).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        usable(ip).then_some(ip)
    };
    let v4 = probe(
        (Ipv4Addr::UNSPECIFIED, 0).into(),
        (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
    );
    let v6 = || {
        probe(
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
        )
    };
    match v4.or_else(v6) {
        Some(ip) => ip.to_string(),
        None => host_name(),
    }
}

/// This host's name (the fallback when no route gives an address).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// An address another host could dial: not unspecified, not loopback.
fn usable(ip: IpAddr) -> bool {
    !ip.is_unspecified() && !ip.is_loopback()
}

/// `host:port`, IPv6 hosts in brackets.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Decides the targets for an allocator bound to `bound`, with the
/// configured `advertise` (if any), the configured `server_name` and
/// `routable` to find this host's address (called only if needed).
///
/// Errors: [`ConfigError::Invalid`] for an advertise address that is not
/// `host` or `host:port`, or whose host is unspecified.
pub(crate) fn decide(
    bound: SocketAddr,
    advertise: Option<&str>,
    server_name: &str,
    routable: impl FnOnce() -> String,
) -> Result<(Advertised, Source), ConfigError> {
    let port = bound.port();
    if let Some(text) = advertise {
        let text = text.trim();
        let invalid = |problem: &str| ConfigError::Invalid {
            name: "advertise address",
            value: text.to_owned(),
            problem: problem.to_owned(),
        };
        let (host, given_port) =
            match split_host_port(text) {
                Some((host, p)) => (host.to_owned(), p),
                None if !text.is_empty()
                    && !text.contains(['[', ']', ' '])
                    && (!text.contains(':') || text.parse::<Ipv6Addr>().is_ok()) =>
                {
                    (text.to_owned(), 0)
                }
                None => return Err(invalid(
                    "expected HOST or HOST:PORT, e.g. 10.1.2.3:4433, node7.example or [fd00::1]:0",
                )),
            };
        if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            return Err(invalid(
                "an unspecified address cannot be dialled; give this host's name or address",
            ));
        }
        if rustls_pki_types::ServerName::try_from(host.as_str()).is_err() {
            return Err(invalid("the host is neither a DNS name nor an IP address"));
        }
        let target = Target {
            addr: join(&host, if given_port == 0 { port } else { given_port }),
            server_name: host,
        };
        let advertised = Advertised {
            local: target.clone(),
            remote: target,
        };
        return Ok((advertised, Source::Configured));
    }
    let configured_name = server_name.to_owned();
    if bound.ip().is_unspecified() {
        let loopback: IpAddr = match bound.ip() {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let host = routable();
        return Ok((
            Advertised {
                local: Target {
                    addr: SocketAddr::new(loopback, port).to_string(),
                    server_name: configured_name,
                },
                remote: Target {
                    addr: join(&host, port),
                    server_name: host,
                },
            },
            Source::Found,
        ));
    }
    let target = Target {
        addr: bound.to_string(),
        server_name: configured_name,
    };
    Ok((
        Advertised {
            local: target.clone(),
            remote: target,
        },
        Source::Bound,
    ))
}

/// Whether `names` (a certificate's subject alternative names: DNS names
/// and IP addresses as text) covers `host`, as a worker's check would:
/// DNS names case-insensitively, a `*.` wildcard for one label, IP
/// addresses by value.
pub(crate) fn names_host(names: &[String], host: &str) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return names.iter().any(|n| n.parse::<IpAddr>() == Ok(ip));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    names.iter().any(|name| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => name == host,
        }
    })
}

/// The subject alternative names (DNS names and IP addresses, as text) of
/// the first certificate in the PEM file `path`.
pub(crate) fn cert_names(path: &std::path::Path) -> Result<Vec<String>, crate::tls::TlsError> {
    let certs = crate::tls::load::load_certs(path)?;
    let mut names = Vec::new();
    let Some(first) = certs.first() else {
        return Ok(names);
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(first.as_ref()) else {
        // load_certs parsed it already; nothing to name if it did not.
        return Ok(names);
    };
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(s) => names.push(s.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        names.push(IpAddr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        names.push(IpAddr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(names)
}

/// The error for a certificate that does not name the advertised `host`.
pub(crate) fn missing_name(host: &str, cert: &std::path::Path, names: &[String]) -> ConfigError {
    ConfigError::Invalid {
        name: "advertise address",
        value: host.to_owned(),
        problem: format!(
            "the allocator's certificate {} does not name {host} (it names {}), so workers that dial it would refuse it; add the name: quicmesh certs --san {host} --force (for the development certificates), or issue a certificate that names it",
            cert.display(),
            if names.is_empty() { "nothing".to_owned() } else { names.join(", ") },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn never() -> String {
        panic!("routable host looked up although not needed")
    }

    #[test]
    fn configured_address_wins_and_port_zero_means_the_bound_port() {
        for (given, want) in [
            ("10.1.2.3:0", "10.1.2.3:4433"),
            ("10.1.2.3", "10.1.2.3:4433"),
            ("node7.example:5000", "node7.example:5000"),
            ("[fd00::1]:0", "[fd00::1]:4433"),
            ("fd00::1", "[fd00::1]:4433"),
        ] {
            let (adv, source) =
                decide(addr("0.0.0.0:4433"), Some(given), "localhost", never).expect(given);
            assert_eq!(source, Source::Configured);
            assert_eq!(adv.local, adv.remote);
            assert_eq!(adv.remote.addr, want, "{given}");
            assert!(!adv.remote.server_name.contains(':') || given.contains("fd00"));
        }
        let (adv, _) = decide(
            addr("0.0.0.0:4433"),
            Some("node7.example"),
            "localhost",
            never,
        )
        .expect("name");
        assert_eq!(adv.remote.server_name, "node7.example");
    }

    #[test]
    fn bad_advertise_addresses_are_refused_naming_the_setting() {
        for bad in [
            "",
            "0.0.0.0:0",
            "[::]",
            "host:port:9",
            "a b:1",
            "bad_name!:1",
        ] {
            let err = decide(addr("0.0.0.0:1"), Some(bad), "localhost", never).expect_err(bad);
            assert!(
                matches!(
                    &err,
                    ConfigError::Invalid {
                        name: "advertise address",
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn unspecified_listen_gives_loopback_here_and_the_routable_host_elsewhere() {
        let (adv, source) = decide(addr("0.0.0.0:4433"), None, "localhost", || {
            "192.0.2.44".into()
        })
        .expect("v4");
        assert_eq!(source, Source::Found);
        assert_eq!(adv.local.addr, "127.0.0.1:4433");
        assert_eq!(adv.local.server_name, "localhost");
        assert_eq!(adv.remote.addr, "192.0.2.44:4433");
        assert_eq!(adv.remote.server_name, "192.0.2.44");
        let (adv, _) =
            decide(addr("[::]:9"), None, "localhost", || "2001:db8::5".into()).expect("v6");
        assert_eq!(adv.local.addr, "[::1]:9");
        assert_eq!(adv.remote.addr, "[2001:db8::5]:9");
        let (adv, _) =
            decide(addr("0.0.0.0:9"), None, "localhost", || "node3".into()).expect("name");
        assert_eq!(adv.remote.addr, "node3:9");
    }

    #[test]
    fn a_specified_listen_address_is_handed_out_as_it_is() {
        let (adv, source) =
            decide(addr("127.0.0.1:4433"), None, "mesh.example", never).expect("bound");
        assert_eq!(source, Source::Bound);
        assert_eq!(adv.local, adv.remote);
        assert_eq!(adv.remote.addr, "127.0.0.1:4433");
        assert_eq!(adv.remote.server_name, "mesh.example");
    }

    #[test]
    fn the_routable_host_is_dialable() {
        let host = routable_host();
        assert!(!host.is_empty());
        if let Ok(ip) = host.parse::<IpAddr>() {
            assert!(usable(ip), "{ip}");
        }
    }

    #[test]
    fn certificate_names_are_matched_as_a_worker_would() {
        let names: Vec<String> = [
            "localhost",
            "127.0.0.1",
            "::1",
            "*.nodes.example",
            "Mesh.Example",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for yes in [
            "localhost",
            "127.0.0.1",
            "0:0:0:0:0:0:0:1",
            "n1.nodes.example",
            "mesh.example",
        ] {
            assert!(names_host(&names, yes), "{yes}");
        }
        for no in [
            "127.0.0.2",
            "nodes.example",
            "a.b.nodes.example",
            "10.0.0.1",
            "other",
        ] {
            assert!(!names_host(&names, no), "{no}");
        }
        let err = missing_name("10.0.0.9", std::path::Path::new("/c/server.pem"), &names);
        let text = err.to_string();
        assert!(
            text.contains("10.0.0.9") && text.contains("/c/server.pem"),
            "{text}"
        );
        assert!(
            text.contains("quicmesh certs --san 10.0.0.9 --force"),
            "{text}"
        );
    }
}
