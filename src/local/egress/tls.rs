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
