//! Content detection: PANs, track data and labelled sensitive
//! authentication data inside free text and JSON, masked in place.
//!
//! Every mask here keeps the value's length, so a masked value fits
//! wherever the original did: inside a binary array or record, a JSONB
//! document, a COPY row. Digits are replaced by `*` in text and by `0` where
//! the value must stay a number.

use super::pan::{self, Found};
use super::{Detector, Keep};

/// What replaces a hidden digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// `*`: text.
    Star,
    /// `0`: numbers (the value must still parse as one).
    Zero,
}

impl Fill {
    fn byte(self) -> u8 {
        match self {
            Fill::Star => b'*',
            Fill::Zero => b'0',
        }
    }
}

/// One thing masked, for the masking records.
pub type Hit = Detector;

/// Mask every PAN and every piece of track data in `text` in place. Returns
/// what was masked (empty when nothing was).
pub fn mask_text(text: &mut [u8], keep: Keep, fill: Fill) -> Vec<Hit> {
    let found = pan::find(text);
    let mut hits = Vec::new();
    // The end of the last track: digits inside a track are its own data.
    let mut covered = 0;
    for f in found {
        if f.start < covered {
            continue;
        }
        match track_extent(text, f) {
            Some((start, end)) => {
                covered = end;
                // Sensitive authentication data: nothing of it survives.
                for b in &mut text[start..end] {
                    if b.is_ascii_alphanumeric() || b"^/=?;%".contains(b) {
                        *b = fill.byte();
                    }
                }
                hits.push(Detector::Track);
            }
            None => {
                mask_digits(&mut text[f.start..f.end], f.digits as usize, keep, fill);
                hits.push(Detector::Pan);
            }
        }
    }
    hits
}

/// Mask every run of 13 or more digits that holds a valid PAN anywhere
/// inside it (`0` + PAN + `0` pads a PAN past [`mask_text`], which tests
/// whole runs). For texts no one needs digit for digit, where a value can
/// be made to appear padded: error and notice fields. Returns how many
/// runs were masked.
pub fn mask_embedded(text: &mut [u8], fill: Fill) -> usize {
    let mut masked = 0;
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && text[i].is_ascii_digit() {
            i += 1;
        }
        let run = start..i;
        if run.len() < 13 {
            continue;
        }
        let holds_pan = (13..=19.min(run.len()))
            .any(|len| (run.start..=run.end - len).any(|at| pan::valid(&text[at..at + len])));
        if holds_pan {
            text[run].fill(fill.byte());
            masked += 1;
        }
    }
    masked
}

/// Hide the digits of a PAN (or a PAN-like value) in place, keeping what
/// `keep` allows; separators stay.
pub fn mask_digits(value: &mut [u8], digits: usize, keep: Keep, fill: Fill) {
    let (first, last) = keep.counts(digits);
    let mut index = 0;
    for b in value.iter_mut() {
        if b.is_ascii_digit() {
            if index >= first && index + last < digits {
                *b = fill.byte();
            }
            index += 1;
        }
    }
}

/// If the PAN at `f` is the account number of magnetic-stripe track data,
/// the byte range of the whole track.
///
/// Track 2: `[;]PAN=YYMM SVC discretionary[?]` (`D` for `=` in EMV form).
/// Track 1: `[%]B PAN ^NAME^ YYMM SVC discretionary[?]`.
fn track_extent(text: &[u8], f: Found) -> Option<(usize, usize)> {
    let after = text.get(f.end).copied();
    let digits_from = |at: usize| {
        text[at.min(text.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    // Track 2.
    if matches!(after, Some(b'=') | Some(b'D')) && f.end - f.start == f.digits as usize {
        let n = digits_from(f.end + 1);
        if n >= 7 {
            let mut end = f.end + 1 + n;
            if text.get(end) == Some(&b'?') {
                end += 1;
            }
            let start = if f.start > 0 && text[f.start - 1] == b';' {
                f.start - 1
            } else {
                f.start
            };
            return Some((start, end));
        }
    }
    // Track 1.
    if after == Some(b'^') && f.start > 0 && text[f.start - 1] == b'B' {
        let name_start = f.end + 1;
        let name_len = text[name_start..]
            .iter()
            .take(27)
            .position(|&b| b == b'^')?;
        let data = name_start + name_len + 1;
        let n = digits_from(data);
        if n >= 7 {
            // Discretionary data runs to the end sentinel when there is one.
            let rest = &text[data..];
            let end = match rest.iter().take(80).position(|&b| b == b'?') {
                Some(q) => data + q + 1,
                None => data + n,
            };
            let mut start = f.start - 1;
            if start > 0 && text[start - 1] == b'%' {
                start -= 1;
            }
            return Some((start, end));
        }
    }
    None
}

/// Whether a name holds one of `words` (split on anything not
/// alphanumeric, case folded) or, with separators dropped, one of `fragments`.
fn labelled(name: &str, words: &[&str], fragments: &[&str]) -> bool {
    let lower = name.to_ascii_lowercase();
    let compact: String = lower
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| words.contains(&word))
        || fragments.iter().any(|f| compact.contains(f))
}

/// Whether a column name or JSON key labels sensitive authentication data
/// (card verification codes, PINs, track data).
pub fn sad_label(name: &str) -> bool {
    labelled(
        name,
        &[
            "cvv", "cvv2", "cvc", "cvc2", "cav2", "cvn", "pin", "pinblock", "track1", "track2",
        ],
        &[
            "pinblock",
            "trackdata",
            "track1",
            "track2",
            "magstripe",
            "securitycode",
            "cardverification",
            "cvv",
            "cvc",
        ],
    )
}

/// Whether a column name or JSON key labels a PAN.
pub fn pan_label(name: &str) -> bool {
    labelled(
        name,
        &["pan"],
        &[
            "cardnumber",
            "cardno",
            "ccnumber",
            "ccnum",
            "creditcard",
            "primaryaccountnumber",
        ],
    )
}

/// Mask a JSON document in place: PANs and track data in strings (with `*`)
/// and numbers (with `0`, so it stays valid JSON), and the whole scalar value
/// of any key labelled as sensitive authentication data.
pub fn mask_json(doc: &mut [u8], keep: Keep) -> Vec<Hit> {
    let mut hits = Vec::new();
    let n = doc.len();
    let mut i = 0;
    // The last string that closed, and whether a ':' has followed it.
    let mut last_string: Option<(usize, usize)> = None;
    let mut redact_next = false;
    while i < n {
        match doc[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < n && doc[j] != b'"' {
                    j += if doc[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(n);
                if redact_next {
                    for b in &mut doc[start..end] {
                        *b = b'*';
                    }
                    hits.push(Detector::Label);
                    redact_next = false;
                } else {
                    hits.extend(mask_text(&mut doc[start..end], keep, Fill::Star));
                }
                last_string = Some((start, end));
                i = end + 1;
                continue;
            }
            b':' => {
                if let Some((s, e)) = last_string.take() {
                    let key = String::from_utf8_lossy(&doc[s..e]);
                    redact_next = sad_label(&key);
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut j = i + 1;
                while j < n && matches!(doc[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    j += 1;
                }
                if redact_next {
                    for b in &mut doc[start..j] {
                        if b.is_ascii_digit() {
                            *b = b'0';
                        }
                    }
                    hits.push(Detector::Label);
                    redact_next = false;
                    json_number_fix(&mut doc[start..j]);
                } else {
                    let found = mask_text(&mut doc[start..j], keep, Fill::Zero);
                    if !found.is_empty() {
                        json_number_fix(&mut doc[start..j]);
                        hits.extend(found);
                    }
                }
                i = j;
                last_string = None;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // Objects, arrays, literals: a label applies to scalars only.
                if doc[i] == b'{' || doc[i] == b'[' {
                    redact_next = false;
                }
                last_string = None;
            }
        }
        i += 1;
    }
    hits
}

/// JSON numbers may not have leading zeros: turn them into leading
/// whitespace (same length, still valid JSON), keeping one zero if nothing
/// else is left.
fn json_number_fix(number: &mut [u8]) {
    let sign = usize::from(number.first() == Some(&b'-'));
    let digits = number[sign..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let zeros = number[sign..sign + digits]
        .iter()
        .take_while(|b| **b == b'0')
        .count();
    let strip = if zeros == digits {
        zeros.saturating_sub(1)
    } else {
        zeros
    };
    if strip == 0 {
        return;
    }
    // [-]000123 -> "   -123": whitespace first, then the sign and the rest.
    let tail = number[sign + strip..].to_vec();
    number[..strip].fill(b' ');
    if sign == 1 {
        number[strip] = b'-';
    }
    number[strip + sign..].copy_from_slice(&tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pan_padded_with_digits_is_masked_in_error_texts() {
        let mut text =
            b"input 041111111111111110x123 rejected; order 12345678901234 and 2026".to_vec();
        assert_eq!(mask_embedded(&mut text, Fill::Star), 1);
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("input ******************x123"), "{text}");
        assert!(
            text.contains("order 12345678901234"),
            "no PAN in it: {text}"
        );
    }

    fn masked(text: &str, keep: Keep) -> String {
        let mut bytes = text.as_bytes().to_vec();
        mask_text(&mut bytes, keep, Fill::Star);
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn pci_display_and_last_four() {
        assert_eq!(
            masked("4111111111111111", Keep::Display),
            "411111******1111"
        );
        assert_eq!(
            masked("4111 1111 1111 1111", Keep::Display),
            "4111 11** **** 1111"
        );
        assert_eq!(masked("378282246310005", Keep::Display), "378282*****0005");
        assert_eq!(masked("4222222222222", Keep::Display), "*********2222");
        assert_eq!(
            masked("pan 5555555555554444", Keep::LastFour),
            "pan ************4444"
        );
    }

    #[test]
    fn track_data_is_hidden_entirely() {
        let t2 = masked("t=;4111111111111111=30121011234567890? ok", Keep::Display);
        assert!(
            !t2.contains("4111") && !t2.contains("3012") && t2.ends_with(" ok"),
            "{t2}"
        );
        let t1 = masked(
            "%B4111111111111111^DOE/JOHN^3012101000000000000?",
            Keep::Display,
        );
        assert!(!t1.contains("DOE") && !t1.contains("4111"), "{t1}");
    }

    #[test]
    fn json_stays_valid_and_labelled_values_are_redacted() {
        let mut last4 = br#"[5555555555554444, -4111111111111111]"#.to_vec();
        mask_json(&mut last4, Keep::LastFour);
        assert_eq!(&last4[..], &br#"[            4444,             -1111]"#[..]);
        let mut doc = br#"{"pan": 4111111111111111, "note": "card 5555-5555-5555-4444", "cvv": "123", "cvc2": 456, "id": 1764061300001}"#.to_vec();
        let hits = mask_json(&mut doc, Keep::Display);
        let text = String::from_utf8(doc).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["pan"].as_u64(), Some(4111110000001111));
        assert_eq!(value["note"], "card 5555-55**-****-4444");
        assert_eq!(value["cvv"], "***");
        assert_eq!(value["cvc2"].as_u64(), Some(0));
        assert_eq!(value["id"].as_u64(), Some(1764061300001));
        assert_eq!(hits.len(), 4);
    }

    #[test]
    fn labels() {
        for sad in [
            "cvv",
            "CVV2",
            "card_cvc",
            "pin_block",
            "track2_data",
            "SecurityCode",
        ] {
            assert!(sad_label(sad), "{sad}");
        }
        for not in ["pinned", "spinach", "customer_id", "tracking_no"] {
            assert!(!sad_label(not), "{not}");
        }
        for pan in ["pan", "card_number", "CardNo", "cc_number"] {
            assert!(pan_label(pan), "{pan}");
        }
        assert!(!pan_label("company") && !pan_label("panel_id"));
    }
}
