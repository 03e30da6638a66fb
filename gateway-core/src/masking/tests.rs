//! The labelled corpus (`fixtures/masking/corpus.tsv`): precision and recall
//! of content detection.

use super::*;

const CORPUS: &str = include_str!("../../../fixtures/masking/corpus.tsv");

#[test]
fn corpus_precision_and_recall() {
    let (mut tp, mut fp, mut fn_) = (0u32, 0u32, 0u32);
    let mut wrong = Vec::new();
    for (line_no, line) in CORPUS.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split('\t');
        let (label, text, expected) = (
            cols.next().unwrap(),
            cols.next().unwrap_or(""),
            cols.next().unwrap_or(""),
        );
        let mut bytes = text.as_bytes().to_vec();
        let hits = mask_text(&mut bytes, Keep::Display, Fill::Star);
        let masked = String::from_utf8(bytes).unwrap();
        let (pans, tracks) = (
            hits.iter().filter(|h| **h == Detector::Pan).count(),
            hits.iter().filter(|h| **h == Detector::Track).count(),
        );
        let want: Vec<&str> = expected.split(',').filter(|s| !s.is_empty()).collect();
        let (want_pans, want_tracks) = match label {
            "pan" => (want.len(), 0),
            "track" => (0, 1),
            _ => (0, 0),
        };
        let found = pans + tracks;
        let wanted = want_pans + want_tracks;
        let right = pans.min(want_pans) + tracks.min(want_tracks);
        tp += right as u32;
        fp += (found - right) as u32;
        fn_ += (wanted - right) as u32;
        // No full PAN of the expected ones may survive masking.
        let leaked = want.iter().any(|pan| {
            masked
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .contains(pan)
        });
        if found != wanted || pans != want_pans || leaked {
            wrong.push(format!(
                "line {}: {label} {text:?} -> {masked:?}",
                line_no + 1
            ));
        }
    }
    let precision = f64::from(tp) / f64::from(tp + fp);
    let recall = f64::from(tp) / f64::from(tp + fn_);
    println!(
        "corpus: precision {precision:.3}, recall {recall:.3} ({tp} true, {fp} false positives, {fn_} missed)"
    );
    assert!(
        wrong.is_empty(),
        "{} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(tp > 140, "the corpus has its cases");
}

#[test]
fn record_mask_keeps_last_four_only() {
    assert_eq!(
        for_record("INSERT INTO p VALUES ('4111111111111111', 'x')"),
        "INSERT INTO p VALUES ('************1111', 'x')"
    );
    assert_eq!(for_record("SELECT 1"), "SELECT 1");
}

#[test]
fn tokens_are_stable_keyed_and_ignore_separators() {
    let key = TokenKey::new(&[7u8; 32]).unwrap();
    let other = TokenKey::new(&[8u8; 32]).unwrap();
    assert_eq!(
        key.text(b"4111111111111111"),
        key.text(b"4111 1111 1111 1111")
    );
    assert_ne!(
        key.text(b"4111111111111111"),
        other.text(b"4111111111111111")
    );
    assert!(key.text(b"4111111111111111").starts_with("tok_"));
    let n = key.number(b"4111111111111111");
    assert_eq!(n.to_string().len(), 15);
    assert!(!pan::valid(n.to_string().as_bytes()));
    assert!(TokenKey::new(b"short").is_err());
}

#[test]
fn counts_add_up() {
    let mut counts = Counts::default();
    counts.add("public.payments.pan", Detector::Column, 3);
    counts.add("public.payments.pan", Detector::Column, 2);
    counts.add("error", Detector::Pan, 1);
    counts.add("error", Detector::Track, 0);
    assert_eq!(counts.total(), 6);
    assert_eq!(counts.iter().count(), 2);
}
