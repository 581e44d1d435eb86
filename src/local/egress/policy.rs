//! Egress rules: which destinations a sandbox may connect to.
//!
//! Order of evaluation, per connection (protocol.md §8 NetworkConfig):
//! 1. private, loopback, link-local and other non-public IPv4 ranges are always blocked,
//!    unless the backend's operator allowed the destination explicitly;
//! 2. an `allow_out` entry that matches (a CIDR containing the address, or a domain pattern
//!    matching the name the sandbox resolved) lets it through;
//! 3. a matching `deny_out` CIDR blocks it (`0.0.0.0/0` blocks everything not allowed);
//! 4. anything else is allowed.

use std::net::{IpAddr, Ipv4Addr};

use super::super::domain::domain_matches;
use super::super::model::Network;

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr4 {
    net: u32,
    prefix: u8,
}

impl Cidr4 {
    /// Parses `a.b.c.d` or `a.b.c.d/n`. IPv6 networks and malformed text give `None`.
    pub(crate) fn parse(s: &str) -> Option<Cidr4> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
            None => (s, 32),
        };
        let ip: Ipv4Addr = ip.parse().ok()?;
        Some(Cidr4 {
            net: u32::from(ip) & mask(prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside the network.
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.net
    }
}

impl std::fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.net), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Ranges no sandbox reaches unless the operator allows them: private (RFC 1918), loopback,
/// link-local, CGNAT, "this network", multicast, reserved and broadcast.
const NON_PUBLIC: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared-address-space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
];

/// The always-blocked range containing `ip`, as `"<kind>:<cidr>"`.
pub(crate) fn non_public(ip: Ipv4Addr) -> Option<String> {
    NON_PUBLIC.iter().find_map(|(cidr, kind)| {
        let c = Cidr4::parse(cidr)?;
        c.contains(ip).then(|| format!("{kind}:{cidr}"))
    })
}

/// What the proxy does with a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let it through.
    Allowed,
    /// Refuse it; the rule (or always-blocked range) responsible.
    Blocked(String),
}

/// Decides one connection to `ip` (reached as `host`, when the sandbox resolved a name).
pub(crate) fn decide(
    rules: Option<&Network>,
    operator_allowed: &[Cidr4],
    host: Option<&str>,
    ip: Ipv4Addr,
) -> Verdict {
    if let Some(range) = non_public(ip) {
        if !operator_allowed.iter().any(|c| c.contains(ip)) {
            return Verdict::Blocked(range);
        }
    }
    let Some(rules) = rules else {
        return Verdict::Allowed;
    };
    let allowed = rules.allow_out.iter().flatten().any(|rule| {
        match Cidr4::parse(rule) {
            Some(c) => c.contains(ip),
            // an IPv6 CIDR never matches an IPv4 destination; anything else is a domain
            None if rule.parse::<IpAddr>().is_ok() || rule.contains(':') => false,
            None => host.is_some_and(|h| domain_matches(rule, h)),
        }
    });
    if allowed {
        return Verdict::Allowed;
    }
    for rule in rules.deny_out.iter().flatten() {
        if Cidr4::parse(rule).is_some_and(|c| c.contains(ip)) {
            return Verdict::Blocked(rule.clone());
        }
    }
    Verdict::Allowed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(allow: &[&str], deny: &[&str]) -> Network {
        Network {
            allow_out: Some(allow.iter().map(|s| s.to_string()).collect()),
            deny_out: Some(deny.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c = Cidr4::parse("93.184.216.0/24").unwrap();
        assert!(c.contains(ip("93.184.216.34")));
        assert!(!c.contains(ip("93.184.217.1")));
        assert_eq!(Cidr4::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert!(Cidr4::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert_eq!(Cidr4::parse("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert!(Cidr4::parse("1.2.3.4/33").is_none());
        assert!(Cidr4::parse("::/0").is_none());
        assert!(Cidr4::parse("example.com").is_none());
    }

    #[test]
    fn non_public_ranges_are_blocked_unless_the_operator_allows_them() {
        for (addr, kind) in [
            ("10.1.2.3", "private:10.0.0.0/8"),
            ("127.0.0.1", "loopback:127.0.0.0/8"),
            ("169.254.169.254", "link-local:169.254.0.0/16"),
            ("192.168.1.1", "private:192.168.0.0/16"),
            ("172.20.0.1", "private:172.16.0.0/12"),
        ] {
            assert_eq!(
                decide(None, &[], None, ip(addr)),
                Verdict::Blocked(kind.into())
            );
            // even an explicit allow rule does not open them
            let n = net(&[&format!("{addr}/32")], &[]);
            assert_eq!(
                decide(Some(&n), &[], None, ip(addr)),
                Verdict::Blocked(kind.into())
            );
        }
        let op = [Cidr4::parse("10.88.0.0/16").unwrap()];
        assert_eq!(decide(None, &op, None, ip("10.88.3.2")), Verdict::Allowed);
        // operator-allowed destinations still obey the sandbox's rules
        let deny_all = net(&[], &["0.0.0.0/0"]);
        assert_eq!(
            decide(Some(&deny_all), &op, None, ip("10.88.3.2")),
            Verdict::Blocked("0.0.0.0/0".into())
        );
        assert_eq!(decide(None, &[], None, ip("8.8.8.8")), Verdict::Allowed);
    }

    #[test]
    fn allow_wins_over_deny() {
        let n = net(&["*.allowed.test", "93.184.216.0/24"], &["0.0.0.0/0"]);
        assert_eq!(
            decide(Some(&n), &[], Some("api.allowed.test"), ip("1.1.1.1")),
            Verdict::Allowed
        );
        assert_eq!(
            decide(Some(&n), &[], None, ip("93.184.216.34")),
            Verdict::Allowed
        );
        assert_eq!(
            decide(Some(&n), &[], Some("allowed.test"), ip("1.1.1.1")),
            Verdict::Blocked("0.0.0.0/0".into())
        );
        assert_eq!(
            decide(Some(&n), &[], Some("other.test"), ip("1.1.1.1")),
            Verdict::Blocked("0.0.0.0/0".into())
        );
        let partial = net(&[], &["8.8.0.0/16"]);
        assert_eq!(
            decide(Some(&partial), &[], None, ip("8.8.8.8")),
            Verdict::Blocked("8.8.0.0/16".into())
        );
        assert_eq!(
            decide(Some(&partial), &[], None, ip("9.9.9.9")),
            Verdict::Allowed
        );
    }
}
