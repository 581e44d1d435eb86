//! Domain names and the patterns egress rules and secrets name hosts with.

/// Whether `name` matches a domain pattern: exact (case-insensitive, trailing dot ignored), or
/// `*.x` for any name below `x` (never `x` itself).
pub(crate) fn domain_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(base) => name.len() > base.len() + 1 && name.ends_with(&format!(".{base}")),
        None => name == pattern,
    }
}

/// The host of an HTTP authority (`Host` header or request target), lower-cased, without
/// port or trailing dot: `API.example.com.:8443` → `api.example.com`.
pub(crate) fn host_of_authority(authority: &str) -> String {
    let a = authority.trim();
    let host = match a.strip_prefix('[') {
        // an IPv6 literal keeps its brackets
        Some(rest) => rest.split_once(']').map_or(a, |(h, _)| &a[..h.len() + 2]),
        None => a.rsplit_once(':').map_or(a, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                a
            }
        }),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_patterns() {
        assert!(domain_matches("example.com", "EXAMPLE.com."));
        assert!(!domain_matches("example.com", "api.example.com"));
        assert!(domain_matches("*.example.com", "api.example.com"));
        assert!(domain_matches("*.example.com", "a.b.example.com"));
        assert!(!domain_matches("*.example.com", "example.com"));
        assert!(!domain_matches("*.example.com", "badexample.com"));
    }

    #[test]
    fn hosts_of_authorities() {
        assert_eq!(
            host_of_authority("API.example.com.:8443"),
            "api.example.com"
        );
        assert_eq!(host_of_authority("api.example.com"), "api.example.com");
        assert_eq!(host_of_authority(" evil.test:80 "), "evil.test");
        assert_eq!(host_of_authority("[::1]:80"), "[::1]");
        assert_eq!(host_of_authority("10.0.0.1:x"), "10.0.0.1:x");
    }
}
