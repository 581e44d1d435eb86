//! Image references, normalised the way Docker normalises them: `python:3.11` is
//! `docker.io/library/python:3.11`, `user/img` is `docker.io/user/img:latest`, a first
//! component with a `.` or `:` or equal to `localhost` names a registry.

use std::fmt;
use std::net::IpAddr;

use super::OciError;

/// Docker Hub's name in references.
pub(crate) const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";

const MAX_NAME: usize = 255;

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`, `localhost`, ...
    pub registry: String,
    /// `library/python`, `user/img`, ...
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest was given).
    pub tag: Option<String>,
    /// `sha256:<64 hex>`; wins over the tag when both are given, as in Docker.
    pub digest: Option<String>,
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl Reference {
    /// Parses `reference` as `docker pull` does.
    pub(crate) fn parse(reference: &str) -> Result<Reference, OciError> {
        let bad = |reason: &str| OciError::BadReference {
            reference: reference.chars().take(300).collect(),
            reason: reason.to_owned(),
        };
        if reference.is_empty() {
            return Err(bad("empty reference"));
        }
        if reference.len() > 4096
            || reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "contains whitespace or control characters, or is too long",
            ));
        }
        let (rest, digest) = match reference.rsplit_once('@') {
            Some((r, d)) => (r, Some(parse_digest(d).map_err(|r| bad(&r))?)),
            None => (reference, None),
        };
        let (registry, remainder) = match rest.split_once('/') {
            Some((first, rem))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_owned(), rem)
            }
            _ => (DOCKER_HUB.to_owned(), rest),
        };
        if registry != DOCKER_HUB && !valid_registry(&registry) {
            return Err(bad("invalid registry host"));
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        // a tag is after the last ':' with no '/' after it
        let (name, tag) = match remainder.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (remainder, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(bad(
                    "invalid tag (letters, digits, '_', '.', '-'; at most 128, not starting with '.' or '-')",
                ));
            }
        }
        if name.is_empty() {
            return Err(bad("no repository name"));
        }
        if name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        if !name.split('/').all(valid_component) {
            return Err(bad(
                "invalid repository name (lowercase letters and digits, separated by '.', '_', '__' or '-', components joined by '/')",
            ));
        }
        let repository = if registry == DOCKER_HUB && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(bad("repository name longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The manifest to ask for: the digest if there is one, else the tag.
    pub(crate) fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether this is a Docker Hub image (the one a registry mirror serves).
    pub(crate) fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// The host (and port) whose registry API serves this reference.
    pub(crate) fn api_host(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

/// `sha256:<64 lowercase hex>`; other algorithms are refused with a clear reason.
pub(crate) fn parse_digest(d: &str) -> Result<String, String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err("digest must look like sha256:<64 hex digits>".into());
    };
    if alg != "sha256" {
        return Err(format!(
            "digest algorithm {:?} is not supported (only sha256)",
            alg.chars().take(20).collect::<String>()
        ));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("digest must look like sha256:<64 lowercase hex digits>".into());
    }
    Ok(d.to_owned())
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `host[:port]` where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(r), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || p.parse::<u16>().is_err() {
            return false;
        }
    }
    match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    let b = l.as_bytes();
                    !b.is_empty()
                        && b.len() <= 63
                        && b[0].is_ascii_alphanumeric()
                        && b[b.len() - 1].is_ascii_alphanumeric()
                        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                })
        }
    }
}

/// Whether `registry` (`host[:port]`) is on this machine: such registries are spoken to over
/// plain HTTP, as Docker does for `localhost` and `127.0.0.0/8`.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h).unwrap_or(rest)
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(r: &str) -> String {
        Reference::parse(r).unwrap().to_string()
    }

    #[test]
    fn references_normalise_as_docker_does() {
        assert_eq!(norm("python:3.11"), "docker.io/library/python:3.11");
        assert_eq!(norm("python"), "docker.io/library/python:latest");
        assert_eq!(norm("user/img"), "docker.io/user/img:latest");
        assert_eq!(norm("docker.io/python"), "docker.io/library/python:latest");
        assert_eq!(norm("index.docker.io/user/img:1"), "docker.io/user/img:1");
        assert_eq!(norm("ghcr.io/a/b/c:v1.2"), "ghcr.io/a/b/c:v1.2");
        assert_eq!(norm("localhost/img"), "localhost/img:latest");
        assert_eq!(norm("localhost:5000/img:x"), "localhost:5000/img:x");
        assert_eq!(norm("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b:latest");
        assert_eq!(norm("[::1]:5000/a:t"), "[::1]:5000/a:t");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("repo@{d}")).unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/repo");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        let r = Reference::parse(&format!("host:5000/repo:tag@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d, "the digest wins over the tag");
        assert_eq!(r.api_host(), "host:5000");
        assert_eq!(
            Reference::parse("python").unwrap().api_host(),
            DOCKER_HUB_API
        );
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.9.9.9"));
        assert!(is_loopback("localhost:1"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn bad_references_are_typed_errors() {
        for bad in [
            "",
            "Python:3",
            "python:",
            ":tag",
            "python:-x",
            "a//b",
            "a/b/",
            "py thon",
            "repo@sha256:abc",
            "repo@md5:0123",
            "host:99999/a",
            "host:port/a",
            "[::1/a",
            "a..b",
            "-a",
            "a__-b",
            "@sha256:",
            "ex ample.com/a",
        ] {
            match Reference::parse(bad) {
                Err(OciError::BadReference { reference, reason }) => {
                    assert_eq!(reference, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        let long = format!("{}:1", "a".repeat(300));
        assert!(matches!(
            Reference::parse(&long),
            Err(OciError::BadReference { .. })
        ));
    }
}
