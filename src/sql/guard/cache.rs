//! Bounded, sharded verdict cache keyed by the exact statement text.
//!
//! The text is hashed once (SipHash with a random key, so clients cannot aim collisions);
//! that hash picks the shard and is the map key, and the stored text is compared on a hit.
//! Each shard keeps two generations: when the young one is full (by count or by bytes of
//! text) it becomes the old one and the previous old one is dropped; a hit in the old
//! generation is promoted. This approximates LRU with O(1) work and no per-entry bookkeeping,
//! and bounds memory even against a client that sends many distinct long statements.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard};

use super::Verdict;

const SHARDS: usize = 16;

/// Bytes of statement text the whole cache holds at most (both generations of all shards).
const TEXT_BUDGET: usize = 32 * 1024 * 1024;

/// The map key already is a good hash; this hasher passes it through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Map = HashMap<u64, Entry, BuildHasherDefault<PassThrough>>;

struct Entry {
    text: Box<str>,
    verdict: Verdict,
}

#[derive(Default)]
struct Shard {
    young: Map,
    /// Bytes of text in `young` (an overestimate after replacements, which only rotates sooner).
    young_bytes: usize,
    old: Map,
}

pub(super) struct VerdictCache {
    shards: Vec<Mutex<Shard>>,
    per_generation: usize,
    bytes_per_generation: usize,
    hasher: RandomState,
}

impl VerdictCache {
    /// A cache holding at most about `capacity` verdicts.
    pub(super) fn new(capacity: usize) -> Self {
        VerdictCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_generation: (capacity / SHARDS / 2).max(1),
            bytes_per_generation: TEXT_BUDGET / SHARDS / 2,
            hasher: RandomState::new(),
        }
    }

    pub(super) fn hasher(&self) -> &RandomState {
        &self.hasher
    }

    pub(super) fn get(&self, hash: u64, text: &str) -> Option<Verdict> {
        let mut shard = self.shard(hash);
        if let Some(entry) = shard.young.get(&hash) {
            return (*entry.text == *text).then(|| entry.verdict.clone());
        }
        let entry = shard.old.remove(&hash)?;
        if *entry.text != *text {
            return None;
        }
        let verdict = entry.verdict.clone();
        self.put(&mut shard, hash, entry);
        Some(verdict)
    }

    pub(super) fn insert(&self, hash: u64, text: &str, verdict: Verdict) {
        let entry = Entry {
            text: text.into(),
            verdict,
        };
        self.put(&mut self.shard(hash), hash, entry);
    }

    fn put(&self, shard: &mut Shard, hash: u64, entry: Entry) {
        let full = shard.young.len() >= self.per_generation
            || shard.young_bytes + entry.text.len() > self.bytes_per_generation;
        if full && !shard.young.contains_key(&hash) {
            shard.old = std::mem::take(&mut shard.young);
            shard.young_bytes = 0;
        }
        shard.young_bytes += entry.text.len();
        shard.young.insert(hash, entry);
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The low bits pick the bucket inside the map; use the high bits for the shard.
        let index = (hash >> 58) as usize % SHARDS;
        // A poisoned lock only means another thread panicked mid-insert; the maps are still valid.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    pub(super) fn text_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.young
                    .values()
                    .chain(s.old.values())
                    .map(|e| e.text.len())
                    .sum::<usize>()
            })
            .sum()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap();
                s.young.len() + s.old.len()
            })
            .sum()
    }
}
