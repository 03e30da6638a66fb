//! How much cardholder data each identity has received on each connection
//! lately: the rows actually returned, counted over a sliding window, for
//! `context.rows_returned`.
//!
//! A planner estimate is what the client can sway (`LIMIT 100 OFFSET n`,
//! many small statements, a cursor fetched in pieces): a bulk export by any
//! route shows up here instead. Counts are kept in one-minute buckets per
//! (issuer, subject, connection), so the memory per identity is bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back rows count.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
const BUCKET: Duration = Duration::from_secs(60);
/// Identities tracked before the quietest are forgotten.
const MOST_IDENTITIES: usize = 100_000;

type Key = (String, String, String);

/// Rows of cardholder data returned, per identity and connection.
#[derive(Debug, Default)]
pub struct ReadVolume {
    counts: Mutex<HashMap<Key, VecDeque<(Instant, u64)>>>,
}

impl ReadVolume {
    /// `rows` more were returned to (issuer, subject) on `connection`.
    pub fn add(&self, issuer: &str, subject: &str, connection: &str, rows: u64) {
        self.add_at(issuer, subject, connection, rows, Instant::now());
    }

    fn add_at(&self, issuer: &str, subject: &str, connection: &str, rows: u64, now: Instant) {
        if rows == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() >= MOST_IDENTITIES {
            counts.retain(|_, buckets| {
                buckets
                    .back()
                    .is_some_and(|(at, _)| now.duration_since(*at) < WINDOW)
            });
        }
        let buckets = counts
            .entry((
                issuer.to_string(),
                subject.to_string(),
                connection.to_string(),
            ))
            .or_default();
        match buckets.back_mut() {
            Some((start, count)) if now.duration_since(*start) < BUCKET => *count += rows,
            _ => buckets.push_back((now, rows)),
        }
        while buckets
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            buckets.pop_front();
        }
    }

    /// Rows returned within the window.
    pub fn recent(&self, issuer: &str, subject: &str, connection: &str) -> u64 {
        self.recent_at(issuer, subject, connection, Instant::now())
    }

    fn recent_at(&self, issuer: &str, subject: &str, connection: &str, now: Instant) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .get(&(
                issuer.to_string(),
                subject.to_string(),
                connection.to_string(),
            ))
            .map_or(0, |buckets| {
                buckets
                    .iter()
                    .filter(|(at, _)| now.duration_since(*at) < WINDOW)
                    .map(|(_, n)| n)
                    .sum()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_add_up_per_identity_and_connection_within_the_window() {
        let volume = ReadVolume::default();
        let start = Instant::now();
        for page in 0..10 {
            volume.add_at(
                "iss",
                "mallory",
                "payments",
                100,
                start + Duration::from_secs(page * 30),
            );
        }
        let later = start + Duration::from_secs(300);
        assert_eq!(volume.recent_at("iss", "mallory", "payments", later), 1000);
        assert_eq!(volume.recent_at("iss", "mallory", "other", later), 0);
        assert_eq!(volume.recent_at("iss", "alice", "payments", later), 0);
        let after_window = start + WINDOW + Duration::from_secs(600);
        assert_eq!(
            volume.recent_at("iss", "mallory", "payments", after_window),
            0
        );
    }
}
