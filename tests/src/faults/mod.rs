//! Tooling for the reliability tests (hostile requests, fault injection, aborts,
//! security, soak): a raw HTTP/1.1 client that can stop half-way ([`client`]), a
//! steady-load driver that records every request ([`load`]), readers of the stack's
//! observable state — decisions, sidecar index and bookkeeping, worker caches, process
//! memory ([`observe`]) — a markdown table printer ([`report`]) and the soak run shared by
//! the short test and the `kvgate-soak` binary ([`soak`]).

pub mod client;
pub mod load;
pub mod observe;
pub mod report;
pub mod soak;
