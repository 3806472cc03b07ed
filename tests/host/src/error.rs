//! Typed errors of the test host, including guest traps (a `panic = "abort"` filter panicking
//! ends in an `unreachable` trap, reported with the panic message the SDK logged).

use std::path::PathBuf;

use super::types::{LogLevel, LogLine};
use super::wasi::ProcExit;

/// Errors of the test host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The wasm file could not be read.
    #[error("cannot read wasm module {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The engine could not be created or the module failed to compile.
    #[error("cannot compile wasm module: {0}")]
    Compile(String),
    /// The module is not a proxy-wasm ABI 0.2.1 module, or an export has a wrong signature.
    #[error("not a usable proxy-wasm 0.2.1 module: {0}")]
    Abi(String),
    /// Linking or instantiation failed (e.g. a non-function import, a start-function trap).
    #[error("cannot instantiate wasm module: {0}")]
    Instantiate(String),
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, unknown import called…).
    /// The VM is dead afterwards.
    #[error("guest trapped in {function}: {trap_code}{}", panic.as_ref().map(|p| format!(" (panic: {p})")).unwrap_or_default())]
    Trap {
        /// The exported function that was running (e.g. `proxy_on_request_headers`).
        function: &'static str,
        /// wasmtime's trap code, when the error is a wasm trap.
        trap: Option<wasmtime::Trap>,
        /// Short description of the trap.
        trap_code: String,
        /// The SDK's panic message (the last critical log line of this call), if any.
        panic: Option<String>,
        /// Full error with the wasm backtrace.
        details: String,
    },
    /// The guest called WASI `proc_exit`. The VM is dead afterwards.
    #[error("guest called proc_exit({code}) in {function}")]
    Exit {
        /// The exported function that was running.
        function: &'static str,
        /// The exit code.
        code: u32,
    },
    /// A call was made on a VM that trapped earlier.
    #[error("the VM is dead after an earlier trap")]
    VmDead,
    /// `proxy_on_vm_start` returned false (Envoy rejects the configuration).
    #[error("proxy_on_vm_start returned false")]
    VmStartRejected {
        /// Everything the VM logged so far.
        logs: Vec<LogLine>,
    },
    /// `proxy_on_configure` returned false (Envoy rejects the configuration).
    #[error("proxy_on_configure returned false")]
    ConfigureRejected {
        /// Everything the VM logged so far.
        logs: Vec<LogLine>,
    },
    /// Queue notifications kept coming while delivering (the filter re-enqueues forever?).
    #[error("still delivering on_queue_ready after {0} notifications")]
    QueueLivelock(usize),
    /// No pending HTTP call has this token.
    #[error("no pending HTTP call with token {0}")]
    UnknownHttpCall(u32),
    /// The stream cannot take this event (e.g. request data after a local response).
    #[error("stream {context_id}: {reason}")]
    Stream {
        /// The stream's context id.
        context_id: u32,
        /// What is wrong.
        reason: &'static str,
    },
}

impl HostError {
    /// Whether this is a guest trap (including a panic).
    pub fn is_trap(&self) -> bool {
        matches!(self, Self::Trap { .. })
    }

    /// The guest's panic message, if the guest panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            Self::Trap { panic, .. } => panic.as_deref(),
            _ => None,
        }
    }

    /// Classifies the error of a guest call; `new_logs` are the lines logged during that call.
    pub(crate) fn from_guest(
        function: &'static str,
        error: &wasmtime::Error,
        new_logs: &[LogLine],
    ) -> Self {
        if let Some(ProcExit(code)) = error.downcast_ref::<ProcExit>() {
            return Self::Exit {
                function,
                code: *code,
            };
        }
        let trap = error.downcast_ref::<wasmtime::Trap>().copied();
        let trap_code = match trap {
            Some(t) => t.to_string(),
            None => format!("{error}"),
        };
        let panic = new_logs
            .iter()
            .rev()
            .find(|l| l.level == LogLevel::Critical)
            .map(|l| l.message.clone());
        Self::Trap {
            function,
            trap,
            trap_code,
            panic,
            details: format!("{error:?}"),
        }
    }
}
