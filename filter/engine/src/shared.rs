//! The layout of proxy-wasm shared data, which all VMs of one Envoy process see:
//! the sync leader lease, the ring of sync frames the leader fetched from the sidecar,
//! the latest full snapshot, each VM's booked load, and the model files.
//!
//! Every get copies the value into the VM, so values stay small (one frame, one VM's
//! loads) except the snapshot and model files, which a VM reads once.

use crate::host::{Cas, Host};
use kvgate_core::load::WorkerLoad;
use kvgate_core::WorkerKey;
use std::collections::HashMap;

/// Frames kept in the ring; a VM further behind reads the snapshot.
pub const RING: u64 = 256;
/// Lease time of the sync leader.
pub const LEASE_MS: u64 = 2_000;
/// A VM's load record older than this is ignored (the VM is gone).
pub const LOAD_STALE_MS: u64 = 5_000;

/// Key of the sync leader lease: `"<vm tag>:<expiry ms>"`.
pub const LEASE_KEY: &str = "kvgate/lease";
/// Key of the ring head: the sequence number of the newest frame (decimal).
pub const HEAD_KEY: &str = "kvgate/ring/head";
/// Key of the latest snapshot: `"<ring seq>\n"` then the encoded snapshot frame.
pub const SNAPSHOT_KEY: &str = "kvgate/snapshot";
/// Key listing VM tags that publish loads (comma-separated).
pub const VMS_KEY: &str = "kvgate/vms";

/// Key of ring slot for frame `seq`.
pub fn ring_key(seq: u64) -> String {
    format!("kvgate/ring/{}", seq % RING)
}

/// Key of model files for `name` at `digest`.
pub fn model_key(name: &str, digest: &str) -> String {
    format!("kvgate/model/{name}/{digest}")
}

/// Key of one VM's load record.
pub fn load_key(vm: u64) -> String {
    format!("kvgate/load/{vm:016x}")
}

fn split(v: Option<(Vec<u8>, Cas)>) -> (Option<Vec<u8>>, Option<Cas>) {
    match v {
        Some((v, c)) => (Some(v), Some(c)),
        None => (None, None),
    }
}

/// Takes or renews the sync lease for `vm`; true when `vm` holds it afterwards.
pub fn acquire_lease(h: &dyn Host, vm: u64, now_ms: u64) -> bool {
    let (cur, cas) = split(h.shared_get(LEASE_KEY));
    if let Some(v) = cur.as_deref().and_then(|b| std::str::from_utf8(b).ok()) {
        let mut parts = v.split(':');
        let holder = parts.next().and_then(|h| u64::from_str_radix(h, 16).ok());
        let expiry = parts
            .next()
            .and_then(|e| e.parse::<u64>().ok())
            .unwrap_or(0);
        if holder != Some(vm) && expiry > now_ms {
            return false;
        }
    }
    let value = format!("{vm:016x}:{}", now_ms + LEASE_MS);
    // With no lease yet there is no CAS token to race on: set, then read back, so of two
    // VMs racing the last writer wins and the other sees it.
    let cas = if cur.is_some() { cas } else { None };
    h.shared_set(LEASE_KEY, value.as_bytes(), cas).is_ok()
        && h.shared_get(LEASE_KEY).map(|(v, _)| v).as_deref() == Some(value.as_bytes())
}

/// The newest frame sequence number published (0 = none).
pub fn head(h: &dyn Host) -> u64 {
    h.shared_get(HEAD_KEY)
        .and_then(|(v, _)| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Publishes `frame` as the frame after the current head; returns its sequence number,
/// or None when another VM published concurrently (the caller is no longer the leader).
pub fn publish_frame(h: &dyn Host, frame: &[u8]) -> Option<u64> {
    let (cur, cas) = split(h.shared_get(HEAD_KEY));
    let seq = cur
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(frame);
    h.shared_set(&ring_key(seq), &v, None).ok()?;
    h.shared_set(HEAD_KEY, seq.to_string().as_bytes(), cas)
        .ok()
        .map(|()| seq)
}

/// The frame with sequence `seq`, if still in the ring.
pub fn read_frame(h: &dyn Host, seq: u64) -> Option<Vec<u8>> {
    let (v, _) = h.shared_get(&ring_key(seq))?;
    let (tag, frame) = v.split_at_checked(8)?;
    let got = u64::from_le_bytes(tag.try_into().ok()?);
    (got == seq).then(|| frame.to_vec())
}

/// Stores a snapshot frame valid as of ring sequence `seq`.
pub fn publish_snapshot(h: &dyn Host, seq: u64, frame: &[u8]) {
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(frame);
    let _ = h.shared_set(SNAPSHOT_KEY, &v, None);
}

/// The snapshot and the ring sequence it is valid at.
pub fn read_snapshot(h: &dyn Host) -> Option<(u64, Vec<u8>)> {
    let (v, _) = h.shared_get(SNAPSHOT_KEY)?;
    let (tag, frame) = v.split_at_checked(8)?;
    Some((u64::from_le_bytes(tag.try_into().ok()?), frame.to_vec()))
}

/// Adds `vm` to the list of VMs publishing loads.
pub fn register_vm(h: &dyn Host, vm: u64) {
    for _ in 0..16 {
        let (cur, cas) = split(h.shared_get(VMS_KEY));
        let mut list = cur
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let tag = format!("{vm:016x}");
        if list.split(',').any(|t| t == tag) {
            return;
        }
        if !list.is_empty() {
            list.push(',');
        }
        list.push_str(&tag);
        if h.shared_set(VMS_KEY, list.as_bytes(), cas).is_ok() {
            return;
        }
    }
}

/// Writes this VM's booked loads.
pub fn write_loads(h: &dyn Host, vm: u64, now_ms: u64, loads: &[(WorkerKey, WorkerLoad)]) {
    let body = (now_ms, loads.to_vec());
    if let Ok(bytes) = postcard::to_allocvec(&body) {
        let _ = h.shared_set(&load_key(vm), &bytes, None);
    }
}

/// Sum of the loads other live VMs booked.
pub fn read_other_loads(h: &dyn Host, me: u64, now_ms: u64) -> HashMap<WorkerKey, WorkerLoad> {
    let mut out: HashMap<WorkerKey, WorkerLoad> = HashMap::new();
    let list = h
        .shared_get(VMS_KEY)
        .and_then(|(b, _)| String::from_utf8(b).ok())
        .unwrap_or_default();
    for tag in list
        .split(',')
        .filter_map(|t| u64::from_str_radix(t, 16).ok())
    {
        if tag == me {
            continue;
        }
        let Some((bytes, _)) = h.shared_get(&load_key(tag)) else {
            continue;
        };
        let Ok((at, loads)) = postcard::from_bytes::<(u64, Vec<(WorkerKey, WorkerLoad)>)>(&bytes)
        else {
            continue;
        };
        if now_ms.saturating_sub(at) > LOAD_STALE_MS {
            continue;
        }
        for (w, l) in loads {
            let e = out.entry(w).or_default();
            *e = e.plus(l);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn one_leader_until_its_lease_expires() {
        let s = FakeHost::default();
        assert!(acquire_lease(&s, 1, 0));
        assert!(!acquire_lease(&s, 2, 100));
        assert!(acquire_lease(&s, 1, 1000), "the holder renews");
        assert!(!acquire_lease(&s, 2, 2999));
        assert!(acquire_lease(&s, 2, 3001), "an expired lease is taken over");
        assert!(!acquire_lease(&s, 1, 3002));
    }

    #[test]
    fn ring_and_snapshot() {
        let s = FakeHost::default();
        assert_eq!(head(&s), 0);
        assert_eq!(publish_frame(&s, b"a"), Some(1));
        assert_eq!(publish_frame(&s, b"b"), Some(2));
        assert_eq!(head(&s), 2);
        assert_eq!(read_frame(&s, 1).unwrap(), b"a");
        for _ in 0..RING {
            publish_frame(&s, b"c");
        }
        assert_eq!(read_frame(&s, 1), None, "overwritten slot is detected");
        publish_snapshot(&s, 7, b"snap");
        assert_eq!(read_snapshot(&s).unwrap(), (7, b"snap".to_vec()));
    }

    #[test]
    fn loads_of_other_live_vms_are_summed() {
        let s = FakeHost::default();
        for vm in [1, 2, 3] {
            register_vm(&s, vm);
        }
        register_vm(&s, 2);
        let w = WorkerKey::new(9, 0);
        let l = WorkerLoad {
            prefill_tokens: 10,
            decode_blocks: 2,
            requests: 1,
        };
        write_loads(&s, 1, 1000, &[(w, l)]);
        write_loads(&s, 2, 1000, &[(w, l)]);
        write_loads(&s, 3, 0, &[(w, l)]); // stale by 6 s
        let other = read_other_loads(&s, 1, 6001);
        assert!(other.is_empty(), "VM 2's record is over 5 s old");
        let other = read_other_loads(&s, 1, 5500);
        assert_eq!(other.get(&w), Some(&l));
    }
}
