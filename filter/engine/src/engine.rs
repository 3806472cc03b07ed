//! One VM's decision state: the index copy, bookkeeping, worker table, predictions and
//! tokenizers of one Envoy worker thread (or of `explain`, or of one simulated gateway
//! thread in the bench). The request path lives in `decide`, the response path in
//! `lifecycle`, sync frames in `sync`, models in `models`; the data types the other files
//! work on (counters, model state, predictions) are defined here, so no file that adds
//! methods to [`Engine`] is also imported by it.

use crate::fleet::Fleet;
use kvgate_core::config::Config;
use kvgate_core::index::{ApproxIndex, PrefixIndex};
use kvgate_core::load::{LoadBook, WorkerLoad};
use kvgate_core::sync::{BookEvent, BookKind, ModelEntry, RemoteLoad, SyncState};
use kvgate_core::WorkerKey;
use kvgate_prompt::ModelPrompt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Counters the engine keeps as it decides; [`MetricsState::export`] turns their growth
/// into metric moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Decisions made with routing headers.
    pub routed: u64,
    /// Requests forwarded without a decision under fail-open.
    pub fail_open: u64,
    /// Requests answered 503 under fail-closed.
    pub fail_closed: u64,
    /// Requests rejected because every worker was busy.
    pub no_capacity: u64,
    /// Requests not routed by design (unknown model passthrough, unsupported content).
    pub passthrough: u64,
    /// Requests rejected for bad input.
    pub rejected: u64,
    /// Decisions made on load alone because the index was stale.
    pub stale_index: u64,
    /// Decisions made on load alone because the model's tokenizer was not loaded.
    pub no_tokenizer: u64,
    /// Sync frames applied.
    pub frames: u64,
    /// Sync frames refused (discontinuous or malformed).
    pub frame_errors: u64,
    /// Prefill workers quarantined on a decode worker's report.
    pub prefill_quarantined: u64,
}

/// One model on this VM.
pub struct ModelState {
    /// Digest of the loaded (or wanted) files.
    pub digest: String,
    /// Tokens per KV block.
    pub block_size: u32,
    /// The loaded prompt pipeline (None until the files arrive).
    pub prompt: Option<ModelPrompt>,
}

/// One prediction: the prompt's sequence hashes will be cached on `worker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    /// The worker (prefill worker when disaggregated).
    pub worker: WorkerKey,
    /// When it was made, ms (its TTL runs from here).
    pub at_ms: u64,
    /// Sequence hashes of the prompt's complete blocks.
    pub sequence: Vec<u64>,
}

/// One VM's state.
pub struct Engine {
    /// The validated configuration.
    pub cfg: Config,
    /// This VM's random tag.
    pub vm: u64,
    pub(crate) rng: fastrand::Rng,
    pub(crate) index: PrefixIndex,
    pub(crate) sync: SyncState,
    /// Ring sequence of the last applied frame.
    pub ring_seq: u64,
    pub(crate) approx: ApproxIndex,
    pub(crate) book: LoadBook<u32>,
    /// Prefill throughput learned per worker from this VM's first tokens.
    pub(crate) prefill_rates: kvgate_core::prefill::PrefillRates,
    pub(crate) fleet: Fleet,
    pub(crate) remote: HashMap<WorkerKey, RemoteLoad>,
    pub(crate) models: HashMap<String, ModelState>,
    pub(crate) model_entries: Vec<ModelEntry>,
    pub(crate) last_sync_ms: Option<u64>,
    pub(crate) source_age_ms: u64,
    /// Counters for metrics.
    pub counters: Counters,
    pub(crate) outbox: Vec<BookEvent>,
    /// Predictions of this VM not yet published for the other VMs.
    pub(crate) predictions_out: Vec<Prediction>,
    /// Per other VM, the last prediction applied.
    pub(crate) predictions_seen: HashMap<u64, u64>,
    /// Sequence number of this VM's last published prediction (0: none yet).
    pub(crate) predictions_published: u64,
    /// Prefill workers reported unreachable.
    pub(crate) quarantine: crate::health::Quarantine,
}

impl Engine {
    /// A VM with configuration `cfg`, tag `vm` and RNG seed `seed`.
    pub fn new(cfg: Config, vm: u64, seed: u64) -> Self {
        // With KV events, predictions only bridge the event delay: `router_predicted_ttl_secs`.
        let ttl = match cfg.router.predicted_ttl_ms {
            Some(ttl) if cfg.gateway.sidecar_cluster.is_some() && cfg.router.use_kv_events => ttl,
            _ => cfg.router.approx_ttl_ms,
        };
        let mut approx = ApproxIndex::new(ttl, cfg.router.approx_max_entries);
        approx.set_prune_target_ratio(cfg.router.approx_prune_target_ratio);
        let fleet = Fleet::new(cfg.gateway.workers.clone());
        Engine {
            cfg,
            vm,
            rng: fastrand::Rng::with_seed(seed),
            index: PrefixIndex::new(),
            sync: SyncState::default(),
            ring_seq: 0,
            approx,
            book: LoadBook::new(),
            prefill_rates: Default::default(),
            fleet,
            remote: HashMap::new(),
            models: HashMap::new(),
            model_entries: Vec::new(),
            last_sync_ms: None,
            source_age_ms: 0,
            counters: Counters::default(),
            outbox: Vec::new(),
            predictions_out: Vec::new(),
            predictions_seen: HashMap::new(),
            predictions_published: 0,
            quarantine: Default::default(),
        }
    }

    /// Whether the index comes from a sidecar (else static workers and predictions).
    pub fn has_sidecar(&self) -> bool {
        self.cfg.gateway.sidecar_cluster.is_some()
    }

    /// Whether matching uses KV events (else routing predictions with a TTL).
    pub fn uses_events(&self) -> bool {
        self.has_sidecar() && self.cfg.router.use_kv_events
    }

    /// Blocks in the index copy.
    pub fn index_blocks(&self) -> usize {
        self.index.len()
    }

    /// Booked loads of this VM, to publish in shared data.
    pub fn own_loads(&self) -> Vec<(WorkerKey, WorkerLoad)> {
        self.book.loads().collect()
    }

    /// Requests this VM has in flight.
    pub fn in_flight(&self) -> usize {
        self.book.len()
    }

    /// Whether bookkeeping steps go to the sidecar for other gateway replicas.
    pub fn replica_sync(&self) -> bool {
        self.has_sidecar() && self.cfg.router.replica_sync
    }

    /// Gateway-unique id of stream `ctx` of this VM.
    pub fn request_id(&self, ctx: u32) -> u64 {
        self.vm.rotate_left(32) ^ u64::from(ctx)
    }

    pub(crate) fn note(&mut self, ctx: u32, kind: BookKind) {
        if self.replica_sync() {
            let request_id = self.request_id(ctx);
            self.outbox.push(BookEvent { request_id, kind });
        }
    }

    /// Bookkeeping steps not yet sent to the sidecar.
    pub fn take_outbox(&mut self) -> Vec<BookEvent> {
        std::mem::take(&mut self.outbox)
    }

    /// What the sidecar reported about `worker`'s load (other replicas, worker metrics).
    pub fn remote_load(&self, worker: &WorkerKey) -> Option<RemoteLoad> {
        self.remote.get(worker).copied()
    }

    /// The worker table.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }
}
