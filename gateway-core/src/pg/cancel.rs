//! Cancel keys: each session gets a gateway-issued (pid, key) pair; a
//! CancelRequest carrying it is forwarded to the upstream backend with the
//! upstream's own pair, which clients never see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::upstream::Upstream;

/// Where a cancel for one session goes.
#[derive(Clone)]
pub struct CancelTarget {
    /// The upstream the session is connected to.
    pub upstream: Arc<Upstream>,
    /// The upstream backend's process id.
    pub pid: i32,
    /// The upstream backend's secret key.
    pub key: i32,
    /// The session's recording, for the cancel frame.
    pub tap: Option<Arc<crate::recording::SessionTap>>,
    /// The session's statement held for approval, which a cancel withdraws.
    pub hold: Option<Arc<crate::approvals::HoldSlot>>,
}

struct Entry {
    key: i32,
    target: CancelTarget,
}

/// All live sessions' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// Removes a session's key when the session ends.
pub struct Registration {
    registry: Arc<CancelRegistry>,
    /// The pid the client was given.
    pub pid: i32,
    /// The key the client was given.
    pub key: i32,
}

impl CancelRegistry {
    /// Issue a fresh (pid, key) pair for a session.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> Registration {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let pid = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !entries.contains_key(&pid) {
                break pid;
            }
        };
        let key = rand::random::<i32>();
        entries.insert(pid, Entry { key, target });
        Registration {
            registry: self.clone(),
            pid,
            key,
        }
    }

    /// The target for a cancel request, if pid and key match a live session.
    pub fn lookup(&self, pid: i32, key: i32) -> Option<CancelTarget> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(&pid)?;
        // Compare without an early exit so timing does not reveal key bits.
        let diff = (entry.key ^ key) as u32;
        (diff == 0).then(|| entry.target.clone())
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self
            .registry
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        entries.remove(&self.pid);
    }
}
