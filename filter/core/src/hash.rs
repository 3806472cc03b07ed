//! Dynamo-compatible KV block hashing: token ids → complete blocks → local block hash
//! (`tokens_hash`) → chained sequence hash (the identity of a prefix).
//!
//! ```text
//! tokens   t0 t1 t2 t3 | t4 t5 t6 t7 | t8 t9        (block_size = 4)
//! local    L0 = xxh3(le32(t0..t3), seed) | L1 = xxh3(le32(t4..t7), seed) | (partial: not hashed)
//! sequence S0 = L0    | S1 = xxh3(le64(S0) ‖ le64(L1), 1337)
//! ```
//!
//! * Only complete blocks are hashed: the `len % block_size` tail can never match a
//!   cached block (the engines only publish full blocks). [`blocks_for_load`] still
//!   counts it, as Dynamo's scheduler does.
//! * The seed is 1337, shifted by a LoRA adapter name and (optionally) a cache salt, so
//!   that the same tokens under different adapters never share cache entries.
//! * The chain uses the fixed seed 1337 regardless of LoRA: the LoRA already changed L0.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The base seed Dynamo uses for block and sequence hashes.
pub const XXH3_SEED: u64 = 1337;

/// Hashes a byte string with xxh3-64 and the base seed (`compute_hash` in Dynamo).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, XXH3_SEED)
}

/// The seed for local block hashes of a request.
///
/// `seed = 1337 + xxh3_64(lora_name, 0)` when a LoRA adapter is named (empty = none),
/// then `+ xxh3_64_with_seed(salt, 1)` when a cache salt is given; additions wrap.
pub fn block_seed(lora_name: Option<&str>, cache_salt: Option<&str>) -> u64 {
    let mut seed = XXH3_SEED;
    if let Some(name) = lora_name.filter(|n| !n.is_empty()) {
        seed = seed.wrapping_add(xxh3_64(name.as_bytes()));
    }
    if let Some(salt) = cache_salt.filter(|s| !s.is_empty()) {
        seed = seed.wrapping_add(xxh3_64_with_seed(salt.as_bytes(), 1));
    }
    seed
}

/// The local hash of one block: xxh3-64 over the tokens as little-endian `u32` bytes.
pub fn local_block_hash(tokens: &[u32], seed: u64) -> u64 {
    let mut buf = Vec::with_capacity(tokens.len() * 4);
    local_block_hash_into(tokens, seed, &mut buf)
}

fn local_block_hash_into(tokens: &[u32], seed: u64, buf: &mut Vec<u8>) -> u64 {
    buf.clear();
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(buf, seed)
}

/// The sequence hash of a block given its parent's sequence hash and its local hash.
pub fn chain(parent_sequence: u64, local: u64) -> u64 {
    let mut bytes = [0u8; 16];
    let (a, b) = bytes.split_at_mut(8);
    a.copy_from_slice(&parent_sequence.to_le_bytes());
    b.copy_from_slice(&local.to_le_bytes());
    xxh3_64_with_seed(&bytes, XXH3_SEED)
}

/// Local hashes of every complete block of `tokens`, at most `max_blocks` of them.
pub fn local_block_hashes(
    tokens: &[u32],
    block_size: u32,
    seed: u64,
    max_blocks: usize,
) -> Vec<u64> {
    let bs = block_size.max(1) as usize;
    let mut buf = Vec::with_capacity(bs * 4);
    tokens
        .chunks_exact(bs)
        .take(max_blocks)
        .map(|block| local_block_hash_into(block, seed, &mut buf))
        .collect()
}

/// Chained sequence hashes for a list of local hashes: `S0 = L0`, `Si = chain(Si-1, Li)`.
pub fn sequence_hashes(local: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(local.len());
    let mut prev: Option<u64> = None;
    for &l in local {
        let s = match prev {
            None => l,
            Some(p) => chain(p, l),
        };
        out.push(s);
        prev = Some(s);
    }
    out
}

/// Extends a sequence-hash chain that already ends at `parent` (if any) with `local`.
pub fn sequence_hashes_from(parent: Option<u64>, local: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(local.len());
    let mut prev = parent;
    for &l in local {
        let s = match prev {
            None => l,
            Some(p) => chain(p, l),
        };
        out.push(s);
        prev = Some(s);
    }
    out
}

/// Number of blocks a prompt of `tokens` occupies for load accounting: `ceil(isl / bs)`.
pub fn blocks_for_load(tokens: u64, block_size: u32) -> u64 {
    tokens.div_ceil(u64::from(block_size.max(1)))
}

/// Both hash lists of one request, as the index and the bookkeeping need them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockHashes {
    /// Local block hashes (`tokens_hash`), one per complete block.
    pub local: Vec<u64>,
    /// Chained sequence hashes, one per complete block: the prefix identities.
    pub sequence: Vec<u64>,
}

/// Hashes requests for one model: fixed block size and base seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHasher {
    /// Tokens per KV block.
    pub block_size: u32,
}

impl BlockHasher {
    /// A hasher for `block_size`-token blocks.
    pub fn new(block_size: u32) -> Self {
        Self {
            block_size: block_size.max(1),
        }
    }

    /// Hashes at most `max_blocks` complete blocks of `tokens` under an optional LoRA
    /// adapter and cache salt.
    pub fn hash(
        &self,
        tokens: &[u32],
        lora_name: Option<&str>,
        cache_salt: Option<&str>,
        max_blocks: usize,
    ) -> BlockHashes {
        let local = local_block_hashes(
            tokens,
            self.block_size,
            block_seed(lora_name, cache_salt),
            max_blocks,
        );
        let sequence = sequence_hashes(&local);
        BlockHashes { local, sequence }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    // Vectors quoted by DYNAMO-CONTRACT.md from Dynamo's own tests.
    #[test]
    fn dynamo_contract_vectors() {
        assert_eq!(hash_bytes(b"test data"), 13226331709069118873);
        let tokens: Vec<u32> = (0..8).collect();
        let h = BlockHasher::new(4).hash(&tokens, None, None, usize::MAX);
        assert_eq!(h.local, vec![9143094415614847814, 12124091508212882195]);
        assert_eq!(h.sequence, vec![9143094415614847814, 9510318385840434533]);
    }

    /// Vectors computed by an independent implementation (PyPI `xxhash`, C libxxhash):
    /// `tests/fixtures/vectors/gen_block_hashes.py`.
    #[test]
    fn independent_python_vectors() {
        let text = include_str!("../../../tests/fixtures/vectors/block_hashes.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let cases = v["cases"].as_array().cloned().unwrap_or_default();
        assert!(cases.len() >= 5, "vector file has {} cases", cases.len());
        assert_eq!(
            v["_meta"]["bytes_test_data_seed_1337"].as_u64(),
            Some(hash_bytes(b"test data"))
        );
        let mut saw_lora = false;
        let mut saw_partial = false;
        for c in cases {
            let tokens: Vec<u32> = c["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_u64())
                .map(|t| t as u32)
                .collect();
            let bs = c["block_size"].as_u64().unwrap_or(0) as u32;
            let lora = c["lora"].as_str();
            let salt = c["salt"].as_str();
            saw_lora |= lora.is_some();
            saw_partial |= tokens.len() % bs as usize != 0;
            let want = |k: &str| -> Vec<u64> {
                c[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_u64())
                    .collect()
            };
            assert_eq!(
                c["seed"].as_u64(),
                Some(block_seed(lora, salt)),
                "{}",
                c["name"]
            );
            let h = BlockHasher::new(bs).hash(&tokens, lora, salt, usize::MAX);
            assert_eq!(h.local, want("block_hashes"), "{}", c["name"]);
            assert_eq!(h.sequence, want("sequence_hashes"), "{}", c["name"]);
        }
        assert!(saw_lora && saw_partial);
    }

    /// Dynamo's documentation ("KV Events & Hashing Consistency"): `[1,2,3,4]`, bs 4.
    #[test]
    fn dynamo_doc_vector() {
        assert_eq!(
            local_block_hash(&[1, 2, 3, 4], XXH3_SEED),
            14643705804678351452
        );
    }

    #[test]
    fn partial_tail_is_not_hashed_but_counts_for_load() {
        let tokens: Vec<u32> = (0..10).collect();
        let h = BlockHasher::new(4).hash(&tokens, None, None, usize::MAX);
        assert_eq!(h.local.len(), 2);
        assert_eq!(blocks_for_load(10, 4), 3);
        assert_eq!(blocks_for_load(0, 4), 0);
    }

    #[test]
    fn max_blocks_caps_hashing() {
        let tokens: Vec<u32> = (0..64).collect();
        let all = BlockHasher::new(4).hash(&tokens, None, None, usize::MAX);
        let capped = BlockHasher::new(4).hash(&tokens, None, None, 3);
        assert_eq!(
            capped.sequence.as_slice(),
            all.sequence.get(..3).unwrap_or_default()
        );
    }

    #[test]
    fn empty_lora_and_salt_are_no_seed_change() {
        assert_eq!(block_seed(Some(""), Some("")), XXH3_SEED);
        assert_ne!(block_seed(Some("a"), None), XXH3_SEED);
    }

    #[test]
    fn sequence_from_parent_matches_full_chain() {
        let local = [1u64, 2, 3, 4];
        let full = sequence_hashes(&local);
        let tail = sequence_hashes_from(full.get(1).copied(), &local[2..]);
        assert_eq!(&full[2..], tail.as_slice());
    }
}
