//! One vLLM publisher: a SUB socket on its `--kv-events-config` endpoint and, when it
//! has one, a DEALER on its replay endpoint (replay from sequence 0 at connect, and from
//! the first missing sequence after a gap). Batches are ordered by the [`Sequencer`],
//! converted with `events::vllm::to_kv_events` (event ids counted per dp rank) and
//! applied to the hub.

use super::seq::{Action, Sequencer};
use crate::hub::Hub;
use bytes::Bytes;
use kvgate_core::events::vllm::{
    decode_batch, decode_multipart, decode_replay_reply, replay_request, to_kv_events, ReplayReply,
    VllmSource,
};
use kvgate_core::{DpRank, WorkerKey};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage};

/// A replay that sends nothing for this long is over.
const REPLAY_IDLE: Duration = Duration::from_secs(5);

/// Where one worker publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZmqSpec {
    /// The worker.
    pub worker_id: u64,
    /// The PUB endpoint (`tcp://ip:port`).
    pub events: String,
    /// The replay (ROUTER) endpoint.
    pub replay: Option<String>,
    /// The worker's block size (None: trust each event's).
    pub block_size: Option<u32>,
    /// dp rank of batches that carry none.
    pub dp_start_rank: DpRank,
}

enum Got {
    Live(Result<ZmqMessage, zeromq::ZmqError>),
    Replay(Result<Vec<Bytes>, ()>),
}

struct Stream {
    hub: Arc<Hub>,
    spec: ZmqSpec,
    source: VllmSource,
    max_payload: usize,
    seq: Sequencer,
    event_ids: BTreeMap<DpRank, u64>,
    ranks: BTreeSet<DpRank>,
}

fn options() -> SocketOptions {
    let mut o = SocketOptions::default();
    o.connect_timeout(Duration::from_secs(10));
    o
}

/// Follows one publisher forever (reconnecting with backoff).
pub async fn run(hub: Arc<Hub>, spec: ZmqSpec, max_payload: usize) {
    let source = VllmSource {
        worker_id: spec.worker_id,
        block_size: spec.block_size,
        default_dp_rank: spec.dp_start_rank,
    };
    let mut s = Stream {
        hub,
        spec,
        source,
        max_payload,
        seq: Sequencer::new(),
        event_ids: BTreeMap::new(),
        ranks: BTreeSet::new(),
    };
    let mut attempt = 0;
    loop {
        match s.session().await {
            Ok(()) => attempt = 0,
            Err(e) => {
                tracing::warn!(worker_id = s.spec.worker_id, endpoint = %s.spec.events, "vLLM event stream: {e}");
                attempt += 1;
            }
        }
        tokio::time::sleep(crate::nats::backoff(attempt)).await;
    }
}

impl Stream {
    async fn session(&mut self) -> Result<(), zeromq::ZmqError> {
        let mut sub = SubSocket::with_options(options());
        sub.subscribe("").await?;
        sub.connect(&self.spec.events).await?;
        tracing::info!(worker_id = self.spec.worker_id, endpoint = %self.spec.events, "vLLM event stream connected");
        let mut dealer = match &self.spec.replay {
            None => None,
            Some(ep) => {
                let mut d = DealerSocket::with_options(options());
                match d.connect(ep).await {
                    Ok(()) => Some(d),
                    Err(e) => {
                        tracing::warn!(worker_id = self.spec.worker_id, endpoint = %ep, "no replay socket: {e}");
                        None
                    }
                }
            }
        };
        if let Some(d) = dealer.as_mut() {
            let from = self.seq.next().unwrap_or(0);
            self.request_replay(d, from).await?;
            self.seq.start_replay(from);
        }
        loop {
            let replaying = self.seq.replaying();
            let got = tokio::select! {
                msg = sub.recv() => Got::Live(msg),
                reply = recv_opt(dealer.as_mut()), if replaying => Got::Replay(reply),
            };
            let actions = match got {
                Got::Live(msg) => {
                    let frames = msg?.into_vec();
                    let refs: Vec<&[u8]> = frames.iter().map(|b| b.as_ref()).collect();
                    match decode_multipart(&refs, self.max_payload) {
                        Ok(m) => self.seq.live(m.seq, m.batch, dealer.is_some()),
                        Err(e) => {
                            self.hub.decode_error("zmq", &e);
                            Vec::new()
                        }
                    }
                }
                Got::Replay(Err(())) => self.seq.replay_end(),
                Got::Replay(Ok(frames)) => self.replay_reply(&frames),
            };
            self.act(actions, dealer.as_mut()).await?;
        }
    }

    fn replay_reply(&mut self, frames: &[Bytes]) -> Vec<Action> {
        let refs: Vec<&[u8]> = frames.iter().map(|b| b.as_ref()).collect();
        match decode_replay_reply(&refs) {
            Ok(ReplayReply::End) => self.seq.replay_end(),
            Ok(ReplayReply::Batch { seq, payload }) => {
                match decode_batch(payload, self.max_payload) {
                    Ok(batch) => self.seq.replay_batch(seq, batch),
                    Err(e) => {
                        self.hub.decode_error("zmq", &e);
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                self.hub.decode_error("zmq", &e);
                Vec::new()
            }
        }
    }

    async fn request_replay(
        &self,
        d: &mut DealerSocket,
        from: u64,
    ) -> Result<(), zeromq::ZmqError> {
        self.hub.metrics.zmq_replays.inc();
        let frames = vec![Bytes::new(), Bytes::copy_from_slice(&replay_request(from))];
        let msg = ZmqMessage::try_from(frames)
            .map_err(|_| zeromq::ZmqError::Socket("empty replay request"))?;
        d.send(msg).await
    }

    async fn act(
        &mut self,
        actions: Vec<Action>,
        dealer: Option<&mut DealerSocket>,
    ) -> Result<(), zeromq::ZmqError> {
        let mut dealer = dealer;
        for a in actions {
            match a {
                Action::Apply(batch) => {
                    let rank = batch.data_parallel_rank.unwrap_or(self.spec.dp_start_rank);
                    self.ranks.insert(rank);
                    let next = self.event_ids.entry(rank).or_insert(0);
                    let events = to_kv_events(&batch, &self.source, next);
                    self.hub.apply_kv("zmq", &events);
                }
                Action::Gap { expected, got } => {
                    tracing::warn!(
                        worker_id = self.spec.worker_id,
                        expected,
                        got,
                        "vLLM batches lost: resetting the worker"
                    );
                    for &r in &self.ranks {
                        self.hub
                            .resync_worker("zmq", WorkerKey::new(self.spec.worker_id, r), true);
                    }
                }
                Action::Restart => {
                    tracing::info!(worker_id = self.spec.worker_id, "vLLM publisher restarted");
                    for &r in &self.ranks {
                        self.hub.resync_worker(
                            "zmq",
                            WorkerKey::new(self.spec.worker_id, r),
                            false,
                        );
                    }
                }
                Action::RequestReplay(from) => {
                    if let Some(d) = dealer.as_deref_mut() {
                        self.request_replay(d, from).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The next replay reply, or an error after [`REPLAY_IDLE`] of silence.
async fn recv_opt(dealer: Option<&mut DealerSocket>) -> Result<Vec<Bytes>, ()> {
    match dealer {
        None => Err(()),
        Some(d) => match tokio::time::timeout(REPLAY_IDLE, d.recv()).await {
            Ok(Ok(m)) => Ok(m.into_vec()),
            _ => Err(()),
        },
    }
}
