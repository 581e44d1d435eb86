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
}
