//! kvgate-filter: the proxy-wasm HTTP filter — glue only. Each proxy-wasm callback is
//! translated into one call of `kvgate-engine` (which decides everything and is tested
//! natively), and the engine's plain-data answer is applied with host calls. A panic is
//! logged at critical level (with Envoy's `FAIL_RELOAD`, the VM is then reloaded).

#![cfg_attr(target_arch = "wasm32", allow(unsafe_code))] // `proxy_wasm::main!` exports a `#[no_mangle]` fn.

#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod root;

/// The module entry point Envoy calls when it loads the VM.
#[cfg(target_arch = "wasm32")]
mod entry {
    use crate::root::Root;
    use proxy_wasm::types::LogLevel;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        std::panic::set_hook(Box::new(|info| {
            let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("kvgate: panic: {info}"));
        }));
        proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
            Box::new(Root::new(id))
        });
    }}
}
