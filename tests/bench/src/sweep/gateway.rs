//! kvgate itself inside the virtual-time sweep: the real `kvgate-engine` VMs (the code the
//! Wasm filter runs), on in-memory hosts sharing one shared-data store as the worker
//! threads of one Envoy do (bookings ledger, shared predictions), with the virtual clock.
//!
//! * A decision is `Vm::decide` on a `/v1/completions` token-id body, VMs taking requests
//!   in turn (Envoy spreads connections over its worker threads).
//! * First token → `Vm::response_started`, end → `Vm::request_done`: the response path the
//!   filter runs on the response headers and at the end of the stream.
//! * With KV events, the engines' `Stored` / `Removed` / `Cleared` events become sidecar
//!   sync frames (the same ops kvgate-sync sends), delivered [`GatewayConfig::event_delay_ms`]
//!   after the pass that produced them; an empty frame every 500 ms stands for the long
//!   poll's keep-alive answer, so the index is never stale.
//! * Every VM runs its tick (`Vm::on_tick`) every [`GatewayConfig::tick_ms`]: booking
//!   expiry and the ledger refresh.

use kvgate_core::events::KvEventData;
use kvgate_core::sync::{self as ksync, Hash64, ModelEntry, Op, SyncFrame};
use kvgate_core::workers::{WorkerInfo, WorkerRole};
use kvgate_core::WorkerKey;
use kvgate_engine::headers::RoutedPath;
use kvgate_engine::testing::FakeHost;
use kvgate_engine::{ModelFiles, ModelState, Outcome, Vm, VmConfig};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Model name the simulated fleet serves.
pub const SIM_MODEL: &str = "Qwen/Qwen3-0.6B";

/// Digest of the model files (any stable string: the engine only compares it).
const DIGEST: &str = "sweep";

/// A keep-alive frame at least this often (the sidecar long poll's wait).
const KEEPALIVE_MS: u64 = 500;

/// Loaded models kept between runs of one thread (one entry per VM): loading the
/// tokenizer takes seconds, and token-id prompts never use it, so VMs of later runs adopt
/// the models of earlier ones instead of loading them again.
pub type ModelPool = Vec<Vec<(String, ModelState)>>;

/// How the simulated gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// KV events (else approximate mode: predictions from its own decisions).
    pub use_kv_events: bool,
    /// Envoy worker threads (VMs).
    pub vms: usize,
    /// KV event → decision delay, trace ms (NATS, sidecar, long poll).
    pub event_delay_ms: f64,
    /// Tick period of every VM, trace ms.
    pub tick_ms: f64,
    /// Extra plugin configuration (router keys), merged over the defaults.
    pub plugin: serde_json::Value,
}

/// The simulated gateway's failure.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The VM refused to start.
    #[error("kvgate VM: {0}")]
    Start(#[from] kvgate_engine::StartError),
    /// The model could not be loaded.
    #[error("model: {0}")]
    Model(#[from] kvgate_engine::ModelLoadError),
    /// A sync frame was refused.
    #[error("sync frame refused: {0}")]
    Frame(#[from] ksync::SyncError),
    /// JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

struct Pending {
    at_ms: f64,
    ops: Vec<Op>,
}

/// The VMs of one simulated Envoy.
pub struct Gateway {
    hosts: Vec<FakeHost>,
    vms: Vec<Vm>,
    keys: Vec<WorkerKey>,
    next_vm: usize,
    next_ctx: u32,
    /// Request id → (VM, stream context).
    streams: HashMap<u64, (usize, u32)>,
    events: bool,
    version: u64,
    last_frame_ms: u64,
    pending: VecDeque<Pending>,
    delay_ms: f64,
    tick_ms: f64,
    next_tick_ms: f64,
    /// Decisions that did not route (should be 0).
    pub unrouted: u64,
}

/// The worker table of `n` simulated engines with `blocks` KV blocks each.
pub fn worker_table(n: usize, blocks: usize, max_seqs: usize, batch: usize) -> Vec<WorkerInfo> {
    (1..=n as u64)
        .map(|id| WorkerInfo {
            instance_id: id,
            endpoint: format!("10.0.0.{id}:8000"),
            model: SIM_MODEL.into(),
            role: WorkerRole::Aggregated,
            block_size: Some(16),
            dp_size: 1,
            dp_start_rank: 0,
            total_kv_blocks: Some(blocks as u64),
            max_num_seqs: Some(max_seqs as u64),
            max_num_batched_tokens: Some(batch as u64),
            zmq_events: None,
            zmq_replay: None,
            lora_adapters: Vec::new(),
        })
        .collect()
}

impl Gateway {
    /// Starts `cfg.vms` VMs at time `now_ms` routing over `workers`, with the model
    /// `files` loaded, seeded by `seed`.
    pub fn start(
        cfg: &GatewayConfig,
        workers: &[WorkerInfo],
        files: &Arc<ModelFiles>,
        pool: &mut ModelPool,
        seed: u64,
        now_ms: u64,
    ) -> Result<Gateway, GatewayError> {
        let mut plugin = if cfg.use_kv_events {
            serde_json::json!({"sidecar_cluster": "kvgate_sidecar", "use_kv_events": true})
        } else {
            serde_json::json!({"sidecar_cluster": "", "workers": workers})
        };
        if let (serde_json::Value::Object(p), serde_json::Value::Object(extra)) =
            (&mut plugin, &cfg.plugin)
        {
            p.extend(extra.clone());
        }
        let plugin = serde_json::to_vec(&plugin)?;
        let first = FakeHost::at(now_ms);
        let mut hosts = Vec::new();
        let mut vms = Vec::new();
        for i in 0..cfg.vms.max(1) {
            let host = first.sibling();
            let tag = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64 + 1);
            let mut vm = Vm::configure(
                &host,
                tag,
                seed.wrapping_add(i as u64),
                &plugin,
                &VmConfig::default(),
            )?;
            if cfg.use_kv_events {
                let snap = SyncFrame {
                    epoch: 1,
                    to_version: 0,
                    snapshot: true,
                    workers: Some(workers.to_vec()),
                    models: Some(vec![ModelEntry {
                        name: SIM_MODEL.into(),
                        block_size: 16,
                        files_digest: DIGEST.into(),
                    }]),
                    loads: Some(Vec::new()),
                    ..Default::default()
                };
                vm.engine.apply_frame(&snap, now_ms)?;
            }
            match pool.pop() {
                Some(models) if !models.is_empty() => vm.engine.adopt_models(models),
                _ => vm.engine.load_model(DIGEST, files)?,
            }
            hosts.push(host);
            vms.push(vm);
        }
        Ok(Gateway {
            hosts,
            vms,
            keys: workers
                .iter()
                .map(|w| WorkerKey::new(w.instance_id, 0))
                .collect(),
            next_vm: 0,
            next_ctx: 0,
            streams: HashMap::new(),
            events: cfg.use_kv_events,
            version: 0,
            last_frame_ms: now_ms,
            pending: VecDeque::new(),
            delay_ms: cfg.event_delay_ms.max(0.0),
            tick_ms: cfg.tick_ms.max(1.0),
            next_tick_ms: now_ms as f64,
            unrouted: 0,
        })
    }

    fn set_now(&self, now_ms: f64) {
        let t = now_ms.max(0.0) as u64;
        for h in &self.hosts {
            h.set_now(t);
        }
    }

    /// The next time the gateway has something to do on its own (tick, frame delivery).
    pub fn next_due(&self) -> f64 {
        let frame = self.pending.front().map_or(f64::INFINITY, |p| p.at_ms);
        frame.min(self.next_tick_ms)
    }

    /// Runs what is due at `now_ms`: frames whose delay has passed, keep-alives, ticks.
    pub fn advance(&mut self, now_ms: f64) -> Result<(), GatewayError> {
        self.set_now(now_ms);
        if self.events {
            let mut ops = Vec::new();
            while self.pending.front().is_some_and(|p| p.at_ms <= now_ms) {
                if let Some(p) = self.pending.pop_front() {
                    ops.extend(p.ops);
                }
            }
            let t = now_ms as u64;
            if !ops.is_empty() || t.saturating_sub(self.last_frame_ms) >= KEEPALIVE_MS {
                self.deliver(ops, t)?;
            }
        }
        if now_ms >= self.next_tick_ms {
            for (vm, host) in self.vms.iter_mut().zip(&self.hosts) {
                vm.on_tick(host);
                // Long polls to the sidecar are answered by `deliver`, not over HTTP.
                let _ = host.take_calls();
            }
            while self.next_tick_ms <= now_ms {
                self.next_tick_ms += self.tick_ms;
            }
        }
        Ok(())
    }

    fn deliver(&mut self, ops: Vec<Op>, now_ms: u64) -> Result<(), GatewayError> {
        let frame = SyncFrame {
            epoch: 1,
            from_version: self.version,
            to_version: self.version + 1,
            snapshot: false,
            keys: self.keys.clone(),
            ops,
            ..Default::default()
        };
        self.version += 1;
        self.last_frame_ms = now_ms;
        for vm in &mut self.vms {
            vm.engine.apply_frame(&frame, now_ms)?;
        }
        Ok(())
    }

    /// Queues worker `worker`'s (index) KV events of a pass that ended at `now_ms`.
    pub fn kv_events(&mut self, worker: usize, events: &[KvEventData], now_ms: f64) {
        if !self.events || events.is_empty() {
            return;
        }
        let w = worker as u32;
        let mut ops = Vec::new();
        for e in events {
            match e {
                KvEventData::Stored { blocks, .. } => {
                    ops.extend(blocks.iter().map(|b| Op::Insert(w, Hash64(b.external))))
                }
                KvEventData::Removed { blocks } => {
                    ops.extend(blocks.iter().map(|h| Op::Remove(w, Hash64(*h))))
                }
                KvEventData::Cleared => ops.push(Op::Clear(w)),
            }
        }
        self.pending.push_back(Pending {
            at_ms: now_ms + self.delay_ms,
            ops,
        });
    }

    /// Decides where request `id` (a token-id completion `body`) goes at `now_ms`;
    /// returns the worker index, or None if the filter did not route it.
    pub fn decide(&mut self, id: u64, body: &[u8], now_ms: f64) -> Option<usize> {
        self.set_now(now_ms);
        let n = self.vms.len();
        let i = self.next_vm % n;
        self.next_vm = self.next_vm.wrapping_add(1);
        self.next_ctx = self.next_ctx.wrapping_add(1);
        let ctx = self.next_ctx;
        let (vm, host) = (self.vms.get_mut(i)?, self.hosts.get(i)?);
        match vm.decide(host, ctx, RoutedPath::Completions, body, None) {
            Outcome::Route(r) => {
                self.streams.insert(id, (i, ctx));
                self.keys.iter().position(|k| *k == r.worker)
            }
            _ => {
                self.unrouted += 1;
                vm.request_done(host, ctx);
                None
            }
        }
    }

    /// Ends the gateway, returning its VMs' models to `pool`.
    pub fn release(mut self, pool: &mut ModelPool) {
        for vm in &mut self.vms {
            pool.push(vm.engine.take_models());
        }
    }

    /// Request `id`'s first token arrived.
    pub fn first_token(&mut self, id: u64, now_ms: f64) {
        self.set_now(now_ms);
        if let Some(&(i, ctx)) = self.streams.get(&id) {
            if let (Some(vm), Some(host)) = (self.vms.get_mut(i), self.hosts.get(i)) {
                vm.response_started(host, ctx);
            }
        }
    }

    /// Request `id` ended.
    pub fn finish(&mut self, id: u64, now_ms: f64) {
        self.set_now(now_ms);
        if let Some((i, ctx)) = self.streams.remove(&id) {
            if let (Some(vm), Some(host)) = (self.vms.get_mut(i), self.hosts.get(i)) {
                vm.request_done(host, ctx);
            }
        }
    }
}
