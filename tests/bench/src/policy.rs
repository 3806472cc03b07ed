//! The routing policies compared in the quality phase.
//!
//! | name | who decides | how |
//! |---|---|---|
//! | `round_robin` | driver | next worker in turn |
//! | `random` | driver | uniformly at random (seeded) |
//! | `least_load` | driver | fewest requests in flight (ties at random) |
//! | `char_prefix` | driver | GAIE-style prefix-cache scorer without a tokenizer (below) |
//! | `kvgate_approx` | filter | kvgate, `use_kv_events: false`: caches predicted from its own decisions |
//! | `kvgate_events` | filter | kvgate with the engines' KV events via NATS and kvgate-sync |
//! | `epp` | picker | the same engine as `kvgate_events` in `kvgate-sync serve --epp` (its own, following NATS), called by Envoy's ext_proc: the Gateway API Inference Extension's endpoint picker |
//! | `oracle` | driver | virtual-time sweep: the lookahead oracle ([`crate::sweep::oracle`]); real stack (only when asked for): kvgate's cost formula fed with the engines' exact caches and load |
//!
//! Driver-side picks travel as `x-gateway-destination-endpoint` through a plain Envoy.
//!
//! `char_prefix` follows the Gateway API Inference Extension's prefix-cache plugin: the
//! prompt's characters are hashed in chained 64-character chunks (at most 256), each
//! worker keeps an LRU (31,250 entries) of the chunk hashes of the prompts it was sent,
//! and a worker scores `3 · matched/total + 2 · queue` where `queue` is its in-flight
//! count normalised min–max (1 for the least loaded) — GAIE's default weights for the
//! prefix and queue scorers. For token-id prompts the "characters" are the JSON text of
//! the token array, a prefix-preserving stand-in.
//!
//! In the real-stack phase, `oracle` (not run by default: it is not an upper bound) sees each engine's cache exactly (its KV events, [`super::model`]) and the
//! exact load (the driver sees every request start, produce its first token and end), and
//! picks with kvgate's own cost formula (`kvgate_core::score`, Dynamo's defaults): the
//! best kvgate could do with perfect information. A pure "longest hit" oracle would send
//! almost every Mooncake request to one worker (they all share the first block).

use super::model::CacheModel;
use kvgate_core::score::{score, select, Candidate, ScoreParams};
use kvgate_core::WorkerKey;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

/// Tokens per KV block of the engines.
pub const BLOCK_SIZE: u32 = 16;
/// GAIE prefix plugin: characters per hashed chunk.
pub const CHAR_BLOCK: usize = 64;
/// GAIE prefix plugin: chunks matched at most.
pub const CHAR_MAX_BLOCKS: usize = 256;
/// GAIE prefix plugin: chunk hashes remembered per worker.
pub const CHAR_LRU_CAPACITY: usize = 31_250;

/// A policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Next worker in turn.
    RoundRobin,
    /// Uniformly random.
    Random,
    /// Fewest requests in flight.
    LeastLoad,
    /// GAIE-style character-prefix scorer.
    CharPrefix,
    /// kvgate without KV events.
    KvgateApprox,
    /// kvgate with KV events.
    KvgateEvents,
    /// kvgate's formula with exact knowledge.
    Oracle,
    /// kvgate's engine as an endpoint picker (ext_proc), with KV events.
    Epp,
}

impl PolicyKind {
    /// The policies the real-stack phase runs by default (the lookahead `oracle` exists
    /// only in virtual time, see [`crate::sweep::oracle`]).
    pub const LIVE: [PolicyKind; 7] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoad,
        PolicyKind::CharPrefix,
        PolicyKind::KvgateApprox,
        PolicyKind::KvgateEvents,
        PolicyKind::Epp,
    ];

    /// Every policy, in report order.
    pub const ALL: [PolicyKind; 8] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoad,
        PolicyKind::CharPrefix,
        PolicyKind::KvgateApprox,
        PolicyKind::KvgateEvents,
        PolicyKind::Epp,
        PolicyKind::Oracle,
    ];

    /// The report name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoad => "least_load",
            PolicyKind::CharPrefix => "char_prefix",
            PolicyKind::KvgateApprox => "kvgate_approx",
            PolicyKind::KvgateEvents => "kvgate_events",
            PolicyKind::Oracle => "oracle",
            PolicyKind::Epp => "epp",
        }
    }

    /// The policy called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name.trim())
    }

    /// Whether the kvgate filter decides (else the driver does, through plain Envoy, or
    /// the endpoint picker, through Envoy's ext_proc).
    pub fn via_filter(self) -> bool {
        matches!(self, PolicyKind::KvgateApprox | PolicyKind::KvgateEvents)
    }

    /// Whether kvgate's endpoint picker decides.
    pub fn via_picker(self) -> bool {
        self == PolicyKind::Epp
    }

    /// Whether the driver picks the worker itself.
    pub fn via_driver(self) -> bool {
        !self.via_filter() && !self.via_picker()
    }

    /// Who decides: `driver`, `filter` or `picker`.
    pub fn decided_by(self) -> &'static str {
        if self.via_filter() {
            "filter"
        } else if self.via_picker() {
            "picker"
        } else {
            "driver"
        }
    }

    /// Whether it needs the request's block hashes.
    pub fn needs_hashes(self) -> bool {
        self == PolicyKind::Oracle
    }

    /// Whether it needs the prompt's text.
    pub fn needs_text(self) -> bool {
        self == PolicyKind::CharPrefix
    }
}

/// What a policy may look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Prompt tokens (0 when unknown).
    pub isl: usize,
    /// Chained block hashes of the prompt (only for the oracle).
    pub sequence_hashes: &'a [u64],
    /// The prompt as text (only for `char_prefix`).
    pub text: &'a str,
}

#[derive(Debug, Clone, Copy, Default)]
struct Load {
    in_flight: u64,
    prefill_tokens: u64,
    decode_blocks: u64,
}

/// A request booked on a worker until [`Router::finish`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// Index of the chosen worker.
    pub worker: usize,
    prefill_tokens: u64,
    blocks: u64,
    prefilled: bool,
}

/// An LRU set of chunk hashes.
#[derive(Debug, Default)]
struct LruSet {
    at: HashMap<u64, u64>,
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl LruSet {
    fn touch(&mut self, h: u64, capacity: usize) {
        self.tick += 1;
        if let Some(old) = self.at.insert(h, self.tick) {
            self.order.remove(&old);
        }
        self.order.insert(self.tick, h);
        while self.at.len() > capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            self.at.remove(&victim);
        }
    }

    fn contains(&self, h: u64) -> bool {
        self.at.contains_key(&h)
    }
}

/// Chained hashes of the full 64-character chunks of `text` (at most 256).
pub fn char_chunks(text: &str) -> Vec<u64> {
    let mut prev = 0u64;
    text.as_bytes()
        .chunks_exact(CHAR_BLOCK)
        .take(CHAR_MAX_BLOCKS)
        .map(|c| {
            let mut buf = Vec::with_capacity(CHAR_BLOCK + 8);
            buf.extend_from_slice(&prev.to_le_bytes());
            buf.extend_from_slice(c);
            prev = kvgate_core::hash::hash_bytes(&buf);
            prev
        })
        .collect()
}

struct State {
    rr: usize,
    rng: fastrand::Rng,
    load: Vec<Load>,
    chars: Vec<LruSet>,
}

/// A driver-side router over workers with instance ids `ids`.
pub struct Router {
    kind: PolicyKind,
    ids: Vec<u64>,
    state: Mutex<State>,
    model: Option<Arc<Mutex<CacheModel>>>,
}

impl Router {
    /// A router for `kind` (the oracle reads `model`).
    pub fn new(
        kind: PolicyKind,
        ids: Vec<u64>,
        seed: u64,
        model: Option<Arc<Mutex<CacheModel>>>,
    ) -> Self {
        let n = ids.len();
        Router {
            kind,
            state: Mutex::new(State {
                rr: 0,
                rng: fastrand::Rng::with_seed(seed),
                load: vec![Load::default(); n],
                chars: (0..n).map(|_| LruSet::default()).collect(),
            }),
            ids,
            model,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Picks a worker for `req` and books it there.
    pub fn pick(&self, req: &RequestInfo<'_>) -> Ticket {
        let n = self.ids.len().max(1);
        let blocks = (req.isl as u64).div_ceil(u64::from(BLOCK_SIZE));
        let mut st = self.lock();
        let mut overlap = 0u32;
        let worker = match self.kind {
            PolicyKind::RoundRobin => {
                st.rr = st.rr.wrapping_add(1);
                (st.rr - 1) % n
            }
            PolicyKind::Random => st.rng.usize(..n),
            PolicyKind::LeastLoad => {
                let min = st.load.iter().map(|l| l.in_flight).min().unwrap_or(0);
                let ties: Vec<usize> = (0..n)
                    .filter(|&i| st.load.get(i).is_some_and(|l| l.in_flight == min))
                    .collect();
                ties.get(st.rng.usize(..ties.len().max(1)))
                    .copied()
                    .unwrap_or(0)
            }
            PolicyKind::CharPrefix => self.char_prefix(&mut st, req.text),
            PolicyKind::Oracle => {
                let (w, ov) = self.oracle(&mut st, req, blocks);
                overlap = ov;
                w
            }
            // The filter or the picker decides; the driver only books (worker unknown:
            // index 0).
            PolicyKind::KvgateApprox | PolicyKind::KvgateEvents | PolicyKind::Epp => 0,
        };
        let uncached = (req.isl as u64).saturating_sub(u64::from(overlap) * u64::from(BLOCK_SIZE));
        if let Some(l) = st.load.get_mut(worker) {
            l.in_flight += 1;
            l.prefill_tokens += uncached;
            l.decode_blocks += blocks;
        }
        Ticket {
            worker,
            prefill_tokens: uncached,
            blocks,
            prefilled: false,
        }
    }

    /// The first token of a booked request arrived: its prefill is done.
    pub fn first_token(&self, t: &mut Ticket) {
        if t.prefilled {
            return;
        }
        t.prefilled = true;
        let mut st = self.lock();
        if let Some(l) = st.load.get_mut(t.worker) {
            l.prefill_tokens = l.prefill_tokens.saturating_sub(t.prefill_tokens);
        }
    }

    /// A booked request ended.
    pub fn finish(&self, mut t: Ticket) {
        self.first_token(&mut t);
        let mut st = self.lock();
        if let Some(l) = st.load.get_mut(t.worker) {
            l.in_flight = l.in_flight.saturating_sub(1);
            l.decode_blocks = l.decode_blocks.saturating_sub(t.blocks);
        }
    }

    fn char_prefix(&self, st: &mut State, text: &str) -> usize {
        let chunks = char_chunks(text);
        let loads: Vec<u64> = st.load.iter().map(|l| l.in_flight).collect();
        let (min, max) = (
            loads.iter().copied().min().unwrap_or(0),
            loads.iter().copied().max().unwrap_or(0),
        );
        let mut best: Vec<usize> = Vec::new();
        let mut best_score = f64::NEG_INFINITY;
        for (i, set) in st.chars.iter().enumerate() {
            let matched = chunks.iter().take_while(|h| set.contains(**h)).count();
            let prefix = if chunks.is_empty() {
                0.0
            } else {
                matched as f64 / chunks.len() as f64
            };
            let q = loads.get(i).copied().unwrap_or(0);
            let queue = if max == min {
                1.0
            } else {
                (max - q) as f64 / (max - min) as f64
            };
            let s = 3.0 * prefix + 2.0 * queue;
            if s > best_score + 1e-12 {
                best_score = s;
                best.clear();
                best.push(i);
            } else if (s - best_score).abs() <= 1e-12 {
                best.push(i);
            }
        }
        let w = best
            .get(st.rng.usize(..best.len().max(1)))
            .copied()
            .unwrap_or(0);
        if let Some(set) = st.chars.get_mut(w) {
            for h in chunks {
                set.touch(h, CHAR_LRU_CAPACITY);
            }
        }
        w
    }

    fn oracle(&self, st: &mut State, req: &RequestInfo<'_>, blocks: u64) -> (usize, u32) {
        let Some(model) = &self.model else {
            return (0, 0);
        };
        let m = model.lock().unwrap_or_else(PoisonError::into_inner);
        let candidates: Vec<Candidate> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let ov = m.overlap(id, req.sequence_hashes);
                let l = st.load.get(i).copied().unwrap_or_default();
                Candidate {
                    worker: WorkerKey::new(id, 0),
                    overlap_blocks: ov,
                    active_prefill_tokens: l.prefill_tokens,
                    active_decode_blocks: l.decode_blocks,
                    new_blocks: blocks.saturating_sub(u64::from(ov)),
                    active_requests: l.in_flight,
                    cached_blocks: m.cached(id),
                }
            })
            .collect();
        drop(m);
        let params = ScoreParams {
            isl_tokens: req.isl as u64,
            block_size: BLOCK_SIZE,
            credit: 1.0,
            credit_decay: 0.0,
            prefill_load_scale: 1.0,
            active_request_weight: 0.0,
            track_prefill: true,
            decode_pool: false,
            temperature: 0.0,
        };
        let scored = score(&params, &candidates);
        let i = select(&scored, 0.0, &mut st.rng).unwrap_or(0);
        (i, candidates.get(i).map_or(0, |c| c.overlap_blocks))
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use kvgate_core::events::{KvEventData, StoredBlock};

    fn info<'a>(isl: usize, hashes: &'a [u64], text: &'a str) -> RequestInfo<'a> {
        RequestInfo {
            isl,
            sequence_hashes: hashes,
            text,
        }
    }

    #[test]
    fn names_round_trip() {
        for p in PolicyKind::ALL {
            assert_eq!(PolicyKind::parse(p.name()), Some(p));
        }
        assert_eq!(PolicyKind::parse("nope"), None);
        let by: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.decided_by()).collect();
        assert_eq!(
            by,
            ["driver", "driver", "driver", "driver", "filter", "filter", "picker", "driver"]
        );
        assert!(PolicyKind::ALL
            .iter()
            .all(|p| p.via_driver() != (p.via_filter() || p.via_picker())));
    }

    #[test]
    fn round_robin_and_least_load_spread() {
        let r = Router::new(PolicyKind::RoundRobin, vec![1, 2, 3], 1, None);
        let picks: Vec<usize> = (0..6).map(|_| r.pick(&info(10, &[], "")).worker).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let r = Router::new(PolicyKind::LeastLoad, vec![1, 2], 1, None);
        let a = r.pick(&info(10, &[], ""));
        let b = r.pick(&info(10, &[], ""));
        assert_ne!(a.worker, b.worker);
        r.finish(a);
        assert_eq!(r.pick(&info(10, &[], "")).worker, a.worker);
    }

    #[test]
    fn char_prefix_follows_a_shared_prefix() {
        let r = Router::new(PolicyKind::CharPrefix, vec![1, 2, 3, 4], 1, None);
        let long = "x".repeat(64 * 10);
        let first = r.pick(&info(0, &[], &long));
        r.finish(first);
        let again = r.pick(&info(0, &[], &format!("{long}yyyy")));
        assert_eq!(again.worker, first.worker);
        assert!(char_chunks("short").is_empty());
        assert_eq!(char_chunks(&"a".repeat(64 * 300)).len(), CHAR_MAX_BLOCKS);
    }

    #[test]
    fn oracle_uses_the_exact_cache() {
        let model = Arc::new(Mutex::new(CacheModel::default()));
        model.lock().unwrap().apply(
            3,
            &KvEventData::Stored {
                parent: None,
                blocks: (100..140)
                    .map(|external| StoredBlock {
                        external,
                        tokens_hash: 0,
                    })
                    .collect(),
            },
        );
        let r = Router::new(PolicyKind::Oracle, vec![1, 2, 3, 4], 1, Some(model));
        let hashes: Vec<u64> = (100..140).collect();
        let t = r.pick(&info(640, &hashes, ""));
        assert_eq!(t.worker, 2);
        r.finish(t);
    }
}
