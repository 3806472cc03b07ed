//! The event path: how fast kvgate-sync ingests KV events, and how long an event takes
//! to show in the filter's decisions.
//!
//! A pretend worker (instance id [`FAKE_WORKER`]) is announced on NATS like a real one,
//! its endpoint an [`Echo`] listener that publishes nothing, so only the events this
//! phase publishes in its name (Dynamo wire format, `kvgate_core::events::dynamo`) ever
//! reach the index for it.
//! * **Ingest**: `events` `Stored` events (`blocks_per_event` blocks each, parent-chained)
//!   are published as fast as the client can; the clock stops when the sidecar's
//!   `kvgate_sync_events_applied_total` has grown by all of them. Events per second per
//!   core = events / the sidecar's CPU seconds (`/proc/<pid>/stat`) over that window
//!   (the sidecar also serves the filter's index deltas meanwhile).
//! * **Visibility lag**: for each sample, a fresh random 4-block prompt; at t0 one
//!   `Stored` event for it is published (and flushed) for the pretend worker; then the
//!   same prompt is sent through Envoy + kvgate by [`LAG_PROBERS`] staggered probers on
//!   new connections (so both Envoy worker threads' VMs answer) until `x-kvgate-decision`
//!   shows the pretend worker holding all 4 blocks; the lag is t0 → the moment that probe
//!   was sent (its decision is made on arrival; a probe that misses is served by a mock
//!   engine for tens of ms, which would otherwise count as lag). Each
//!   sample starts at a random phase of the filter's 20 ms sync tick. Meanwhile the
//!   sidecar's `/v1/state` is polled too, so the lag splits into NATS + JetStream + the
//!   sidecar applying the event (`apply_lag_*`), and the sync to the filter's VMs.

use super::client;
use super::echo::Echo;
use super::stats::{percentile, round};
use super::{poll, sys, BenchConfig, BenchError, Cancel, Fleet, Result};
use bytes::Bytes;
use kvgate_core::events::dynamo::{encode_envelope, kv_events_subject};
use kvgate_core::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use kvgate_core::hash::{local_block_hashes, XXH3_SEED};
use kvgate_core::workers::{announce_subject, WorkerAnnouncement, WorkerInfo, WorkerRole};
use kvgate_core::WorkerKey;
use kvgate_stack::{EnvoyKind, MODEL};
use serde::Serialize;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Instance id of the pretend worker.
pub const FAKE_WORKER: u64 = 900_001;
/// Concurrent probers of each visibility-lag sample.
const LAG_PROBERS: u64 = 6;

/// Blocks of each visibility-lag prompt.
pub const LAG_BLOCKS: usize = 4;

/// Parameters of the sidecar phase.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Events published for the ingest measurement.
    pub events: usize,
    /// Blocks per `Stored` event.
    pub blocks_per_event: usize,
    /// Visibility-lag samples.
    pub lag_samples: usize,
    /// Give up on one sample after this long.
    pub lag_timeout_ms: u64,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            events: 20_000,
            blocks_per_event: 4,
            lag_samples: 100,
            lag_timeout_ms: 2_000,
        }
    }
}

/// The sidecar phase's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SidecarReport {
    /// Events published.
    pub events: usize,
    /// Blocks per event.
    pub blocks_per_event: usize,
    /// Seconds the client took to publish them.
    pub publish_s: f64,
    /// Seconds from the first publish until the sidecar had applied all.
    pub ingest_wall_s: f64,
    /// Events applied per wall second.
    pub events_per_s: f64,
    /// The sidecar's CPU seconds over the ingest window.
    pub sidecar_cpu_s: f64,
    /// Events applied per CPU second of the sidecar: per core.
    pub events_per_s_per_core: f64,
    /// Visibility-lag samples taken.
    pub lag_samples: usize,
    /// Samples not visible within the timeout.
    pub lag_timeouts: usize,
    /// Event → decision lag, median, ms.
    pub lag_p50_ms: f64,
    /// 90th percentile, ms.
    pub lag_p90_ms: f64,
    /// 99th percentile, ms.
    pub lag_p99_ms: f64,
    /// Largest, ms.
    pub lag_max_ms: f64,
    /// Event → the sidecar's index has applied it (its `/v1/state`), median, ms.
    pub apply_lag_p50_ms: f64,
    /// Event → applied by the sidecar, 99th percentile, ms.
    pub apply_lag_p99_ms: f64,
    /// Decision polls per sample, mean.
    pub polls_per_sample: f64,
    /// The goal for `lag_p99_ms`.
    pub lag_target_p99_ms: f64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publishes the pretend worker's KV events in order.
struct Publisher {
    nats: async_nats::Client,
    subject: String,
    publisher_id: u64,
    sequence: u64,
    event_id: u64,
}

impl Publisher {
    async fn publish(&mut self, data: KvEventData) -> Result<()> {
        self.event_id += 1;
        let ev = KvEvent {
            worker: WorkerKey::new(FAKE_WORKER, 0),
            event_id: self.event_id,
            tier: StorageTier::Device,
            data,
        };
        let bytes = encode_envelope(self.publisher_id, self.sequence, unix_ms(), &ev);
        self.sequence += 1;
        self.nats
            .publish(self.subject.clone(), Bytes::from(bytes))
            .await
            .map_err(|e| BenchError::Nats(e.to_string()))
    }

    async fn flush(&self) -> Result<()> {
        self.nats
            .flush()
            .await
            .map_err(|e| BenchError::Nats(e.to_string()))
    }
}

fn stored(tokens: &[u32], parent: Option<u64>) -> (KvEventData, Vec<u64>) {
    let local = local_block_hashes(tokens, 16, XXH3_SEED, usize::MAX);
    let seq = kvgate_core::hash::sequence_hashes_from(parent, &local);
    let blocks = seq
        .iter()
        .zip(&local)
        .map(|(&external, &tokens_hash)| StoredBlock {
            external,
            tokens_hash,
        })
        .collect();
    (KvEventData::Stored { parent, blocks }, seq)
}

fn random_tokens(rng: &mut fastrand::Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| rng.u32(0..150_000)).collect()
}

fn applied(fleet: &Fleet) -> f64 {
    kvgate_http::get(&fleet.sidecar.url("/metrics"))
        .map(|r| client::prom_sum(&r.text(), "kvgate_sync_events_applied_total"))
        .unwrap_or(0.0)
}

/// Runs the sidecar phase.
pub fn run(
    cfg: &BenchConfig,
    fleet: &Fleet,
    rt: &tokio::runtime::Runtime,
    cancel: &Cancel,
) -> Result<SidecarReport> {
    let sc = &cfg.sidecar;
    let echo = Echo::start(1)?;
    let endpoint = echo
        .endpoints
        .first()
        .cloned()
        .ok_or_else(|| BenchError::Failed("echo listener".into()))?;
    let nats = rt
        .block_on(async_nats::connect(fleet.nats.url()))
        .map_err(|e| BenchError::Nats(e.to_string()))?;
    let info = WorkerInfo {
        instance_id: FAKE_WORKER,
        endpoint: endpoint.clone(),
        model: MODEL.to_string(),
        role: WorkerRole::Aggregated,
        block_size: Some(16),
        dp_size: 1,
        dp_start_rank: 0,
        total_kv_blocks: Some(1 << 20),
        max_num_seqs: Some(256),
        max_num_batched_tokens: Some(8192),
        zmq_events: None,
        zmq_replay: None,
        lora_adapters: Vec::new(),
    };
    let announce = |leaving: bool| -> Result<Bytes> {
        Ok(Bytes::from(serde_json::to_vec(&WorkerAnnouncement {
            worker: info.clone(),
            lease_ms: 3000,
            leaving,
        })?))
    };
    let alive = announce(false)?;
    let announcer = {
        let nats = nats.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000));
            loop {
                tick.tick().await;
                let _ = nats
                    .publish(announce_subject("dynamo"), alive.clone())
                    .await;
            }
        })
    };
    let mut pub_ = Publisher {
        nats: nats.clone(),
        subject: kv_events_subject("dynamo", "backend"),
        publisher_id: 0x5eed_0000_0001,
        sequence: 0,
        event_id: 0,
    };
    let result = (|| -> Result<SidecarReport> {
        let mut endpoints = fleet.endpoints();
        endpoints.push(endpoint.clone());
        let envoy = fleet.envoy(
            EnvoyKind::Kvgate,
            json!({"decision_header": true, "use_kv_events": true}),
            endpoints,
            cfg.envoy_concurrency,
            "envoy-sidecar-phase",
        )?;
        super::quality::wait_filter_ready(&envoy, fleet.workers.len() + 1, cancel)?;
        let mut report = SidecarReport {
            events: sc.events,
            blocks_per_event: sc.blocks_per_event,
            lag_target_p99_ms: 50.0,
            ..SidecarReport::default()
        };
        let pb = if cfg.progress {
            let b = indicatif::ProgressBar::new((sc.events + sc.lag_samples) as u64);
            if let Ok(s) = indicatif::ProgressStyle::with_template(
                "{prefix:>14} [{bar:32}] {pos}/{len} {msg} ({elapsed})",
            ) {
                b.set_style(s.progress_chars("=> "));
            }
            b.set_prefix("sidecar");
            b
        } else {
            indicatif::ProgressBar::hidden()
        };

        // Ingest.
        let ticks = sys::clock_ticks();
        let pid = fleet.sidecar.proc.pid().unwrap_or(0);
        let mut rng = fastrand::Rng::with_seed(cfg.seed ^ 0x51de);
        let per = sc.blocks_per_event.max(1) * 16;
        let events: Vec<KvEventData> = {
            let mut out = Vec::with_capacity(sc.events);
            let mut parent = None;
            for i in 0..sc.events {
                if i % 16 == 0 {
                    parent = None;
                }
                let (ev, seq) = stored(&random_tokens(&mut rng, per), parent);
                parent = seq.last().copied();
                out.push(ev);
            }
            out
        };
        pb.set_message("ingest");
        let before = applied(fleet);
        let cpu0 = sys::cpu_seconds(pid, ticks).unwrap_or(0.0);
        let t0 = Instant::now();
        rt.block_on(async {
            for (i, ev) in events.into_iter().enumerate() {
                pub_.publish(ev).await?;
                if i % 1000 == 999 {
                    pb.inc(1000);
                }
            }
            pub_.flush().await
        })?;
        report.publish_s = round(t0.elapsed().as_secs_f64(), 3);
        let target = before + sc.events as f64;
        let done = poll(
            cancel,
            Duration::from_secs(180),
            Duration::from_millis(10),
            || (applied(fleet) >= target).then(Instant::now),
        );
        cancel.check()?;
        let done = done.ok_or_else(|| {
            BenchError::Failed(format!(
                "the sidecar applied {} of {} events within 180 s",
                applied(fleet) - before,
                sc.events
            ))
        })?;
        let cpu = sys::cpu_seconds(pid, ticks).unwrap_or(0.0) - cpu0;
        let wall = done.duration_since(t0).as_secs_f64();
        report.ingest_wall_s = round(wall, 3);
        report.events_per_s = round(sc.events as f64 / wall.max(1e-9), 0);
        report.sidecar_cpu_s = round(cpu, 3);
        report.events_per_s_per_core = round(sc.events as f64 / cpu.max(1e-3), 0);
        pb.set_position(sc.events as u64);
        rt.block_on(async {
            pub_.publish(KvEventData::Cleared).await?;
            pub_.flush().await
        })?;
        std::thread::sleep(Duration::from_millis(500));

        // Visibility lag.
        pb.set_message("visibility lag");
        let http = client::client(false)?;
        let url = envoy.url("/v1/completions");
        let state_http = client::client(true)?;
        let mut lags = Vec::new();
        let mut applied_lags = Vec::new();
        let mut polls_total = 0usize;
        for _ in 0..sc.lag_samples {
            cancel.check()?;
            std::thread::sleep(Duration::from_millis(20 + rng.u64(0..25)));
            let tokens = random_tokens(&mut rng, LAG_BLOCKS * 16);
            let (ev, seq) = stored(&tokens, None);
            let body =
                serde_json::to_vec(&json!({"model": MODEL, "prompt": tokens, "max_tokens": 1}))?;
            let timeout = Duration::from_millis(sc.lag_timeout_ms);
            let state_url = fleet.sidecar.url("/v1/state");
            let (lag, applied_lag, polls) = rt.block_on(async {
                let t0 = Instant::now();
                pub_.publish(ev).await?;
                pub_.flush().await?;
                let id = pub_.event_id;
                // The sidecar's side: its index has applied the event.
                let applied = async {
                    while t0.elapsed() < timeout {
                        if let Ok(v) = client::get_json(&state_http, &state_url).await {
                            let seen = v
                                .pointer("/index/by_worker")
                                .and_then(serde_json::Value::as_array)
                                .into_iter()
                                .flatten()
                                .any(|w| {
                                    w["worker_id"] == FAKE_WORKER
                                        && w["last_event_id"].as_u64().is_some_and(|e| e >= id)
                                });
                            if seen {
                                return Some(t0.elapsed());
                            }
                        }
                        tokio::time::sleep(Duration::from_micros(500)).await;
                    }
                    None
                };
                // The filter's side: a decision shows the blocks on the pretend worker. Probes
                // that miss are served by a mock engine (tens of ms), so several probers run
                // staggered, and the lag is taken at the send time of the first probe whose
                // decision shows the blocks (the decision is made as the request arrives),
                // not at its response.
                let polls = std::cell::Cell::new(0usize);
                let probe = |stagger: u64| {
                    let (http, url, body, polls) = (&http, &url, &body, &polls);
                    Box::pin(async move {
                        tokio::time::sleep(Duration::from_micros(stagger)).await;
                        while t0.elapsed() < timeout {
                            polls.set(polls.get() + 1);
                            let sent = t0.elapsed();
                            let o = client::post(http, url, &[], body.clone(), false, || {}).await;
                            let seen = o
                                .decision
                                .as_deref()
                                .and_then(|d| client::decision_overlap(d, FAKE_WORKER))
                                .is_some_and(|ov| ov as usize >= LAG_BLOCKS);
                            if seen {
                                return Some(sent);
                            }
                            tokio::time::sleep(Duration::from_micros(500)).await;
                        }
                        None
                    })
                };
                let decided = async {
                    let probers = (0..LAG_PROBERS).map(|k| probe(k * 1_000 / LAG_PROBERS));
                    let (d, _, _) = futures::future::select_all(probers).await;
                    (d, polls.get())
                };
                let (a, (d, polls)) = tokio::join!(applied, decided);
                Ok::<_, BenchError>((d, a, polls))
            })?;
            polls_total += polls;
            if let Some(a) = applied_lag {
                applied_lags.push(a.as_secs_f64() * 1000.0);
            }
            match lag {
                Some(l) => lags.push(l.as_secs_f64() * 1000.0),
                None => report.lag_timeouts += 1,
            }
            rt.block_on(async {
                pub_.publish(KvEventData::Removed { blocks: seq }).await?;
                pub_.flush().await
            })?;
            pb.inc(1);
        }
        pb.finish_with_message("done");
        report.lag_samples = sc.lag_samples;
        report.lag_p50_ms = round(percentile(&lags, 50.0), 2);
        report.lag_p90_ms = round(percentile(&lags, 90.0), 2);
        report.lag_p99_ms = round(percentile(&lags, 99.0), 2);
        report.lag_max_ms = round(lags.iter().copied().fold(0.0, f64::max), 2);
        report.apply_lag_p50_ms = round(percentile(&applied_lags, 50.0), 2);
        report.apply_lag_p99_ms = round(percentile(&applied_lags, 99.0), 2);
        report.polls_per_sample = round(polls_total as f64 / sc.lag_samples.max(1) as f64, 1);
        drop(envoy);
        Ok(report)
    })();
    announcer.abort();
    let _ = rt.block_on(async {
        if let Ok(leaving) = announce(true) {
            let _ = nats.publish(announce_subject("dynamo"), leaving).await;
        }
        let _ = pub_.publish(KvEventData::Cleared).await;
        nats.flush().await
    });
    drop(echo);
    result
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
    use kvgate_core::hash::sequence_hashes;

    #[test]
    fn stored_events_chain_like_the_engines() {
        let tokens: Vec<u32> = (0..64).collect();
        let (ev, seq) = stored(&tokens, None);
        let local = local_block_hashes(&tokens, 16, XXH3_SEED, usize::MAX);
        assert_eq!(seq, sequence_hashes(&local));
        let KvEventData::Stored { parent, blocks } = ev else {
            panic!("not stored")
        };
        assert_eq!(parent, None);
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[3].external, seq[3]);
        let (_, more) = stored(&tokens[..16], Some(seq[3]));
        assert_eq!(more[0], kvgate_core::hash::chain(seq[3], local[0]));
    }
}
