//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519, and the
//! tlog checkpoint they carry (<https://c2sp.org/tlog-checkpoint>): anyone
//! with the verifier key can check the audit log's tree heads offline,
//! with the Go `golang.org/x/mod/sumdb/note` package or this crate.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::tree::Hash;

/// Signature type byte of Ed25519 in signed notes.
const ED25519_TYPE: u8 = 0x01;

/// Why a note or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The text is not a signed note.
    #[error("not a signed note: {0}")]
    Malformed(String),
    /// No signature from the expected key.
    #[error("no signature by {0}")]
    Unsigned(String),
    /// A signature by the expected key does not verify.
    #[error("the signature by {0} does not verify: the note was changed or signed by another key")]
    BadSignature(String),
    /// A key could not be read or made.
    #[error("key: {0}")]
    Key(String),
}

/// A key that signs notes.
pub struct Signer {
    name: String,
    key: Ed25519KeyPair,
    id: u32,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("name", &self.name).finish()
    }
}

/// The key ID: SHA-256(name || '\n' || type || public key)[:4], big-endian.
fn key_id(name: &str, public: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519_TYPE]);
    h.update(public);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::Key(format!(
            "key name '{name}' must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

impl Signer {
    /// A new random key named `name` and its PKCS#8 encoding (to store).
    pub fn generate(name: &str) -> Result<(Signer, Vec<u8>), NoteError> {
        check_name(name)?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| NoteError::Key("cannot generate an Ed25519 key".into()))?;
        let signer = Signer::from_pkcs8(name, pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    /// A stored key.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Signer, NoteError> {
        check_name(name)?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| {
            NoteError::Key("the stored signing key is not an Ed25519 PKCS#8 key".into())
        })?;
        let id = key_id(name, key.public_key().as_ref());
        Ok(Signer {
            name: name.to_string(),
            key,
            id,
        })
    }

    /// The verifier key, in the note verifier-key format:
    /// `<name>+<hex key ID>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        let mut encoded = vec![ED25519_TYPE];
        encoded.extend_from_slice(self.key.public_key().as_ref());
        format!("{}+{:08x}+{}", self.name, self.id, STANDARD.encode(encoded))
    }

    /// Sign `text` (which must end in a newline) as a note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed(
                "note text must end in a newline and hold no control characters".into(),
            ));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(signature.as_ref());
        Ok(format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// A key that verifies notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: u32,
    public: Vec<u8>,
}

impl Verifier {
    /// Parse a verifier key (`<name>+<hex id>+<base64 key>`).
    pub fn parse(key: &str) -> Result<Verifier, NoteError> {
        let bad = |why: &str| NoteError::Key(format!("verifier key: {why}"));
        let mut parts = key.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected <name>+<hex key ID>+<base64 key>"));
        };
        check_name(name)?;
        let id = u32::from_str_radix(id, 16).map_err(|_| bad("the key ID is not hexadecimal"))?;
        let decoded = STANDARD
            .decode(encoded)
            .map_err(|_| bad("the key is not base64"))?;
        let Some((&ED25519_TYPE, public)) = decoded.split_first() else {
            return Err(bad("not an Ed25519 key (type 0x01)"));
        };
        if public.len() != 32 {
            return Err(bad("an Ed25519 public key has 32 bytes"));
        }
        if key_id(name, public) != id {
            return Err(bad("the key ID does not match the key"));
        }
        Ok(Verifier {
            name: name.to_string(),
            id,
            public: public.to_vec(),
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Check `note` and return its text. Signatures by other keys are
    /// ignored; one by this key must be present and verify.
    pub fn open<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        let mut found = false;
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(format!(
                    "not a signature line: {line:?}"
                )));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(
                    "signature line without a signature".into(),
                ));
            };
            let blob = STANDARD
                .decode(blob)
                .map_err(|_| NoteError::Malformed("signature is not base64".into()))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.id.to_be_bytes() {
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), &blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(NoteError::Unsigned(self.name.clone()))
        }
    }
}

/// A tlog checkpoint: the log's origin, its size and its root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name (the first line).
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parse a checkpoint's note text (extension lines are ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.lines();
        let bad = |why: &str| NoteError::Malformed(format!("checkpoint: {why}"));
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no tree size"))?;
        let root = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or_else(|| bad("no 32-byte root hash"))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checkpoint_round_trips_and_tampering_is_caught() {
        let (signer, pkcs8) = Signer::generate("tollgate.example/audit").unwrap();
        let checkpoint = Checkpoint {
            origin: "tollgate.example/audit".into(),
            size: 42,
            root: super::super::tree::leaf_hash(b"x"),
        };
        let note = signer.sign(&checkpoint.text()).unwrap();
        assert!(note.contains("\n\n\u{2014} tollgate.example/audit "));
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        let text = verifier.open(&note).unwrap();
        assert_eq!(Checkpoint::parse(text).unwrap(), checkpoint);

        // The same key from storage signs identically verifiable notes.
        let again = Signer::from_pkcs8("tollgate.example/audit", &pkcs8).unwrap();
        assert_eq!(again.verifier_key(), signer.verifier_key());

        let forged = note.replace("\n42\n", "\n43\n");
        assert!(matches!(
            verifier.open(&forged),
            Err(NoteError::BadSignature(_))
        ));
        let (other, _) = Signer::generate("tollgate.example/audit").unwrap();
        let foreign = other.sign(&checkpoint.text()).unwrap();
        assert!(matches!(
            verifier.open(&foreign),
            Err(NoteError::Unsigned(_))
        ));
    }

    #[test]
    fn verifier_keys_are_checked() {
        let (signer, _) = Signer::generate("log").unwrap();
        let key = signer.verifier_key();
        assert!(key.starts_with("log+"));
        let wrong_id = format!("log+00000000+{}", key.rsplit('+').next().unwrap());
        assert!(Verifier::parse(&wrong_id).is_err());
        assert!(Verifier::parse("log+zz+AAAA").is_err());
        assert!(Signer::generate("has space").is_err());
    }
}
