//! Worker slots: a dense `u32` number per [`WorkerKey`], so that the set of workers
//! holding a block is a small bitset instead of a list of 12-byte keys.

use crate::types::WorkerKey;
use hashbrown::HashMap;

/// Interns worker keys as dense slot numbers; freed slots are reused.
#[derive(Debug, Clone, Default)]
pub struct SlotTable {
    by_key: HashMap<WorkerKey, u32>,
    keys: Vec<Option<WorkerKey>>,
    free: Vec<u32>,
}

impl SlotTable {
    /// The slot of `key`, allocating one if it has none.
    pub fn intern(&mut self, key: WorkerKey) -> u32 {
        if let Some(&s) = self.by_key.get(&key) {
            return s;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                if let Some(k) = self.keys.get_mut(s as usize) {
                    *k = Some(key);
                }
                s
            }
            None => {
                self.keys.push(Some(key));
                (self.keys.len() - 1) as u32
            }
        };
        self.by_key.insert(key, slot);
        slot
    }

    /// The slot of `key`, if it has one.
    pub fn get(&self, key: &WorkerKey) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    /// The key in `slot`, if the slot is in use.
    pub fn key(&self, slot: u32) -> Option<WorkerKey> {
        self.keys.get(slot as usize).copied().flatten()
    }

    /// Frees the slot of `key` for reuse (the caller has removed its blocks).
    pub fn release(&mut self, key: &WorkerKey) -> Option<u32> {
        let slot = self.by_key.remove(key)?;
        if let Some(k) = self.keys.get_mut(slot as usize) {
            *k = None;
        }
        self.free.push(slot);
        Some(slot)
    }

    /// Every key with a slot.
    pub fn keys(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.keys.iter().filter_map(|k| *k)
    }

    /// Number of slots ever allocated (the bitset width needed).
    pub fn width(&self) -> usize {
        self.keys.len()
    }
}

/// A set of slots: one inline word for the first 64 slots, a boxed bit vector beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotSet {
    /// Slots 0..64.
    Small(u64),
    /// Any slots: bit `i % 64` of word `i / 64`.
    Large(Box<[u64]>),
}

impl Default for SlotSet {
    fn default() -> Self {
        SlotSet::Small(0)
    }
}

impl SlotSet {
    /// A set with every slot below `width` present.
    pub fn full(width: usize) -> Self {
        let mut s = SlotSet::default();
        for i in 0..width {
            s.insert(i as u32);
        }
        s
    }

    /// Adds `slot`; returns whether it was absent.
    pub fn insert(&mut self, slot: u32) -> bool {
        let (w, b) = ((slot / 64) as usize, slot % 64);
        if w > 0 {
            if let SlotSet::Small(x) = *self {
                let mut v = vec![0u64; w + 1];
                if let Some(first) = v.first_mut() {
                    *first = x;
                }
                *self = SlotSet::Large(v.into_boxed_slice());
            }
        }
        match self {
            SlotSet::Small(x) => {
                let had = *x & (1 << b) != 0;
                *x |= 1 << b;
                !had
            }
            SlotSet::Large(words) => {
                if words.len() <= w {
                    let mut v = words.to_vec();
                    v.resize(w + 1, 0);
                    *words = v.into_boxed_slice();
                }
                match words.get_mut(w) {
                    Some(word) => {
                        let had = *word & (1 << b) != 0;
                        *word |= 1 << b;
                        !had
                    }
                    None => false,
                }
            }
        }
    }

    /// Removes `slot`; returns whether it was present.
    pub fn remove(&mut self, slot: u32) -> bool {
        let (w, b) = ((slot / 64) as usize, slot % 64);
        let word = match self {
            SlotSet::Small(x) if w == 0 => Some(x),
            SlotSet::Small(_) => None,
            SlotSet::Large(words) => words.get_mut(w),
        };
        match word {
            Some(word) => {
                let had = *word & (1 << b) != 0;
                *word &= !(1 << b);
                had
            }
            None => false,
        }
    }

    /// Whether `slot` is present.
    pub fn contains(&self, slot: u32) -> bool {
        let (w, b) = ((slot / 64) as usize, slot % 64);
        let word = match self {
            SlotSet::Small(x) if w == 0 => *x,
            SlotSet::Small(_) => 0,
            SlotSet::Large(words) => words.get(w).copied().unwrap_or(0),
        };
        word & (1 << b) != 0
    }

    /// Whether no slot is present.
    pub fn is_empty(&self) -> bool {
        match self {
            SlotSet::Small(x) => *x == 0,
            SlotSet::Large(words) => words.iter().all(|w| *w == 0),
        }
    }

    fn words(&self) -> &[u64] {
        match self {
            SlotSet::Small(x) => std::slice::from_ref(x),
            SlotSet::Large(words) => words,
        }
    }

    /// Keeps only slots also in `other`; calls `dropped(slot)` for every slot removed.
    pub fn retain_in(&mut self, other: &SlotSet, mut dropped: impl FnMut(u32)) {
        let theirs = other.words();
        let mine: &mut [u64] = match self {
            SlotSet::Small(x) => std::slice::from_mut(x),
            SlotSet::Large(words) => words,
        };
        for (i, word) in mine.iter_mut().enumerate() {
            let keep = *word & theirs.get(i).copied().unwrap_or(0);
            let mut gone = *word & !keep;
            while gone != 0 {
                let b = gone.trailing_zeros();
                dropped(i as u32 * 64 + b);
                gone &= gone - 1;
            }
            *word = keep;
        }
    }

    /// Iterates the present slots in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words().iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_set_small_and_large() {
        let mut s = SlotSet::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(130));
        assert!(s.contains(3) && s.contains(130) && !s.contains(4));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 130]);
        let mut other = SlotSet::default();
        other.insert(130);
        let mut dropped = vec![];
        s.retain_in(&other, |d| dropped.push(d));
        assert_eq!(dropped, vec![3]);
        assert!(s.remove(130));
        assert!(s.is_empty());
    }

    #[test]
    fn slot_table_reuses_released_slots() {
        let mut t = SlotTable::default();
        let a = t.intern(WorkerKey::new(1, 0));
        let b = t.intern(WorkerKey::new(2, 0));
        assert_ne!(a, b);
        assert_eq!(t.release(&WorkerKey::new(1, 0)), Some(a));
        assert_eq!(t.intern(WorkerKey::new(3, 0)), a);
        assert_eq!(t.key(a), Some(WorkerKey::new(3, 0)));
        assert_eq!(t.width(), 2);
    }
}
