//! The process-wide wasmtime `Engine` and a cache of compiled filter modules keyed by the wasm
//! bytes' hash, so that every test in a process shares one compilation (a 4 MB module takes
//! seconds to compile).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstancePre, Linker, Module};

use super::error::HostError;
use super::state::HostState;
use super::{abi, abi_data, wasi};

/// Export that marks a proxy-wasm ABI 0.2.1 module.
const ABI_MARKER: &str = "proxy_abi_version_0_2_1";

/// The shared engine (default Cranelift settings).
pub fn engine() -> Result<&'static Engine, HostError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(&Config::new()).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| HostError::Compile(e.clone()))
}

/// A compiled, linked proxy-wasm module, ready to be instantiated by [`Vm`](super::Vm)s.
/// Cheap to clone; obtain it with [`FilterModule::load`], which compiles each distinct wasm
/// file once per process.
#[derive(Clone)]
pub struct FilterModule {
    inner: Arc<Inner>,
}

struct Inner {
    path: Option<PathBuf>,
    size: usize,
    compile_time: Duration,
    pre: InstancePre<HostState>,
}

impl std::fmt::Debug for FilterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterModule")
            .field("path", &self.inner.path)
            .field("size", &self.inner.size)
            .field("compile_time", &self.inner.compile_time)
            .finish()
    }
}

fn cache() -> &'static Mutex<HashMap<(u64, usize), FilterModule>> {
    static CACHE: OnceLock<Mutex<HashMap<(u64, usize), FilterModule>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

impl FilterModule {
    /// Loads and compiles a `.wasm` file, or returns the module compiled earlier in this process
    /// from identical bytes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| HostError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::compile_cached(&bytes, Some(path.to_owned()))
    }

    /// Like [`load`](Self::load), from bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HostError> {
        Self::compile_cached(bytes, None)
    }

    fn compile_cached(bytes: &[u8], path: Option<PathBuf>) -> Result<Self, HostError> {
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let key = (hasher.finish(), bytes.len());
        // Held while compiling: concurrent tests wait for the one compilation.
        let mut cache = cache().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = cache.get(&key) {
            return Ok(module.clone());
        }
        let module = Self::compile(bytes, path)?;
        cache.insert(key, module.clone());
        Ok(module)
    }

    fn compile(bytes: &[u8], path: Option<PathBuf>) -> Result<Self, HostError> {
        let engine = engine()?;
        let started = Instant::now();
        let module =
            Module::new(engine, bytes).map_err(|e| HostError::Compile(format!("{e:#}")))?;
        let compile_time = started.elapsed();
        if module.get_export(ABI_MARKER).is_none() {
            return Err(HostError::Abi(format!("missing export {ABI_MARKER}")));
        }
        if module.get_export("memory").is_none() {
            return Err(HostError::Abi("missing export memory".into()));
        }
        let mut linker = Linker::new(engine);
        let link = |linker: &mut Linker<HostState>| -> wasmtime::Result<InstancePre<HostState>> {
            abi::add_to_linker(linker)?;
            abi_data::add_to_linker(linker)?;
            wasi::add_to_linker(linker)?;
            linker.define_unknown_imports_as_traps(&module)?;
            linker.instantiate_pre(&module)
        };
        let pre = link(&mut linker).map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                size: bytes.len(),
                compile_time,
                pre,
            }),
        })
    }

    /// The file the module was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Size of the wasm bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// How long compiling took (when it was compiled, not when it came from the cache).
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }

    pub(crate) fn pre(&self) -> &InstancePre<HostState> {
        &self.inner.pre
    }
}
