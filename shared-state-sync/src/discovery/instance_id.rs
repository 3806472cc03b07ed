//! Dynamo's instance id of a worker known by name only (a Kubernetes pod): SipHash-1-3
//! with keys (0, 0) over the name as Rust's `str` hashing feeds a `Hasher` (the UTF-8
//! bytes, then one 0xFF byte), masked to 53 bits so it survives JSON numbers. This is the
//! id Dynamo gives a worker discovered through Kubernetes, so KV events it publishes carry
//! the same `worker_id`.

use std::hash::{Hash, Hasher};

/// Largest instance id (53 bits).
pub const INSTANCE_ID_MASK: u64 = (1 << 53) - 1;

/// The instance id of the worker named `name` (a pod name).
pub fn instance_id_of_name(name: &str) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    // `str::hash` calls `Hasher::write_str`, whose default is the bytes then 0xFF.
    name.hash(&mut h);
    h.finish() & INSTANCE_ID_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Dynamo's pod-name instance ids; the same two values come out of
    /// CPython's own SipHash-1-3 with a zero key (`PYTHONHASHSEED=0`,
    /// `hash(name.encode() + b"\xff") & (2**53 - 1)`), an independent implementation.
    #[test]
    fn dynamo_vectors() {
        assert_eq!(instance_id_of_name("vllm-agg-worker-0"), 551176242155732);
        assert_eq!(instance_id_of_name("qwen-decode-abc12"), 96838965035402);
        assert!(instance_id_of_name("") <= INSTANCE_ID_MASK);
    }
}
