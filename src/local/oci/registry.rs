//! A small client of the OCI distribution protocol: manifests and blobs of one repository,
//! with the anonymous bearer-token handshake public registries use.

use std::fmt;
use std::path::Path;

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::reference::is_loopback;
use super::OciError;

/// Largest manifest or index accepted (Docker's limit).
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Largest image configuration accepted.
pub(crate) const MAX_CONFIG: u64 = 8 << 20;
/// Largest token answer accepted.
const MAX_TOKEN: u64 = 64 << 10;

pub(crate) const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// One registry endpoint serving one repository.
pub(crate) struct Repo {
    http: reqwest::Client,
    /// `http://127.0.0.1:5000/` or `https://registry-1.docker.io/` (a mirror may add a path).
    base: Url,
    /// For messages: `127.0.0.1:5000`, `registry-1.docker.io`, the mirror's URL.
    pub name: String,
    pub repository: String,
    token: Option<Token>,
}

/// A bearer token; never shown.
struct Token(String);

impl fmt::Debug for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repo")
            .field("base", &self.base.as_str())
            .field("repository", &self.repository)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A fetched manifest: its bytes, media type and digest.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: String,
}

impl Repo {
    /// The registry at `host` (`host[:port]`): plain HTTP for loopback hosts, HTTPS otherwise.
    pub(crate) fn for_host(
        http: reqwest::Client,
        host: &str,
        repository: &str,
    ) -> Result<Repo, OciError> {
        let scheme = if is_loopback(host) { "http" } else { "https" };
        let base =
            Url::parse(&format!("{scheme}://{host}/")).map_err(|e| OciError::BadReference {
                reference: host.to_owned(),
                reason: format!("registry host is not usable in a URL: {e}"),
            })?;
        Ok(Repo {
            http,
            base,
            name: host.to_owned(),
            repository: repository.to_owned(),
            token: None,
        })
    }

    /// A mirror at `url` (`http(s)://host[:port][/path]`).
    pub(crate) fn for_mirror(http: reqwest::Client, url: &Url, repository: &str) -> Repo {
        let mut base = url.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Repo {
            http,
            name: url.as_str().trim_end_matches('/').to_owned(),
            base,
            repository: repository.to_owned(),
            token: None,
        }
    }

    fn url(&self, kind: &str, reference: &str) -> Result<Url, OciError> {
        self.base
            .join(&format!("v2/{}/{kind}/{reference}", self.repository))
            .map_err(|e| OciError::Malformed {
                what: "registry URL".into(),
                detail: e.to_string(),
            })
    }

    fn unreachable(&self, e: &reqwest::Error) -> OciError {
        OciError::Unreachable {
            registry: self.name.clone(),
            detail: error_chain(e),
        }
    }

    /// GET with the bearer-token handshake: on a 401 carrying a `Bearer` challenge, fetch an
    /// anonymous token for `repository:<repo>:pull` from the realm and retry once.
    async fn get(&mut self, url: Url, accept: Option<&str>) -> Result<reqwest::Response, OciError> {
        for attempt in 0..2 {
            let mut req = self.http.get(url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(Token(t)) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let challenge = bearer_challenge(resp.headers());
            match challenge {
                Some(c) => self.fetch_token(c).await?,
                None => {
                    return Err(OciError::Denied {
                        registry: self.name.clone(),
                        repository: self.repository.clone(),
                        detail:
                            "the registry wants credentials (only anonymous pulls are supported)"
                                .into(),
                    })
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn fetch_token(&mut self, c: Challenge) -> Result<(), OciError> {
        let denied = |detail: String| OciError::Denied {
            registry: self.name.clone(),
            repository: self.repository.clone(),
            detail,
        };
        let mut realm = Url::parse(&c.realm)
            .map_err(|_| denied("the registry's token realm is not a URL".into()))?;
        if !matches!(realm.scheme(), "https" | "http") {
            return Err(denied(
                "the registry's token realm is not an HTTP(S) URL".into(),
            ));
        }
        {
            let mut q = realm.query_pairs_mut();
            if let Some(s) = &c.service {
                q.append_pair("service", s);
            }
            let scope = c
                .scope
                .clone()
                .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            q.append_pair("scope", &scope);
        }
        let resp = self
            .http
            .get(realm)
            .send()
            .await
            .map_err(|e| OciError::Unreachable {
                registry: format!("{} (token service)", self.name),
                detail: error_chain(&e),
            })?;
        if !resp.status().is_success() {
            return Err(denied(format!(
                "the token service answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let body = read_capped(resp, MAX_TOKEN, &self.name, "token answer").await?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| denied("the token service's answer is not a token".into()))?;
        let t = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && !t.contains(['\r', '\n']))
            .ok_or_else(|| denied("the token service's answer holds no token".into()))?;
        self.token = Some(Token(t));
        Ok(())
    }

    /// Fetches the manifest `reference` (tag or digest).
    pub(crate) async fn manifest(&mut self, reference: &str) -> Result<Fetched, OciError> {
        let url = self.url("manifests", reference)?;
        let resp = self.get(url, Some(MANIFEST_TYPES)).await?;
        let what = format!("manifest {reference}");
        self.check_status(&resp, &what)?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let bytes = read_capped(resp, MAX_MANIFEST, &self.name, &what).await?;
        let digest = sha256_digest(&bytes);
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// Fetches a small blob (the image configuration) into memory, verified.
    pub(crate) async fn small_blob(
        &mut self,
        digest: &str,
        size: u64,
        cap: u64,
    ) -> Result<Vec<u8>, OciError> {
        let what = format!("blob {digest}");
        if size > cap {
            return Err(OciError::TooLarge {
                what,
                registry: self.name.clone(),
                limit: cap,
            });
        }
        let url = self.url("blobs", digest)?;
        let resp = self.get(url, None).await?;
        self.check_status(&resp, &what)?;
        let bytes = read_capped(resp, cap, &self.name, &what).await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(OciError::DigestMismatch {
                what,
                expected: digest.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Streams the blob `digest` of `size` bytes into the new file `dest`, hashing on the way.
    /// A wrong size or digest is an error and removes the file.
    pub(crate) async fn blob_to_file(
        &mut self,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<(), OciError> {
        let r = self.blob_to_file_inner(digest, size, dest).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        r
    }

    async fn blob_to_file_inner(
        &mut self,
        digest: &str,
        size: u64,
        dest: &Path,
    ) -> Result<(), OciError> {
        let what = format!("layer {digest}");
        let url = self.url("blobs", digest)?;
        let mut resp = self.get(url, None).await?;
        self.check_status(&resp, &what)?;
        let io = |e| OciError::Io {
            path: dest.to_owned(),
            source: e,
        };
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(io)?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&e))? {
            got += chunk.len() as u64;
            if got > size {
                return Err(OciError::DigestMismatch {
                    what,
                    expected: format!("{digest} ({size} bytes)"),
                    actual: format!("more than {size} bytes"),
                });
            }
            ctx.update(&chunk);
            out.write_all(&chunk).await.map_err(io)?;
        }
        out.flush().await.map_err(io)?;
        let actual = hex_digest(ctx.finish());
        if got != size || actual != digest {
            return Err(OciError::DigestMismatch {
                what,
                expected: format!("{digest} ({size} bytes)"),
                actual: format!("{actual} ({got} bytes)"),
            });
        }
        Ok(())
    }

    fn check_status(&self, resp: &reqwest::Response, what: &str) -> Result<(), OciError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(match status {
            StatusCode::NOT_FOUND => OciError::NotFound {
                registry: self.name.clone(),
                repository: self.repository.clone(),
                what: what.to_owned(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OciError::Denied {
                registry: self.name.clone(),
                repository: self.repository.clone(),
                detail: format!(
                    "HTTP {} for {what} (private or missing repository?)",
                    status.as_u16()
                ),
            },
            s => OciError::Registry {
                registry: self.name.clone(),
                status: s.as_u16(),
                what: what.to_owned(),
            },
        })
    }
}

/// Reads a whole body of at most `cap` bytes.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: u64,
    registry: &str,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    let too_large = || OciError::TooLarge {
        what: what.to_owned(),
        registry: registry.to_owned(),
        limit: cap,
    };
    let declared = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(cap) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| OciError::Unreachable {
        registry: registry.to_owned(),
        detail: error_chain(&e),
    })? {
        if (out.len() + chunk.len()) as u64 > cap {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    hex_digest(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn hex_digest(d: ring::digest::Digest) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A reqwest error with its causes (connection refused, DNS failure, TLS...).
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

/// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`.
fn bearer_challenge(headers: &HeaderMap) -> Option<Challenge> {
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        let v = v.trim();
        if v.len() < 7 || !v[..7].eq_ignore_ascii_case("bearer ") {
            continue;
        }
        let params = parse_params(&v[7..]);
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if let Some(realm) = get("realm") {
            return Some(Challenge {
                realm,
                service: get("service"),
                scope: get("scope"),
            });
        }
    }
    None
}

/// `k="v", k2=v2` (quoted values may hold commas and `\"`).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, "Basic realm=\"x\"".parse().unwrap());
        h.append(
            WWW_AUTHENTICATE,
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/python:pull,push\""
                .parse()
                .unwrap(),
        );
        let c = bearer_challenge(&h).unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:library/python:pull,push")
        );
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, "Basic realm=\"x\"".parse().unwrap());
        assert!(bearer_challenge(&h).is_none());
    }
}
