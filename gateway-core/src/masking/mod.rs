//! Masking of cardholder data: the shared stage every protocol adapter uses.
//!
//! Two masks apply to every value. The **client mask** is what the caller
//! receives: by default the PCI DSS display form (first six and last four
//! digits at most), unless the policy lets this identity `reveal` a
//! cardholder column (a documented business need, PCI DSS 3.4.1). The
//! **record mask** is what recordings, the audit log, log lines and approval
//! previews keep, whoever the caller is: the last four digits only, so a
//! record never holds both a truncated and (in the result digest) a hashed
//! form that could be correlated (PCI DSS 3.5.1.1).
//!
//! Column rules (a column known to hold PANs or sensitive authentication
//! data) apply a [`Strategy`] to the whole value; content detection
//! ([`detect`]) is the backstop for every other value: free text, JSON,
//! error fields, COPY rows, notification payloads, statement literals.

pub mod detect;
pub mod pan;

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use detect::{Fill, mask_digits, mask_embedded, mask_json, mask_text, pan_label, sad_label};

/// How many digits of a PAN stay visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// PCI DSS display: the first six and the last four (the last four only
    /// for PANs shorter than 15 digits, so at least five stay hidden).
    Display,
    /// The last four.
    LastFour,
    /// Every digit: for a caller a policy lets see card numbers (PCI DSS
    /// 3.4.1). Card security data and track data are removed all the same.
    Full,
}

impl Keep {
    /// (first, last) digits kept of a value with `digits` digits.
    pub fn counts(self, digits: usize) -> (usize, usize) {
        let last = if digits >= 8 { 4 } else { 0 };
        match self {
            Keep::Full => (digits, 0),
            Keep::Display if digits >= 15 => (6, last),
            _ => (0, last),
        }
    }
}

/// What a column rule does to a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// First six and last four digits at most (PCI DSS 3.4.1).
    PciDisplay,
    /// Last four digits.
    LastFour,
    /// A fixed placeholder of the same type.
    Redact,
    /// A keyed token: HMAC-SHA-256 of the value, stable so joins still work
    /// (PCI DSS 3.5.1.1). Needs `[masking] token_key`.
    Token,
    /// NULL.
    Null,
}

impl Strategy {
    /// The name used in configuration and masking records.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::PciDisplay => "pci_display",
            Strategy::LastFour => "last_four",
            Strategy::Redact => "redact",
            Strategy::Token => "token",
            Strategy::Null => "null",
        }
    }
}

/// What found the data that was masked (masking records count by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Detector {
    /// A column rule.
    Column = 0,
    /// A PAN found by content detection.
    Pan,
    /// Track 1 or track 2 data.
    Track,
    /// A value whose label (JSON key) says it is sensitive authentication data.
    Label,
}

impl Detector {
    /// Name in masking records.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Column => "column_rule",
            Detector::Pan => "pan",
            Detector::Track => "track_data",
            Detector::Label => "labelled_sad",
        }
    }
}

/// The placeholder text of [`Strategy::Redact`].
pub const REDACTED: &str = "[REDACTED]";

/// The key of [`Strategy::Token`].
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from its secret bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<TokenKey, String> {
        if secret.len() < 16 {
            return Err(format!(
                "the token key has {} bytes; use at least 16 random bytes (32 recommended)",
                secret.len()
            ));
        }
        Ok(TokenKey(secret.to_vec()))
    }

    fn mac(&self, value: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(value);
        mac.finalize().into_bytes().into()
    }

    /// The text token of a value: `tok_` and 24 hex digits. Digits-only
    /// input is normalised first (separators dropped), so `4111 1111 ...`
    /// and `4111-1111-...` tokenise alike.
    pub fn text(&self, value: &[u8]) -> String {
        let mac = self.mac(&normalise(value));
        let mut out = String::with_capacity(28);
        out.push_str("tok_");
        for b in &mac[..12] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The numeric token of a value: 15 decimal digits (never a valid PAN
    /// length for Visa or Mastercard, and starts with 9, outside every range).
    pub fn number(&self, value: &[u8]) -> i64 {
        let mac = self.mac(&normalise(value));
        let n = u64::from_be_bytes(mac[..8].try_into().expect("8 bytes"));
        (900_000_000_000_000 + n % 100_000_000_000_000) as i64
    }
}

fn normalise(value: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = value.iter().copied().filter(u8::is_ascii_digit).collect();
    let only_digits_and_separators = value
        .iter()
        .all(|b| b.is_ascii_digit() || *b == b' ' || *b == b'-');
    if only_digits_and_separators && !digits.is_empty() {
        digits
    } else {
        value.to_vec()
    }
}

/// Apply a PAN strategy that keeps digits (display, last four) to a whole
/// value a column rule says is a PAN, whatever its check digit.
pub fn mask_whole(value: &mut [u8], keep: Keep, fill: Fill) {
    let digits = value.iter().filter(|b| b.is_ascii_digit()).count();
    mask_digits(value, digits, keep, fill);
}

/// Masking records of a session: how many values were masked, per place and
/// detector. Never the values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(BTreeMap<String, [u64; 4]>);

const DETECTORS: [Detector; 4] = [
    Detector::Column,
    Detector::Pan,
    Detector::Track,
    Detector::Label,
];

impl Counts {
    /// Count `n` values masked at `place` (a column such as
    /// `public.payments.pan`, or `error`, `notice`, `copy`, `notification`).
    pub fn add(&mut self, place: &str, detector: Detector, n: u64) {
        if n == 0 {
            return;
        }
        let slot = detector as usize;
        match self.0.get_mut(place) {
            Some(counts) => counts[slot] += n,
            None => {
                let mut counts = [0; 4];
                counts[slot] = n;
                self.0.insert(place.to_string(), counts);
            }
        }
    }

    /// Every (place, detector, count) with a count.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Detector, u64)> {
        self.0.iter().flat_map(|(place, counts)| {
            DETECTORS
                .iter()
                .zip(counts)
                .filter(|(_, n)| **n > 0)
                .map(move |(d, n)| (place.as_str(), *d, *n))
        })
    }

    /// Whether nothing was masked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total values masked.
    pub fn total(&self) -> u64 {
        self.0.values().flatten().sum()
    }
}

/// The record mask of a text (a statement, a parameter, an error): PANs cut
/// to their last four digits, track data and labelled sensitive
/// authentication data removed. Safe to store and to log.
pub fn for_record(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    let hits = mask_text(&mut bytes, Keep::LastFour, Fill::Star);
    if hits.is_empty() {
        return text.to_string();
    }
    // Masking replaces ASCII digits with ASCII, so the text stays UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests;
