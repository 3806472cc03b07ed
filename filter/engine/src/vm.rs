//! One VM as the proxy runs it: start-up (plugin and VM configuration, models), the tick
//! (expire bookings, publish loads, follow the index ring, poll the sidecar, fetch models,
//! send bookkeeping), the answers to sidecar calls, and the decide / response hooks that
//! streams call. Plain Rust over [`Host`]: every branch is a native test.

use crate::engine::Engine;
use crate::headers::RoutedPath;
use crate::held::{Holds, StreamAction};
use crate::host::{CallId, CallResponse, Host, Level, MetricOp};
use crate::ledger;
use crate::metric::VmRole;
use crate::metrics::{Metric, MetricsState};
use crate::model_wait::ModelWaits;
use crate::models::{ModelFiles, ModelLoadError};
use crate::outcome::Outcome;
use crate::shared::{self, Ring};
use crate::sidecar::{Pending, Sidecar, MODEL_TIMEOUT_MS};
use crate::{DecideInput, Prepared};
use base64::Engine as _;
use kvgate_core::config::{Config, ConfigError, Secret};
use kvgate_core::sync::query_escape;
use kvgate_core::WorkerKey;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::io::Read;
use std::rc::Rc;
use std::time::Instant;

/// Every VM republishes its loads at least this often (a stale record is ignored).
pub const LOADS_REFRESH_MS: u64 = 1_000;

/// The tick period of a static-mode VM that handles no streams.
pub const IDLE_TICK_MS: u64 = 1_000;

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

/// The digest under which a model of the VM configuration is known.
pub const VM_CONFIG_DIGEST: &str = "vm-config";

/// Opens the VM configuration for reading from its start (Envoy keeps it for the VM's
/// life; the glue reads it in chunks, so a VM never holds all of it at once).
pub type ConfigOpener = Rc<dyn Fn() -> Box<dyn Read>>;

/// The VM configuration: model files for static mode (no sidecar). Only the model names
/// and block sizes are kept; a model's files are read again from the configuration when a
/// VM that tokenizes first needs them, so a VM that never handles a request (Envoy's
/// main-thread VMs) never holds or loads them.
#[derive(Default, Clone)]
pub struct VmConfig {
    /// The models listed: (name, block size).
    pub models: Vec<(String, u32)>,
    open: Option<ConfigOpener>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

/// The whole VM configuration, read only to load a model, from one buffer: the file
/// contents borrow from it where they hold no escapes (the packed tokenizer's base64).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullVmConfig<'a> {
    #[serde(default, borrow)]
    models: Vec<VmModel<'a>>,
}

/// A string borrowed from the configuration's bytes, or owned if it had escapes.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Text<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// The VM configuration's listing: the file contents are skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfigListing {
    #[serde(default)]
    models: Vec<ListedModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListedModel {
    name: String,
    #[serde(default = "sixteen")]
    block_size: u32,
    #[allow(dead_code)] // present, skipped unread
    tokenizer_json: Option<IgnoredAny>,
    #[allow(dead_code)]
    tokenizer_packed: Option<IgnoredAny>,
    #[allow(dead_code)]
    tokenizer_config_json: IgnoredAny,
}

/// One model of the VM configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmModel<'a> {
    /// Served model name.
    pub name: String,
    /// Tokens per KV block.
    #[serde(default = "sixteen")]
    pub block_size: u32,
    /// `tokenizer.json` contents (or give `tokenizer_packed`).
    #[serde(default, borrow)]
    pub tokenizer_json: Option<Text<'a>>,
    /// The packed tokenizer (`kvgate-sync vm-config` writes it), base64: a third of the
    /// bytes of `tokenizer.json`, loaded without a JSON tree of the vocabulary.
    #[serde(default, borrow)]
    pub tokenizer_packed: Option<Text<'a>>,
    /// `tokenizer_config.json` contents (with `chat_template`).
    pub tokenizer_config_json: String,
}

fn sixteen() -> u32 {
    16
}

impl VmConfig {
    /// Parses a VM configuration held in memory (tests, `explain`); empty or blank means
    /// none. The bytes are kept to load the models from when needed.
    pub fn parse(raw: &[u8]) -> Result<Self, StartError> {
        let raw: Rc<[u8]> = Rc::from(raw);
        Self::from_reader(Rc::new(move || {
            Box::new(std::io::Cursor::new(raw.clone())) as Box<dyn Read>
        }))
    }

    /// Lists the models of the VM configuration that `open` reads (streamed: the files
    /// are checked for presence and skipped); empty or blank means none.
    pub fn from_reader(open: ConfigOpener) -> Result<Self, StartError> {
        let bad = |e: serde_json::Error| StartError::VmConfig(e.to_string());
        let mut head = [0u8; 1];
        let mut reader = open();
        let blank = loop {
            match reader.read(&mut head) {
                Ok(0) => break true,
                Ok(_) if head[0].is_ascii_whitespace() => continue,
                Ok(_) => break false,
                Err(e) => return Err(StartError::VmConfig(e.to_string())),
            }
        };
        if blank {
            return Ok(VmConfig::default());
        }
        let listing: VmConfigListing =
            serde_json::from_reader(std::io::Cursor::new(head).chain(reader)).map_err(bad)?;
        for m in &listing.models {
            if m.tokenizer_json.is_some() == m.tokenizer_packed.is_some() {
                return Err(StartError::VmConfig(format!(
                    "model {:?}: give exactly one of tokenizer_json and tokenizer_packed",
                    m.name
                )));
            }
        }
        Ok(VmConfig {
            models: listing
                .models
                .into_iter()
                .map(|m| (m.name, m.block_size))
                .collect(),
            open: Some(open),
        })
    }

    /// Reads model `name`'s files from the configuration (`None` if it is not listed).
    pub fn model_files(&self, name: &str) -> Result<Option<ModelFiles>, StartError> {
        let Some(open) = &self.open else {
            return Ok(None);
        };
        // In one piece (the Envoy reader hands over the host's copy, no growing buffer) and
        // parsed from the slice: a reader is parsed byte by byte, about a fifth of a model's
        // whole load, and builds each string twice. Only VMs that tokenize get here.
        let mut raw = Vec::new();
        open()
            .read_to_end(&mut raw)
            .map_err(|e| StartError::VmConfig(e.to_string()))?;
        let full: FullVmConfig =
            serde_json::from_slice(&raw).map_err(|e| StartError::VmConfig(e.to_string()))?;
        let Some(m) = full.models.into_iter().find(|m| m.name == name) else {
            return Ok(None);
        };
        let tokenizer_json = match (m.tokenizer_json, m.tokenizer_packed) {
            (Some(json), None) => json.0.into_owned().into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.0.trim())
                .map_err(|e| {
                    StartError::VmConfig(format!("model {name:?}: tokenizer_packed: {e}"))
                })?,
            _ => {
                return Err(StartError::VmConfig(format!(
                    "model {name:?}: give exactly one of tokenizer_json and tokenizer_packed"
                )))
            }
        };
        Ok(Some(ModelFiles {
            name: m.name,
            block_size: m.block_size,
            tokenizer_json,
            tokenizer_config_json: m.tokenizer_config_json.into_bytes(),
        }))
    }
}

/// One model of a static VM configuration, as [`VmConfig`] reads it: the tokenizer packed
/// (`tokenizer_packed`, base64) when it is a BPE model, else its canonical JSON (else the file
/// as given). `kvgate-sync vm-config` and the test stacks write it.
pub fn vm_config_model(
    name: &str,
    block_size: u32,
    tokenizer_json: &[u8],
    tokenizer_config_json: &str,
) -> serde_json::Value {
    let (key, value) = match kvgate_prompt::pack_tokenizer(tokenizer_json) {
        Ok(p) => (
            "tokenizer_packed",
            base64::engine::general_purpose::STANDARD.encode(p),
        ),
        Err(_) => (
            "tokenizer_json",
            kvgate_prompt::canonical_json(tokenizer_json)
                .unwrap_or_else(|_| String::from_utf8_lossy(tokenizer_json).into_owned()),
        ),
    };
    let mut model = serde_json::Map::new();
    model.insert("name".into(), name.into());
    model.insert("block_size".into(), block_size.into());
    model.insert(key.into(), value.into());
    model.insert("tokenizer_config_json".into(), tokenizer_config_json.into());
    serde_json::Value::Object(model)
}

/// Model files as stored in shared data (postcard [`ModelFiles`]), read in place.
#[derive(Deserialize)]
struct ModelFilesRef<'a> {
    name: &'a str,
    block_size: u32,
    tokenizer_json: &'a [u8],
    tokenizer_config_json: &'a [u8],
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
    /// The VM configuration's models (read when first needed).
    vm_config: VmConfig,
    /// Whether this VM has handled an HTTP stream (it then tokenizes).
    serving: bool,
    /// Models whose files failed to load, by digest (not retried per request).
    failed_models: Vec<(String, String)>,
    /// Streams parked until this VM has their model's tokenizer.
    pub(crate) model_waits: ModelWaits,
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
            vm_config: vm_config.clone(),
            serving: false,
            failed_models: Vec::new(),
            model_waits: ModelWaits::default(),
        };
        for (name, block_size) in &vm_config.models {
            vm.engine.want_model(name, VM_CONFIG_DIGEST, *block_size);
        }
        shared::register_vm(host, tag);
        ledger::Ledger::init(host);
        vm.report_memory(host);
        Ok(vm)
    }

    /// This VM's role for its memory gauge.
    pub fn role(&self) -> VmRole {
        if self.serving {
            VmRole::Tokenizing
        } else {
            VmRole::MainThread
        }
    }

    /// A stream reached this VM: from now on it tokenizes (and loads models when needed).
    pub fn stream_seen(&mut self, host: &dyn Host) {
        if !self.serving {
            self.serving = true;
            if host.linear_memory_bytes().is_some() {
                host.metric(
                    Metric::VmMemory(VmRole::MainThread, self.engine.vm),
                    MetricOp::Record(0),
                );
            }
            self.report_memory(host);
        }
    }

    /// Sets this VM's memory gauge to its linear-memory size (hosts that have one).
    pub fn report_memory(&self, host: &dyn Host) {
        if let Some(bytes) = host.linear_memory_bytes() {
            host.metric(
                Metric::VmMemory(self.role(), self.engine.vm),
                MetricOp::Record(bytes),
            );
        }
    }

    /// Makes sure model `name`'s pipeline is loaded, from the VM configuration or from
    /// shared data, if this VM wants it and has its files. True when it is loaded.
    pub fn ensure_model(&mut self, host: &dyn Host, name: &str) -> bool {
        let Some(state) = self.engine.models.get(name) else {
            return false;
        };
        if state.prompt.is_some() {
            return true;
        }
        let digest = state.digest.clone();
        if self
            .failed_models
            .iter()
            .any(|(n, d)| n == name && *d == digest)
        {
            return false;
        }
        let result = if digest == VM_CONFIG_DIGEST {
            match self.vm_config.model_files(name) {
                Ok(Some(files)) => self
                    .load_model(host, &digest, files)
                    .map_err(|e| e.to_string()),
                Ok(None) => Err(format!("model {name} is not in the VM configuration")),
                Err(e) => Err(e.to_string()),
            }
        } else {
            let Some((bytes, _)) = host.shared_get(&shared::model_key(name, &digest)) else {
                return false;
            };
            self.load_model_bytes(host, &digest, Cow::Owned(bytes))
        };
        self.model_waits.model_done(name);
        match result {
            Ok(()) => true,
            Err(e) => {
                host.log(Level::Error, &format!("kvgate: {e}"));
                self.failed_models.push((name.to_string(), digest));
                false
            }
        }
    }

    /// Loads a model from its postcard [`ModelFiles`], read in place (an owned buffer is
    /// freed once a packed tokenizer is unpacked, before the model is built).
    fn load_model_bytes(
        &mut self,
        host: &dyn Host,
        digest: &str,
        bytes: Cow<'_, [u8]>,
    ) -> Result<(), String> {
        let files: ModelFilesRef<'_> =
            postcard::from_bytes(&bytes).map_err(|e| format!("bad model files: {e}"))?;
        let name = files.name.to_string();
        let block_size = files.block_size;
        let config = files.tokenizer_config_json.to_vec();
        // Where the tokenizer lies in the buffer (postcard borrows it from there).
        let at = (files.tokenizer_json.as_ptr() as usize).wrapping_sub(bytes.as_ptr() as usize);
        let tokenizer = at..at.saturating_add(files.tokenizer_json.len());
        let start = Instant::now();
        self.engine
            .load_model_in(digest, &name, block_size, bytes, tokenizer, &config)
            .map_err(|e| e.to_string())?;
        self.loaded(host, &name, start);
        Ok(())
    }

    fn loaded(&self, host: &dyn Host, name: &str, start: Instant) {
        let ms = start.elapsed().as_millis() as u64;
        host.metric(Metric::ModelLoadMs, MetricOp::Record(ms));
        host.log(
            Level::Info,
            &format!("kvgate: loaded tokenizer of {name} in {ms} ms"),
        );
        self.report_memory(host);
    }

    /// How often the host should call [`Vm::on_tick`] (asked again after each tick): every
    /// `sync_interval_ms`, except in a static-mode VM that has handled no stream (Envoy's
    /// main-thread VMs), whose ticks only report its memory: every [`IDLE_TICK_MS`].
    pub fn tick_period_ms(&self) -> u64 {
        let sync = self.engine.cfg.gateway.sync_interval_ms;
        if self.sidecar.is_none() && !self.serving {
            sync.max(IDLE_TICK_MS)
        } else {
            sync
        }
    }

    /// Loads model files it owns (the tokenizer's bytes are freed as soon as they can be).
    fn load_model(
        &mut self,
        host: &dyn Host,
        digest: &str,
        files: ModelFiles,
    ) -> Result<(), ModelLoadError> {
        let start = Instant::now();
        let ModelFiles {
            name,
            block_size,
            tokenizer_json,
            tokenizer_config_json,
        } = files;
        let tokenizer = 0..tokenizer_json.len();
        self.engine.load_model_in(
            digest,
            &name,
            block_size,
            tokenizer_json,
            tokenizer,
            &tokenizer_config_json,
        )?;
        self.loaded(host, &name, start);
        Ok(())
    }

    /// The periodic work of a VM. Returns what to do to streams held too long.
    pub fn on_tick(&mut self, host: &dyn Host) -> Vec<StreamAction> {
        let now = host.now_ms();
        let mut actions = self.watchdog(host, now);
        self.sync_tick(host, now);
        self.expire_model_waits(host, now);
        actions.extend(self.take_decidable().into_iter().map(StreamAction::Decide));
        self.report_memory(host);
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
                StreamAction::Decide(_) => {}
            }
        }
        actions
    }

    /// Parked streams whose model is now loaded (or gone), or whose wait reached
    /// `model_wait_ms`, become ready to decide (the timed-out ones are counted).
    fn expire_model_waits(&mut self, host: &dyn Host, now: u64) {
        if self.model_waits.is_empty() {
            return;
        }
        for model in self.model_waits.models() {
            let waiting = self.engine.models.get(&model).is_some_and(|m| {
                m.prompt.is_none()
                    && !self
                        .failed_models
                        .iter()
                        .any(|(n, d)| *n == model && *d == m.digest)
            });
            if !waiting {
                self.model_waits.model_done(&model);
            }
        }
        let limit = self.engine.cfg.gateway.model_wait_ms;
        let timed_out = self.model_waits.expire(now, limit);
        if timed_out > 0 {
            host.metric(Metric::ModelWaitTimedOut, MetricOp::Count(timed_out as u64));
            host.log(
                Level::Warn,
                &format!(
                    "kvgate: {timed_out} request(s) waited {limit} ms for the tokenizer: \
                     decided without it (model_wait_ms)"
                ),
            );
        }
    }

    /// Streams to decide now (their wait for the model is over); the glue calls
    /// `Stream::decide` for each. Also part of [`Vm::on_tick`]'s actions.
    pub fn take_decidable(&mut self) -> Vec<u32> {
        self.model_waits.take_ready()
    }

    fn sync_tick(&mut self, host: &dyn Host, now: u64) {
        self.engine.publish_predictions(host);
        if self.engine.expire(now) {
            self.loads_dirty = true;
        }
        // Other VMs' predictions matter only to a VM that decides: a main-thread VM would
        // hold a copy of the approximate index (up to router_max_tree_size entries) for
        // nothing. A VM catches up on its first stream (`decide` follows them too).
        if self.serving {
            self.engine.follow_predictions(host);
        }
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
        self.poll(host);
        // Model files are fetched by the VMs that tokenize (each at most one call per model
        // in flight), never by a main-thread VM: it would hold the files for nothing.
        if !self.serving || !self.sidecar.as_ref().is_some_and(|s| s.ready(now)) {
            return;
        }
        for (name, digest) in missing {
            self.fetch_model(host, name, digest);
        }
    }

    /// Asks the sidecar for a model's files, unless a call for them is in flight.
    fn fetch_model(&mut self, host: &dyn Host, name: String, digest: String) {
        let Some(s) = self.sidecar.as_mut() else {
            return;
        };
        if s.model_in_flight(&name) || !s.ready(host.now_ms()) {
            return;
        }
        let path = format!(
            "/v1/models/files?name={}&digest={}",
            query_escape(&name),
            query_escape(&digest)
        );
        let pending = Pending::Model { name, digest };
        let _ = s.send(host, "GET", &path, None, pending, MODEL_TIMEOUT_MS);
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

    /// In a VM that tokenizes, loads the wanted models whose files are in shared data (or
    /// the VM configuration); returns the sidecar's models still missing from shared data.
    fn load_missing_models(&mut self, host: &dyn Host) -> Vec<(String, String)> {
        let mut still_missing = Vec::new();
        for (name, digest) in self.engine.missing_models() {
            if digest == VM_CONFIG_DIGEST {
                if self.serving {
                    self.ensure_model(host, &name);
                }
                continue;
            }
            if self
                .failed_models
                .iter()
                .any(|(n, d)| *n == name && *d == digest)
            {
                continue;
            }
            if !self.serving {
                continue;
            }
            if !self.ensure_model(host, &name) {
                still_missing.push((name, digest));
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
            match pending {
                Pending::Book(events) => s.requeue(events),
                // Requests waiting for these files are decided now, without them.
                Pending::Model { name, .. } => self.model_waits.model_done(&name),
                Pending::Sync => {}
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
                let stored = host
                    .shared_set(&shared::model_key(&name, &digest), resp.body, None)
                    .is_ok();
                let wanted = self
                    .engine
                    .models
                    .get(&name)
                    .is_some_and(|m| m.digest == digest && m.prompt.is_none());
                // Stored, the files are loaded from shared data when this VM next needs
                // them (its parked requests, decided once the host has let go of this
                // response, or its next tick): from its own copy, which it frees before
                // the model is built, where the host's copy of the response stays to the end.
                if wanted && !stored {
                    if let Err(e) = self.load_model_bytes(host, &digest, Cow::Borrowed(resp.body)) {
                        host.log(Level::Error, &format!("kvgate: {name}: {e}"));
                        self.failed_models.push((name.clone(), digest));
                    }
                }
                self.model_waits.model_done(&name);
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
        let input = self.decide_input(host, ctx, path, body, tenant, session);
        let prepared = match self.prepare_loading(host, &input, false) {
            Some(p) => p,
            None => self.engine.prepare(&input),
        };
        self.finish_decision(host, &input, prepared)
    }

    /// [`Vm::decide_in_session`], except that a request whose model's files this VM is
    /// still fetching from the sidecar is parked (`None`): the VM then lists it in
    /// [`Vm::take_decidable`] / the tick's [`StreamAction::Decide`] once the model is
    /// loaded or `model_wait_ms` has passed, and the glue calls this again for it (a
    /// stream waits once).
    pub fn decide_or_wait(
        &mut self,
        host: &dyn Host,
        ctx: u32,
        path: RoutedPath,
        body: &[u8],
        tenant: Option<&str>,
        session: Option<WorkerKey>,
    ) -> Option<Outcome> {
        let input = self.decide_input(host, ctx, path, body, tenant, session);
        let prepared = self.prepare_loading(host, &input, true)?;
        Some(self.finish_decision(host, &input, prepared))
    }

    fn decide_input<'a>(
        &mut self,
        host: &dyn Host,
        ctx: u32,
        path: RoutedPath,
        body: &'a [u8],
        tenant: Option<&'a str>,
        session: Option<WorkerKey>,
    ) -> DecideInput<'a> {
        if self.sidecar.is_some() {
            self.follow_ring(host);
        }
        self.engine.follow_predictions(host);
        DecideInput {
            ctx,
            path,
            body,
            tenant,
            session,
            now_ms: host.now_ms(),
        }
    }

    /// Prepares the prompt; a model this VM has not loaded yet is loaded now when its
    /// files are at hand (the VM configuration, or shared data), and the prompt prepared
    /// again. Otherwise, with `may_wait`, the request is parked (`None`) while the files
    /// are fetched from the sidecar.
    fn prepare_loading(
        &mut self,
        host: &dyn Host,
        input: &DecideInput<'_>,
        may_wait: bool,
    ) -> Option<Result<Prepared, crate::Early>> {
        let prepared = self.engine.prepare(input);
        let Ok(p) = &prepared else {
            return Some(prepared);
        };
        if p.degraded != Some(crate::Degraded::NoTokenizer) {
            return Some(prepared);
        }
        let model = p.model.clone();
        if self.ensure_model(host, &model) {
            return Some(self.engine.prepare(input));
        }
        if may_wait && self.park_for_model(host, input.ctx, &model) {
            return None;
        }
        Some(prepared)
    }

    /// Parks stream `ctx` until model `name`'s files (from the sidecar) are loaded; false when it may not wait (waiting off, it waited once, no
    /// sidecar, the files are not the sidecar's or failed to load).
    fn park_for_model(&mut self, host: &dyn Host, ctx: u32, name: &str) -> bool {
        if self.engine.cfg.gateway.model_wait_ms == 0
            || self.sidecar.is_none()
            || !self.model_waits.may_wait(ctx)
        {
            return false;
        }
        let Some(digest) = self.engine.models.get(name).map(|m| m.digest.clone()) else {
            return false;
        };
        let failed = self
            .failed_models
            .iter()
            .any(|(n, d)| n == name && *d == digest);
        if digest == VM_CONFIG_DIGEST || failed {
            return false;
        }
        // The files are asked for on the next tick (one `sync_interval_ms` away), from the
        // root context: a call made here, inside the stream's callback, would answer to the
        // stream's context in Envoy, not to the VM.
        self.model_waits.park(ctx, name, host.now_ms());
        host.metric(Metric::ModelWaitParked, MetricOp::Count(1));
        true
    }

    fn finish_decision(
        &mut self,
        host: &dyn Host,
        input: &DecideInput<'_>,
        prepared: Result<Prepared, crate::Early>,
    ) -> Outcome {
        let now = input.now_ms;
        let ctx = input.ctx;
        let outcome = match prepared {
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
                    Ok(d) => self.engine.commit(input, prepared, d),
                    Err(e) => self.engine.route_failed(e),
                }
            }
        };
        let period = self.engine.cfg.gateway.sync_interval_ms;
        self.engine.publish_predictions_if_due(host, now, period);
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

    /// The response to `ctx` started: its prefill is done. The other VMs see it at the
    /// next tick or decision of this VM (no shared-data write on the response path).
    pub fn response_started(&mut self, host: &dyn Host, ctx: u32) {
        if self.engine.response_started(ctx, host.now_ms()) {
            self.loads_dirty = true;
        }
    }

    /// A response body chunk of `ctx` (streamed output counting, when enabled).
    pub fn response_chunk(&mut self, host: &dyn Host, ctx: u32, chunk: &[u8]) {
        if self.engine.response_chunk(ctx, chunk, host.now_ms()) {
            self.loads_dirty = true;
        }
    }

    /// Stream `ctx` ended, however it ended: free its booking (published like
    /// [`Vm::response_started`]).
    pub fn request_done(&mut self, _host: &dyn Host, ctx: u32) {
        if self.engine.request_done(ctx) {
            self.loads_dirty = true;
        }
    }

    /// Bookkeeping steps waiting for the sidecar.
    pub fn bookkeeping_queued(&self) -> usize {
        self.sidecar.as_ref().map_or(0, Sidecar::queued)
    }
}

#[cfg(test)]
mod tests;
