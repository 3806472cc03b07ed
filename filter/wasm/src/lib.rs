//! kvgate-filter: the proxy-wasm HTTP filter. It parses each OpenAI request, renders the
//! chat template, tokenizes, block-hashes, scores workers from the KV index and sets the
//! routing headers and the `x-gateway-destination-endpoint` that Envoy's override_host
//! policy honours.
//!
//! The proxy-wasm glue ([`glue`], wasm32 only) only moves bytes between host calls and the
//! logic here and in `kvgate-core` / `kvgate-prompt`, which is tested natively.

pub mod body;
pub mod engine;
pub mod headers;
pub mod shared;

#[cfg(target_arch = "wasm32")]
mod glue;
