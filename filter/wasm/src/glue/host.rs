//! Host capabilities behind small functions: shared data as [`crate::shared::Shared`],
//! the wall clock, and randomness.

use crate::shared::Shared;
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::time::UNIX_EPOCH;

/// Envoy's shared data.
pub struct HostShared;

impl Shared for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        !matches!(
            hostcalls::set_shared_data(key, Some(value), cas),
            Err(Status::CasMismatch) | Err(_)
        )
    }
}

/// Wall clock in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random u64 from the host (WASI `random_get`).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return now_ms().rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
    }
    u64::from_le_bytes(b)
}
