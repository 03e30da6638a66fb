//! The durable audit log: one canonical JSON record per line in
//! `audit.jsonl`, each a leaf of the Merkle tree; signed checkpoints in
//! `checkpoints.jsonl`. Appends are group-committed: a batch is written
//! and made durable (through the journal, [`super::wal`]) before any of
//! its callers hears back, so a record whose append returned survives
//! `kill -9` and a machine crash. On open, a torn last line (a crash
//! mid-write) is cut off, the records only the journal kept are appended,
//! and the same tree continues.
//!
//! Retention prunes the oldest signed records: their leaf hashes move to
//! `pruned-leaves.bin` (32 bytes each, in order) so that every checkpoint
//! still verifies against what remains, and a `retention.prune` record,
//! written before anything is removed, announces how far the prune goes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::note::{Checkpoint, Signer};
use super::tree::{Hash, Tree, leaf_hash};
use super::wal::{self, Wal};

/// Why the audit log cannot do its job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Reading or writing the log failed.
    #[error("audit log {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        message: String,
    },
    /// The log on disk is not a valid log.
    #[error("audit log {path} line {line}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// The line (0 when the fault is not in one line).
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The writer stopped (an earlier write failed).
    #[error("the audit log writer stopped after an error; no record can be made durable")]
    Stopped,
    /// Another process holds the log.
    #[error("audit log {path} is in use by another process (a running gateway)")]
    Busy {
        /// The directory.
        path: String,
    },
}

pub(super) fn io(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// When a checkpoint is signed.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointEvery {
    /// After this many new records.
    pub records: u64,
    /// Or after this long with new records.
    pub interval: Duration,
}

impl Default for CheckpointEvery {
    fn default() -> Self {
        CheckpointEvery {
            records: 1000,
            interval: Duration::from_secs(10),
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<u64, AuditError>>;

enum Command {
    Append(Map<String, Value>, Reply),
    Checkpoint(tokio::sync::oneshot::Sender<Result<String, AuditError>>),
    Prune(
        String,
        u64,
        tokio::sync::oneshot::Sender<Result<Pruned, AuditError>>,
    ),
    Close(tokio::sync::oneshot::Sender<()>),
    /// Records are queued and nobody is writing them: write them.
    Flush,
}

/// What a retention prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Records removed by this prune.
    pub records: u64,
    /// Records pruned so far in all (the first kept record's `seq`).
    pub first_kept: u64,
}

/// A handle to the audit log (cheap to clone; one writer thread behind it).
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    verifier_key: String,
    dir: PathBuf,
    /// Bytes of `audit.jsonl` that are durable (fsynced and acknowledged):
    /// readers never look past them.
    durable: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

/// The records file in `dir`.
pub fn records_path(dir: &Path) -> PathBuf {
    dir.join("audit.jsonl")
}

/// The checkpoints file in `dir`.
pub fn checkpoints_path(dir: &Path) -> PathBuf {
    dir.join("checkpoints.jsonl")
}

/// The leaf hashes of pruned records in `dir`.
pub fn pruned_path(dir: &Path) -> PathBuf {
    dir.join("pruned-leaves.bin")
}

/// The leaf hashes of the records pruned from the log in `dir`, in order
/// (empty when nothing was pruned). A torn tail (a crash while a prune
/// wrote them) is ignored: that prune had not removed anything yet.
pub fn pruned_leaves(dir: &Path) -> Result<Vec<Hash>, AuditError> {
    let path = pruned_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path, e)),
    };
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(c);
            hash
        })
        .collect())
}

fn key_path(dir: &Path) -> PathBuf {
    dir.join("audit-signing-key.pk8")
}

/// Where other processes (`tollgate evidence`) leave records for the
/// process that holds the log to append.
pub fn inbox_path(dir: &Path) -> PathBuf {
    dir.join("inbox")
}

/// Leave `record` in the inbox of the log in `dir`; the process holding
/// the log appends it within a second or so. Returns the file written.
pub fn leave_in_inbox(dir: &Path, record: &Map<String, Value>) -> Result<PathBuf, AuditError> {
    let inbox = inbox_path(dir);
    std::fs::create_dir_all(&inbox).map_err(|e| io(&inbox, e))?;
    let name: u64 = rand::random();
    let tmp = inbox.join(format!(".{name:016x}.tmp"));
    let path = inbox.join(format!("{name:016x}.json"));
    let bytes = serde_json::to_vec(&Value::Object(record.clone())).unwrap_or_default();
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    Ok(path)
}

/// Records waiting in the inbox, oldest name first (files that do not hold
/// a JSON object are set aside as `*.rejected`).
fn inbox_records(dir: &Path) -> Vec<(PathBuf, Map<String, Value>)> {
    let Ok(entries) = std::fs::read_dir(inbox_path(dir)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok());
            match parsed {
                Some(record) => Some((path, record)),
                None => {
                    let _ = std::fs::rename(&path, path.with_extension("rejected"));
                    None
                }
            }
        })
        .collect()
}

/// The signing key of the log in `dir`, created on first use (mode 0600).
pub fn signer(dir: &Path, origin: &str) -> Result<Signer, AuditError> {
    let path = key_path(dir);
    match std::fs::read(&path) {
        Ok(pkcs8) => Signer::from_pkcs8(origin, &pkcs8).map_err(|e| io(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, pkcs8) = Signer::generate(origin).map_err(|e| io(&path, e))?;
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path).map_err(|e| io(&path, e))?;
            file.write_all(&pkcs8).map_err(|e| io(&path, e))?;
            file.sync_all().map_err(|e| io(&path, e))?;
            Ok(signer)
        }
        Err(e) => Err(io(&path, e)),
    }
}

/// Read the log in `dir`: the pruned leaf hashes, then the records, cutting
/// off a torn last line. Records a prune already hashed but had not yet
/// removed (a crash in between) are checked against their hashes and
/// removed now. Returns the tree and the length of the records file.
fn recover(dir: &Path) -> Result<(Tree, u64), AuditError> {
    let pruned = pruned_leaves(dir)?;
    let mut tree = Tree::new();
    for leaf in &pruned {
        tree.push(*leaf);
    }
    let path = records_path(dir);
    let path = path.as_path();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return replay(dir, tree, 0),
        Err(e) => return Err(io(path, e)),
    };
    let mut reader = BufReader::new(file);
    let mut good_bytes = 0u64;
    // Bytes of records already pruned (hashed) but still in the file.
    let mut leftover = 0u64;
    let mut next_leftover: Option<u64> = None;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() != Some(&b'\n') {
            // Torn by a crash: never acknowledged, so never relied on.
            break;
        }
        let record = &line[..line.len() - 1];
        let seq = serde_json::from_slice::<Value>(record)
            .ok()
            .and_then(|v| v.get("seq").and_then(Value::as_u64));
        if let Some(seq) = seq
            && seq < pruned.len() as u64
            && good_bytes == leftover
            && next_leftover.is_none_or(|next| next == seq)
        {
            if leaf_hash(record) != pruned[seq as usize] {
                return Err(AuditError::Corrupt {
                    path: path.display().to_string(),
                    line: line_no,
                    message: format!(
                        "record {seq} differs from its hash in {}; run `tollgate verify` on the directory",
                        pruned_path(dir).display()
                    ),
                });
            }
            leftover += n as u64;
            good_bytes += n as u64;
            next_leftover = Some(seq + 1);
            continue;
        }
        if seq != Some(tree.size()) {
            return Err(AuditError::Corrupt {
                path: path.display().to_string(),
                line: line_no,
                message: format!(
                    "expected record {} (a JSON object with \"seq\"); run `tollgate verify` on the directory",
                    tree.size()
                ),
            });
        }
        tree.push(leaf_hash(record));
        good_bytes += n as u64;
    }
    let file_len = std::fs::metadata(path).map_err(|e| io(path, e))?.len();
    if file_len > good_bytes {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        file.set_len(good_bytes).map_err(|e| io(path, e))?;
        file.sync_all().map_err(|e| io(path, e))?;
    }
    if leftover > 0 {
        drop_prefix(dir, leftover)?;
        good_bytes -= leftover;
    }
    replay(dir, tree, good_bytes)
}

/// Append to the records file in `dir` (`good_bytes` long, ending before
/// record `tree.size()`) the acknowledged records that only the journal
/// holds (a machine crash took them from the page cache), and make them
/// durable.
fn replay(dir: &Path, mut tree: Tree, good_bytes: u64) -> Result<(Tree, u64), AuditError> {
    let lines = wal::pending(dir, tree.size())?;
    if lines.is_empty() {
        return Ok((tree, good_bytes));
    }
    let path = records_path(dir);
    let mut bytes = Vec::new();
    for line in &lines {
        let record = line.strip_suffix(b"\n").unwrap_or(line);
        let seq = serde_json::from_slice::<Value>(record)
            .ok()
            .and_then(|v| v.get("seq").and_then(Value::as_u64));
        if seq != Some(tree.size()) || record.len() == line.len() {
            return Err(AuditError::Corrupt {
                path: wal::wal_path(dir).display().to_string(),
                line: 0,
                message: format!(
                    "expected record {} in the journal; run `tollgate verify` on the directory",
                    tree.size()
                ),
            });
        }
        tree.push(leaf_hash(record));
        bytes.extend_from_slice(line);
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&path, e))?;
    sync_dir(dir)?;
    tracing::warn!(target: "tollgate::audit", records = lines.len(), "audit records acknowledged before a machine crash were restored from the journal");
    Ok((tree, good_bytes + bytes.len() as u64))
}

/// Remove the first `bytes` of the records file in `dir` (whole records),
/// atomically: the rest is copied to a new file that replaces it.
fn drop_prefix(dir: &Path, bytes: u64) -> Result<(), AuditError> {
    let path = records_path(dir);
    let tmp = dir.join("audit.jsonl.tmp");
    let copied = (|| {
        let mut from = File::open(&path).map_err(|e| io(&path, e))?;
        from.seek(SeekFrom::Start(bytes))
            .map_err(|e| io(&path, e))?;
        let mut to = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        std::io::copy(&mut from, &mut to).map_err(|e| io(&tmp, e))?;
        to.sync_all().map_err(|e| io(&tmp, e))
    })();
    if let Err(e) = copied {
        // A partial copy must not keep a full disk full.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
    sync_dir(dir)
}

/// Make a directory's entries (a new or renamed file) durable.
fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

impl AuditLog {
    /// Open (or create) the log in `dir`, named `origin` in its checkpoints.
    pub fn open(dir: &Path, origin: &str, every: CheckpointEvery) -> Result<AuditLog, AuditError> {
        Self::open_with(dir, origin, every, wal::SIZE)
    }

    /// [`AuditLog::open`] with a journal of `wal_size` bytes.
    fn open_with(
        dir: &Path,
        origin: &str,
        every: CheckpointEvery,
        wal_size: u64,
    ) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        // One writer per log: a second would fork the tree.
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        // A writer of this process that was just dropped may take a moment
        // to let go.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 25 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(AuditError::Busy {
                        path: dir.display().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, e)),
            }
        }
        let signer = signer(dir, origin)?;
        let verifier_key = signer.verifier_key();
        let records = records_path(dir);
        let (tree, good_bytes) = recover(dir)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&records)
            .map_err(|e| io(&records, e))?;
        file.seek(SeekFrom::End(0)).map_err(|e| io(&records, e))?;
        // The journal is written from its start again: whatever it held
        // must be durable in the records file first (after a `kill -9`, the
        // last records may be in the page cache only).
        file.sync_all().map_err(|e| io(&records, e))?;
        sync_dir(dir)?;
        let wal = Wal::open(dir, wal_size)?;
        let checkpoints = checkpoints_path(dir);
        let checkpoint_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&checkpoints)
            .map_err(|e| io(&checkpoints, e))?;
        let (tx, rx) = mpsc::channel();
        let durable = Arc::new(AtomicU64::new(good_bytes));
        let writer = Writer {
            durable: durable.clone(),
            dir: dir.to_path_buf(),
            _lock: lock,
            records,
            file,
            wal,
            unsynced: false,
            checkpoints,
            checkpoint_file,
            tree,
            good_bytes,
            written_back: good_bytes & !(PAGE - 1),
            signer,
            origin: origin.to_string(),
            every,
            signed_size: 0,
            signed_at: Instant::now(),
            failed: None,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(Some(writer)),
        });
        let background = shared.clone();
        std::thread::Builder::new()
            .name("tollgate-audit".into())
            .spawn(move || {
                let closing = run(&background, rx, every);
                // Let go of the lock before anyone hears the log is closed.
                drop(lock_writer(&background).take());
                for reply in closing {
                    let _ = reply.send(());
                }
            })
            .map_err(|e| io(dir, e))?;
        Ok(AuditLog {
            tx,
            shared,
            verifier_key,
            dir: dir.to_path_buf(),
            durable,
        })
    }

    /// The verifier key of the log's checkpoints (C2SP note format).
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append a record; resolves with its sequence number once it is on
    /// disk (fsynced). `seq` and `time` are set by the log.
    pub async fn append(&self, record: Map<String, Value>) -> Result<u64, AuditError> {
        self.submit(record).await
    }

    /// Queue a record now (so records keep the order of the calls) and
    /// return a future that resolves once it is durable.
    pub fn submit(
        &self,
        record: Map<String, Value>,
    ) -> impl std::future::Future<Output = Result<u64, AuditError>> + Send + 'static {
        let (reply, done) = tokio::sync::oneshot::channel();
        let queued = {
            let mut queue = lock_queue(&self.shared);
            if queue.closed {
                drop(reply);
                false
            } else {
                queue.records.push((record, reply));
                true
            }
        };
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        async move {
            if !queued {
                return Err(AuditError::Stopped);
            }
            // Group commit without a hand-off: when nobody is writing, the
            // task whose record is queued writes the queue itself, on its
            // own thread, and goes on at once. Records queued while it
            // writes are the next batch, which the background thread
            // writes: no statement waits for a batch to fill. At most one
            // runtime worker is ever blocked on the log (one batch is
            // written at a time); measured, this beats both a hand-off to
            // the writer thread (two wake-ups per statement, 0.4 ms under
            // load) and `block_in_place` (which hands the worker's queue to
            // another thread each time).
            if may_block_here() {
                if lead(&shared) {
                    let _ = tx.send(Command::Flush);
                }
            } else {
                let _ = tx.send(Command::Flush);
            }
            done.await.map_err(|_| AuditError::Stopped)?
        }
    }

    /// Apply retention: remove the oldest records whose time is before
    /// `before` (RFC 3339) and that a checkpoint already covers. A
    /// `retention.prune` record announcing the prune is written first; the
    /// removed records' leaf hashes are kept, so every checkpoint still
    /// verifies against what remains. Records from `keep_from` on stay
    /// whatever their age (a SIEM has not received them yet).
    pub async fn prune(&self, before: &str, keep_from: u64) -> Result<Pruned, AuditError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Prune(before.to_string(), keep_from, reply))
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Up to `limit` durable records with `seq > after` (from the first
    /// kept record when `after` is `None`), oldest first. Never a record
    /// whose append has not been acknowledged. Blocking file IO.
    pub fn read(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Map<String, Value>>, AuditError> {
        let bytes = self.durable.load(Ordering::Acquire);
        read_up_to(&self.dir, after, limit, bytes)
    }

    /// Close the log: sign what is unsigned, stop the writer and release
    /// the lock, so another writer (a restarted gateway) can open it. Later
    /// appends through any handle fail with [`AuditError::Stopped`].
    pub async fn close(&self) {
        let (reply, done) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Close(reply)).is_ok() {
            let _ = done.await;
        }
    }

    /// Sign a checkpoint of everything appended so far; returns the note.
    pub async fn checkpoint(&self) -> Result<String, AuditError> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.tx
            .send(Command::Checkpoint(reply))
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }
}

struct Writer {
    dir: PathBuf,
    /// Held (locked) for as long as the writer runs.
    _lock: File,
    records: PathBuf,
    file: File,
    /// Each batch is made durable here (see [`wal`]).
    wal: Wal,
    /// `file` holds records that were not fsynced there (they are in the
    /// journal).
    unsynced: bool,
    checkpoints: PathBuf,
    checkpoint_file: File,
    tree: Tree,
    /// Length of `records` up to its last acknowledged record.
    good_bytes: u64,
    /// `records` up to here was handed to the disk (whole pages).
    written_back: u64,
    signer: Signer,
    origin: String,
    every: CheckpointEvery,
    signed_size: u64,
    signed_at: Instant,
    failed: Option<AuditError>,
    durable: Arc<AtomicU64>,
}

/// Most records written in one batch (one fsync).
const MAX_BATCH: usize = 4096;

/// How often the writer looks into its inbox.
const INBOX_POLL: Duration = Duration::from_secs(1);

/// What the background thread and the appending tasks share.
struct Shared {
    /// Records waiting to be written, in the order they were submitted.
    queue: Mutex<Queue>,
    /// `None` once the log is closed (its file lock released).
    writer: Mutex<Option<Writer>>,
}

#[derive(Default)]
struct Queue {
    records: Vec<(Map<String, Value>, Reply)>,
    /// A batch taken from the queue is being written.
    writing: bool,
    closed: bool,
}

fn lock_queue(shared: &Shared) -> std::sync::MutexGuard<'_, Queue> {
    shared.queue.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_writer(shared: &Shared) -> std::sync::MutexGuard<'_, Option<Writer>> {
    shared.writer.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this task may block its thread for a write: on a multi-thread
/// runtime, where the other workers go on with the queued tasks meanwhile
/// (on a current-thread runtime the writer thread writes instead).
fn may_block_here() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Write the queued records as one batch (one fsync), unless a batch is
/// being written already. Returns whether records were queued meanwhile
/// (someone must write them next).
fn lead(shared: &Shared) -> bool {
    let batch = {
        let mut queue = lock_queue(shared);
        if queue.writing || queue.records.is_empty() {
            return false;
        }
        queue.writing = true;
        let take = queue.records.len().min(MAX_BATCH);
        queue.records.drain(..take).collect::<Vec<_>>()
    };
    {
        let mut writer = lock_writer(shared);
        match writer.as_mut() {
            Some(writer) => writer.handle(
                batch
                    .into_iter()
                    .map(|(record, reply)| Command::Append(record, reply))
                    .collect(),
            ),
            None => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(AuditError::Stopped));
                }
            }
        }
    }
    let mut queue = lock_queue(shared);
    queue.writing = false;
    !queue.records.is_empty()
}

/// Write everything queued (the background thread's share of the work).
fn drain(shared: &Shared) {
    while lead(shared) {}
}

/// Serve commands until every handle is gone or one closes the log;
/// returns who asked to close.
fn run(
    shared: &Shared,
    rx: mpsc::Receiver<Command>,
    every: CheckpointEvery,
) -> Vec<tokio::sync::oneshot::Sender<()>> {
    let tick = every.interval.min(INBOX_POLL);
    let mut inbox_seen = Instant::now();
    let with_writer = |f: &mut dyn FnMut(&mut Writer)| {
        if let Some(writer) = lock_writer(shared).as_mut() {
            f(writer);
        }
    };
    let close = || {
        lock_queue(shared).closed = true;
        drain(shared);
        if let Some(writer) = lock_writer(shared).as_mut()
            && writer.tree.size() > writer.signed_size
        {
            let _ = writer.sign();
        }
    };
    loop {
        // A task that queued a record and was dropped before writing it
        // leaves it here.
        drain(shared);
        if inbox_seen.elapsed() >= INBOX_POLL {
            inbox_seen = Instant::now();
            with_writer(&mut |w| w.take_inbox());
        }
        let first = match rx.recv_timeout(tick) {
            Ok(command) => command,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                with_writer(&mut |w| {
                    if w.tree.size() > w.signed_size && w.signed_at.elapsed() >= w.every.interval {
                        let _ = w.sign();
                    }
                });
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                close();
                return Vec::new();
            }
        };
        let mut closing = Vec::new();
        let batch: Vec<Command> = std::iter::once(first)
            .chain(rx.try_iter().take(MAX_BATCH - 1))
            .filter_map(|command| match command {
                Command::Close(reply) => {
                    closing.push(reply);
                    None
                }
                Command::Flush => None,
                command => Some(command),
            })
            .collect();
        drain(shared);
        if !batch.is_empty() {
            let mut batch = Some(batch);
            with_writer(&mut |w| w.handle(batch.take().unwrap_or_default()));
            // Closed meanwhile: nobody is left to answer.
            drop(batch);
        }
        if !closing.is_empty() {
            close();
            return closing;
        }
    }
}

impl Writer {
    fn handle(&mut self, batch: Vec<Command>) {
        let mut waiting: Vec<(u64, Reply)> = Vec::new();
        let mut checkpoints = Vec::new();
        let mut prunes = Vec::new();
        let mut buffer = Vec::with_capacity(batch.len() * 256);
        let mut leaves = Vec::with_capacity(batch.len());
        for command in batch {
            match command {
                Command::Append(mut record, reply) => {
                    if let Some(error) = &self.failed {
                        let _ = reply.send(Err(error.clone()));
                        continue;
                    }
                    let seq = self.tree.size() + leaves.len() as u64;
                    record.insert("seq".into(), Value::from(seq));
                    record.insert("time".into(), Value::from(crate::clock::now_rfc3339()));
                    let bytes = canonical(&Value::Object(record));
                    leaves.push(leaf_hash(&bytes));
                    buffer.extend_from_slice(&bytes);
                    buffer.push(b'\n');
                    waiting.push((seq, reply));
                }
                Command::Checkpoint(reply) => checkpoints.push(reply),
                Command::Prune(before, keep_from, reply) => prunes.push((before, keep_from, reply)),
                // Taken out of the batch by `run`.
                Command::Close(reply) => drop(reply),
                Command::Flush => {}
            }
        }
        if !buffer.is_empty() {
            let first = self.tree.size();
            let written = self.write_durably(first, leaves.len() as u32, &buffer);
            if let Err(error) = written {
                // Nothing is acknowledged that is not durable. Cut the file
                // back to its last acknowledged record so that the next batch
                // (once the disk has room again) continues the same tree; if
                // even that fails, fail closed until a restart recovers it.
                let cut = self
                    .file
                    .set_len(self.good_bytes)
                    .and_then(|()| self.file.sync_data());
                if let Err(e) = cut {
                    tracing::error!(target: "tollgate::audit", %error, cut = %e, "audit log write failed and could not be undone; statements are refused until the gateway restarts");
                    self.failed = Some(error.clone());
                }
                for (_, reply) in waiting {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in checkpoints {
                    let _ = reply.send(Err(error.clone()));
                }
                for (_, _, reply) in prunes {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
            for leaf in leaves {
                self.tree.push(leaf);
            }
            self.good_bytes += buffer.len() as u64;
            self.publish();
        }
        for (seq, reply) in waiting {
            let _ = reply.send(Ok(seq));
        }
        let due = self.tree.size() >= self.signed_size + self.every.records
            || (self.tree.size() > self.signed_size
                && self.signed_at.elapsed() >= self.every.interval);
        if due || !checkpoints.is_empty() {
            let note = self.sign();
            for reply in checkpoints {
                let _ = reply.send(note.clone());
            }
        }
        for (before, keep_from, reply) in prunes {
            let _ = reply.send(self.prune(&before, keep_from));
        }
    }

    /// Append a batch (the records from `first` on, `count` of them) to
    /// the records file and make it durable: through the journal when it
    /// fits there, by an fsync of the records file when it does not.
    fn write_durably(&mut self, first: u64, count: u32, batch: &[u8]) -> Result<(), AuditError> {
        if !self.wal.fits(batch.len()) {
            self.file
                .write_all(batch)
                .map_err(|e| io(&self.records, e))?;
            self.file.sync_data().map_err(|e| io(&self.records, e))?;
            self.unsynced = false;
            return Ok(());
        }
        if !self.wal.has_room(batch.len()) {
            // The frames about to be overwritten must be durable elsewhere.
            self.sync_records().map_err(|e| io(&self.records, e))?;
            self.wal.rewind();
        }
        self.file
            .write_all(batch)
            .map_err(|e| io(&self.records, e))?;
        self.unsynced = true;
        self.written_back = start_writeback(
            &self.file,
            self.written_back,
            self.good_bytes + batch.len() as u64,
        );
        self.wal
            .append(first, count, batch)
            .map_err(|e| io(self.wal.path(), e))
    }

    /// Make the records file durable (the journal's frames are then no
    /// longer needed).
    fn sync_records(&mut self) -> std::io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Retention (see [`AuditLog::prune`]). Each step leaves a log that
    /// opens and verifies: announce, keep the hashes, then remove.
    fn prune(&mut self, before: &str, keep_from: u64) -> Result<Pruned, AuditError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let already = pruned_leaves(&self.dir)?.len() as u64;
        let mut reader =
            BufReader::new(File::open(&self.records).map_err(|e| io(&self.records, e))?);
        let mut leaves = Vec::new();
        let mut cut = 0u64;
        let mut line = Vec::new();
        while cut < self.good_bytes {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| io(&self.records, e))?;
            if n == 0 {
                break;
            }
            let record: Option<Value> = serde_json::from_slice(&line[..n - 1]).ok();
            let seq = record.as_ref().and_then(|r| r["seq"].as_u64());
            let time = record
                .as_ref()
                .and_then(|r| r["time"].as_str())
                .unwrap_or("");
            match seq {
                // Left by an interrupted prune: hashed already.
                Some(seq) if seq < already => {}
                // Only what a checkpoint vouches for, oldest first.
                Some(seq) if seq < self.signed_size.min(keep_from) && time < before => {
                    leaves.push(leaf_hash(&line[..n - 1]));
                }
                _ => break,
            }
            cut += n as u64;
        }
        if cut == 0 {
            return Ok(Pruned {
                records: 0,
                first_kept: already,
            });
        }
        let first_kept = already + leaves.len() as u64;
        // 1. Announce it, durably, before anything is removed.
        let mut announce = Map::new();
        announce.insert("event".into(), Value::from("retention.prune"));
        announce.insert("outcome".into(), Value::from("success"));
        announce.insert("actor".into(), serde_json::json!({ "subject": "gateway" }));
        announce.insert("origin".into(), Value::from("gateway"));
        announce.insert(
            "resource".into(),
            serde_json::json!({ "audit_log": self.dir.display().to_string() }),
        );
        announce.insert("before".into(), Value::from(before));
        announce.insert("records".into(), Value::from(leaves.len() as u64));
        announce.insert("through_seq".into(), Value::from(first_kept - 1));
        let (reply, mut done) = tokio::sync::oneshot::channel();
        self.handle(vec![Command::Append(announce, reply)]);
        match done.try_recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(AuditError::Stopped),
        }
        // 2. Keep the hashes.
        let pruned = pruned_path(&self.dir);
        let mut hashes = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pruned)
            .map_err(|e| io(&pruned, e))?;
        let torn = hashes.metadata().map_err(|e| io(&pruned, e))?.len() % 32;
        if torn != 0 {
            let len = hashes.metadata().map_err(|e| io(&pruned, e))?.len();
            hashes.set_len(len - torn).map_err(|e| io(&pruned, e))?;
        }
        hashes
            .write_all(&leaves.concat())
            .and_then(|()| hashes.sync_all())
            .map_err(|e| io(&pruned, e))?;
        // The hashes file may be new: its entry must outlive a crash.
        sync_dir(&self.dir)?;
        // 3. Remove the records. Whatever happened, appends must go to the
        // file now named audit.jsonl, never to a replaced one.
        let removed = drop_prefix(&self.dir, cut);
        let reopened = OpenOptions::new()
            .append(true)
            .open(&self.records)
            .and_then(|file| Ok((file.metadata()?.len(), file)));
        match reopened {
            Ok((len, file)) if len + cut == self.good_bytes => {
                self.file = file;
                self.good_bytes = len;
                self.written_back = len & !(PAGE - 1);
                // Copied and fsynced by `drop_prefix`.
                self.unsynced = false;
            }
            Ok((len, file)) if len == self.good_bytes => self.file = file,
            Ok(_) | Err(_) => {
                let error = io(&self.records, "cannot reopen the records after a prune");
                tracing::error!(target: "tollgate::audit", %error, "statements are refused until the gateway restarts");
                self.failed = Some(error.clone());
                return Err(error);
            }
        }
        removed?;
        self.publish();
        self.sign()?;
        Ok(Pruned {
            records: leaves.len() as u64,
            first_kept,
        })
    }

    /// Let readers see up to the last acknowledged record.
    fn publish(&self) {
        self.durable.store(self.good_bytes, Ordering::Release);
    }

    /// Append the records other processes left in the inbox.
    fn take_inbox(&mut self) {
        let waiting = inbox_records(&self.dir);
        if waiting.is_empty() {
            return;
        }
        let mut files = Vec::new();
        let mut batch = Vec::new();
        let mut replies = Vec::new();
        for (path, record) in waiting {
            let (reply, done) = tokio::sync::oneshot::channel();
            batch.push(Command::Append(record, reply));
            replies.push(done);
            files.push(path);
        }
        self.handle(batch);
        for (path, mut done) in files.into_iter().zip(replies) {
            if matches!(done.try_recv(), Ok(Ok(_))) {
                let _ = std::fs::remove_file(path);
            }
        }
        // Whoever left them waits for a checkpoint that covers them.
        if self.tree.size() > self.signed_size {
            let _ = self.sign();
        }
    }

    /// Sign and store a checkpoint of the current tree.
    fn sign(&mut self) -> Result<String, AuditError> {
        // What a checkpoint vouches for is in the records file, whatever
        // happens to the machine: `tollgate verify` reads only that file.
        self.sync_records().map_err(|e| io(&self.records, e))?;
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: self.tree.size(),
            root: self.tree.root(),
        };
        let note = self
            .signer
            .sign(&checkpoint.text())
            .map_err(|e| io(&self.checkpoints, e))?;
        let line = serde_json::json!({ "size": checkpoint.size, "note": note });
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        self.checkpoint_file
            .write_all(&bytes)
            .and_then(|()| self.checkpoint_file.sync_data())
            .map_err(|e| io(&self.checkpoints, e))?;
        self.signed_size = checkpoint.size;
        self.signed_at = Instant::now();
        Ok(note)
    }
}

/// Page size the records file's write-back is started in.
const PAGE: u64 = 4096;

/// Hand the whole pages of `file` from `from` up to `end` to the disk now,
/// without waiting for them; returns how far that reaches. The records
/// file is fsynced only when the journal wraps (or a checkpoint is signed);
/// left to the kernel, up to 4 MiB of it would go to the disk in that one
/// fsync, and every other fsync on the device (the next statement's
/// journal write) would wait behind it. Started page by page, as
/// PostgreSQL does with its own files, the wrap's fsync finds little left
/// to write. Advisory: an error changes nothing but the timing.
fn start_writeback(file: &File, from: u64, end: u64) -> u64 {
    let to = end & !(PAGE - 1);
    if to <= from {
        return to;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux, DONTNEED starts write-back of the range's dirty pages
        // (and drops only pages already clean).
        let len = std::num::NonZeroU64::new(to - from);
        let _ = rustix::fs::fadvise(file, from, len, rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    to
}

/// The canonical form of a record: compact JSON with every object's keys
/// in sorted (byte) order, whatever order they were built in.
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (n, (key, value)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn read_up_to(
    dir: &Path,
    after: Option<u64>,
    limit: usize,
    bytes: u64,
) -> Result<Vec<Map<String, Value>>, AuditError> {
    let path = records_path(dir);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path, e)),
    };
    let mut records = Vec::new();
    let mut reader = BufReader::new(std::io::Read::take(file, bytes));
    let mut line = Vec::new();
    while records.len() < limit {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io(&path, e))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let Ok(record) = serde_json::from_slice::<Map<String, Value>>(&line[..n - 1]) else {
            continue;
        };
        let seq = record.get("seq").and_then(Value::as_u64);
        if after.is_none_or(|after| seq.is_some_and(|seq| seq > after)) {
            records.push(record);
        }
    }
    Ok(records)
}

/// The root of the records in `dir` as they are on disk (for tests and
/// verification).
pub fn root_on_disk(dir: &Path) -> Result<(u64, Hash), AuditError> {
    let (tree, _) = recover(dir)?;
    Ok((tree.size(), tree.root()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::note::Verifier;

    fn record(kind: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("event".into(), Value::from(kind));
        m
    }

    #[tokio::test]
    async fn appends_are_durable_ordered_and_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let every = CheckpointEvery {
            records: 5,
            interval: Duration::from_secs(60),
        };
        let log = AuditLog::open(dir.path(), "test.example/audit", every).unwrap();
        let appends: Vec<_> = (0..12)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(record(&format!("e{i}"))).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for a in appends {
            seqs.push(a.await.unwrap().unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (0..12).collect::<Vec<_>>());
        let note = log.checkpoint().await.unwrap();
        let verifier = Verifier::parse(log.verifier_key()).unwrap();
        let checkpoint = Checkpoint::parse(verifier.open(&note).unwrap()).unwrap();
        assert_eq!(
            (checkpoint.size, checkpoint.root),
            root_on_disk(dir.path()).unwrap()
        );
        let lines = std::fs::read_to_string(checkpoints_path(dir.path())).unwrap();
        assert!(
            lines.lines().count() >= 2,
            "one every 5 records, plus the asked one"
        );
    }

    #[tokio::test]
    async fn reopening_continues_the_same_tree_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let every = CheckpointEvery::default();
        {
            let log = AuditLog::open(dir.path(), "t", every).unwrap();
            for i in 0..3 {
                log.append(record(&format!("before {i}"))).await.unwrap();
            }
        }
        // A crash in the middle of a write.
        let path = records_path(dir.path());
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"event\":\"torn").unwrap();
        drop(file);
        let log = AuditLog::open(dir.path(), "t", every).unwrap();
        assert_eq!(
            log.append(record("after")).await.unwrap(),
            3,
            "the tree continues"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(!text.contains("torn"));
        let first_key = log.verifier_key().to_string();
        drop(log);
        let again = AuditLog::open(dir.path(), "t", every).unwrap();
        assert_eq!(
            again.verifier_key(),
            first_key,
            "the same key after restart"
        );
    }

    /// The byte offset of record `seq`'s line in the records file.
    fn offset_of(dir: &Path, seq: u64) -> u64 {
        let text = std::fs::read(records_path(dir)).unwrap();
        text.split_inclusive(|&b| b == b'\n')
            .take(seq as usize)
            .map(|l| l.len() as u64)
            .sum()
    }

    #[tokio::test]
    async fn a_machine_crash_loses_no_acknowledged_record() {
        let dir = tempfile::tempdir().unwrap();
        let every = CheckpointEvery::default();
        // A small journal, so that it wraps several times.
        let log = AuditLog::open_with(dir.path(), "t", every, 8192).unwrap();
        for i in 0..200 {
            assert_eq!(log.append(record(&format!("e{i}"))).await.unwrap(), i);
        }
        let acknowledged = root_on_disk(dir.path()).unwrap();
        let key = log.verifier_key().to_string();
        log.close().await;
        let oldest = wal::oldest(dir.path()).unwrap();
        assert!(
            (1..199).contains(&oldest),
            "the journal wrapped and holds the last records: {oldest}"
        );
        // The machine stops: the page cache held what came after the
        // records file's last fsync (the journal's last rewind), and the
        // file ends in the middle of a line.
        let cut = offset_of(dir.path(), oldest + 1) + 9;
        let file = OpenOptions::new()
            .write(true)
            .open(records_path(dir.path()))
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);
        let report = super::super::verify::verify_dir(dir.path(), &key);
        let journal = report.checks.iter().find(|c| c.name == "journal");
        assert!(
            journal.is_some_and(|c| !c.ok && c.detail.contains("start the gateway once")),
            "{report}"
        );
        let log = AuditLog::open(dir.path(), "t", every).unwrap();
        assert_eq!(
            root_on_disk(dir.path()).unwrap(),
            acknowledged,
            "every record is back"
        );
        assert_eq!(log.append(record("after")).await.unwrap(), 200);
        log.close().await;
        let report = super::super::verify::verify_dir(dir.path(), &key);
        assert!(report.ok(), "{report}");
        // Losing records from before the journal's oldest (which the
        // journal no longer holds) is not a crash: the log is refused.
        let file = OpenOptions::new()
            .write(true)
            .open(records_path(dir.path()))
            .unwrap();
        file.set_len(offset_of(dir.path(), 1)).unwrap();
        drop(file);
        let error = AuditLog::open(dir.path(), "t", every).unwrap_err();
        assert!(
            error.to_string().contains("the journal holds records from"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_log_with_a_gap_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            records_path(dir.path()),
            "{\"seq\":0,\"event\":\"a\"}\n{\"seq\":2,\"event\":\"b\"}\n",
        )
        .unwrap();
        let error = AuditLog::open(dir.path(), "t", CheckpointEvery::default()).unwrap_err();
        assert!(error.to_string().contains("expected record 1"), "{error}");
    }
}
