//! Preview tokens: `spv1.<payload>.<mac>`, the payload being base64url (no padding) of the
//! canonical JSON `{"sid":"<sandbox id>","p":<port>,"v":<token version>[,"exp":<unix s>]}` and
//! the MAC HMAC-SHA256 (key in the data directory) over a domain string and `spv1.<payload>`.
//!
//! A token opens one port of one sandbox at one token version: rotating the port's tokens or
//! unpublishing it bumps the version, so every earlier token (header, link or cookie) stops
//! working. Verification checks the MAC before it decodes anything, then the claims against
//! the sandbox, port and version the request is for, then the expiry. Tokens are never
//! stored, listed or logged; `Debug` of the key is redacted.

use std::io;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// The format's prefix.
const PREFIX: &str = "spv1";
/// Separates these MACs from any other use of the key.
const DOMAIN: &[u8] = b"superserve-local.preview-token.v1\x00";
/// Longest token considered at all (real ones are about 150 bytes).
pub(crate) const MAX_TOKEN_LEN: usize = 512;
/// Longest payload considered (base64 characters).
const MAX_PAYLOAD_LEN: usize = 342;

/// The claims a token carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Claims {
    /// The sandbox.
    pub sid: String,
    /// The port.
    pub p: u16,
    /// The port's token version when it was minted.
    pub v: u64,
    /// Expiry, unix seconds (absent: valid until rotated or unpublished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

/// Why a presented token does not open a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a token of this backend (format, MAC or claims encoding).
    Invalid,
    /// A genuine token for another sandbox, port or token version.
    OtherScope,
    /// A genuine token past its expiry.
    Expired,
}

/// The HMAC key that signs preview tokens.
pub(crate) struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// Reads the key file, or creates it (32 random bytes, mode 0600) if missing.
    pub(crate) fn load_or_create(path: &Path) -> io::Result<TokenKey> {
        let b = super::super::ident::load_or_create_key(path, "a preview token key")?;
        Ok(TokenKey::from_bytes(&b))
    }

    fn from_bytes(b: &[u8; 32]) -> TokenKey {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, b))
    }

    fn mac(&self, signed: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(DOMAIN);
        ctx.update(signed.as_bytes());
        ctx.sign()
    }

    /// A token carrying `claims`.
    pub(crate) fn mint(&self, claims: &Claims) -> String {
        // serialising a struct of strings and integers cannot fail
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{PREFIX}.{}", URL_SAFE_NO_PAD.encode(json));
        let tag = self.mac(&signed);
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Checks `presented` for sandbox `sid`, port `port` at token version `version`, at unix
    /// time `now`; a valid token's expiry (unix seconds), if it has one.
    pub(crate) fn verify(
        &self,
        presented: &str,
        sid: &str,
        port: u16,
        version: u64,
        now: i64,
    ) -> Result<Option<i64>, Refusal> {
        let claims = self.open(presented)?;
        if claims.sid != sid || claims.p != port || claims.v != version {
            return Err(Refusal::OtherScope);
        }
        match claims.exp {
            Some(exp) if now >= exp => Err(Refusal::Expired),
            exp => Ok(exp),
        }
    }

    /// The claims of a genuine token (MAC checked before anything is decoded).
    fn open(&self, presented: &str) -> Result<Claims, Refusal> {
        if presented.len() > MAX_TOKEN_LEN {
            return Err(Refusal::Invalid);
        }
        let (signed, mac) = presented.rsplit_once('.').ok_or(Refusal::Invalid)?;
        let payload = signed
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(Refusal::Invalid)?;
        if payload.is_empty() || payload.len() > MAX_PAYLOAD_LEN || payload.contains('.') {
            return Err(Refusal::Invalid);
        }
        let mac = URL_SAFE_NO_PAD
            .decode(mac.as_bytes())
            .map_err(|_| Refusal::Invalid)?;
        // constant time: ring compares the tags
        hmac::verify(&self.0, &[DOMAIN, signed.as_bytes()].concat(), &mac)
            .map_err(|_| Refusal::Invalid)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload.as_bytes())
            .map_err(|_| Refusal::Invalid)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| Refusal::Invalid)?;
        // one spelling per token: what this backend mints, byte for byte
        if serde_json::to_vec(&claims).ok().as_deref() != Some(json.as_slice()) {
            return Err(Refusal::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TokenKey {
        TokenKey::from_bytes(&[b; 32])
    }

    fn claims(exp: Option<i64>) -> Claims {
        Claims {
            sid: "7d6f3c1e-0000-4000-8000-000000000001".into(),
            p: 3000,
            v: 2,
            exp,
        }
    }

    #[test]
    fn a_token_opens_exactly_its_scope() {
        let k = key(1);
        let t = k.mint(&claims(None));
        assert!(t.starts_with("spv1.") && t.len() < MAX_TOKEN_LEN, "{t}");
        let sid = "7d6f3c1e-0000-4000-8000-000000000001";
        assert_eq!(k.verify(&t, sid, 3000, 2, 0), Ok(None));
        let other = "7d6f3c1e-0000-4000-8000-000000000002";
        assert_eq!(k.verify(&t, other, 3000, 2, 0), Err(Refusal::OtherScope));
        assert_eq!(k.verify(&t, sid, 3001, 2, 0), Err(Refusal::OtherScope));
        assert_eq!(k.verify(&t, sid, 3000, 3, 0), Err(Refusal::OtherScope));
        // another backend's key
        assert_eq!(key(2).verify(&t, sid, 3000, 2, 0), Err(Refusal::Invalid));
        // expiry
        let t = k.mint(&claims(Some(100)));
        assert_eq!(k.verify(&t, sid, 3000, 2, 99), Ok(Some(100)));
        assert_eq!(k.verify(&t, sid, 3000, 2, 100), Err(Refusal::Expired));
    }

    #[test]
    fn forged_and_malformed_tokens_are_refused() {
        let k = key(1);
        let sid = "7d6f3c1e-0000-4000-8000-000000000001";
        let t = k.mint(&claims(Some(100)));
        let (signed, mac) = t.rsplit_once('.').unwrap();
        // the payload of a longer-lived token under the old MAC
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(None)).unwrap());
        let forged = format!("spv1.{forged_payload}.{mac}");
        assert_eq!(k.verify(&forged, sid, 3000, 2, 0), Err(Refusal::Invalid));
        // a non-canonical spelling of the same claims, correctly signed
        let spaced = URL_SAFE_NO_PAD
            .encode(br#"{"sid":"7d6f3c1e-0000-4000-8000-000000000001", "p":3000,"v":2}"#);
        let signed2 = format!("spv1.{spaced}");
        let mac2 = URL_SAFE_NO_PAD.encode(k.mac(&signed2).as_ref());
        assert_eq!(
            k.verify(&format!("{signed2}.{mac2}"), sid, 3000, 2, 0),
            Err(Refusal::Invalid)
        );
        for bad in [
            "",
            "spv1",
            "spv1..",
            "spv2.x.y",
            &format!("{signed}."),
            &format!("{signed}.{mac}x"),
            &format!("{signed}.{mac}.{mac}"),
            &"a".repeat(10_000),
            "spv1.\u{e9}\u{e9}.\u{e9}",
        ] {
            assert_eq!(
                k.verify(bad, sid, 3000, 2, 0),
                Err(Refusal::Invalid),
                "{bad:?}"
            );
        }
        assert!(!format!("{k:?}").contains(&format!("{:?}", [1u8; 4])));
    }
}
