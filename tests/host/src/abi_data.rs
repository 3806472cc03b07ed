//! Host functions for data: buffers, header maps, shared data, shared queues, HTTP calls and
//! the (unsupported) gRPC calls. Semantics and status codes follow Envoy.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::abi::ENV;
use super::codec::{decode_pairs, HeaderMap};
use super::memory::{check, copy_out, read, read_string, status, write_u32, HostResult};
use super::state::{HostState, ROOT_CONTEXT_ID};
use super::types::{BufferType, HttpCall, LogLevel, LogSource, MapType, Status};

type C<'a> = Caller<'a, HostState>;

/// Defines the host functions of this file on `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_get_buffer_bytes",
        |mut c: C<'_>, ty: u32, start: u32, max: u32, pp: u32, sp: u32| {
            status(get_buffer_bytes(&mut c, ty, start, max, pp, sp))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_buffer_bytes",
        |mut c: C<'_>, ty: u32, start: u32, size: u32, p: u32, n: u32| {
            status(set_buffer_bytes(&mut c, ty, start, size, p, n))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, ty: u32, pp: u32, sp: u32| status(get_map_pairs(&mut c, ty, pp, sp)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, ty: u32, p: u32, n: u32| status(set_map_pairs(&mut c, ty, p, n)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_header_map_value",
        |mut c: C<'_>, ty: u32, k: u32, kn: u32, pp: u32, sp: u32| {
            status(get_map_value(&mut c, ty, (k, kn), pp, sp))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_add_header_map_value",
        |mut c: C<'_>, ty: u32, k: u32, kn: u32, v: u32, vn: u32| {
            status(modify_map(&mut c, ty, (k, kn), Some((v, vn)), Edit::Add))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_replace_header_map_value",
        |mut c: C<'_>, ty: u32, k: u32, kn: u32, v: u32, vn: u32| {
            status(modify_map(
                &mut c,
                ty,
                (k, kn),
                Some((v, vn)),
                Edit::Replace,
            ))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, ty: u32, k: u32, kn: u32| {
            status(modify_map(&mut c, ty, (k, kn), None, Edit::Remove))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_shared_data",
        |mut c: C<'_>, k: u32, kn: u32, pp: u32, sp: u32, cas: u32| {
            status(get_shared_data(&mut c, (k, kn), pp, sp, cas))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_shared_data",
        |mut c: C<'_>, k: u32, kn: u32, v: u32, vn: u32, cas: u32| {
            status(set_shared_data(&mut c, (k, kn), (v, vn), cas))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_register_shared_queue",
        |mut c: C<'_>, p: u32, n: u32, ret: u32| status(register_queue(&mut c, p, n, ret)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, v: u32, vn: u32, p: u32, n: u32, ret: u32| {
            status(resolve_queue(&mut c, (v, vn), (p, n), ret))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, id: u32, pp: u32, sp: u32| status(dequeue(&mut c, id, pp, sp)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_enqueue_shared_queue",
        |mut c: C<'_>, id: u32, p: u32, n: u32| status(enqueue(&mut c, id, p, n)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_http_call",
        |mut c: C<'_>,
         u: u32,
         un: u32,
         h: u32,
         hn: u32,
         b: u32,
         bn: u32,
         t: u32,
         tn: u32,
         timeout: u32,
         ret: u32| {
            status(http_call(
                &mut c,
                [(u, un), (h, hn), (b, bn), (t, tn)],
                timeout,
                ret,
            ))
        },
    )?;
    add_grpc_stubs(linker)
}

/// gRPC is not supported: calls fail the way the SDK handles gracefully.
fn add_grpc_stubs(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_grpc_call",
        |mut c: C<'_>,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32,
         _: u32| { unsupported(&mut c, "proxy_grpc_call") },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_stream",
        |mut c: C<'_>, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32, _: u32| {
            unsupported(&mut c, "proxy_grpc_stream")
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_grpc_send",
        |_: C<'_>, _: u32, _: u32, _: u32, _: u32| Ok(Status::NotFound.code()),
    )?;
    linker.func_wrap(ENV, "proxy_grpc_cancel", |_: C<'_>, _: u32| {
        Ok(Status::NotFound.code())
    })?;
    linker.func_wrap(ENV, "proxy_grpc_close", |_: C<'_>, _: u32| {
        Ok(Status::NotFound.code())
    })?;
    Ok(())
}

fn unsupported(c: &mut C<'_>, what: &str) -> wasmtime::Result<u32> {
    let note = format!("{what}: gRPC is not supported by the test host");
    c.data_mut().log(LogLevel::Warn, note, LogSource::Host);
    Ok(Status::InternalFailure.code())
}

fn buffer_type(ty: u32) -> Result<BufferType, Status> {
    BufferType::from_u32(ty).ok_or(Status::BadArgument)
}

fn map_type(ty: u32) -> Result<MapType, Status> {
    MapType::from_u32(ty).ok_or(Status::BadArgument)
}

/// Envoy (current proxy-wasm-cpp-host): overflow is `BadArgument`, reads are clamped to the
/// buffer, an empty result is a null pointer with size 0.
fn get_buffer_bytes(c: &mut C<'_>, ty: u32, start: u32, max: u32, pp: u32, sp: u32) -> HostResult {
    let ty = buffer_type(ty)?;
    start.checked_add(max).ok_or(Status::BadArgument)?;
    let data = {
        let buffer = c.data().buffer_for_read(ty)?;
        let start = (start as usize).min(buffer.len());
        let end = start.saturating_add(max as usize).min(buffer.len());
        buffer.get(start..end).unwrap_or_default().to_vec()
    };
    copy_out(c, &data, pp, sp)
}

fn set_buffer_bytes(c: &mut C<'_>, ty: u32, start: u32, size: u32, p: u32, n: u32) -> HostResult {
    let ty = buffer_type(ty)?;
    let data = read(c, p, n)?;
    check(
        c.data_mut()
            .buffer_write(ty, start as usize, size as usize, &data),
    )
}

/// A missing map reads as empty (Envoy `getHeaderMapPairs` always succeeds).
fn get_map_pairs(c: &mut C<'_>, ty: u32, pp: u32, sp: u32) -> HostResult {
    let ty = map_type(ty)?;
    let encoded = match c.data().map_for_read(ty) {
        Some(map) if !map.is_empty() => map.encode(),
        _ => Vec::new(),
    };
    copy_out(c, &encoded, pp, sp)
}

fn set_map_pairs(c: &mut C<'_>, ty: u32, p: u32, n: u32) -> HostResult {
    let ty = map_type(ty)?;
    let raw = read(c, p, n)?;
    let pairs = decode_pairs(&raw).unwrap_or_else(|e| {
        let note = format!("proxy_set_header_map_pairs: {e}; map cleared (like Envoy)");
        c.data_mut().log(LogLevel::Warn, note, LogSource::Host);
        Vec::new()
    });
    *c.data_mut().map_for_write(ty)? = HeaderMap::from_raw(pairs);
    Ok(())
}

/// Unavailable map: `BadArgument` (`NotFound` in the access-log phase); missing key: `NotFound`.
fn get_map_value(c: &mut C<'_>, ty: u32, key: (u32, u32), pp: u32, sp: u32) -> HostResult {
    let ty = map_type(ty)?;
    let key = read(c, key.0, key.1)?;
    let value = {
        let state = c.data();
        let unavailable = if state.in_log_phase() {
            Status::NotFound
        } else {
            Status::BadArgument
        };
        let map = state.map_for_read(ty).ok_or(unavailable)?;
        map.get_bytes(&key).ok_or(Status::NotFound)?.to_vec()
    };
    copy_out(c, &value, pp, sp)
}

enum Edit {
    Add,
    Replace,
    Remove,
}

fn modify_map(
    c: &mut C<'_>,
    ty: u32,
    key: (u32, u32),
    value: Option<(u32, u32)>,
    edit: Edit,
) -> HostResult {
    let ty = map_type(ty)?;
    let key = read(c, key.0, key.1)?;
    let value = match value {
        Some((p, n)) => read(c, p, n)?,
        None => Vec::new(),
    };
    let map = c.data_mut().map_for_write(ty)?;
    match edit {
        Edit::Add => map.add(&key, &value),
        Edit::Replace => map.replace(&key, &value),
        Edit::Remove => map.remove(&key),
    }
    Ok(())
}

fn get_shared_data(c: &mut C<'_>, key: (u32, u32), pp: u32, sp: u32, cas_ptr: u32) -> HostResult {
    let key = read(c, key.0, key.1)?;
    let value = {
        let state = c.data();
        state.shared.get(&state.settings.vm_id, &key)
    };
    let value = value.ok_or(Status::NotFound)?;
    copy_out(c, &value.value, pp, sp)?;
    write_u32(c, cas_ptr, value.cas)
}

fn set_shared_data(c: &mut C<'_>, key: (u32, u32), value: (u32, u32), cas: u32) -> HostResult {
    let key = read(c, key.0, key.1)?;
    let value = read(c, value.0, value.1)?;
    let state = c.data();
    check(state.shared.set(&state.settings.vm_id, &key, &value, cas))
}

/// The queue is owned by the root context (on_queue_ready is delivered there).
fn register_queue(c: &mut C<'_>, p: u32, n: u32, ret: u32) -> HostResult {
    let name = read(c, p, n)?;
    let token = {
        let state = c.data();
        let vm_id = state.settings.vm_id.clone();
        state
            .shared
            .register_queue(&vm_id, &name, state.vm_key, ROOT_CONTEXT_ID)
    };
    write_u32(c, ret, token)
}

/// An empty vm_id means this VM's vm_id.
fn resolve_queue(c: &mut C<'_>, vm_id: (u32, u32), name: (u32, u32), ret: u32) -> HostResult {
    let vm_id = read_string(c, vm_id.0, vm_id.1)?;
    let name = read(c, name.0, name.1)?;
    let token = {
        let state = c.data();
        let vm_id = if vm_id.is_empty() {
            state.settings.vm_id.as_str()
        } else {
            vm_id.as_str()
        };
        state.shared.resolve_queue(vm_id, &name)
    };
    write_u32(c, ret, token.ok_or(Status::NotFound)?)
}

fn dequeue(c: &mut C<'_>, token: u32, pp: u32, sp: u32) -> HostResult {
    let item = c.data().shared.dequeue(token)?.ok_or(Status::Empty)?;
    copy_out(c, &item, pp, sp)
}

fn enqueue(c: &mut C<'_>, token: u32, p: u32, n: u32) -> HostResult {
    let item = read(c, p, n)?;
    check(c.data().shared.enqueue(token, &item))
}

/// Envoy: `:method`, `:path` and `:authority` are required and the upstream must be a known
/// cluster (`BadArgument` otherwise); the token is written before the call is started.
fn http_call(c: &mut C<'_>, bufs: [(u32, u32); 4], timeout_ms: u32, ret: u32) -> HostResult {
    let [upstream, headers, body, trailers] = bufs;
    let upstream = read_string(c, upstream.0, upstream.1)?;
    let raw_headers = read(c, headers.0, headers.1)?;
    let body = read(c, body.0, body.1)?;
    let raw_trailers = read(c, trailers.0, trailers.1)?;
    write_u32(c, ret, 0)?;
    if i32::try_from(timeout_ms).is_err() {
        return Err(Status::BadArgument.into());
    }
    let headers = HeaderMap::from_raw(decode_pairs(&raw_headers).unwrap_or_default());
    let trailers = HeaderMap::from_raw(decode_pairs(&raw_trailers).unwrap_or_default());
    let state = c.data_mut();
    if !state.cluster_known(&upstream) {
        let note = format!("proxy_http_call: unknown cluster {upstream:?}");
        state.log(LogLevel::Warn, note, LogSource::Host);
        return Err(Status::BadArgument.into());
    }
    if [":path", ":method", ":authority"]
        .iter()
        .any(|h| !headers.contains(h))
    {
        let note = "proxy_http_call: :method, :path and :authority are required".to_owned();
        state.log(LogLevel::Warn, note, LogSource::Host);
        return Err(Status::BadArgument.into());
    }
    let token = state.next_call_token;
    state.next_call_token = state.next_call_token.wrapping_add(1).max(1);
    state.http_calls.push(HttpCall {
        token,
        context_id: state.current,
        upstream,
        headers,
        body,
        trailers,
        timeout: Duration::from_millis(timeout_ms.into()),
    });
    write_u32(c, ret, token)
}
