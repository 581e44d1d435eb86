//! Egress rules: which destinations a sandbox may connect to, and which names its DNS may
//! resolve; [`SandboxPolicy`] is how the proxy asks the backend for a sandbox's rules.
//!
//! Order of evaluation, per connection (protocol.md §8 NetworkConfig):
//! 1. unless the backend's operator allowed the destination explicitly
//!    ([`LocalServerBuilder::allow_private_destination`](crate::local::LocalServerBuilder::allow_private_destination)),
//!    these are always blocked: the host's own addresses (`host:<ip>`), the special-purpose
//!    ranges of RFC 6890 and its updates ([`SPECIAL_PURPOSE`], `<kind>:<cidr>`), and the
//!    networks the host's interfaces are on, its uplink included (`host-network:<cidr>`);
//! 2. an `allow_out` entry that matches (a CIDR containing the address, or a domain pattern
//!    matching a name the sandbox resolved to it) lets it through;
//! 3. a matching `deny_out` CIDR blocks it (`0.0.0.0/0` blocks everything not allowed);
//! 4. anything else is allowed.
//!
//! DNS follows the same rules ([`refuse_name`]): a name no rule could allow is never looked
//! up, and answers only carry addresses a connection could go to.

use std::net::{IpAddr, Ipv4Addr};

use super::super::domain::domain_matches;
use super::super::model::{Binding, Network};

/// What the proxy asks about the sandbox it serves, at every connection (so that a live
/// update of the rules or bindings applies at once). The backend's sandbox records implement
/// it; the proxy holds it weakly and treats a sandbox that is gone as having no way out.
pub(crate) trait SandboxPolicy: Send + Sync {
    /// The sandbox's egress rules and secret bindings now; `None` once it is deleted.
    fn rules(&self) -> Option<(Option<Network>, Vec<Binding>)>;
    /// The sandbox's name now (for the secret audit); `None` once it is deleted.
    fn name(&self) -> Option<String>;
}

/// An IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr4 {
    net: u32,
    prefix: u8,
}

impl Cidr4 {
    /// The network of `ip` with a `prefix`-bit mask (`prefix` is capped at 32).
    pub(crate) const fn new(ip: Ipv4Addr, prefix: u8) -> Cidr4 {
        let prefix = if prefix > 32 { 32 } else { prefix };
        Cidr4 {
            net: ip.to_bits() & mask(prefix),
            prefix,
        }
    }

    /// The network of an interface address and its netmask (the mask's leading ones).
    pub(crate) fn from_netmask(ip: Ipv4Addr, netmask: Ipv4Addr) -> Cidr4 {
        let ones = u32::from(netmask).leading_ones();
        Cidr4::new(ip, u8::try_from(ones).unwrap_or(32))
    }

    /// Parses `a.b.c.d` or `a.b.c.d/n`. IPv6 networks and malformed text give `None`.
    pub(crate) fn parse(s: &str) -> Option<Cidr4> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, p.parse::<u8>().ok().filter(|p| *p <= 32)?),
            None => (s, 32),
        };
        Some(Cidr4::new(ip.parse().ok()?, prefix))
    }

    /// Whether `ip` is inside the network.
    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.net
    }

    /// Whether the network is all of IPv4 (`0.0.0.0/0`).
    fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

impl std::fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.net), self.prefix)
    }
}

const fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    }
}

const fn net(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr4 {
    Cidr4::new(Ipv4Addr::new(a, b, c, d), prefix)
}

/// Special-purpose IPv4 ranges (RFC 6890 and its updates, the IANA special-purpose address
/// registry) with the name the network log gives them. No sandbox reaches them unless the
/// operator allows them. The first match names the range (broadcast before reserved).
pub(crate) const SPECIAL_PURPOSE: &[(Cidr4, &str)] = &[
    (net(0, 0, 0, 0, 8), "this-network"),                 // RFC 791
    (net(10, 0, 0, 0, 8), "private"),                     // RFC 1918
    (net(100, 64, 0, 0, 10), "shared-address-space"),     // RFC 6598 (CGNAT)
    (net(127, 0, 0, 0, 8), "loopback"),                   // RFC 1122
    (net(169, 254, 0, 0, 16), "link-local"),              // RFC 3927
    (net(172, 16, 0, 0, 12), "private"),                  // RFC 1918
    (net(192, 0, 0, 0, 24), "ietf-protocol-assignments"), // RFC 6890
    (net(192, 0, 2, 0, 24), "documentation"),             // RFC 5737 TEST-NET-1
    (net(192, 31, 196, 0, 24), "as112"),                  // RFC 7535
    (net(192, 52, 193, 0, 24), "amt"),                    // RFC 7450
    (net(192, 88, 99, 0, 24), "6to4-relay-anycast"),      // RFC 7526 (deprecated)
    (net(192, 168, 0, 0, 16), "private"),                 // RFC 1918
    (net(192, 175, 48, 0, 24), "as112"),                  // RFC 7534
    (net(198, 18, 0, 0, 15), "benchmarking"),             // RFC 2544
    (net(198, 51, 100, 0, 24), "documentation"),          // RFC 5737 TEST-NET-2
    (net(203, 0, 113, 0, 24), "documentation"),           // RFC 5737 TEST-NET-3
    (net(224, 0, 0, 0, 4), "multicast"),                  // RFC 5771
    (net(255, 255, 255, 255, 32), "broadcast"),           // RFC 919
    (net(240, 0, 0, 0, 4), "reserved"),                   // RFC 1112
];

/// The special-purpose range containing `ip`, as `"<kind>:<cidr>"`.
pub(crate) fn special_purpose(ip: Ipv4Addr) -> Option<String> {
    SPECIAL_PURPOSE
        .iter()
        .find(|(c, _)| c.contains(ip))
        .map(|(c, kind)| format!("{kind}:{c}"))
}

/// What the host itself is: its interfaces' addresses and the networks they are on.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostNetworks {
    /// The host's own IPv4 addresses.
    pub addrs: Vec<Ipv4Addr>,
    /// The networks of those addresses (the uplink's subnet, bridges, veths, ...).
    pub nets: Vec<Cidr4>,
}

impl HostNetworks {
    /// From `(address, netmask)` pairs of the host's interfaces.
    pub(crate) fn from_interfaces(ifs: &[(Ipv4Addr, Ipv4Addr)]) -> HostNetworks {
        let mut h = HostNetworks::default();
        for (addr, netmask) in ifs {
            h.addrs.push(*addr);
            let n = Cidr4::from_netmask(*addr, *netmask);
            if !h.nets.contains(&n) {
                h.nets.push(n);
            }
        }
        h
    }
}

/// The always-blocked reason for `ip` (see the module docs), unless the operator allowed it.
fn always_blocked(operator_allowed: &[Cidr4], host: &HostNetworks, ip: Ipv4Addr) -> Option<String> {
    if operator_allowed.iter().any(|c| c.contains(ip)) {
        return None;
    }
    if host.addrs.contains(&ip) {
        return Some(format!("host:{ip}"));
    }
    special_purpose(ip).or_else(|| {
        host.nets
            .iter()
            .find(|n| n.contains(ip))
            .map(|n| format!("host-network:{n}"))
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

/// Whether an `allow_out` rule names an IPv4 network (not a domain, not IPv6).
fn as_cidr(rule: &str) -> Option<Cidr4> {
    Cidr4::parse(rule)
}

/// Whether an `allow_out` rule is a domain pattern.
fn is_domain(rule: &str) -> bool {
    as_cidr(rule).is_none() && rule.parse::<IpAddr>().is_err() && !rule.contains(':')
}

/// Decides one connection to `ip`, which the sandbox resolved from `names` (none when it
/// connects by address).
pub(crate) fn decide(
    rules: Option<&Network>,
    operator_allowed: &[Cidr4],
    host: &HostNetworks,
    names: &[String],
    ip: Ipv4Addr,
) -> Verdict {
    if let Some(reason) = always_blocked(operator_allowed, host, ip) {
        return Verdict::Blocked(reason);
    }
    let Some(rules) = rules else {
        return Verdict::Allowed;
    };
    let allowed = rules
        .allow_out
        .iter()
        .flatten()
        .any(|rule| match as_cidr(rule) {
            Some(c) => c.contains(ip),
            None => is_domain(rule) && names.iter().any(|n| domain_matches(rule, n)),
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

/// The rule that keeps the sandbox from ever connecting anywhere under `name`, whatever it
/// resolves to: a `deny_out` of all IPv4 with no `allow_out` domain pattern matching `name`
/// and no `allow_out` network. Such a name is not looked up at all.
pub(crate) fn refuse_name(rules: Option<&Network>, name: &str) -> Option<String> {
    let rules = rules?;
    let deny_all = rules
        .deny_out
        .iter()
        .flatten()
        .find(|r| Cidr4::parse(r).is_some_and(|c| c.is_everything()))?;
    let mut allow = rules.allow_out.iter().flatten();
    let could = allow.any(|rule| match as_cidr(rule) {
        Some(_) => true,
        None => is_domain(rule) && domain_matches(rule, name),
    });
    (!could).then(|| deny_all.clone())
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

    const NO_HOST: &HostNetworks = &HostNetworks {
        addrs: Vec::new(),
        nets: Vec::new(),
    };

    fn names(n: Option<&str>) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// `decide` on a host with no interfaces of its own.
    fn decide(rules: Option<&Network>, op: &[Cidr4], name: Option<&str>, at: Ipv4Addr) -> Verdict {
        super::decide(rules, op, NO_HOST, &names(name), at)
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
        let c = Cidr4::from_netmask(ip("192.0.2.2"), ip("255.255.255.0"));
        assert_eq!(c.to_string(), "192.0.2.0/24");
    }

    #[test]
    fn special_purpose_ranges_are_named() {
        for (addr, rule) in [
            ("0.1.2.3", "this-network:0.0.0.0/8"),
            ("100.64.0.1", "shared-address-space:100.64.0.0/10"),
            ("192.0.0.9", "ietf-protocol-assignments:192.0.0.0/24"),
            ("192.0.2.1", "documentation:192.0.2.0/24"),
            ("198.18.0.1", "benchmarking:198.18.0.0/15"),
            ("198.19.255.255", "benchmarking:198.18.0.0/15"),
            ("198.51.100.7", "documentation:198.51.100.0/24"),
            ("203.0.113.5", "documentation:203.0.113.0/24"),
            ("224.0.0.251", "multicast:224.0.0.0/4"),
            ("239.255.255.250", "multicast:224.0.0.0/4"),
            ("240.0.0.1", "reserved:240.0.0.0/4"),
            ("255.255.255.255", "broadcast:255.255.255.255/32"),
            ("192.88.99.1", "6to4-relay-anycast:192.88.99.0/24"),
        ] {
            assert_eq!(
                decide(None, &[], None, ip(addr)),
                Verdict::Blocked(rule.into())
            );
        }
        for public in [
            "8.8.8.8",
            "100.128.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "1.1.1.1",
        ] {
            assert_eq!(
                decide(None, &[], None, ip(public)),
                Verdict::Allowed,
                "{public}"
            );
        }
    }

    #[test]
    fn the_host_and_its_networks_are_blocked_unless_the_operator_allows_them() {
        let host = HostNetworks::from_interfaces(&[
            (ip("127.0.0.1"), ip("255.0.0.0")),
            (ip("101.64.0.1"), ip("255.255.255.252")),
            (ip("203.0.113.77"), ip("255.255.255.255")),
        ]);
        let d = |op: &[Cidr4], at: &str| super::decide(None, op, &host, &[], ip(at));
        assert_eq!(
            d(&[], "101.64.0.1"),
            Verdict::Blocked("host:101.64.0.1".into())
        );
        // a neighbour on the host's network, and the host's own address first
        assert_eq!(
            d(&[], "101.64.0.2"),
            Verdict::Blocked("host-network:101.64.0.0/30".into())
        );
        assert_eq!(
            d(&[], "203.0.113.77"),
            Verdict::Blocked("host:203.0.113.77".into())
        );
        assert_eq!(d(&[], "101.64.0.5"), Verdict::Allowed);
        let op = [Cidr4::parse("101.64.0.2/32").unwrap()];
        assert_eq!(d(&op, "101.64.0.2"), Verdict::Allowed);
    }

    #[test]
    fn names_no_rule_could_allow_are_refused() {
        let strict = net(&["ok.test", "*.api.test"], &["0.0.0.0/0"]);
        assert_eq!(refuse_name(Some(&strict), "ok.test"), None);
        assert_eq!(refuse_name(Some(&strict), "v1.api.test"), None);
        assert_eq!(
            refuse_name(Some(&strict), "other.test"),
            Some("0.0.0.0/0".into())
        );
        // an allowed network might hold the name's addresses: resolved, then filtered
        let cidr = net(&["93.184.216.0/24"], &["0.0.0.0/0"]);
        assert_eq!(refuse_name(Some(&cidr), "other.test"), None);
        // without a deny of everything any name might resolve somewhere allowed
        assert_eq!(
            refuse_name(Some(&net(&[], &["8.8.0.0/16"])), "x.test"),
            None
        );
        assert_eq!(refuse_name(None, "x.test"), None);
        let ipv6_only = net(&["2001:db8::/32"], &["0.0.0.0/0"]);
        assert_eq!(
            refuse_name(Some(&ipv6_only), "x.test"),
            Some("0.0.0.0/0".into())
        );
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
