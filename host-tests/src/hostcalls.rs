//! The host side of the Proxy-Wasm ABI v0.2.1 (the `env` imports of the Rust SDK 0.2.5), with
//! the statuses and reachability rules Envoy applies. WASI preview1 comes from wasmtime-wasi;
//! `fd_write` to stdout/stderr is redirected into the VM log like Envoy does.

use crate::abi::{self, status, LogLevel, MetricKind};
use crate::headers::HeaderMap;
use crate::http::LocalReply;
use crate::shared::lock;
use crate::vm::{Stream, VmState};
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, VmState>;
type R = wasmtime::Result<i32>;

/// Turns `Err(status)` into an early `Ok(status)` return from a hostcall.
macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(s) => return Ok(s),
        }
    };
}

fn range(ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    Some(start..end)
}

fn read(c: &C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, i32> {
    let mem = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let r = range(ptr, len).ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.data(c)
        .get(r)
        .map(<[u8]>::to_vec)
        .ok_or(status::INVALID_MEMORY_ACCESS)
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let mem = c.data().memory.ok_or(status::INVALID_MEMORY_ACCESS)?;
    let r = range(ptr, bytes.len() as i32).ok_or(status::INVALID_MEMORY_ACCESS)?;
    mem.data_mut(c)
        .get_mut(r)
        .ok_or(status::INVALID_MEMORY_ACCESS)?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(c: &mut C<'_>, ptr: i32, v: u32) -> Result<(), i32> {
    write(c, ptr, &v.to_le_bytes())
}

fn write_u64(c: &mut C<'_>, ptr: i32, v: u64) -> Result<(), i32> {
    write(c, ptr, &v.to_le_bytes())
}

/// Envoy's `copyToPointerSize`: an empty value is returned as (null, 0); anything else is
/// copied into a buffer the plugin allocates with `proxy_on_memory_allocate`.
fn copy_out(c: &mut C<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> R {
    if bytes.is_empty() {
        tri!(write_u32(c, ptr_ptr, 0));
        tri!(write_u32(c, size_ptr, 0));
        return Ok(status::OK);
    }
    let Some(alloc) = c.data().alloc.clone() else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let ptr = alloc.call(&mut *c, bytes.len() as i32)?;
    if ptr == 0 {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    tri!(write(c, ptr, bytes));
    tri!(write_u32(c, ptr_ptr, ptr as u32));
    tri!(write_u32(c, size_ptr, bytes.len() as u32));
    Ok(status::OK)
}

// ---- header maps -------------------------------------------------------------------------

/// The map the plugin may read right now (Envoy `getConstMap`).
fn const_map(stream: Option<&Stream>, map_type: i32) -> Option<&HeaderMap> {
    let s = stream?;
    match map_type {
        abi::map::HTTP_REQUEST_HEADERS if s.log_phase || s.request_headers_live => {
            Some(&s.request_headers)
        }
        abi::map::HTTP_RESPONSE_HEADERS if s.log_phase || s.response_headers_live => {
            Some(&s.response_headers)
        }
        _ => None,
    }
}

/// The map the plugin may modify right now (Envoy `getMap`).
fn mut_map(stream: Option<&mut Stream>, map_type: i32) -> Option<&mut HeaderMap> {
    let s = stream?;
    if s.log_phase {
        return None;
    }
    match map_type {
        abi::map::HTTP_REQUEST_HEADERS if s.request_headers_live => Some(&mut s.request_headers),
        abi::map::HTTP_RESPONSE_HEADERS if s.response_headers_live => Some(&mut s.response_headers),
        _ => None,
    }
}

fn check_map_type(map_type: i32) -> Result<(), i32> {
    if (0..=abi::map::HTTP_CALL_RESPONSE_TRAILERS).contains(&map_type) {
        Ok(())
    } else {
        Err(status::BAD_ARGUMENT)
    }
}

fn get_header_map_value(mut c: C<'_>, ty: i32, kp: i32, kl: i32, vpp: i32, vsp: i32) -> R {
    tri!(check_map_type(ty));
    let key = tri!(read(&c, kp, kl));
    let state = c.data();
    let value = match const_map(state.stream.as_ref(), ty) {
        // Outside its callbacks the map is gone: BadArgument (NotFound in the log phase).
        None => {
            let in_log = state.stream.as_ref().is_some_and(|s| s.log_phase);
            return Ok(if in_log {
                status::NOT_FOUND
            } else {
                status::BAD_ARGUMENT
            });
        }
        Some(map) => match map.get_bytes(&key) {
            None => return Ok(status::NOT_FOUND),
            Some(v) => v.to_vec(),
        },
    };
    copy_out(&mut c, &value, vpp, vsp)
}

fn get_header_map_pairs(mut c: C<'_>, ty: i32, pp: i32, sp: i32) -> R {
    tri!(check_map_type(ty));
    let bytes = match const_map(c.data().stream.as_ref(), ty) {
        Some(map) if !map.is_empty() => abi::serialize_pairs(map.pairs()),
        _ => Vec::new(),
    };
    copy_out(&mut c, &bytes, pp, sp)
}

fn set_header_map_pairs(mut c: C<'_>, ty: i32, p: i32, l: i32) -> R {
    tri!(check_map_type(ty));
    let bytes = tri!(read(&c, p, l));
    // Envoy's toPairs() yields an empty map for a malformed buffer.
    let pairs = abi::deserialize_pairs(&bytes).unwrap_or_default();
    let Some(map) = mut_map(c.data_mut().stream_mut(), ty) else {
        return Ok(status::BAD_ARGUMENT);
    };
    map.set_all(pairs);
    Ok(status::OK)
}

fn header_edit(mut c: C<'_>, ty: i32, kp: i32, kl: i32, value: Option<(i32, i32)>, add: bool) -> R {
    tri!(check_map_type(ty));
    let key = tri!(read(&c, kp, kl));
    let value = match value {
        Some((vp, vl)) => Some(tri!(read(&c, vp, vl))),
        None => None,
    };
    let Some(map) = mut_map(c.data_mut().stream_mut(), ty) else {
        return Ok(status::BAD_ARGUMENT);
    };
    match (value, add) {
        (Some(v), true) => map.add(&key, &v),
        (Some(v), false) => map.replace(&key, &v),
        (None, _) => map.remove(&key),
    }
    Ok(status::OK)
}

fn get_header_map_size(mut c: C<'_>, ty: i32, rp: i32) -> R {
    tri!(check_map_type(ty));
    let Some(size) = mut_map(c.data_mut().stream_mut(), ty).map(|m| m.byte_size()) else {
        return Ok(status::BAD_ARGUMENT);
    };
    tri!(write_u32(&mut c, rp, size as u32));
    Ok(status::OK)
}

// ---- buffers -----------------------------------------------------------------------------

/// The buffer's bytes, or a status when it isn't reachable.
fn buffer_bytes(state: &VmState, ty: i32) -> Result<Vec<u8>, i32> {
    match ty {
        abi::buffer::HTTP_REQUEST_BODY => Ok(match &state.stream {
            Some(s) if s.request_body_live => s.request_body.clone(),
            _ => Vec::new(),
        }),
        abi::buffer::HTTP_RESPONSE_BODY => Ok(match &state.stream {
            Some(s) if s.response_body_live => s.response_body.clone(),
            _ => Vec::new(),
        }),
        abi::buffer::VM_CONFIGURATION => Ok(state.vm_config.clone()),
        abi::buffer::PLUGIN_CONFIGURATION if state.in_configure => Ok(state.plugin_config.clone()),
        t if (0..=abi::buffer::CALL_DATA).contains(&t) => Err(status::NOT_FOUND),
        _ => Err(status::BAD_ARGUMENT),
    }
}

fn get_buffer_bytes(mut c: C<'_>, ty: i32, start: i32, max: i32, pp: i32, sp: i32) -> R {
    let bytes = tri!(buffer_bytes(c.data(), ty));
    let start = start as u32 as usize;
    let max = max as u32 as usize;
    let end = start.saturating_add(max).min(bytes.len());
    let slice = bytes.get(start..end).unwrap_or(&[]);
    if slice.is_empty() {
        // Envoy returns Ok without touching the out-pointers.
        return Ok(status::OK);
    }
    let slice = slice.to_vec();
    copy_out(&mut c, &slice, pp, sp)
}

fn get_buffer_status(mut c: C<'_>, ty: i32, lp: i32, fp: i32) -> R {
    let bytes = tri!(buffer_bytes(c.data(), ty));
    tri!(write_u32(&mut c, lp, bytes.len() as u32));
    tri!(write_u32(&mut c, fp, 0));
    Ok(status::OK)
}

fn set_buffer_bytes(mut c: C<'_>, ty: i32, start: i32, size: i32, p: i32, l: i32) -> R {
    let data = tri!(read(&c, p, l));
    let start = start as u32 as usize;
    let size = size as u32 as usize;
    let state = c.data_mut();
    let buf = match ty {
        abi::buffer::HTTP_REQUEST_BODY => match state.stream.as_mut() {
            Some(s) if s.request_body_live => &mut s.request_body,
            _ => return Ok(status::NOT_FOUND),
        },
        abi::buffer::HTTP_RESPONSE_BODY => match state.stream.as_mut() {
            Some(s) if s.response_body_live => &mut s.response_body,
            _ => return Ok(status::NOT_FOUND),
        },
        abi::buffer::VM_CONFIGURATION | abi::buffer::PLUGIN_CONFIGURATION => {
            return Ok(status::BAD_ARGUMENT)
        }
        t if (0..=abi::buffer::CALL_DATA).contains(&t) => return Ok(status::NOT_FOUND),
        _ => return Ok(status::BAD_ARGUMENT),
    };
    // Envoy Buffer::copyFrom: start 0 drains `size` bytes and prepends; start at or past the
    // end appends; anything in between is refused.
    if start == 0 {
        let drain = size.min(buf.len());
        buf.drain(..drain);
        let mut next = data;
        next.extend_from_slice(buf);
        *buf = next;
    } else if start >= buf.len() {
        buf.extend_from_slice(&data);
    } else {
        return Ok(status::BAD_ARGUMENT);
    }
    Ok(status::OK)
}

// ---- properties --------------------------------------------------------------------------

fn i64_bytes(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Envoy's attribute values, serialized as Envoy does: strings raw, integers and timestamps
/// as 8 little-endian bytes, maps in the header-map format.
fn property(state: &VmState, path: &[u8]) -> Result<Vec<u8>, i32> {
    let parts: Vec<&[u8]> = path.split(|b| *b == 0).collect();
    let stream = state.stream.as_ref();
    if let Some(v) = stream
        .and_then(|s| s.properties.get(path))
        .or_else(|| state.root_properties.get(path))
    {
        return Ok(v.clone());
    }
    let nf = status::NOT_FOUND;
    let s = || stream.ok_or(nf);
    let req_headers = || {
        let s = stream.ok_or(nf)?;
        if s.log_phase || s.request_headers_live {
            Ok(&s.request_headers)
        } else {
            Err(nf)
        }
    };
    let resp_headers = || {
        let s = stream.ok_or(nf)?;
        if s.log_phase || s.response_headers_live {
            Ok(&s.response_headers)
        } else {
            Err(nf)
        }
    };
    let header = |h: &HeaderMap, name: &str| h.get_bytes(name).map(<[u8]>::to_vec).ok_or(nf);
    match parts.as_slice() {
        [b"plugin_name"] => Ok(state.plugin_name.as_bytes().to_vec()),
        [b"plugin_root_id"] => Ok(state.root_id.as_bytes().to_vec()),
        [b"plugin_vm_id"] => Ok(state.vm_id.as_bytes().to_vec()),
        [b"source", b"address"] => Ok(s()?.source.as_bytes().to_vec()),
        [b"source", b"port"] => Ok(i64_bytes(i64::from(s()?.source_port))),
        [b"destination", b"address"] => s().map(|_| b"127.0.0.1:10000".to_vec()),
        [b"destination", b"port"] => s().map(|_| i64_bytes(10000)),
        [b"connection", b"id"] => Ok(s()?.connection_id.to_le_bytes().to_vec()),
        [b"connection", b"mtls"] => s().map(|_| vec![0]),
        [b"request", b"time"] => Ok(i64_bytes(s()?.request_time_ns as i64)),
        [b"request", b"protocol"] => s().map(|_| b"HTTP/1.1".to_vec()),
        [b"request", b"path"] => header(req_headers()?, ":path"),
        [b"request", b"url_path"] => {
            let p = header(req_headers()?, ":path")?;
            let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
            Ok(p.get(..end).unwrap_or(&[]).to_vec())
        }
        [b"request", b"query"] => {
            let p = header(req_headers()?, ":path")?;
            Ok(match p.iter().position(|b| *b == b'?') {
                Some(i) => p.get(i + 1..).unwrap_or(&[]).to_vec(),
                None => Vec::new(),
            })
        }
        [b"request", b"host"] => header(req_headers()?, ":authority"),
        [b"request", b"scheme"] => header(req_headers()?, ":scheme"),
        [b"request", b"method"] => header(req_headers()?, ":method"),
        [b"request", b"referer"] => header(req_headers()?, "referer"),
        [b"request", b"useragent"] => header(req_headers()?, "user-agent"),
        [b"request", b"id"] => header(req_headers()?, "x-request-id"),
        [b"request", b"headers"] => Ok(abi::serialize_pairs(req_headers()?.pairs())),
        [b"request", b"headers", name] => header(req_headers()?, &String::from_utf8_lossy(name)),
        [b"response", b"code"] => s()?
            .response_code
            .map(|c| i64_bytes(i64::from(c)))
            .ok_or(nf),
        [b"response", b"code_details"] => s()?
            .response_code
            .map(|_| b"via_upstream".to_vec())
            .ok_or(nf),
        [b"response", b"headers"] => Ok(abi::serialize_pairs(resp_headers()?.pairs())),
        [b"response", b"headers", name] => header(resp_headers()?, &String::from_utf8_lossy(name)),
        _ => Err(nf),
    }
}

// ---- linking -----------------------------------------------------------------------------

pub(crate) fn add_to_linker(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |s: &mut VmState| &mut s.wasi)?;
    linker.allow_shadowing(true);

    // Like Envoy: stdout is logged at info, stderr at error; other descriptors don't exist.
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written: i32| -> R {
            const EBADF: i32 = 8;
            const EFAULT: i32 = 21;
            let level = match fd {
                1 => LogLevel::Info,
                2 => LogLevel::Error,
                _ => return Ok(EBADF),
            };
            let mut text = Vec::new();
            for i in 0..n.max(0) {
                let iov = match read(&c, iovs.wrapping_add(i * 8), 8) {
                    Ok(v) => v,
                    Err(_) => return Ok(EFAULT),
                };
                let field = |at: usize| {
                    iov.get(at..at + 4)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_le_bytes)
                        .unwrap_or(0)
                };
                match read(&c, field(0) as i32, field(4) as i32) {
                    Ok(part) => text.extend_from_slice(&part),
                    Err(_) => return Ok(EFAULT),
                }
            }
            let total = text.len();
            if text.last() == Some(&b'\n') {
                text.pop();
            }
            if !text.is_empty() {
                let message = String::from_utf8_lossy(&text).into_owned();
                c.data_mut().log(level, message);
            }
            if write_u32(&mut c, written, total as u32).is_err() {
                return Ok(EFAULT);
            }
            Ok(0)
        },
    )?;

    // Logging.
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: C<'_>, level: i32, p: i32, l: i32| -> R {
            let Some(level) = LogLevel::from_raw(level) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let message = tri!(read(&c, p, l));
            let message = String::from_utf8_lossy(&message).into_owned();
            c.data_mut().log(level, message);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap("env", "proxy_get_log_level", |mut c: C<'_>, p: i32| -> R {
        let level = *lock(&c.data().shared.log_level) as u32;
        tri!(write_u32(&mut c, p, level));
        Ok(status::OK)
    })?;

    // Clock and timer.
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, p: i32| -> R {
            let now = c.data().shared.clock.nanos();
            tri!(write_u64(&mut c, p, now));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, ms: i32| -> R {
            c.data_mut().tick_period_ms = ms as u32;
            Ok(status::OK)
        },
    )?;

    // Buffers.
    linker.func_wrap("env", "proxy_get_buffer_bytes", get_buffer_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", set_buffer_bytes)?;
    linker.func_wrap("env", "proxy_get_buffer_status", get_buffer_status)?;

    // Header maps.
    linker.func_wrap("env", "proxy_get_header_map_pairs", get_header_map_pairs)?;
    linker.func_wrap("env", "proxy_set_header_map_pairs", set_header_map_pairs)?;
    linker.func_wrap("env", "proxy_get_header_map_value", get_header_map_value)?;
    linker.func_wrap("env", "proxy_get_header_map_size", get_header_map_size)?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |c: C<'_>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            header_edit(c, ty, kp, kl, Some((vp, vl)), true)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |c: C<'_>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R {
            header_edit(c, ty, kp, kl, Some((vp, vl)), false)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |c: C<'_>, ty: i32, kp: i32, kl: i32| -> R { header_edit(c, ty, kp, kl, None, false) },
    )?;

    // Properties.
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: C<'_>, p: i32, l: i32, vpp: i32, vsp: i32| -> R {
            let path = tri!(read(&c, p, l));
            let value = tri!(property(c.data(), &path));
            copy_out(&mut c, &value, vpp, vsp)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: C<'_>, p: i32, l: i32, vp: i32, vl: i32| -> R {
            let path = tri!(read(&c, p, l));
            let value = tri!(read(&c, vp, vl));
            let state = c.data_mut();
            match state.stream.as_mut() {
                Some(s) => s.properties.insert(path, value),
                None => state.root_properties.insert(path, value),
            };
            Ok(status::OK)
        },
    )?;

    // Shared data.
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: C<'_>, kp: i32, kl: i32, vpp: i32, vsp: i32, casp: i32| -> R {
            let key = tri!(read(&c, kp, kl));
            let found = lock(&c.data().shared.data).get(&key);
            let Some((value, cas)) = found else {
                return Ok(status::NOT_FOUND);
            };
            let st = copy_out(&mut c, &value, vpp, vsp)?;
            if st != status::OK {
                return Ok(st);
            }
            tri!(write_u32(&mut c, casp, cas));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R {
            let key = tri!(read(&c, kp, kl));
            let value = tri!(read(&c, vp, vl));
            Ok(lock(&c.data().shared.data).set(&key, &value, cas as u32))
        },
    )?;

    // Shared queues.
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: C<'_>, np: i32, nl: i32, tp: i32| -> R {
            let name = String::from_utf8_lossy(&tri!(read(&c, np, nl))).into_owned();
            let state = c.data();
            let token = lock(&state.shared.queues).register(
                &state.vm_id,
                &name,
                state.vm_index,
                crate::vm::ROOT_CONTEXT_ID,
            );
            tri!(write_u32(&mut c, tp, token));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, tp: i32| -> R {
            let vm_id = String::from_utf8_lossy(&tri!(read(&c, vp, vl))).into_owned();
            let name = String::from_utf8_lossy(&tri!(read(&c, np, nl))).into_owned();
            let token = lock(&c.data().shared.queues)
                .tokens
                .get(&(vm_id, name))
                .copied();
            let Some(token) = token else {
                return Ok(status::NOT_FOUND);
            };
            tri!(write_u32(&mut c, tp, token));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |c: C<'_>, token: i32, vp: i32, vl: i32| -> R {
            let value = tri!(read(&c, vp, vl));
            let shared = c.data().shared.clone();
            let owner = {
                let mut queues = lock(&shared.queues);
                let Some(q) = queues.queues.get_mut(&(token as u32)) else {
                    return Ok(status::NOT_FOUND);
                };
                q.items.push_back(value);
                (q.owner_vm, q.owner_context)
            };
            shared.notify(owner.0, owner.1, token as u32);
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: C<'_>, token: i32, vpp: i32, vsp: i32| -> R {
            let item = {
                let mut queues = lock(&c.data().shared.queues);
                let Some(q) = queues.queues.get_mut(&(token as u32)) else {
                    return Ok(status::NOT_FOUND);
                };
                q.items.pop_front()
            };
            match item {
                None => Ok(status::EMPTY),
                Some(v) => copy_out(&mut c, &v, vpp, vsp),
            }
        },
    )?;

    // Stream control.
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: C<'_>, ty: i32| -> R {
            let stream = c.data_mut().stream_mut();
            Ok(match ty {
                abi::stream::HTTP_REQUEST => {
                    if let Some(s) = stream {
                        s.continue_request = true;
                    }
                    status::OK
                }
                abi::stream::HTTP_RESPONSE => {
                    if let Some(s) = stream {
                        s.continue_response = true;
                    }
                    status::OK
                }
                abi::stream::DOWNSTREAM => status::OK,
                abi::stream::UPSTREAM => status::UNIMPLEMENTED,
                _ => status::BAD_ARGUMENT,
            })
        },
    )?;
    linker.func_wrap("env", "proxy_close_stream", |mut c: C<'_>, ty: i32| -> R {
        let stream = c.data_mut().stream_mut();
        Ok(match ty {
            abi::stream::HTTP_REQUEST | abi::stream::HTTP_RESPONSE => {
                if let Some(s) = stream {
                    s.reset = Some(if ty == abi::stream::HTTP_REQUEST {
                        "the plugin reset the request (proxy_close_stream)"
                    } else {
                        "the plugin reset the response (proxy_close_stream)"
                    });
                }
                status::OK
            }
            abi::stream::DOWNSTREAM | abi::stream::UPSTREAM => status::OK,
            _ => status::BAD_ARGUMENT,
        })
    })?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: C<'_>,
         code: i32,
         dp: i32,
         dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         grpc: i32|
         -> R {
            let details = tri!(read(&c, dp, dl));
            let body = tri!(read(&c, bp, bl));
            let raw_headers = tri!(read(&c, hp, hl));
            let mut headers = HeaderMap::new();
            for (k, v) in abi::deserialize_pairs(&raw_headers).unwrap_or_default() {
                headers.add(k, v);
            }
            let reply = LocalReply {
                status: code as u32 as u16,
                details: String::from_utf8_lossy(&details).into_owned(),
                headers,
                body,
                grpc_status: grpc,
            };
            if let Some(s) = c.data_mut().stream_mut() {
                if s.local_reply.is_some() {
                    s.ignored_local_replies += 1;
                } else {
                    s.local_reply = Some(reply);
                }
            }
            Ok(status::OK)
        },
    )?;

    // Contexts.
    linker.func_wrap("env", "proxy_done", |_c: C<'_>| -> R {
        Ok(status::NOT_FOUND)
    })?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |c: C<'_>, id: i32| -> R {
            let id = id as u32;
            let known = id == crate::vm::ROOT_CONTEXT_ID
                || c.data().stream.as_ref().is_some_and(|s| s.context_id == id);
            Ok(if known {
                status::OK
            } else {
                status::BAD_ARGUMENT
            })
        },
    )?;

    // Metrics.
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, np: i32, nl: i32, idp: i32| -> R {
            let Some(kind) = MetricKind::from_raw(kind) else {
                return Ok(status::BAD_ARGUMENT);
            };
            let name = String::from_utf8_lossy(&tri!(read(&c, np, nl))).into_owned();
            let state = c.data_mut();
            let slot = kind.tag() as usize;
            let id = state.metric_next.get(slot).copied().unwrap_or(0);
            if let Some(next) = state.metric_next.get_mut(slot) {
                *next += 4;
            }
            state.metric_names.insert(id, name.clone());
            lock(&state.shared.metrics).define(kind, &name);
            tri!(write_u32(&mut c, idp, id));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: C<'_>, id: i32, delta: i64| -> R {
            let id = id as u32;
            let state = c.data();
            let Some(name) = state.metric_names.get(&id) else {
                return Ok(status::NOT_FOUND);
            };
            let mut metrics = lock(&state.shared.metrics);
            let Some(m) = metrics.by_name.get_mut(name) else {
                return Ok(status::NOT_FOUND);
            };
            Ok(match MetricKind::from_id(id) {
                Some(MetricKind::Counter) if delta > 0 => {
                    m.value += delta;
                    status::OK
                }
                Some(MetricKind::Gauge) => {
                    m.value += delta;
                    status::OK
                }
                _ => status::BAD_ARGUMENT,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: C<'_>, id: i32, value: i64| -> R {
            let id = id as u32;
            let state = c.data();
            let Some(name) = state.metric_names.get(&id) else {
                return Ok(status::NOT_FOUND);
            };
            let mut metrics = lock(&state.shared.metrics);
            let Some(m) = metrics.by_name.get_mut(name) else {
                return Ok(status::NOT_FOUND);
            };
            match MetricKind::from_id(id) {
                Some(MetricKind::Counter) => m.value += value,
                Some(MetricKind::Gauge) => m.value = value,
                Some(MetricKind::Histogram) => {
                    m.samples.push(value as u64);
                    m.value += 1;
                }
                None => return Ok(status::NOT_FOUND),
            }
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, rp: i32| -> R {
            let id = id as u32;
            let value = {
                let state = c.data();
                let Some(name) = state.metric_names.get(&id) else {
                    return Ok(status::NOT_FOUND);
                };
                match MetricKind::from_id(id) {
                    Some(MetricKind::Counter | MetricKind::Gauge) => lock(&state.shared.metrics)
                        .by_name
                        .get(name)
                        .map(|m| m.value),
                    _ => return Ok(status::BAD_ARGUMENT),
                }
            };
            let Some(value) = value else {
                return Ok(status::NOT_FOUND);
            };
            tri!(write_u64(&mut c, rp, value as u64));
            Ok(status::OK)
        },
    )?;

    // Outbound calls: this host has no clusters, like an Envoy without the named upstream.
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: C<'_>,
         _up: i32,
         _ul: i32,
         _hp: i32,
         _hl: i32,
         _bp: i32,
         _bl: i32,
         _tp: i32,
         _tl: i32,
         _timeout: i32,
         token: i32|
         -> R {
            c.data_mut()
                .note("harness: proxy_http_call refused (no upstream clusters)".into());
            tri!(write_u32(&mut c, token, 0));
            Ok(status::BAD_ARGUMENT)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_c: C<'_>,
         _a: i32,
         _b: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _j: i32,
         _k: i32,
         _t: i32,
         _r: i32|
         -> R { Ok(status::PARSE_FAILURE) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_c: C<'_>,
         _a: i32,
         _b: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _r: i32|
         -> R { Ok(status::PARSE_FAILURE) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: C<'_>, _t: i32, _p: i32, _l: i32, _e: i32| -> R { Ok(status::NOT_FOUND) },
    )?;
    linker.func_wrap("env", "proxy_grpc_cancel", |_c: C<'_>, _t: i32| -> R {
        Ok(status::NOT_FOUND)
    })?;
    linker.func_wrap("env", "proxy_grpc_close", |_c: C<'_>, _t: i32| -> R {
        Ok(status::NOT_FOUND)
    })?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: C<'_>, codep: i32, mpp: i32, msp: i32| -> R {
            tri!(write_u32(&mut c, codep, 0));
            tri!(write_u32(&mut c, mpp, 0));
            tri!(write_u32(&mut c, msp, 0));
            Ok(status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: C<'_>, _np: i32, _nl: i32, _ap: i32, _al: i32, _rp: i32, _rs: i32| -> R {
            Ok(status::NOT_FOUND)
        },
    )?;
    Ok(())
}
