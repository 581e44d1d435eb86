//! Identifiers and tokens: random UUIDs, access tokens, key files, constant-time comparison.

use std::io;
use std::path::Path;

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

/// Reads a 32-byte key file, or creates it (32 random bytes, mode 0600) if missing. `what`
/// names the key in errors ("a secrets key").
pub(crate) fn load_or_create_key(path: &Path, what: &str) -> io::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(b) => <[u8; 32]>::try_from(b.as_slice()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {} bytes; {what} is 32 bytes",
                    path.display(),
                    b.len()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Written in full under a private name, then linked into place: a backend
            // starting at the same moment either wins the link or reads the winner's key,
            // and never sees a half-written file.
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            let tmp = path.with_extension(format!(
                "key.{}.{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let written = (|| {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(&b)?;
                f.sync_all()?;
                std::fs::hard_link(&tmp, path)
            })();
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => Ok(b),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    load_or_create_key(path, what)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
