//! Host functions of the proxy-wasm ABI 0.2.1 (module `env`): logging, time, ticks, status,
//! properties, stream control, local responses, effective context, foreign functions and
//! metrics. Buffers, header maps, shared data, queues and HTTP calls are in `abi_data`.
//! Semantics and status codes follow Envoy (`source/extensions/common/wasm/context.cc`).

use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::codec::{decode_pairs, HeaderMap};
use super::memory::{
    check, copy_out, read, read_string, status, write_u32, write_u64, HostFail, HostResult,
};
use super::shared::MetricValue;
use super::state::{HostState, ROOT_CONTEXT_ID};
use super::types::{LocalResponse, LogLevel, LogSource, MetricType, Status, StreamType};

/// Import module of all proxy-wasm host functions.
pub(crate) const ENV: &str = "env";

type C<'a> = Caller<'a, HostState>;

/// Defines the host functions of this file on `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_log",
        |mut c: C<'_>, level: u32, ptr: u32, len: u32| status(log(&mut c, level, ptr, len)),
    )?;
    linker.func_wrap(ENV, "proxy_get_log_level", |mut c: C<'_>, ret: u32| {
        let level = c.data().settings.log_level as u32;
        status(write_u32(&mut c, ret, level))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, ret: u32| {
            let now = c.data().shared.clock().now_nanos();
            status(write_u64(&mut c, ret, now))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: u32| {
            let period = (ms > 0).then(|| Duration::from_millis(ms.into()));
            let now = c.data().shared.clock().monotonic_nanos();
            let state = c.data_mut();
            state.tick_period = period;
            state.next_tick_due = period.map(|_| now.saturating_add(u64::from(ms) * 1_000_000));
            Ok(Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_status",
        |mut c: C<'_>, code: u32, pp: u32, sp: u32| status(get_status(&mut c, code, pp, sp)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_property",
        |mut c: C<'_>, p: u32, n: u32, pp: u32, sp: u32| status(get_property(&mut c, p, n, pp, sp)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_property",
        |mut c: C<'_>, p: u32, n: u32, v: u32, vn: u32| status(set_property(&mut c, p, n, v, vn)),
    )?;
    linker.func_wrap(ENV, "proxy_continue_stream", |mut c: C<'_>, ty: u32| {
        status(continue_stream(&mut c, ty))
    })?;
    linker.func_wrap(ENV, "proxy_close_stream", |mut c: C<'_>, ty: u32| {
        status(close_stream(&mut c, ty))
    })?;
    linker.func_wrap(
        ENV,
        "proxy_send_local_response",
        |mut c: C<'_>, code: u32, d: u32, dn: u32, b: u32, bn: u32, h: u32, hn: u32, grpc: i32| {
            status(send_local_response(
                &mut c,
                code,
                (d, dn),
                (b, bn),
                (h, hn),
                grpc,
            ))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_set_effective_context",
        |mut c: C<'_>, id: u32| {
            if c.data().context_exists(id) {
                c.data_mut().current = id;
                Ok(Status::Ok.code())
            } else {
                Ok(Status::BadArgument.code())
            }
        },
    )?;
    linker.func_wrap(ENV, "proxy_done", |mut c: C<'_>| {
        let state = c.data_mut();
        if state.current == ROOT_CONTEXT_ID && state.done_pending {
            state.done_pending = false;
            state.done_called = true;
            Ok(Status::Ok.code())
        } else {
            Ok(Status::NotFound.code())
        }
    })?;
    linker.func_wrap(
        ENV,
        "proxy_call_foreign_function",
        |mut c: C<'_>, f: u32, fnl: u32, a: u32, an: u32, rp: u32, rs: u32| {
            status(call_foreign_function(&mut c, (f, fnl), (a, an), rp, rs))
        },
    )?;
    linker.func_wrap(
        ENV,
        "proxy_define_metric",
        |mut c: C<'_>, t: u32, p: u32, n: u32, r: u32| status(define_metric(&mut c, t, p, n, r)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_increment_metric",
        |c: C<'_>, id: u32, offset: i64| status(increment_metric(&c, id, offset)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_record_metric",
        |c: C<'_>, id: u32, value: u64| status(record_metric(&c, id, value)),
    )?;
    linker.func_wrap(
        ENV,
        "proxy_get_metric",
        |mut c: C<'_>, id: u32, ret: u32| status(get_metric(&mut c, id, ret)),
    )?;
    Ok(())
}

fn log(c: &mut C<'_>, level: u32, ptr: u32, len: u32) -> HostResult {
    let level = LogLevel::from_u32(level).ok_or(Status::BadArgument)?;
    let message = read_string(c, ptr, len)?;
    c.data_mut().log(level, message, LogSource::Proxy);
    Ok(())
}

fn get_status(c: &mut C<'_>, code_ptr: u32, ptr_ptr: u32, size_ptr: u32) -> HostResult {
    let (code, message) = c.data().status.clone();
    write_u32(c, code_ptr, code)?;
    copy_out(c, &message, ptr_ptr, size_ptr)
}

fn get_property(c: &mut C<'_>, p: u32, n: u32, ptr_ptr: u32, size_ptr: u32) -> HostResult {
    let path = read(c, p, n)?;
    let value = c
        .data()
        .property(&path)
        .map(<[u8]>::to_vec)
        .ok_or(Status::NotFound)?;
    copy_out(c, &value, ptr_ptr, size_ptr)
}

/// Envoy stores properties in the stream's filter state: outside a stream it is `NotFound`.
fn set_property(c: &mut C<'_>, p: u32, n: u32, v: u32, vn: u32) -> HostResult {
    let path = read(c, p, n)?;
    let value = read(c, v, vn)?;
    let stream = c.data_mut().current_stream_mut().ok_or(Status::NotFound)?;
    stream.properties.insert(path, value);
    Ok(())
}

fn continue_stream(c: &mut C<'_>, ty: u32) -> HostResult {
    let ty = StreamType::from_u32(ty).ok_or(Status::BadArgument)?;
    let stream = c.data_mut().current_stream_mut();
    match (ty, stream) {
        (StreamType::HttpRequest, Some(s)) => s.request.resume(),
        (StreamType::HttpResponse, Some(s)) => s.response.resume(),
        (StreamType::Upstream, _) => return Err(Status::Unimplemented.into()),
        _ => {}
    }
    Ok(())
}

fn close_stream(c: &mut C<'_>, ty: u32) -> HostResult {
    let ty = StreamType::from_u32(ty).ok_or(Status::BadArgument)?;
    if matches!(ty, StreamType::HttpRequest | StreamType::HttpResponse) {
        if let Some(s) = c.data_mut().current_stream_mut() {
            s.reset = true;
        }
    }
    Ok(())
}

fn send_local_response(
    c: &mut C<'_>,
    code: u32,
    details: (u32, u32),
    body: (u32, u32),
    headers: (u32, u32),
    grpc_status: i32,
) -> HostResult {
    let details = read_string(c, details.0, details.1)?;
    let body = read(c, body.0, body.1)?;
    let raw_headers = read(c, headers.0, headers.1)?;
    let headers = match decode_pairs(&raw_headers) {
        Ok(pairs) => HeaderMap::from_raw(pairs),
        Err(e) => {
            let note = format!("proxy_send_local_response: {e}; headers dropped (like Envoy)");
            c.data_mut().log(LogLevel::Warn, note, LogSource::Host);
            HeaderMap::new()
        }
    };
    if let Some(stream) = c.data_mut().current_stream_mut() {
        stream.local_response = Some(LocalResponse {
            status: code,
            details,
            headers,
            body,
            grpc_status,
        });
    }
    Ok(())
}

fn call_foreign_function(
    c: &mut C<'_>,
    name: (u32, u32),
    args: (u32, u32),
    results_ptr: u32,
    results_size_ptr: u32,
) -> HostResult {
    let name = read_string(c, name.0, name.1)?;
    let _args = read(c, args.0, args.1)?;
    match name.as_str() {
        "clear_route_cache" => {
            if let Some(stream) = c.data_mut().current_stream_mut() {
                stream.route_cache_clears += 1;
            }
        }
        _ => return Err(Status::NotFound.into()),
    }
    // Envoy's clear_route_cache returns no result: null pointer, size 0.
    if results_ptr != 0 {
        write_u32(c, results_ptr, 0)?;
    }
    if results_size_ptr != 0 {
        write_u32(c, results_size_ptr, 0)?;
    }
    Ok(())
}

fn define_metric(c: &mut C<'_>, ty: u32, p: u32, n: u32, ret: u32) -> HostResult {
    let kind = MetricType::from_u32(ty).ok_or(Status::BadArgument)?;
    let name = read_string(c, p, n)?;
    if !c.data().shared.define_metric(&name, kind) {
        let note = format!("metric {name} redefined with another type");
        c.data_mut().log(LogLevel::Error, note, LogSource::Host);
        return Err(Status::BadArgument.into());
    }
    let id = c.data_mut().next_metric_id(kind);
    c.data_mut().metric_ids.insert(id, name);
    write_u32(c, ret, id)
}

fn metric_name(c: &C<'_>, id: u32) -> Option<String> {
    c.data().metric_ids.get(&id).cloned()
}

fn update(c: &C<'_>, name: &str, f: impl FnOnce(&mut MetricValue) -> Status) -> HostResult {
    check(
        c.data()
            .shared
            .update_metric(name, f)
            .unwrap_or(Status::NotFound),
    )
}

fn increment_metric(c: &C<'_>, id: u32, offset: i64) -> HostResult {
    let kind = MetricType::from_u32(id & 3).ok_or(Status::BadArgument)?;
    if kind == MetricType::Histogram {
        return Err(Status::BadArgument.into());
    }
    let name = metric_name(c, id).ok_or(Status::NotFound)?;
    update(c, &name, |m| match m {
        MetricValue::Counter(v) if offset > 0 => {
            *v = v.wrapping_add(offset.unsigned_abs());
            Status::Ok
        }
        MetricValue::Counter(_) => Status::BadArgument,
        MetricValue::Gauge(v) => {
            *v = if offset >= 0 {
                v.wrapping_add(offset.unsigned_abs())
            } else {
                v.wrapping_sub(offset.unsigned_abs())
            };
            Status::Ok
        }
        MetricValue::Histogram(_) => Status::BadArgument,
    })
}

fn record_metric(c: &C<'_>, id: u32, value: u64) -> HostResult {
    let name = metric_name(c, id).ok_or(Status::NotFound)?;
    update(c, &name, |m| {
        match m {
            MetricValue::Counter(v) => *v = v.wrapping_add(value),
            MetricValue::Gauge(v) => *v = value,
            MetricValue::Histogram(values) => values.push(value),
        }
        Status::Ok
    })
}

fn get_metric(c: &mut C<'_>, id: u32, ret: u32) -> HostResult {
    let kind = MetricType::from_u32(id & 3).ok_or(Status::BadArgument)?;
    if kind == MetricType::Histogram {
        return Err(Status::BadArgument.into());
    }
    let name = metric_name(c, id).ok_or(Status::NotFound)?;
    let value = c
        .data()
        .shared
        .metric(&name)
        .map(|m| m.value())
        .ok_or(HostFail::Status(Status::NotFound))?;
    write_u64(c, ret, value)
}
