//! Tooling for the reliability tests (hostile requests, fault injection, aborts,
//! security, soak) and the `kvgate-soak` binary: a steady-load driver that records every
//! request, through the raw client (`kvgate_http::raw`) so a request can stop half-way
//! ([`load`]), readers of the stack's observable state — decisions, sidecar index and
//! bookkeeping, worker caches, process memory ([`observe`]) — a markdown table printer
//! ([`report`]) and the soak run shared by the short test and `kvgate-soak` ([`soak`]).

// Test support reads JSON documents with `value["key"]`, which yields Null instead of
// panicking on reads; slices are bounds-checked by construction here.
#![allow(clippy::indexing_slicing)]

pub mod load;
pub mod observe;
pub mod report;
pub mod soak;
