//! The result digest: HMAC-SHA-256 under a key that never leaves the
//! gateway (`<data_dir>/result-digest.key`, not in the evidence bundle).
//!
//! An unkeyed hash of a result is no protection for a value with few
//! candidates: a CVV is one of 10,000, a PAN's hidden middle digits one of
//! a million Luhn-valid numbers, and anyone holding the hash could try them
//! all. Keyed, the digest still shows whether two results were the same,
//! and the key's holder (the gateway's operator) can confirm that a given
//! result is the one recorded, but nobody else can test guesses.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The file under the data directory that holds the key.
pub const KEY_FILE: &str = "result-digest.key";

/// The gateway's digest key.
#[derive(Clone)]
pub struct DigestKey([u8; 32]);

impl std::fmt::Debug for DigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// The key under `data_dir`, made (random, mode 0600) on first use.
    pub fn open(data_dir: &Path) -> std::io::Result<DigestKey> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} does not hold a 32-byte key", path.display()),
                    )
                })?;
                Ok(DigestKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                match crate::identity::dev_issuer::write_private(&path, &key) {
                    Ok(()) => Ok(DigestKey(key)),
                    // Another process made it first: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::open(data_dir),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A fixed key (tests).
    pub fn from_bytes(key: [u8; 32]) -> DigestKey {
        DigestKey(key)
    }

    /// A running digest.
    pub fn start(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// The digest a recording keeps for these rows (each a DataRow body or
    /// a CopyData payload, as the upstream sent it), base64: for the key's
    /// holder to show that a result is the one recorded.
    pub fn of_rows<'r>(&self, rows: impl IntoIterator<Item = &'r [u8]>) -> String {
        use base64::Engine;
        let mut mac = self.start();
        for row in rows {
            mac.update(&(row.len() as u32).to_be_bytes());
            mac.update(row);
        }
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = DigestKey::open(dir.path()).unwrap();
        let b = DigestKey::open(dir.path()).unwrap();
        assert_eq!(a.0, b.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "only the gateway's user reads the key");
        }
    }

    #[test]
    fn a_guessable_value_cannot_be_found_without_the_key() {
        // With an unkeyed hash anyone tries the 1,000 three-digit CVVs;
        // under another key no candidate matches.
        let key = DigestKey::from_bytes([7; 32]);
        let mut mac = key.start();
        mac.update(b"123");
        let recorded = mac.finalize().into_bytes();
        let other = DigestKey::from_bytes([8; 32]);
        let found = (0..1000).any(|n| {
            let mut guess = other.start();
            guess.update(format!("{n:03}").as_bytes());
            guess.finalize().into_bytes() == recorded
        });
        assert!(!found);
    }
}
