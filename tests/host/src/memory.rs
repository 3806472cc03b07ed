//! Bounds-checked access to guest memory and allocation through the guest's
//! `proxy_on_memory_allocate`; every bad pointer becomes `InvalidMemoryAccess`, never a panic.

use wasmtime::Caller;

use super::state::HostState;
use super::types::Status;

/// Outcome of a failed host call: a status for the guest, or a trap to propagate.
pub(crate) enum HostFail {
    /// Returned to the guest as the call's status code.
    Status(Status),
    /// Aborts the guest call (e.g. the guest's allocator trapped).
    Trap(wasmtime::Error),
}

impl From<Status> for HostFail {
    fn from(s: Status) -> Self {
        Self::Status(s)
    }
}

impl From<wasmtime::Error> for HostFail {
    fn from(e: wasmtime::Error) -> Self {
        Self::Trap(e)
    }
}

/// Converts a host call body's result into the ABI return value.
pub(crate) fn status(result: Result<(), HostFail>) -> wasmtime::Result<u32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(HostFail::Status(s)) => Ok(s.code()),
        Err(HostFail::Trap(e)) => Err(e),
    }
}

/// Converts a `Status` into a host call body result.
pub(crate) fn check(s: Status) -> Result<(), HostFail> {
    match s {
        Status::Ok => Ok(()),
        other => Err(HostFail::Status(other)),
    }
}

/// Alias for host call bodies.
pub(crate) type HostResult<T = ()> = Result<T, HostFail>;

/// Reads `len` bytes at `ptr` from guest memory.
pub(crate) fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> HostResult<Vec<u8>> {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    let bytes = memory
        .data(caller)
        .get(start..end)
        .ok_or(Status::InvalidMemoryAccess)?;
    Ok(bytes.to_vec())
}

/// Reads a guest string (lossy UTF-8).
pub(crate) fn read_string(
    caller: &Caller<'_, HostState>,
    ptr: u32,
    len: u32,
) -> HostResult<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

/// Writes bytes at `ptr` in guest memory.
pub(crate) fn write(caller: &mut Caller<'_, HostState>, ptr: u32, data: &[u8]) -> HostResult {
    let memory = caller.data().memory.ok_or(Status::InvalidMemoryAccess)?;
    memory
        .write(caller, ptr as usize, data)
        .map_err(|_| HostFail::Status(Status::InvalidMemoryAccess))
}

/// Writes a little-endian `u32` (a wasm32 word) at `ptr`.
pub(crate) fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Writes a little-endian `u64` at `ptr`.
pub(crate) fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `data` into a fresh guest allocation and stores its address and size at `ptr_ptr`
/// and `size_ptr` (Envoy's `copyToPointerSize`: empty data gives a null pointer, size 0).
pub(crate) fn copy_out(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> HostResult {
    let size = u32::try_from(data.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let mut addr = 0;
    if size > 0 {
        let alloc = caller
            .data()
            .alloc
            .clone()
            .ok_or(Status::InvalidMemoryAccess)?;
        addr = alloc.call(&mut *caller, size)?;
        if addr == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
        write(caller, addr, data)?;
    }
    write_u32(caller, ptr_ptr, addr)?;
    write_u32(caller, size_ptr, size)
}
