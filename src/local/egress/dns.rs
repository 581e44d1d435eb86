//! The sandbox's DNS server: a minimal responder for the queries stub resolvers send (one
//! question, class IN). `A` questions are answered from the operator's static names, then the
//! host's resolver; `AAAA` and other types get an empty answer (sandboxes reach the world over
//! IPv4 only), unresolvable names `NXDOMAIN`, names the sandbox's egress rules refuse
//! `REFUSED`.

use std::net::Ipv4Addr;

/// DNS record type `A`.
pub(crate) const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// One parsed query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Query {
    id: u16,
    /// Recursion desired (echoed back).
    rd: bool,
    /// The lower-cased name, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    qclass: u16,
    /// The raw question section (echoed back).
    question: Vec<u8>,
}

/// Why a packet is not a query this server answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Too short or malformed: drop it (or FORMERR when the header could be read).
    Malformed(Option<u16>),
    /// A response, or an opcode other than QUERY.
    NotAQuery(u16),
}

/// Parses a query packet.
pub(crate) fn parse(pkt: &[u8]) -> Result<Query, ParseError> {
    if pkt.len() < 12 {
        return Err(ParseError::Malformed(None));
    }
    let id = u16::from_be_bytes([pkt[0], pkt[1]]);
    let flags = u16::from_be_bytes([pkt[2], pkt[3]]);
    let qr = flags >> 15;
    let opcode = (flags >> 11) & 0xf;
    if qr != 0 || opcode != 0 {
        return Err(ParseError::NotAQuery(id));
    }
    let qdcount = u16::from_be_bytes([pkt[4], pkt[5]]);
    if qdcount != 1 {
        return Err(ParseError::Malformed(Some(id)));
    }
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = *pkt.get(pos).ok_or(ParseError::Malformed(Some(id)))? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        // compression pointers never appear in a query's only question
        if len > 63 {
            return Err(ParseError::Malformed(Some(id)));
        }
        let label = pkt
            .get(pos..pos + len)
            .ok_or(ParseError::Malformed(Some(id)))?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let tail = pkt
        .get(pos..pos + 4)
        .ok_or(ParseError::Malformed(Some(id)))?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query {
        id,
        rd: flags & 0x0100 != 0,
        name: labels.join("."),
        qtype,
        qclass,
        question: pkt[12..pos + 4].to_vec(),
    })
}

/// What to answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// These addresses (possibly none: "no records of this type").
    Addrs(Vec<Ipv4Addr>),
    /// The name does not exist.
    NxDomain,
    /// Resolution failed.
    ServFail,
    /// Policy forbids the name (the sandbox's egress rules).
    Refused,
}

/// Whether the query is one this server resolves (class IN, type A); other types are answered
/// with no records without resolving.
pub(crate) fn wants_a(q: &Query) -> bool {
    q.qclass == CLASS_IN && q.qtype == TYPE_A
}

fn header(id: u16, rd: bool, rcode: u8, qd: u16, an: u16) -> Vec<u8> {
    // QR=1, AA=0, RA=1
    let flags: u16 = 0x8000 | if rd { 0x0100 } else { 0 } | 0x0080 | u16::from(rcode);
    let mut v = Vec::with_capacity(64);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&qd.to_be_bytes());
    v.extend_from_slice(&an.to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}

/// The response packet for `q`.
pub(crate) fn respond(q: &Query, answer: &Answer, ttl: u32) -> Vec<u8> {
    if q.qclass != CLASS_IN {
        let mut v = header(q.id, q.rd, RCODE_NOTIMP, 1, 0);
        v.extend_from_slice(&q.question);
        return v;
    }
    let (rcode, addrs): (u8, &[Ipv4Addr]) = match answer {
        Answer::Addrs(a) if q.qtype == TYPE_A => (0, a),
        Answer::Addrs(_) => (0, &[]),
        Answer::NxDomain => (RCODE_NXDOMAIN, &[]),
        Answer::ServFail => (RCODE_SERVFAIL, &[]),
        Answer::Refused => (RCODE_REFUSED, &[]),
    };
    let an = u16::try_from(addrs.len().min(32)).unwrap_or(32);
    let mut v = header(q.id, q.rd, rcode, 1, an);
    v.extend_from_slice(&q.question);
    for a in addrs.iter().take(usize::from(an)) {
        // name: pointer to the question's name at offset 12
        v.extend_from_slice(&[0xc0, 0x0c]);
        v.extend_from_slice(&TYPE_A.to_be_bytes());
        v.extend_from_slice(&CLASS_IN.to_be_bytes());
        v.extend_from_slice(&ttl.to_be_bytes());
        v.extend_from_slice(&4u16.to_be_bytes());
        v.extend_from_slice(&a.octets());
    }
    v
}

/// The error response for a packet that could not be parsed, when it has an id.
pub(crate) fn error_response(e: &ParseError) -> Option<Vec<u8>> {
    match e {
        ParseError::Malformed(Some(id)) => Some(header(*id, false, RCODE_FORMERR, 0, 0)),
        ParseError::NotAQuery(id) => Some(header(*id, false, RCODE_NOTIMP, 0, 0)),
        ParseError::Malformed(None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut v = vec![];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(&0x0100u16.to_be_bytes());
        v.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        v
    }

    #[test]
    fn parses_and_answers_a_query() {
        let pkt = query(0xbeef, "Api.Example.COM", TYPE_A);
        let q = parse(&pkt).unwrap();
        assert_eq!(q.name, "api.example.com");
        assert!(wants_a(&q));
        let ips = vec![Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(10, 1, 2, 4)];
        let r = respond(&q, &Answer::Addrs(ips), 30);
        assert_eq!(&r[0..2], &0xbeefu16.to_be_bytes());
        assert_eq!(r[2] & 0x80, 0x80, "QR set");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 2, "two answers");
        // question echoed, then the first answer's address
        let qlen = pkt.len() - 12;
        let first = 12 + qlen;
        assert_eq!(&r[first..first + 2], &[0xc0, 0x0c]);
        assert_eq!(&r[first + 12..first + 16], &[10, 1, 2, 3]);
        assert_eq!(r.len(), 12 + qlen + 2 * 16);
    }

    #[test]
    fn other_types_get_no_records_and_failures_their_rcode() {
        let q = parse(&query(7, "example.com", 28)).unwrap();
        assert!(!wants_a(&q));
        let r = respond(&q, &Answer::Addrs(vec![Ipv4Addr::LOCALHOST]), 30);
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        assert_eq!(r[3] & 0x0f, 0);
        let q = parse(&query(8, "nope.test", TYPE_A)).unwrap();
        assert_eq!(respond(&q, &Answer::NxDomain, 30)[3] & 0x0f, RCODE_NXDOMAIN);
        assert_eq!(respond(&q, &Answer::ServFail, 30)[3] & 0x0f, RCODE_SERVFAIL);
        let refused = respond(&q, &Answer::Refused, 30);
        assert_eq!(refused[3] & 0x0f, RCODE_REFUSED);
        assert_eq!(
            u16::from_be_bytes([refused[6], refused[7]]),
            0,
            "no answers"
        );
    }

    #[test]
    fn malformed_packets() {
        assert_eq!(parse(&[0; 5]), Err(ParseError::Malformed(None)));
        let mut pkt = query(9, "example.com", TYPE_A);
        pkt.truncate(pkt.len() - 2);
        let e = parse(&pkt).unwrap_err();
        assert_eq!(e, ParseError::Malformed(Some(9)));
        assert_eq!(error_response(&e).unwrap()[3] & 0x0f, RCODE_FORMERR);
        let mut resp = query(10, "example.com", TYPE_A);
        resp[2] |= 0x80;
        assert_eq!(parse(&resp), Err(ParseError::NotAQuery(10)));
        let mut label = query(11, "example.com", TYPE_A);
        label[12] = 0xc0;
        assert_eq!(parse(&label), Err(ParseError::Malformed(Some(11))));
    }
}
