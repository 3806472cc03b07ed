//! The mock engine behind `mock-worker`: a simulated OpenAI-compatible LLM server that
//! behaves, for routing purposes, like a real engine (vLLM under Dynamo) on one GPU,
//! in the spirit of Dynamo's mocker — no GPU, no model weights.
//!
//! ```text
//! HTTP (axum) ── parse + tokenize ──► Engine ── one task per dp rank ──► Scheduler ──► BlockCache
//!   /v1/chat/completions   request      │  (scaled real time)            (passes in        (paged prefix cache,
//!   /v1/completions        serve        │                                 simulated time)   LRU, refcounts)
//!   /kvgate/{cache,stats,clear,prefill} ▼                                                      │ KvEventData
//!                                    EventStamper (ids 1, 2, …; fault injection) ──► EventSink ┘
//!                                                                     NATS (Dynamo envelope) / memory
//! ```
//!
//! * [`cache`]: physical blocks identified by chained sequence hashes
//!   (`kvgate_core::hash`), reference-counted while used, LRU-evicted when space is
//!   needed; `Stored` / `Removed` / `Cleared` exactly when the set of cached hashes changes.
//! * [`scheduler`]: continuous batching with chunked prefill, FIFO waiting queue,
//!   preemption, and Dynamo mocker's time model ([`timing`]): a pass lasts
//!   `prefill_ms(uncached tokens) + decode_ms(KV usage)`.
//! * [`engine`]: runs passes in real time divided by `--speedup`, streams one token per
//!   pass per running sequence, publishes events at the end of each pass.
//! * [`http`], [`serve`]: OpenAI endpoints (SSE streaming and whole responses),
//!   introspection, remote prefill for disaggregated decode ([`disagg`]), the request log
//!   ([`reqlog`]).
//! * [`tokenize`], [`hf`]: prompt tokens from `nvext.token_data`, else the model's chat
//!   template and tokenizer (`kvgate-prompt`), else a deterministic stand-in.
//! * [`nats`]: KV events and load on the Dynamo event plane (encoded by
//!   `kvgate_core::events`), announcements
//!   and peer discovery; [`zmq`]: optionally vLLM's native ZMQ event stream too.
//!
//! Defaults ("roughly a small model on one GPU", as Dynamo's mocker): block size 16,
//! 16,384 KV blocks per rank, 256 running sequences, 8,192 batched tokens per pass,
//! watermark 1 %, 16 output tokens unless the request asks otherwise, speedup 1.

// Test support reads JSON documents with `value["key"]`, which yields Null instead of
// panicking on reads; slices are bounds-checked by construction here.
#![allow(clippy::indexing_slicing)]

pub mod cache;
pub mod config;
pub mod disagg;
pub mod engine;
pub mod events;
pub mod hf;
pub mod http;
pub mod nats;
pub mod openai;
pub mod reqlog;
pub mod request;
pub mod scheduler;
pub mod sequence;
pub mod serve;
pub mod timing;
pub mod tokenize;
pub mod worker;
pub mod zmq;

pub use config::{MockArgs, Role};
pub use events::{EventSink, Faults, RecordingSink};
pub use worker::{run, MockError, MockWorker};

#[cfg(test)]
mod server_tests;
