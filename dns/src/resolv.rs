//! Upstream servers from the host's resolv.conf (the daemon reads the file, and re-reads
//! it when it changes; this is the pure part).

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// The `nameserver` entries of resolv.conf `text`, port 53, in order, without
/// duplicates and without ourselves.
///
/// `ourselves` are the addresses our DNS server listens on. An entry is ourselves if it
/// is one of them, or if we listen on port 53 of the unspecified address (all
/// interfaces) or of a loopback address and the entry is a loopback (or unspecified, which
/// resolvers read as local) address: forwarding to it would loop back to us. Unparsable
/// entries and interface-scoped IPv6 entries with a non-numeric zone are skipped.
/// `options`, `search` and `domain` are irrelevant to forwarding and ignored.
pub fn parse_resolv_conf(text: &str, ourselves: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(server) = words.next().and_then(parse_server) else {
            continue;
        };
        if !is_ourselves(server, ourselves) && !out.contains(&server) {
            out.push(server);
        }
    }
    out
}

fn parse_server(word: &str) -> Option<SocketAddr> {
    if let Some((addr, zone)) = word.split_once('%') {
        let addr: Ipv6Addr = addr.parse().ok()?;
        let scope: u32 = zone.parse().ok()?;
        return Some(SocketAddr::V6(SocketAddrV6::new(addr, 53, 0, scope)));
    }
    let ip: IpAddr = word.parse().ok()?;
    Some(SocketAddr::new(ip, 53))
}

fn is_ourselves(server: SocketAddr, ourselves: &[SocketAddr]) -> bool {
    let local_ip = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    ourselves.iter().any(|us| {
        us.port() == server.port()
            && (us.ip() == server.ip() || (local_ip(us.ip()) && local_ip(server.ip())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "\
# generated
search example.invalid
options ndots:5
nameserver 192.0.2.53
nameserver 198.51.100.53 # second
nameserver 192.0.2.53
nameserver not-an-address
nameserver 2001:db8::53
nameserver fe80::1%2
nameserver fe80::1%eth0
; nameserver 203.0.113.9
nameserver 127.0.0.53
";

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn reads_nameservers_in_order_without_duplicates() {
        let got = parse_resolv_conf(CONF, &addrs(&["198.18.0.1:53"]));
        let mut want = addrs(&["192.0.2.53:53", "198.51.100.53:53", "[2001:db8::53]:53"]);
        want.push(SocketAddr::V6(SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            53,
            0,
            2,
        )));
        want.push("127.0.0.53:53".parse().unwrap());
        assert_eq!(got, want);
    }

    #[test]
    fn skips_ourselves() {
        let got = parse_resolv_conf(CONF, &addrs(&["192.0.2.53:53"]));
        assert!(!got.contains(&"192.0.2.53:53".parse().unwrap()));
        // Listening on all interfaces or loopback: loopback servers are us.
        for us in ["0.0.0.0:53", "127.0.0.1:53"] {
            let got = parse_resolv_conf(CONF, &addrs(&[us]));
            assert!(!got.iter().any(|s| s.ip().is_loopback()), "{us}: {got:?}");
            assert!(got.contains(&"192.0.2.53:53".parse().unwrap()));
        }
        // On another port we are not reachable as a nameserver entry.
        let got = parse_resolv_conf(CONF, &addrs(&["127.0.0.1:5353"]));
        assert!(got.contains(&"127.0.0.53:53".parse().unwrap()));
        assert!(parse_resolv_conf("nameserver 0.0.0.0\n", &addrs(&["0.0.0.0:53"])).is_empty());
    }
}
