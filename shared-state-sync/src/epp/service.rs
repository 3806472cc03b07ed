//! The gRPC side of the picker: one task per ext_proc stream forwards Envoy's messages to
//! the engine thread in order and tells it when the stream ends, however it ends (the
//! booking is freed then, as the filter frees it at the end of a stream).

use super::metrics::EppMetrics;
use super::Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Answers a stream may have queued (one per message Envoy sent, plus a watchdog reply).
const QUEUE: usize = 64;

/// The ext_proc service.
pub struct Epp {
    tx: Mutex<Sender<Msg>>,
    next: AtomicU32,
    metrics: Arc<EppMetrics>,
}

impl Epp {
    /// A service handing streams to the engine thread on `tx`.
    pub fn new(tx: Sender<Msg>, metrics: Arc<EppMetrics>) -> Self {
        Epp {
            tx: Mutex::new(tx),
            next: AtomicU32::new(1),
            metrics,
        }
    }

    fn sender(&self) -> Result<Sender<Msg>, Status> {
        self.tx
            .lock()
            .map(|t| t.clone())
            .map_err(|_| Status::unavailable("the engine thread stopped"))
    }
}

/// Tells the engine thread that a stream ended when its reading task ends for any reason.
struct EndGuard {
    tx: Sender<Msg>,
    ctx: u32,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::End { ctx: self.ctx });
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Epp {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        // 0 is never used: the engine keys streams by a non-zero context id.
        let mut ctx = self.next.fetch_add(1, Ordering::Relaxed);
        if ctx == 0 {
            ctx = self.next.fetch_add(1, Ordering::Relaxed);
        }
        let tx = self.sender()?;
        let (out, answers) = tokio::sync::mpsc::channel(QUEUE);
        tx.send(Msg::Open { ctx, out })
            .map_err(|_| Status::unavailable("the engine thread stopped"))?;
        self.metrics.streams.inc();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let guard = EndGuard { tx, ctx };
            // Ends on the client's half-close (None), a reset or a transport error.
            while let Ok(Some(req)) = inbound.message().await {
                if guard
                    .tx
                    .send(Msg::Request {
                        ctx,
                        req: Box::new(req),
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(answers)))
    }
}
