//! Identifiers and tokens: random UUIDs, access tokens, constant-time comparison.

use rand::RngCore;

/// A random UUID v4 string (the SDK's generator: one implementation for the crate).
pub(crate) use crate::wire::uuid_v4;

/// A fresh access token (256 random bits, hex).
pub(crate) fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Constant-time string comparison (for keys and tokens).
pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
