//! TLS interception for brokered hosts only: the backend's own certificate authority
//! (generated at every start, private key in memory only, certificate installed in the
//! sandboxes' trust store) issues a certificate for the host the sandbox connects to; the
//! proxy then speaks TLS to the real upstream, verifying it against the host's trust store
//! plus any roots the operator added.
//!
//! Connections to hosts that no bound secret covers are never intercepted.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::super::fault::lock;

/// The backend's interception CA and the TLS settings built on it.
pub(crate) struct Mitm {
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
    issued: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Mitm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mitm").finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Mitm {
    /// A fresh CA; upstreams are verified against `roots_pem` (PEM bundles: the host's trust
    /// store and the operator's extra roots).
    pub(crate) fn new(roots_pem: &[Vec<u8>]) -> io::Result<Mitm> {
        let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "superserve local egress CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).map_err(tls_err)?;
        let ca_pem = ca_cert.pem();

        let mut roots = rustls::RootCertStore::empty();
        for pem in roots_pem {
            for cert in CertificateDer::pem_slice_iter(pem).flatten() {
                let _ = roots.add(cert);
            }
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Mitm {
            ca_cert,
            ca_key,
            ca_pem,
            issued: Mutex::new(HashMap::new()),
            client: Arc::new(client),
        })
    }

    /// The CA certificate (PEM), for the sandboxes' trust store.
    pub(crate) fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn server_config(&self, host: &str) -> io::Result<Arc<rustls::ServerConfig>> {
        if let Some(c) = lock(&self.issued).get(host) {
            return Ok(c.clone());
        }
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(tls_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .map_err(tls_err)?;
        let chain = vec![cert.der().clone(), self.ca_cert.der().clone()];
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(tls_err)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut issued = lock(&self.issued);
        if issued.len() > 1024 {
            issued.clear();
        }
        issued.insert(host.to_owned(), config.clone());
        Ok(config)
    }

    /// Completes the sandbox's TLS handshake as `host`.
    pub(crate) async fn accept<S>(
        &self,
        host: &str,
        client: S,
    ) -> io::Result<tokio_rustls::server::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.server_config(host)?;
        tokio_rustls::TlsAcceptor::from(config).accept(client).await
    }

    /// Opens TLS to the real `host` over `upstream`, verifying its certificate.
    pub(crate) async fn connect(
        &self,
        host: &str,
        upstream: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned()).map_err(tls_err)?;
        tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(name, upstream)
            .await
    }
}

/// What the start of a TLS connection says about the server the client wants.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a well-formed ClientHello.
    Malformed,
    /// A ClientHello with this server name (lower-cased, no trailing dot), if it sent one.
    ServerName(Option<String>),
}

/// Reads the server name (SNI) of the ClientHello at the start of `buf` (RFC 8446 §4.1.2,
/// RFC 6066 §3). The ClientHello may span several TLS records.
pub(crate) fn client_hello_server_name(buf: &[u8]) -> Hello {
    // reassemble the handshake bytes of the leading handshake records
    let mut hs = Vec::new();
    let mut at = 0;
    loop {
        let Some(head) = buf.get(at..at + 5) else {
            return Hello::Incomplete;
        };
        if head[0] != 0x16 {
            return Hello::Malformed;
        }
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return Hello::Incomplete;
        };
        hs.extend_from_slice(body);
        at += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Hello::Malformed;
            }
            let need =
                4 + ((usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]));
            if hs.len() >= need {
                hs.truncate(need);
                break;
            }
        }
        if at > 64 * 1024 {
            return Hello::Malformed;
        }
    }
    parse_client_hello(&hs[4..]).map_or(Hello::Malformed, Hello::ServerName)
}

/// The server name of a ClientHello body; `None` for a malformed one.
fn parse_client_hello(b: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(b);
    r.take(2 + 32)?; // legacy_version, random
    let sid = usize::from(r.u8()?);
    r.take(sid)?;
    let suites = usize::from(r.u16()?);
    r.take(suites)?;
    let comp = usize::from(r.u8()?);
    r.take(comp)?;
    if r.0.is_empty() {
        return Some(None); // no extensions
    }
    let ext_len = usize::from(r.u16()?);
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = usize::from(exts.u16()?);
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        // server_name: a list of (type, name); type 0 is a host name
        let mut list = Reader(data);
        let list_len = usize::from(list.u16()?);
        let mut names = Reader(list.take(list_len)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let n = usize::from(names.u16()?);
            let name = names.take(n)?;
            if kind == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello (rustls) for `name`, split into `records` TLS records.
    fn hello(name: Option<&str>, records: usize) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let server = match name {
            Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
            None => ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, 1).into()),
        };
        let mut conn = rustls::ClientConnection::new(config, server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        if records < 2 {
            return out;
        }
        // re-frame the handshake into `records` records
        let body = out[5..].to_vec();
        let step = body.len().div_ceil(records);
        let mut framed = Vec::new();
        for chunk in body.chunks(step) {
            framed.extend_from_slice(&[0x16, 3, 1]);
            framed.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            framed.extend_from_slice(chunk);
        }
        framed
    }

    #[test]
    fn server_names_of_client_hellos() {
        let h = hello(Some("API.Example.test"), 1);
        assert_eq!(
            client_hello_server_name(&h),
            Hello::ServerName(Some("api.example.test".into()))
        );
        assert_eq!(
            client_hello_server_name(&h[..h.len() - 1]),
            Hello::Incomplete
        );
        assert_eq!(client_hello_server_name(&h[..3]), Hello::Incomplete);
        let split = hello(Some("split.example.test"), 3);
        assert_eq!(
            client_hello_server_name(&split),
            Hello::ServerName(Some("split.example.test".into()))
        );
        // an IP address is never sent as a server name
        assert_eq!(
            client_hello_server_name(&hello(None, 1)),
            Hello::ServerName(None)
        );
        assert_eq!(
            client_hello_server_name(b"GET / HTTP/1.1\r\n"),
            Hello::Malformed
        );
        let mut bad = h.clone();
        bad[5] = 2; // a ServerHello
        assert_eq!(client_hello_server_name(&bad), Hello::Malformed);
    }
}
