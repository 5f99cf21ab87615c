//! The KV cache of one stage: per sequence, per layer of the stage, keys and values of every
//! position so far. Bounded: at most `max_seqs` sequences, each at most `max_context` long.
//!
//! A sequence's buffers grow on demand in whole blocks of [`KV_BLOCK_TOKENS`] positions (never
//! more), so the bytes a sequence holds are exactly `kv_bytes_for(len)`: what the scheduler
//! budgets (`pipeline::sched`) is what is allocated.

use crate::error::{PipelineError, Result};
use std::collections::HashMap;

/// Positions per allocation step of a sequence's buffers. Growing by whole blocks copies a
/// sequence's buffers once per block (the allocator cannot always grow in place); 64 keeps that
/// copy under ~2% of a decode step's KV reads, at most 63 positions unused per sequence.
pub const KV_BLOCK_TOKENS: usize = 64;

/// Positions allocated for a sequence holding `len`: `len` rounded up to whole blocks.
pub fn kv_alloc_tokens(len: usize) -> usize {
    len.div_ceil(KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
}

pub struct SeqCache {
    /// Positions already stored (the next row written goes to position `len`).
    pub len: usize,
    pub k: Vec<Vec<f32>>, // per layer: [len, kv_dim]
    pub v: Vec<Vec<f32>>, // per layer: [len, kv_dim]
}

pub struct KvCache {
    pub num_layers: usize,
    pub kv_dim: usize,
    pub max_seqs: usize,
    pub max_context: usize,
    seqs: HashMap<u64, SeqCache>,
}

impl KvCache {
    pub fn new(num_layers: usize, kv_dim: usize, max_seqs: usize, max_context: usize) -> Self {
        KvCache { num_layers, kv_dim, max_seqs, max_context, seqs: HashMap::new() }
    }

    /// Positions stored for `seq` (0 for a sequence the cache does not hold).
    pub fn len_of(&self, seq: u64) -> usize {
        self.seqs.get(&seq).map_or(0, |s| s.len)
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.seqs.contains_key(&seq)
    }

    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Drops a sequence's keys and values. Returns whether it was held.
    pub fn free(&mut self, seq: u64) -> bool {
        self.seqs.remove(&seq).is_some()
    }

    /// Checks that `new_seqs` more sequences fit and that `seq` can grow to `len`.
    pub fn check_room(&self, new_seqs: usize) -> Result<()> {
        if self.seqs.len() + new_seqs > self.max_seqs {
            return Err(PipelineError::Limit {
                what: "sequences in the KV cache",
                limit: self.max_seqs,
                requested: self.seqs.len() + new_seqs,
            });
        }
        Ok(())
    }

    /// Makes room for `seq` to hold `len` positions (creating it if new).
    pub fn reserve(&mut self, seq: u64, len: usize) -> Result<&mut SeqCache> {
        if len > self.max_context {
            return Err(PipelineError::ContextOverflow { seq_id: seq, needed: len, max: self.max_context });
        }
        let (layers, kvd) = (self.num_layers, self.kv_dim);
        let s = self.seqs.entry(seq).or_insert_with(|| SeqCache {
            len: 0,
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
        });
        for buf in s.k.iter_mut().chain(s.v.iter_mut()) {
            if buf.capacity() < len * kvd {
                // grow to whole blocks, exactly (no doubling): see the module comment
                buf.reserve_exact(kv_alloc_tokens(len) * kvd - buf.len());
            }
            if buf.len() < len * kvd {
                buf.resize(len * kvd, 0.0);
            }
        }
        Ok(s)
    }

    /// Bytes of keys and values allocated for every sequence held (f32 buffers' capacity).
    pub fn bytes_held(&self) -> u64 {
        let floats: usize = self.seqs.values().flat_map(|s| s.k.iter().chain(s.v.iter())).map(Vec::capacity).sum();
        (floats * std::mem::size_of::<f32>()) as u64
    }

    pub fn get(&self, seq: u64) -> Option<&SeqCache> {
        self.seqs.get(&seq)
    }

    pub fn get_mut(&mut self, seq: u64) -> Option<&mut SeqCache> {
        self.seqs.get_mut(&seq)
    }
}
