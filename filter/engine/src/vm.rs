//! One VM as the proxy runs it: start-up (plugin and VM configuration, models), the tick
//! (expire bookings, publish loads, follow the index ring, poll the sidecar, fetch models,
//! send bookkeeping), the answers to sidecar calls, and the decide / response hooks that
//! streams call. Plain Rust over [`Host`]: every branch is a native test.

use crate::engine::Engine;
use crate::headers::RoutedPath;
use crate::held::{Holds, StreamAction};
use crate::host::{CallId, CallResponse, Host, Level, MetricOp};
use crate::ledger;
use crate::metrics::{Metric, MetricsState};
use crate::models::{ModelFiles, ModelLoadError};
use crate::outcome::Outcome;
use crate::shared::{self, Ring};
use crate::sidecar::{Pending, Sidecar, MODEL_TIMEOUT_MS};
use crate::DecideInput;
use kvgate_core::config::{Config, ConfigError, Secret};
use kvgate_core::sync::query_escape;
use kvgate_core::WorkerKey;
use serde::Deserialize;
use std::time::Instant;

/// Every VM republishes its loads at least this often (a stale record is ignored).
pub const LOADS_REFRESH_MS: u64 = 1_000;

/// A snapshot of the whole view is left in shared data every this many ring frames.
pub const SNAPSHOT_EVERY: u64 = 64;

/// A frame larger than this also refreshes the snapshot (it was probably one).
pub const SNAPSHOT_FRAME_BYTES: usize = 1 << 16;

/// Why a VM cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The VM configuration (model files for static mode) is not valid JSON of its shape.
    #[error("invalid VM configuration: {0}")]
    VmConfig(String),
    /// The plugin configuration was refused.
    #[error("invalid plugin configuration: {0}")]
    Config(#[from] ConfigError),
    /// A model in the VM configuration could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelLoadError),
}

/// The VM configuration: model files for static mode (no sidecar).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Models to load at start.
    #[serde(default)]
    pub models: Vec<VmModel>,
}

/// One model of the VM configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmModel {
    /// Served model name.
    pub name: String,
    /// Tokens per KV block.
    #[serde(default = "sixteen")]
    pub block_size: u32,
    /// `tokenizer.json` contents.
    pub tokenizer_json: String,
    /// `tokenizer_config.json` contents (with `chat_template`).
    pub tokenizer_config_json: String,
}

fn sixteen() -> u32 {
    16
}

impl VmConfig {
    /// Parses the VM configuration; empty or blank means none.
    pub fn parse(raw: &[u8]) -> Result<Self, StartError> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(VmConfig::default());
        }
        serde_json::from_slice(raw).map_err(|e| StartError::VmConfig(e.to_string()))
    }
}

/// One VM: the engine, its metric state and its calls to the sidecar.
pub struct Vm {
    /// The decision state.
    pub engine: Engine,
    metrics: MetricsState,
    sidecar: Option<Sidecar>,
    loads_dirty: bool,
    last_loads_ms: u64,
    /// Streams held while their body arrives.
    pub(crate) holds: Holds,
}

impl Vm {
    /// Starts a VM tagged `tag` (random per VM) with RNG seed `seed`: validates the plugin
    /// configuration, loads the models of the VM configuration and registers in shared data.
    pub fn configure(
        host: &dyn Host,
        tag: u64,
        seed: u64,
        plugin_config: &[u8],
        vm_config: &VmConfig,
    ) -> Result<Vm, StartError> {
        let cfg = Config::from_json(plugin_config)?;
        Self::from_config(host, tag, seed, cfg, vm_config)
    }

    /// [`Vm::configure`] with a configuration already merged and validated (the sidecar's
    /// endpoint picker runs the engine with the sidecar's own configuration).
    pub fn from_config(
        host: &dyn Host,
        tag: u64,
        seed: u64,
        cfg: Config,
        vm_config: &VmConfig,
    ) -> Result<Vm, StartError> {
        let token = match &cfg.gateway.sidecar_token {
            Some(t) => Some(t.clone()),
            None => match host.env_var(crate::sidecar::SIDECAR_TOKEN_ENV) {
                Some(v) if !v.trim().is_empty() => {
                    Some(Secret::new(crate::sidecar::SIDECAR_TOKEN_ENV, &v)?)
                }
                _ => None,
            },
        };
        let sidecar = cfg.gateway.sidecar_cluster.clone().map(|cluster| {
            Sidecar::new(
                cluster,
                cfg.gateway.sidecar_authority.clone(),
                token.as_ref().map(Secret::expose),
            )
        });
        let mut vm = Vm {
            engine: Engine::new(cfg, tag, seed),
            metrics: MetricsState::default(),
            sidecar,
            loads_dirty: false,
            last_loads_ms: 0,
            holds: Holds::default(),
        };
        for m in &vm_config.models {
            let files = ModelFiles {
                name: m.name.clone(),
                block_size: m.block_size,
                tokenizer_json: m.tokenizer_json.as_bytes().to_vec(),
                tokenizer_config_json: m.tokenizer_config_json.as_bytes().to_vec(),
            };
            vm.load_model(host, "vm-config", &files)?;
        }
        shared::register_vm(host, tag);
        ledger::Ledger::init(host);
        Ok(vm)
    }

    /// How often the host should call [`Vm::on_tick`].
    pub fn tick_period_ms(&self) -> u64 {
        self.engine.cfg.gateway.sync_interval_ms
    }

    fn load_model(
        &mut self,
        host: &dyn Host,
        digest: &str,
        files: &ModelFiles,
    ) -> Result<(), ModelLoadError> {
        let start = Instant::now();
        self.engine.load_model(digest, files)?;
        let ms = start.elapsed().as_millis() as u64;
        host.metric(Metric::ModelLoadMs, MetricOp::Record(ms));
        host.log(
            Level::Info,
            &format!("kvgate: loaded tokenizer of {} in {ms} ms", files.name),
        );
        Ok(())
    }

    /// The periodic work of a VM. Returns what to do to streams held too long.
    pub fn on_tick(&mut self, host: &dyn Host) -> Vec<StreamAction> {
        let now = host.now_ms();
        let actions = self.watchdog(host, now);
        self.sync_tick(host, now);
        actions
    }

    fn watchdog(&mut self, host: &dyn Host, now: u64) -> Vec<StreamAction> {
        let g = &self.engine.cfg.gateway;
        let actions = self
            .holds
            .due(now, g.pause_watchdog_ms, g.request_timeout_ms);
        for a in &actions {
            match a {
                StreamAction::Resume(_) => {
                    host.metric(Metric::WatchdogResumed, MetricOp::Count(1));
                    host.log(
                        Level::Warn,
                        "kvgate: a request held at its headers got no body callback: resumed \
                         unrouted. Envoy needs allow_on_headers_stop_iteration: true on the \
                         Wasm filter for kvgate to route",
                    );
                }
                StreamAction::Reply(_, r) => self.metrics.error(host, r.code),
            }
        }
        actions
    }

    fn sync_tick(&mut self, host: &dyn Host, now: u64) {
        if self.engine.expire(now) {
            self.loads_dirty = true;
        }
        self.engine.follow_predictions(host);
        if self.loads_dirty || now.saturating_sub(self.last_loads_ms) >= LOADS_REFRESH_MS {
            self.publish_loads(host);
        }
        if self.sidecar.is_none() {
            return;
        }
        self.follow_ring(host);
        let missing = self.load_missing_models(host);
        self.metrics.export(host, &self.engine.counters);
        // Every VM sends its own bookkeeping steps (replica sync); no leader needed.
        let outbox = self.engine.take_outbox();
        if let Some(s) = self.sidecar.as_mut() {
            s.send_bookkeeping(host, outbox);
        }
        if !self.poll(host) {
            return;
        }
        for (name, digest) in missing {
            let Some(s) = self.sidecar.as_mut() else {
                return;
            };
            if s.model_in_flight(&name) {
                continue;
            }
            let path = format!(
                "/v1/models/files?name={}&digest={}",
                query_escape(&name),
                query_escape(&digest)
            );
            let pending = Pending::Model { name, digest };
            let _ = s.send(host, "GET", &path, None, pending, MODEL_TIMEOUT_MS);
        }
    }

    /// Writes this VM's bookings into the ledger (other VMs read it per decision) and
    /// moves the in-flight gauges by this VM's change.
    pub fn publish_loads(&mut self, host: &dyn Host) {
        let now = host.now_ms();
        let part = self.engine.ledger_part(now);
        let ((), landed) = ledger::update(host, self.engine.vm, |_| ((), Some(part.clone())));
        if !landed {
            host.metric(Metric::LedgerContended, MetricOp::Count(1));
        }
        self.metrics.in_flight(host, &part.loads);
        self.loads_dirty = false;
        self.last_loads_ms = now;
    }

    /// Applies ring frames this VM has not seen; falls back to the snapshot when behind.
    /// Called on every tick and before every decision (one shared-data read when current),
    /// so a frame the leader VM published is used by every VM's next decision.
    pub fn follow_ring(&mut self, host: &dyn Host) {
        let now = host.now_ms();
        let ring = Ring::sync();
        let head = ring.head(host);
        let mut seq = self.engine.ring_seq;
        if head <= seq {
            return;
        }
        if head - seq > shared::RING {
            seq = self.load_snapshot(host).unwrap_or(seq);
        }
        while seq < head {
            let next = seq + 1;
            let applied = ring
                .read(host, next)
                .map(|f| self.engine.apply_frame_bytes(&f, now));
            match applied {
                Some(Ok(_)) => seq = next,
                _ => match self.load_snapshot(host) {
                    Some(s) if s > seq => seq = s,
                    _ => break,
                },
            }
        }
        self.engine.ring_seq = seq;
        host.metric(
            Metric::IndexBlocks,
            MetricOp::Record(self.engine.index_blocks() as u64),
        );
    }

    fn load_snapshot(&mut self, host: &dyn Host) -> Option<u64> {
        let (seq, frame) = shared::read_snapshot(host)?;
        self.engine.apply_frame_bytes(&frame, host.now_ms()).ok()?;
        Some(seq)
    }

    /// Sends the long poll for the next sync frame from this VM's position, unless one is
    /// in flight, when this VM holds (or takes) the sync lease and is not backing off.
    /// False without the lease.
    fn poll(&mut self, host: &dyn Host) -> bool {
        let now = host.now_ms();
        let Some(s) = self.sidecar.as_mut() else {
            return false;
        };
        if !s.ready(now) || !shared::acquire_lease(host, self.engine.vm, now) {
            return false;
        }
        if !s.sync_in_flight() {
            let (epoch, since) = self.engine.sync_position();
            let wait_ms = self.engine.cfg.gateway.sync_wait_ms;
            // Each VM is its own client of the sidecar: the sidecar keeps per client what
            // it has sent (worker table, loads, models), so a new leader — or another
            // gateway — never waits for a refresh meant for someone else.
            let client = self.engine.vm;
            let path = format!(
                "/v1/sync?epoch={epoch}&since={since}&wait_ms={wait_ms}&client={client:016x}"
            );
            let _ = s.send(host, "GET", &path, None, Pending::Sync, wait_ms + 5_000);
        }
        true
    }

    /// Loads the models whose files are in shared data; returns those still missing.
    fn load_missing_models(&mut self, host: &dyn Host) -> Vec<(String, String)> {
        let mut still_missing = Vec::new();
        for (name, digest) in self.engine.missing_models() {
            let Some((bytes, _)) = host.shared_get(&shared::model_key(&name, &digest)) else {
                still_missing.push((name, digest));
                continue;
            };
            match postcard::from_bytes::<ModelFiles>(&bytes) {
                Ok(files) => {
                    if let Err(e) = self.load_model(host, &digest, &files) {
                        host.log(Level::Error, &format!("kvgate: {e}"));
                    }
                }
                Err(e) => host.log(
                    Level::Error,
                    &format!("kvgate: bad model files for {name}: {e}"),
                ),
            }
        }
        still_missing
    }

    /// The answer to sidecar call `id`.
    pub fn on_response(&mut self, host: &dyn Host, id: CallId, resp: CallResponse<'_>) {
        let Some(s) = self.sidecar.as_mut() else {
            return;
        };
        let Some(pending) = s.take(id) else {
            return;
        };
        // 200 for sync and model files; 204 for accepted bookkeeping.
        if !resp.status.is_some_and(|c| (200..300).contains(&c)) {
            host.log(
                Level::Warn,
                &format!("kvgate: sidecar answered {:?}", resp.status),
            );
            if let Pending::Book(events) = pending {
                s.requeue(events);
            }
            s.failed(host);
            return;
        }
        let now = host.now_ms();
        let mut repoll = false;
        match pending {
            Pending::Sync => {
                // Bring this VM up to the ring head first, so the frame continues our state.
                self.follow_ring(host);
                match self.engine.apply_frame_bytes(resp.body, now) {
                    Ok(_) => {
                        if let Some(s) = self.sidecar.as_mut() {
                            s.succeeded();
                        }
                        repoll = true;
                        if let Some(seq) = Ring::sync().publish(host, resp.body) {
                            self.engine.ring_seq = seq;
                            if seq % SNAPSHOT_EVERY == 1 || resp.body.len() > SNAPSHOT_FRAME_BYTES {
                                shared::publish_snapshot(host, seq, &self.engine.snapshot_frame());
                            }
                        }
                    }
                    Err(e) => {
                        // Out of step with the sidecar: ask for a snapshot next time.
                        host.log(Level::Warn, &format!("kvgate: sync frame refused: {e}"));
                        self.engine.reset_sync();
                    }
                }
                host.metric(
                    Metric::IndexBlocks,
                    MetricOp::Record(self.engine.index_blocks() as u64),
                );
            }
            Pending::Book(_) => {}
            Pending::Model { name, digest } => {
                let _ = host.shared_set(&shared::model_key(&name, &digest), resp.body, None);
                self.load_missing_models(host);
            }
        }
        self.metrics.export(host, &self.engine.counters);
        // After an applied frame the next long poll goes out now, not at the next tick: a
        // KV event arriving in between would otherwise wait for the tick to be delivered.
        // (A refused frame waits for the tick, so a bad sidecar cannot make a busy loop.)
        if repoll {
            self.poll(host);
        }
    }

    /// Decides where stream `ctx`'s request goes: follows the index ring and the other
    /// VMs' predictions, prepares the prompt once, then chooses and books through the
    /// ledger (choosing again if another VM booked meanwhile), and records the metrics.
    pub fn decide(
        &mut self,
        host: &dyn Host,
        ctx: u32,
        path: RoutedPath,
        body: &[u8],
        tenant: Option<&str>,
    ) -> Outcome {
        self.decide_in_session(host, ctx, path, body, tenant, None)
    }

    /// [`Vm::decide`] for a request whose session-affinity token names `session`.
    pub fn decide_in_session(
        &mut self,
        host: &dyn Host,
        ctx: u32,
        path: RoutedPath,
        body: &[u8],
        tenant: Option<&str>,
        session: Option<WorkerKey>,
    ) -> Outcome {
        let now = host.now_ms();
        if self.sidecar.is_some() {
            self.follow_ring(host);
        }
        self.engine.follow_predictions(host);
        let input = DecideInput {
            ctx,
            path,
            body,
            tenant,
            session,
            now_ms: now,
        };
        let outcome = match self.engine.prepare(&input) {
            Err(early) => early.into(),
            Ok(mut prepared) => {
                let engine = &mut self.engine;
                let (chosen, landed) = ledger::update(host, engine.vm, |others| {
                    engine.unbook(ctx);
                    match engine.choose(&mut prepared, others) {
                        Ok(d) => {
                            engine.book(ctx, &d, now);
                            let part = engine.ledger_part(now);
                            (Ok(d), Some(part))
                        }
                        Err(e) => (Err(e), None),
                    }
                });
                if !landed {
                    host.metric(Metric::LedgerContended, MetricOp::Count(1));
                }
                match chosen {
                    Ok(d) => self.engine.commit(&input, prepared, d),
                    Err(e) => self.engine.route_failed(e),
                }
            }
        };
        self.engine.publish_predictions(host);
        self.metrics.export(host, &self.engine.counters);
        match &outcome {
            Outcome::Route(r) => {
                self.metrics.decision(host, r);
                let own = self.engine.own_loads();
                self.metrics.in_flight(host, &own);
                self.last_loads_ms = now;
            }
            Outcome::Reply(r) => self.metrics.error(host, r.code),
            Outcome::Forward(reason) => self.metrics.forwarded(host, *reason),
        }
        outcome
    }

    /// Counts a local error reply made outside a decision (e.g. a body over the limit).
    pub fn count_error(&mut self, host: &dyn Host, code: &'static str) {
        self.metrics.error(host, code);
    }

    /// The response to `ctx` started: its prefill is done.
    pub fn response_started(&mut self, host: &dyn Host, ctx: u32) {
        if self.engine.response_started(ctx) {
            self.publish_loads(host);
        }
    }

    /// A response body chunk of `ctx` (streamed output counting, when enabled).
    pub fn response_chunk(&mut self, host: &dyn Host, ctx: u32, chunk: &[u8]) {
        if self.engine.response_chunk(ctx, chunk) {
            self.publish_loads(host);
        }
    }

    /// Stream `ctx` ended, however it ended: free its booking.
    pub fn request_done(&mut self, host: &dyn Host, ctx: u32) {
        if self.engine.request_done(ctx) {
            self.publish_loads(host);
        }
    }

    /// Bookkeeping steps waiting for the sidecar.
    pub fn bookkeeping_queued(&self) -> usize {
        self.sidecar.as_ref().map_or(0, Sidecar::queued)
    }
}

#[cfg(test)]
mod tests;
