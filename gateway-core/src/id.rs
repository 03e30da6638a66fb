//! The crate's one random id: base64url, never hex or decimal (a long run
//! of digits in an id would look like a card number to the scanners that
//! check every record).

use base64::Engine;

/// A random id of `N` bytes, base64url without padding, after `prefix`.
pub fn random<const N: usize>(prefix: &str) -> String {
    let bytes: [u8; N] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A session id: 128 random bits.
pub fn session() -> String {
    random::<16>("")
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_random_base64url() {
        let a = super::session();
        assert_eq!(a.len(), 22);
        assert_ne!(a, super::session());
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(super::random::<9>("req_").starts_with("req_"));
    }
}
