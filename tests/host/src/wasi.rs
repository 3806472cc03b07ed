//! The minimal WASI (`wasi_snapshot_preview1`) subset Envoy provides to proxy-wasm modules:
//! stdout/stderr captured as log lines, environment and arguments empty, clocks from the
//! shared [`TestClock`](super::TestClock), deterministic `random_get`, `proc_exit` as a trap.
//! Any other WASI import traps when called (`define_unknown_imports_as_traps`).

use wasmtime::{Caller, Linker};

use super::memory::{read, write, write_u32, write_u64, HostFail, HostResult};
use super::state::HostState;
use super::types::{LogLevel, LogSource};

/// Import module of WASI preview 1.
pub(crate) const WASI: &str = "wasi_snapshot_preview1";

const ESUCCESS: u32 = 0;
const EBADF: u32 = 8;
const EFAULT: u32 = 21;
const EINVAL: u32 = 28;
const ENOSYS: u32 = 52;

type C<'a> = Caller<'a, HostState>;

/// The guest called `proc_exit`; returned as the trap error of the guest call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest called proc_exit({0})")]
pub struct ProcExit(pub u32);

fn errno(result: HostResult) -> wasmtime::Result<u32> {
    match result {
        Ok(()) => Ok(ESUCCESS),
        Err(HostFail::Status(_)) => Ok(EFAULT),
        Err(HostFail::Trap(e)) => Err(e),
    }
}

/// Defines the WASI functions on `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: u32, iovs: u32, n: u32, ret: u32| fd_write(&mut c, fd, iovs, n, ret),
    )?;
    linker.func_wrap(
        WASI,
        "fd_read",
        |_: C<'_>, _: u32, _: u32, _: u32, _: u32| Ok(ENOSYS),
    )?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut c: C<'_>, fd: u32, ret: u32| {
        if fd != 1 && fd != 2 {
            return Ok(EBADF);
        }
        // filetype/flags 0, rights_base = FD_WRITE (64), rights_inheriting 0 (as Envoy).
        let mut stat = [0u8; 24];
        if let Some(rights) = stat.get_mut(8..16) {
            rights.copy_from_slice(&64u64.to_le_bytes());
        }
        errno(write(&mut c, ret, &stat))
    })?;
    linker.func_wrap(WASI, "fd_prestat_get", |_: C<'_>, _: u32, _: u32| Ok(EBADF))?;
    linker.func_wrap(
        WASI,
        "fd_prestat_dir_name",
        |_: C<'_>, _: u32, _: u32, _: u32| Ok(ENOSYS),
    )?;
    linker.func_wrap(WASI, "environ_get", |_: C<'_>, _: u32, _: u32| Ok(ESUCCESS))?;
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: C<'_>, count: u32, size: u32| {
            errno(write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)))
        },
    )?;
    linker.func_wrap(WASI, "args_get", |_: C<'_>, _: u32, _: u32| Ok(ESUCCESS))?;
    linker.func_wrap(
        WASI,
        "args_sizes_get",
        |mut c: C<'_>, count: u32, size: u32| {
            errno(write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)))
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, id: u32, _prec: u64, ret: u32| {
            let clock = c.data().shared.clock();
            let now = match id {
                0 => clock.now_nanos(),
                1 => clock.monotonic_nanos(),
                _ => return Ok(EINVAL),
            };
            errno(write_u64(&mut c, ret, now))
        },
    )?;
    linker.func_wrap(WASI, "clock_res_get", |mut c: C<'_>, id: u32, ret: u32| {
        if id > 1 {
            return Ok(EINVAL);
        }
        errno(write_u64(&mut c, ret, 1))
    })?;
    linker.func_wrap(WASI, "random_get", |mut c: C<'_>, ptr: u32, len: u32| {
        // Bounds-check (a zero-length read at the end) before allocating the buffer.
        let in_bounds = ptr
            .checked_add(len)
            .is_some_and(|end| read(&c, end, 0).is_ok());
        if !in_bounds {
            return Ok(EFAULT);
        }
        let mut buf = vec![0u8; len as usize];
        c.data_mut().rng.fill(&mut buf);
        errno(write(&mut c, ptr, &buf))
    })?;
    linker.func_wrap(WASI, "sched_yield", |_: C<'_>| Ok(ESUCCESS))?;
    linker.func_wrap(
        WASI,
        "proc_exit",
        |_: C<'_>, code: u32| -> wasmtime::Result<()> { Err(wasmtime::Error::new(ProcExit(code))) },
    )?;
    Ok(())
}

/// Envoy's `writevImpl`: fd 1 logs at info, fd 2 at error, one line per call with a trailing
/// newline removed; other fds are `EBADF`.
fn fd_write(c: &mut C<'_>, fd: u32, iovs: u32, iovs_len: u32, ret: u32) -> wasmtime::Result<u32> {
    let (level, source) = match fd {
        1 => (LogLevel::Info, LogSource::Stdout),
        2 => (LogLevel::Error, LogSource::Stderr),
        _ => return Ok(EBADF),
    };
    let mut text = Vec::new();
    for i in 0..iovs_len {
        let Some(at) = i.checked_mul(8).and_then(|o| iovs.checked_add(o)) else {
            return Ok(EFAULT);
        };
        let Ok(iov) = read(c, at, 8) else {
            return Ok(EFAULT);
        };
        let word = |o: usize| {
            iov.get(o..o + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        let (buf, len) = (word(0), word(4));
        if len > 0 {
            let Ok(bytes) = read(c, buf, len) else {
                return Ok(EFAULT);
            };
            text.extend_from_slice(&bytes);
        }
    }
    let written = u32::try_from(text.len()).unwrap_or(u32::MAX);
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    if written > 0 {
        let message = String::from_utf8_lossy(&text).into_owned();
        c.data_mut().log(level, message, source);
    }
    errno(write_u32(c, ret, written))
}
