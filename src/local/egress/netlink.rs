//! The network configuration of a sandbox namespace, sent to the kernel over netlink from the
//! backend itself (running `ip` and `nft` for it cost two processes and most of the
//! namespace's set-up time):
//!
//! ```text
//! ip addr add 10.200.0.2/32 dev lo
//! ip route add default dev lo src 10.200.0.2
//! table ip superserve {
//!   chain egress {
//!     type nat hook output priority -100; policy accept;
//!     ip daddr != 127.0.0.0/8 meta l4proto tcp redirect to :15001
//!     ip daddr != 127.0.0.0/8 udp dport 53 redirect to :53
//!   }
//! }
//! ```
//!
//! The messages are built here (plain bytes); [`super::sys::netlink_transact`] sends them.

use std::io;
use std::net::Ipv4Addr;

use super::sys;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_PREFSRC: u16 = 7;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
/// The loopback device's index in every network namespace.
const LO_INDEX: u32 = 1;
const AF_INET: u8 = 2;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;
const NLA_F_NESTED: u16 = 0x8000;

// attribute numbers (linux/netfilter/nf_tables.h)
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: u32 = 1;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_L4PROTO: u32 = 16;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Netlink attributes being built (4-byte aligned, nests patched on close).
#[derive(Default)]
struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self
    }

    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(kind, &v)
    }

    /// A big-endian u32 (what nf_tables expects).
    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }

    fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut a = Attrs::default();
        inner(&mut a);
        self.put(kind | NLA_F_NESTED, &a.buf)
    }

    /// One expression of a rule.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Attrs)) -> &mut Self {
        self.nest(NFTA_LIST_ELEM, |e| {
            e.str(NFTA_EXPR_NAME, name).nest(NFTA_EXPR_DATA, data);
        })
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32) -> &mut Self {
        self.expr("payload", |d| {
            d.be32(1, NFT_REG_1) // NFTA_PAYLOAD_DREG
                .be32(2, base) // NFTA_PAYLOAD_BASE
                .be32(3, offset) // NFTA_PAYLOAD_OFFSET
                .be32(4, len); // NFTA_PAYLOAD_LEN
        })
    }

    fn cmp(&mut self, op: u32, value: &[u8]) -> &mut Self {
        self.expr("cmp", |d| {
            d.be32(1, NFT_REG_1) // NFTA_CMP_SREG
                .be32(2, op) // NFTA_CMP_OP
                .nest(3, |v| {
                    v.put(NFTA_DATA_VALUE, value);
                }); // NFTA_CMP_DATA
        })
    }

    fn l4proto(&mut self, proto: u8) -> &mut Self {
        self.expr("meta", |d| {
            d.be32(2, NFT_META_L4PROTO).be32(1, NFT_REG_1); // NFTA_META_KEY, _DREG
        })
        .cmp(NFT_CMP_EQ, &[proto])
    }

    /// `redirect to :port`.
    fn redirect(&mut self, port: u16) -> &mut Self {
        self.expr("immediate", |d| {
            d.be32(1, NFT_REG_1).nest(2, |v| {
                v.put(NFTA_DATA_VALUE, &port.to_be_bytes());
            }); // NFTA_IMMEDIATE_DREG, _DATA
        })
        .expr("redir", |d| {
            d.be32(1, NFT_REG_1) // NFTA_REDIR_REG_PROTO_MIN
                .be32(3, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_REDIR_FLAGS
        })
    }

    /// `ip daddr != 127.0.0.0/8`.
    fn not_loopback(&mut self) -> &mut Self {
        self.payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 1)
            .cmp(NFT_CMP_NEQ, &[127])
    }
}

/// Appends one netlink message: header, a fixed `family header`, then attributes.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, head: &[u8], attrs: &[u8]) {
    let len = 16 + head.len() + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(attrs);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// `struct nfgenmsg` for the IPv4 family (or, with `res_id`, for a batch marker).
fn nfgen(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

/// The address and default route (rtnetlink), each acknowledged.
fn route_messages(addr: Ipv4Addr) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    // struct ifaddrmsg { family, prefixlen, flags, scope, index }
    let mut ifa = vec![AF_INET, 32, 0, 0];
    ifa.extend_from_slice(&LO_INDEX.to_ne_bytes());
    let mut a = Attrs::default();
    a.put(IFA_LOCAL, &addr.octets())
        .put(IFA_ADDRESS, &addr.octets());
    message(&mut out, RTM_NEWADDR, flags, 1, &ifa, &a.buf);
    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, flags }
    let mut rtm = vec![
        AF_INET,
        0,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ];
    rtm.extend_from_slice(&0u32.to_ne_bytes());
    let mut a = Attrs::default();
    a.put(RTA_OIF, &LO_INDEX.to_ne_bytes())
        .put(RTA_PREFSRC, &addr.octets());
    message(&mut out, RTM_NEWROUTE, flags, 2, &rtm, &a.buf);
    (out, 2)
}

/// The nf_tables batch: table, chain, the two redirect rules.
fn nftables_batch(proxy_port: u16, dns_port: u16) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let subsys = |m: u16| (NFNL_SUBSYS_NFTABLES << 8) | m;
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    let ip = nfgen(NFPROTO_IPV4, 0);
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        &nfgen(0, NFNL_SUBSYS_NFTABLES),
        &[],
    );
    let mut a = Attrs::default();
    a.str(NFTA_TABLE_NAME, "superserve");
    message(&mut out, subsys(NFT_MSG_NEWTABLE), flags, 1, &ip, &a.buf);
    let mut a = Attrs::default();
    a.str(NFTA_CHAIN_TABLE, "superserve")
        .str(NFTA_CHAIN_NAME, "egress")
        .str(NFTA_CHAIN_TYPE, "nat")
        .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
        .nest(NFTA_CHAIN_HOOK, |h| {
            h.be32(NFTA_HOOK_HOOKNUM, NF_INET_LOCAL_OUT)
                .be32(NFTA_HOOK_PRIORITY, (-100i32) as u32);
        });
    message(&mut out, subsys(NFT_MSG_NEWCHAIN), flags, 2, &ip, &a.buf);
    let rules: [&dyn Fn(&mut Attrs); 2] = [
        &|e| {
            e.not_loopback().l4proto(IPPROTO_TCP).redirect(proxy_port);
        },
        &|e| {
            e.not_loopback()
                .l4proto(IPPROTO_UDP)
                .payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
                .cmp(NFT_CMP_EQ, &53u16.to_be_bytes())
                .redirect(dns_port);
        },
    ];
    for (i, rule) in rules.iter().enumerate() {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, "superserve")
            .str(NFTA_RULE_CHAIN, "egress")
            .nest(NFTA_RULE_EXPRESSIONS, |e| rule(e));
        let flags = flags | 0x800; // NLM_F_APPEND
        message(
            &mut out,
            subsys(NFT_MSG_NEWRULE),
            flags,
            3 + i as u32,
            &ip,
            &a.buf,
        );
    }
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        5,
        &nfgen(0, NFNL_SUBSYS_NFTABLES),
        &[],
    );
    (out, 4)
}

/// Configures the calling thread's network namespace: the sandbox address on loopback, the
/// default route through it, and the redirect rules to the egress proxy (`proxy_port`) and
/// DNS (`dns_port`, for UDP port 53).
pub(crate) fn configure(addr: Ipv4Addr, proxy_port: u16, dns_port: u16) -> io::Result<()> {
    let (msgs, acks) = route_messages(addr);
    sys::netlink_transact(libc::NETLINK_ROUTE, &msgs, acks)
        .map_err(|e| io::Error::new(e.kind(), format!("adding the sandbox address: {e}")))?;
    let (msgs, acks) = nftables_batch(proxy_port, dns_port);
    sys::netlink_transact(libc::NETLINK_NETFILTER, &msgs, acks)
        .map_err(|e| io::Error::new(e.kind(), format!("adding the redirect rules: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of its own (a thread that leaves with it): the kernel takes the
    /// messages as built, and an error it answers (the address exists already: `EEXIST`)
    /// comes back as that error, naming the step. Needs root.
    #[test]
    fn the_kernel_takes_the_messages_and_its_errors_come_back() {
        let outcome = std::thread::spawn(|| {
            let _ns = sys::new_net_namespace().expect("a network namespace (needs root)");
            sys::loopback_up().unwrap();
            let addr = Ipv4Addr::new(10, 200, 0, 2);
            let first = configure(addr, 15001, 53);
            let again = configure(addr, 15001, 53);
            (first, again)
        })
        .join()
        .unwrap();
        outcome.0.expect("the kernel refused the messages");
        let e = outcome.1.expect_err("the address was added twice");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert!(
            e.to_string().starts_with("adding the sandbox address: "),
            "{e}"
        );
    }

    #[test]
    fn attributes_are_padded_and_nests_carry_their_length() {
        let mut a = Attrs::default();
        a.str(1, "nat").nest(4, |h| {
            h.be32(1, 3);
        });
        // "nat\0": 4 + 4 bytes; the nest: 4 + (4 + 4)
        assert_eq!(a.buf.len(), 8 + 12);
        assert_eq!(&a.buf[..8], &[8, 0, 1, 0, b'n', b'a', b't', 0]);
        assert_eq!(u16::from_ne_bytes([a.buf[8], a.buf[9]]), 12);
        assert_eq!(u16::from_ne_bytes([a.buf[10], a.buf[11]]), 4 | NLA_F_NESTED);
        assert_eq!(&a.buf[16..20], &[0, 0, 0, 3]);
    }

    #[test]
    fn the_batch_is_framed_by_begin_and_end() {
        let (b, acks) = nftables_batch(15001, 53);
        assert_eq!(acks, 4);
        let mut kinds = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            kinds.push(u16::from_ne_bytes([b[at + 4], b[at + 5]]));
            at += len.next_multiple_of(4);
        }
        assert_eq!(at, b.len());
        assert_eq!(
            kinds,
            [
                16,
                (10 << 8),
                (10 << 8) | 3,
                (10 << 8) | 6,
                (10 << 8) | 6,
                17
            ]
        );
    }
}
