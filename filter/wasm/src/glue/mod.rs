//! proxy-wasm glue: the entry point, the root context (configuration, ticks, sidecar
//! sync) and the HTTP context (request path). It only moves bytes between host calls and
//! [`crate::engine::Engine`]; a panic is logged at critical level (and, with Envoy's
//! `FAIL_RELOAD`, the VM is reloaded).

#![allow(unsafe_code)] // `proxy_wasm::main!` expands to a `#[no_mangle]` export.

mod host;
mod http;
mod metrics;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("kvgate: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::new()) });
}}
