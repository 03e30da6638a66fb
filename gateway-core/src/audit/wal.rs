//! The audit log's journal, `audit.wal`: a file of fixed size, written
//! full of zeros when it is created, into which each batch of records is
//! written (as one checksummed frame) and fsynced before the batch is
//! acknowledged. The same bytes go to `audit.jsonl` without an fsync of
//! their own.
//!
//! Why: fsyncing an append to `audit.jsonl` also commits the file's new
//! size to the filesystem's journal (on ext4 a second device flush, queued
//! behind every other file's metadata), while an fsync of bytes written
//! over blocks that already exist flushes only the data. On this project's
//! machine that halves the fsync each statement waits for.
//!
//! What a crash can do: `kill -9` loses nothing (the page cache keeps
//! `audit.jsonl`); a machine crash can lose the tail of `audit.jsonl` that
//! was not yet fsynced, and opening the log appends those records again
//! from the journal. `audit.jsonl` is fsynced before a checkpoint is
//! signed and before the journal wraps to its start, so every record a
//! checkpoint vouches for is in `audit.jsonl`, and every frame the journal
//! overwrites is.
//!
//! Frame: `"TGW1"`, the first record's `seq` (u64), the number of records
//! (u32), the payload's length (u32), SHA-256 of those 16 bytes and the
//! payload, then the payload: the records' lines as in `audit.jsonl`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::log::{AuditError, io};

/// The journal's size: about 6000 records of 700 bytes between wraps.
pub(super) const SIZE: u64 = 4 << 20;

const MAGIC: &[u8; 4] = b"TGW1";
const HEADER: usize = 4 + 8 + 4 + 4 + 32;

/// The journal file in `dir`.
pub fn wal_path(dir: &Path) -> PathBuf {
    dir.join("audit.wal")
}

/// The journal, open for writing.
pub(super) struct Wal {
    path: PathBuf,
    file: File,
    /// Where the next frame goes.
    pos: u64,
    size: u64,
}

impl Wal {
    /// Open the journal in `dir` (created, or recreated when it has
    /// another size, and made durable before it is used). Frames are
    /// written from its start: whatever it held is in `audit.jsonl`
    /// already (see [`pending`]).
    pub(super) fn open(dir: &Path, size: u64) -> Result<Wal, AuditError> {
        let path = wal_path(dir);
        let len = std::fs::metadata(&path).map(|m| m.len()).ok();
        if len != Some(size) {
            // Written full of zeros, so that no later write extends it.
            let tmp = dir.join("audit.wal.tmp");
            let created = (|| {
                let mut file = File::create(&tmp)?;
                let zeros = vec![0u8; 1 << 20];
                let mut left = size;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    file.write_all(&zeros[..n])?;
                    left -= n as u64;
                }
                file.sync_all()
            })();
            if let Err(e) = created {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(&tmp, e));
            }
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(dir, e))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        Ok(Wal {
            path,
            file,
            pos: 0,
            size,
        })
    }

    /// Whether a batch of `len` bytes fits the journal at all (a larger
    /// one is fsynced in `audit.jsonl` instead).
    pub(super) fn fits(&self, len: usize) -> bool {
        (HEADER + len) as u64 <= self.size
    }

    /// Whether a batch of `len` bytes fits before the journal's end.
    pub(super) fn has_room(&self, len: usize) -> bool {
        self.pos + (HEADER + len) as u64 <= self.size
    }

    /// Write the next frames from the start again. Only once every record
    /// in the journal is durable in `audit.jsonl`.
    pub(super) fn rewind(&mut self) {
        self.pos = 0;
    }

    /// Write the records `first..first + count` (their lines, `payload`)
    /// as the next frame and make it durable.
    pub(super) fn append(&mut self, first: u64, count: u32, payload: &[u8]) -> std::io::Result<()> {
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(MAGIC);
        frame.extend_from_slice(&first.to_le_bytes());
        frame.extend_from_slice(&count.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let hash = frame_hash(&frame[4..], payload);
        frame.extend_from_slice(&hash);
        frame.extend_from_slice(payload);
        self.file.write_all_at(&frame, self.pos)?;
        self.file.sync_data()?;
        self.pos += frame.len() as u64;
        Ok(())
    }

    /// The file, for error messages.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

fn frame_hash(fields: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(fields);
    hash.update(payload);
    hash.finalize().into()
}

/// A frame read back.
struct Frame<'a> {
    first: u64,
    count: u64,
    payload: &'a [u8],
}

/// The frames of a journal written since it was last rewound: from its
/// start up to the first that is not a whole frame (never written, or torn
/// by a crash) or does not continue the one before it (left from before
/// the rewind: its records are durable in the records file; or a frame
/// whose fsync failed, whose records were never acknowledged).
fn frames(bytes: &[u8]) -> Vec<Frame<'_>> {
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() && &bytes[at..at + 4] == MAGIC {
        let field = |from: usize, len: usize| &bytes[at + from..at + from + len];
        let first = u64::from_le_bytes(field(4, 8).try_into().unwrap_or_default());
        let count = u32::from_le_bytes(field(12, 4).try_into().unwrap_or_default());
        let len = u32::from_le_bytes(field(16, 4).try_into().unwrap_or_default()) as usize;
        let Some(end) = (at + HEADER)
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
        else {
            break;
        };
        let payload = &bytes[at + HEADER..end];
        if frame_hash(field(4, 16), payload) != field(20, 32)
            || frames
                .last()
                .is_some_and(|last| last.first + last.count != first)
        {
            break;
        }
        frames.push(Frame {
            first,
            count: u64::from(count),
            payload,
        });
        at = end;
    }
    frames
}

/// The lines of the records from `next` on that the journal in `dir` holds
/// and `audit.jsonl` (which ends before record `next`) does not: what a
/// machine crash took from `audit.jsonl` after they were acknowledged.
/// Frames of records before `next` are passed over. A journal whose
/// records start after `next` means records are missing from both files.
pub(super) fn pending(dir: &Path, next: u64) -> Result<Vec<Vec<u8>>, AuditError> {
    pending_in(dir, &read(dir)?, next)
}

/// The journal in `dir` as it is now (empty when there is none). Read
/// before the records file, a journal holds no frame whose records the
/// records file lacks, unless a machine crash took them.
pub(super) fn read(dir: &Path) -> Result<Vec<u8>, AuditError> {
    let path = wal_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path, e)),
    }
}

/// [`pending`] in the journal `bytes` read from `dir`.
pub(super) fn pending_in(
    dir: &Path,
    bytes: &[u8],
    mut next: u64,
) -> Result<Vec<Vec<u8>>, AuditError> {
    let path = wal_path(dir);
    let mut lines = Vec::new();
    for frame in frames(bytes) {
        let end = frame.first + frame.count;
        if end <= next {
            continue;
        }
        if frame.first > next {
            return Err(AuditError::Corrupt {
                path: path.display().to_string(),
                line: 0,
                message: format!(
                    "the journal holds records from {} on, but the records file ends before record {next}; \
                     run `tollgate verify` on the directory",
                    frame.first
                ),
            });
        }
        let skip = (next - frame.first) as usize;
        for line in frame.payload.split_inclusive(|&b| b == b'\n').skip(skip) {
            lines.push(line.to_vec());
        }
        next = end;
    }
    Ok(lines)
}

/// The `seq` of the first record in the journal in `dir`: the oldest
/// written since it was last rewound.
#[cfg(test)]
pub(super) fn oldest(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(wal_path(dir)).ok()?;
    frames(&bytes).first().map(|f| f.first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_at_the_first_torn_or_unwritten_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        assert_eq!(std::fs::metadata(wal_path(dir.path())).unwrap().len(), 4096);
        wal.append(0, 2, b"{\"seq\":0}\n{\"seq\":1}\n").unwrap();
        wal.append(2, 1, b"{\"seq\":2}\n").unwrap();
        let mut bytes = std::fs::read(wal_path(dir.path())).unwrap();
        let seqs = |bytes: &[u8]| {
            frames(bytes)
                .iter()
                .map(|f| (f.first, f.count))
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&bytes), [(0, 2), (2, 1)]);
        // One byte of the second frame's payload changed: a torn write.
        let second = HEADER + 20 + HEADER;
        bytes[second] ^= 1;
        assert_eq!(seqs(&bytes), [(0, 2)]);
    }

    #[test]
    fn pending_records_continue_the_records_file_and_skip_older_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(5, 2, b"{\"seq\":5}\n{\"seq\":6}\n").unwrap();
        wal.append(7, 1, b"{\"seq\":7}\n").unwrap();
        // Rewound: the older frames stay behind the new one.
        wal.rewind();
        wal.append(8, 1, b"{\"seq\":8}\n").unwrap();
        assert!(pending(dir.path(), 9).unwrap().is_empty());
        assert_eq!(pending(dir.path(), 8).unwrap(), [b"{\"seq\":8}\n".to_vec()]);
        // The records file lost its last record and a half: from the middle
        // of a frame on.
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(5, 2, b"{\"seq\":5}\n{\"seq\":6}\n").unwrap();
        wal.append(7, 1, b"{\"seq\":7}\n").unwrap();
        let lines = pending(dir.path(), 6).unwrap();
        assert_eq!(
            lines,
            [b"{\"seq\":6}\n".to_vec(), b"{\"seq\":7}\n".to_vec()]
        );
        // Records before the journal's first are missing from both files.
        let e = pending(dir.path(), 3).unwrap_err();
        assert!(e.to_string().contains("records from 5 on"), "{e}");
    }

    #[test]
    fn a_frame_that_does_not_continue_the_last_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), 4096).unwrap();
        wal.append(0, 1, b"{\"seq\":0}\n").unwrap();
        // Written whole, but (say) its fsync failed: records 1 to 3 were
        // never acknowledged, and the next batch takes their numbers.
        wal.append(1, 3, b"{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n")
            .unwrap();
        wal.rewind();
        wal.append(1, 1, b"{\"seq\":1}\n").unwrap();
        let bytes = std::fs::read(wal_path(dir.path())).unwrap();
        let seqs: Vec<_> = frames(&bytes).iter().map(|f| (f.first, f.count)).collect();
        assert_eq!(seqs, [(1, 1)], "the stale frame right after is not read");
        assert_eq!(pending(dir.path(), 1).unwrap(), [b"{\"seq\":1}\n".to_vec()]);
    }
}
