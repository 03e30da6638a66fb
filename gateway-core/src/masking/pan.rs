//! Finding primary account numbers (PANs) in bytes.
//!
//! A PAN here is 12 to 19 digits, written as one run or in groups joined by
//! single spaces or single dashes (the same separator throughout), bounded
//! by non-digits, in the issuer range of a major brand with a length that
//! brand issues, and Luhn-valid. Anything else stays untouched, which keeps
//! timestamps, IMEIs, UUIDs, phone numbers and order numbers out.

/// A PAN found in a byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Offset of the first digit.
    pub start: usize,
    /// Offset one past the last digit.
    pub end: usize,
    /// Number of digits (separators not counted).
    pub digits: u8,
}

/// Whether each byte is an ASCII digit (a table is faster than two compares
/// in the scanner's inner loop).
const DIGIT: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'0';
    while b <= b'9' {
        table[b as usize] = true;
        b += 1;
    }
    table
};

/// At most this many groups in a grouped PAN (19 digits in groups of at least 3).
const MAX_GROUPS: usize = 7;

/// Every PAN in `text`, in order, not overlapping.
pub fn find(text: &[u8]) -> Vec<Found> {
    let mut out = Vec::new();
    scan(text, |f| out.push(f));
    out
}

/// Whether `text` holds a PAN anywhere.
pub fn contains(text: &[u8]) -> bool {
    let mut any = false;
    scan(text, |_| any = true);
    any
}

/// Call `found` for every PAN in `text`.
pub fn scan(text: &[u8], mut found: impl FnMut(Found)) {
    let n = text.len();
    let mut i = 0;
    while i < n {
        // Skip to the next digit.
        while i < n && !DIGIT[text[i] as usize] {
            i += 1;
        }
        if i >= n {
            return;
        }
        // The first digit run.
        let start = i;
        while i < n && DIGIT[text[i] as usize] {
            i += 1;
        }
        // The fractional part of a decimal number (`12.4200000000000000`) is not a PAN.
        if start >= 2 && text[start - 1] == b'.' && DIGIT[text[start - 2] as usize] {
            continue;
        }
        let first_len = i - start;
        // Grouped form: a run of 3-6 digits followed by a separator and a digit.
        let separated = i + 1 < n
            && (text[i] == b' ' || text[i] == b'-')
            && DIGIT[text[i + 1] as usize]
            && (3..=6).contains(&first_len);
        if !separated {
            if (12..=19).contains(&first_len) && valid(&text[start..i]) {
                found(Found {
                    start,
                    end: i,
                    digits: first_len as u8,
                });
            }
            continue;
        }
        // Collect the groups joined by this separator.
        let sep = text[i];
        let mut groups = [(0usize, 0usize); MAX_GROUPS + 1];
        groups[0] = (start, i);
        let mut count = 1;
        while count <= MAX_GROUPS && i + 1 < n && text[i] == sep && DIGIT[text[i + 1] as usize] {
            let g = i + 1;
            let mut e = g;
            while e < n && DIGIT[text[e] as usize] {
                e += 1;
            }
            groups[count] = (g, e);
            count += 1;
            i = e;
            if e - g > 6 {
                break;
            }
        }
        // From each start group, the longest valid PAN; groups of 3-6
        // digits, the last one may be 1-6.
        let mut a = 0;
        let mut resume = i;
        while a < count {
            let mut digits = [0u8; 19];
            let mut total = 0usize;
            let mut best: Option<(usize, usize)> = None;
            for (b, &(gs, ge)) in groups.iter().enumerate().take(count).skip(a) {
                let len = ge - gs;
                if total + len > 19 || len > 6 || (b == a && len < 3) {
                    break;
                }
                digits[total..total + len].copy_from_slice(&text[gs..ge]);
                total += len;
                if b > a && total >= 12 && valid(&digits[..total]) {
                    best = Some((b, total));
                }
                if len < 3 {
                    break;
                }
            }
            match best {
                Some((b, total)) => {
                    found(Found {
                        start: groups[a].0,
                        end: groups[b].1,
                        digits: total as u8,
                    });
                    a = b + 1;
                }
                None => a += 1,
            }
        }
        // A long last group was not part of a grouped PAN, but may be one itself.
        let (gs, ge) = groups[count - 1];
        if count > 1 && ge - gs > 6 {
            if (12..=19).contains(&(ge - gs)) && valid(&text[gs..ge]) {
                found(Found {
                    start: gs,
                    end: ge,
                    digits: (ge - gs) as u8,
                });
            }
            resume = ge;
        }
        i = resume;
    }
}

/// A digit string is a PAN: issuer range and length of a major brand, and Luhn.
pub fn valid(digits: &[u8]) -> bool {
    brand(digits).is_some() && luhn(digits)
}

/// The Luhn check (ISO/IEC 7812-1).
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Card brands whose ranges the detector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// Visa.
    Visa,
    /// Mastercard.
    Mastercard,
    /// American Express.
    Amex,
    /// Discover.
    Discover,
    /// JCB.
    Jcb,
    /// UnionPay.
    UnionPay,
    /// Diners Club.
    Diners,
    /// Maestro.
    Maestro,
}

/// The brand whose issuer range and lengths `digits` fits.
pub fn brand(digits: &[u8]) -> Option<Brand> {
    let len = digits.len();
    let prefix = |n: usize| -> u32 {
        digits[..n]
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    if !(12..=19).contains(&len) {
        return None;
    }
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    let p6 = prefix(6);
    if digits[0] == b'4' && matches!(len, 13 | 16 | 19) {
        return Some(Brand::Visa);
    }
    if len == 16 && ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) {
        return Some(Brand::Mastercard);
    }
    if len == 15 && (p2 == 34 || p2 == 37) {
        return Some(Brand::Amex);
    }
    if (16..=19).contains(&len) {
        if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6) {
            return Some(Brand::Discover);
        }
        if (3528..=3589).contains(&p4) {
            return Some(Brand::Jcb);
        }
        if p2 == 62 {
            return Some(Brand::UnionPay);
        }
    }
    if (14..=19).contains(&len) && ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) {
        return Some(Brand::Diners);
    }
    if matches!(
        p4,
        5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761 | 6762 | 6763
    ) {
        return Some(Brand::Maestro);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pans(text: &str) -> Vec<String> {
        find(text.as_bytes())
            .into_iter()
            .map(|f| text[f.start..f.end].to_string())
            .collect()
    }

    #[test]
    fn finds_plain_grouped_and_embedded_pans() {
        assert_eq!(pans("4111111111111111"), ["4111111111111111"]);
        assert_eq!(pans("card 4111 1111 1111 1111."), ["4111 1111 1111 1111"]);
        assert_eq!(pans("x4111-1111-1111-1111y"), ["4111-1111-1111-1111"]);
        assert_eq!(pans("amex 3782 822463 10005"), ["3782 822463 10005"]);
        assert_eq!(
            pans("Key (pan)=(5555555555554444) already exists."),
            ["5555555555554444"]
        );
        assert_eq!(
            pans("4111111111111111,5555555555554444"),
            ["4111111111111111", "5555555555554444"]
        );
        assert_eq!(pans("4111 1111 1111 1111 12 30"), ["4111 1111 1111 1111"]);
        assert_eq!(pans("id 12 4111 1111 1111 1111"), ["4111 1111 1111 1111"]);
    }

    #[test]
    fn leaves_lookalikes_alone() {
        for text in [
            "1764061300001",                        // millisecond timestamp
            "4111111111111112",                     // Luhn fails
            "41111111111111111111",                 // 20 digits
            "490154203237518",                      // IMEI
            "+1 415 555 2671",                      // phone
            "ORD-9000000000000001",                 // outside issuer ranges
            "411111******1111",                     // already masked
            "4111 1111  1111 1111",                 // double space breaks the grouping
            "4111-1111 1111-1111",                  // mixed separators
            "123e4567-e89b-12d3-a456-426614174000", // UUID
            "12.4200000000000000",                  // numeric fraction
        ] {
            assert!(pans(text).is_empty(), "{text} is not a PAN");
        }
    }

    #[test]
    fn brands_and_lengths() {
        assert_eq!(brand(b"4222222222222"), Some(Brand::Visa));
        assert_eq!(brand(b"2223003122003222"), Some(Brand::Mastercard));
        assert_eq!(brand(b"378282246310005"), Some(Brand::Amex));
        assert_eq!(brand(b"6011111111111117"), Some(Brand::Discover));
        assert_eq!(brand(b"3530111333300000"), Some(Brand::Jcb));
        assert_eq!(brand(b"6200000000000005"), Some(Brand::UnionPay));
        assert_eq!(brand(b"30569309025904"), Some(Brand::Diners));
        assert_eq!(brand(b"6759649826438453"), Some(Brand::Maestro));
        assert_eq!(brand(b"3530111333300"), None, "JCB is 16-19 digits");
        assert!(luhn(b"4111111111111111") && !luhn(b"4111111111111121"));
    }
}
