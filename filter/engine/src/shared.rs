//! The layout of proxy-wasm shared data, which all VMs of one Envoy process see: the sync
//! leader lease, rings (the sync frames the leader fetched from the sidecar; each VM's
//! routing predictions), the latest full snapshot, the list of VMs, and the model files.
//! (The bookings ledger is in `ledger`.)
//!
//! Every get copies the value into the VM, so values stay small (one frame, one batch of
//! predictions) except the snapshot and model files, which a VM reads once.

use crate::host::{Cas, Host};

/// Frames kept in the sync ring; a VM further behind reads the snapshot.
pub const RING: u64 = 256;
/// Prediction batches kept in each VM's prediction ring (a batch per tick or so: a few
/// seconds of them); a VM further behind skips the rest.
pub const PREDICTION_RING: u64 = 128;
/// Lease time of the sync leader.
pub const LEASE_MS: u64 = 2_000;

/// Key of the sync leader lease: `"<vm tag>:<expiry ms>"`.
pub const LEASE_KEY: &str = "kvgate/lease";
/// Key of the latest snapshot: the ring sequence (8 bytes LE) then the snapshot frame.
pub const SNAPSHOT_KEY: &str = "kvgate/snapshot";
/// Key listing the VM tags of this Envoy (comma-separated hex).
pub const VMS_KEY: &str = "kvgate/vms";

/// Key of model files for `name` at `digest`.
pub fn model_key(name: &str, digest: &str) -> String {
    format!("kvgate/model/{name}/{digest}")
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

/// A ring of entries in shared data with one writer at a time: slot `seq % slots` holds
/// entry `seq` (tagged with `seq`, so an overwritten slot is detected), and the head key
/// holds the newest sequence number. The writer fills the slot before it moves the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    prefix: String,
    slots: u64,
}

impl Ring {
    /// The ring of sync frames (written by the sync leader).
    pub fn sync() -> Ring {
        Ring {
            prefix: "kvgate/ring".into(),
            slots: RING,
        }
    }

    /// Entries kept.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    fn head_key(&self) -> String {
        format!("{}/head", self.prefix)
    }

    fn slot_key(&self, seq: u64) -> String {
        format!("{}/{}", self.prefix, seq % self.slots)
    }

    /// The newest sequence number published (0 = none).
    pub fn head(&self, h: &dyn Host) -> u64 {
        h.shared_get(&self.head_key())
            .and_then(|(v, _)| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Publishes `entry` after the current head; returns its sequence number, or None when
    /// another writer moved the head meanwhile (the caller is no longer the writer).
    pub fn publish(&self, h: &dyn Host, entry: &[u8]) -> Option<u64> {
        let (cur, cas) = split(h.shared_get(&self.head_key()));
        let seq = cur
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        h.shared_set(&self.slot_key(seq), &tagged(seq, entry), None)
            .ok()?;
        h.shared_set(&self.head_key(), seq.to_string().as_bytes(), cas)
            .ok()
            .map(|()| seq)
    }

    /// Entry `seq`, if still in the ring.
    pub fn read(&self, h: &dyn Host, seq: u64) -> Option<Vec<u8>> {
        let (v, _) = h.shared_get(&self.slot_key(seq))?;
        let (got, entry) = untag(&v)?;
        (got == seq).then(|| entry.to_vec())
    }
}

/// One VM's ring of routing predictions, written by that VM only. Entry `seq` is stored in
/// slot `seq % slots`, tagged with `seq`; there is no head key: a reader reads the slot after
/// the last entry it applied, for as long as the tag is the next sequence number. So
/// publishing a batch of predictions is one shared-data write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictionRing {
    prefix: String,
    slots: u64,
}

impl PredictionRing {
    /// VM `vm`'s ring.
    pub fn of(vm: u64) -> PredictionRing {
        PredictionRing {
            prefix: format!("kvgate/predictions/{vm:016x}"),
            slots: PREDICTION_RING,
        }
    }

    /// The highest sequence number stored in the ring (0 if none): where a writer carries
    /// on, so that a VM configured again continues its numbering and readers that followed
    /// it read on. Reads every slot, once per writer.
    pub fn last_written(&self, h: &dyn Host) -> u64 {
        (0..self.slots)
            .filter_map(|i| h.shared_get(&format!("{}/{i}", self.prefix)))
            .filter_map(|(v, _)| untag(&v).map(|(tag, _)| tag))
            .max()
            .unwrap_or(0)
    }

    fn slot_key(&self, seq: u64) -> String {
        format!("{}/{}", self.prefix, seq % self.slots)
    }

    /// Stores entry `seq` (the writer numbers its entries consecutively).
    pub fn write(&self, h: &dyn Host, seq: u64, entry: &[u8]) -> bool {
        h.shared_set(&self.slot_key(seq), &tagged(seq, entry), None)
            .is_ok()
    }

    /// Calls `apply` with each entry after `seen`, oldest first, and returns the last
    /// sequence number read. Entries overwritten before they were read are skipped (a
    /// slot tagged later than expected means the reader fell a whole ring behind).
    pub fn read_after(&self, h: &dyn Host, mut seen: u64, mut apply: impl FnMut(&[u8])) -> u64 {
        loop {
            let next = seen.saturating_add(1);
            let Some((v, _)) = h.shared_get(&self.slot_key(next)) else {
                return seen;
            };
            let Some((tag, entry)) = untag(&v) else {
                return seen;
            };
            if tag == next {
                apply(entry);
                seen = next;
            } else if tag > next {
                seen = tag - self.slots.min(tag);
            } else {
                return seen;
            }
        }
    }
}

/// Stores a snapshot frame valid as of sync ring sequence `seq`.
pub fn publish_snapshot(h: &dyn Host, seq: u64, frame: &[u8]) {
    let _ = h.shared_set(SNAPSHOT_KEY, &tagged(seq, frame), None);
}

/// The snapshot and the sync ring sequence it is valid at.
pub fn read_snapshot(h: &dyn Host) -> Option<(u64, Vec<u8>)> {
    let (v, _) = h.shared_get(SNAPSHOT_KEY)?;
    let (tag, frame) = untag(&v)?;
    Some((tag, frame.to_vec()))
}

/// A shared-data value tagged with a sequence number: 8 bytes little-endian, then `body`
/// (ring slots and the snapshot).
fn tagged(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// The sequence number and body of a [`tagged`] value.
fn untag(v: &[u8]) -> Option<(u64, &[u8])> {
    let (tag, body) = v.split_at_checked(8)?;
    Some((u64::from_le_bytes(tag.try_into().ok()?), body))
}

/// Adds `vm` to the list of this Envoy's VMs.
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

/// The VM tags of this Envoy.
pub fn vms(h: &dyn Host) -> Vec<u64> {
    h.shared_get(VMS_KEY)
        .and_then(|(b, _)| String::from_utf8(b).ok())
        .unwrap_or_default()
        .split(',')
        .filter_map(|t| u64::from_str_radix(t, 16).ok())
        .collect()
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
        let ring = Ring::sync();
        assert_eq!(ring.head(&s), 0);
        assert_eq!(ring.publish(&s, b"a"), Some(1));
        assert_eq!(ring.publish(&s, b"b"), Some(2));
        assert_eq!(ring.head(&s), 2);
        assert_eq!(ring.read(&s, 1).unwrap(), b"a");
        for _ in 0..RING {
            ring.publish(&s, b"c");
        }
        assert_eq!(ring.read(&s, 1), None, "overwritten slot is detected");
        publish_snapshot(&s, 7, b"snap");
        assert_eq!(read_snapshot(&s).unwrap(), (7, b"snap".to_vec()));
    }

    fn read_all(ring: &PredictionRing, h: &FakeHost, seen: u64) -> (u64, Vec<Vec<u8>>) {
        let mut got = Vec::new();
        let last = ring.read_after(h, seen, |e| got.push(e.to_vec()));
        (last, got)
    }

    #[test]
    fn prediction_rings_are_read_without_a_head_key() {
        let s = FakeHost::default();
        let (p1, p2) = (PredictionRing::of(1), PredictionRing::of(2));
        assert_eq!(read_all(&p1, &s, 0), (0, vec![]));
        assert_eq!(p1.last_written(&s), 0);
        for (seq, e) in [(1, b"a"), (2, b"b"), (3, b"c")] {
            assert!(p1.write(&s, seq, e));
        }
        // A reader that never saw this ring reads what is in it, in order.
        let (seen, got) = read_all(&p1, &s, 0);
        assert_eq!(
            (seen, got),
            (3, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        );
        assert_eq!(read_all(&p1, &s, seen), (seen, vec![]), "nothing new");
        assert_eq!(
            read_all(&p2, &s, 0),
            (0, vec![]),
            "each VM's ring is its own"
        );
        // One write per entry, no other key.
        assert_eq!(
            s.keys_with_prefix("kvgate/predictions/").len(),
            3,
            "the three slots and nothing else"
        );
        // A reader a whole ring behind skips what was overwritten and reads the rest.
        for seq in 4..4 + PREDICTION_RING + 5 {
            p1.write(&s, seq, &seq.to_le_bytes());
        }
        let (last, got) = read_all(&p1, &s, seen);
        assert_eq!(last, 3 + PREDICTION_RING + 5);
        assert_eq!(got.len() as u64, PREDICTION_RING);
        assert_eq!(got.first().unwrap(), &(9u64).to_le_bytes().to_vec());
        // A writer configured again carries on from the highest stored number.
        assert_eq!(p1.last_written(&s), last);
    }

    #[test]
    fn the_vm_list() {
        let s = FakeHost::default();
        for vm in [1, 2, 3, 2] {
            register_vm(&s, vm);
        }
        assert_eq!(vms(&s), vec![1, 2, 3]);
    }
}
