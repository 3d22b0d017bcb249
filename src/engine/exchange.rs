//! Guest egress exchanges in flight in one isolate, and the ops the
//! runtime's `fetch` and Node `http` client drive them with. A guest holds
//! an exchange only by a small integer (never a host object):
//!
//! - `op_wt_fetch_start`: counted against the request's subrequest budget,
//!   the head (and a body known in full, or the first chunk of a streamed
//!   one) handed to the host's [`Fetcher`]; returns the exchange's id.
//! - `op_wt_fetch_outgoing`: the copy of request body bytes an exchange
//!   holds until they are sent (charged to the ArrayBuffer limit);
//! - `op_wt_fetch_write` / `op_wt_fetch_finish`: the streamed request body.
//!   A write resolves once the chunk is queued; at most a few are, so a
//!   guest writing faster than the upstream reads waits (back-pressure).
//! - `op_wt_fetch_head`: the response status and headers.
//! - `op_wt_fetch_read` / `op_wt_fetch_take`: the next response chunk as
//!   the upstream sends it: its length (0 at the end), then its bytes into
//!   a buffer the guest allocated, so they count against the isolate's
//!   ArrayBuffer cap like any guest buffer.
//! - `op_wt_fetch_abort`: cancels it, at the egress too.
//!
//! An exchange belongs to the request that started it and lives at most
//! until that request's wall-clock deadline, even if the request answered
//! earlier; then it fails with `egress_timeout` and is dropped (the isolate
//! host sweeps at that deadline, so an exchange nobody reads does not hold
//! its upstream, or the node's count of fetches in flight, any longer). Errors reach
//! the guest as `"<code>[/<syscode>]: <message>"` (see `FetchError::to_guest`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::{op2, v8, JsBuffer, OpState};
use deno_error::JsErrorBox;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::alloc::{budget, guest_bytes};
use super::fetch::{body_channel, full_body, BodySender, BodyStream, FetchFuture, FetchRequest, RequestHead, ResponseHead, MAX_REQUEST_BODY, MAX_REQUEST_HEAD};
use super::inflight::{Inflight, Refused};
use super::ops::Egress;

/// Request body chunks queued between the guest and the egress.
const UPLOAD_CHUNKS: usize = 4;

/// Exchanges one isolate holds at once; past it new ones are refused.
const MAX_EXCHANGES: usize = 1024;

/// How the request body of a new exchange comes.
const BODY_NONE: u32 = 0;
const BODY_FULL: u32 = 1;
const BODY_STREAM: u32 = 2;

/// The exchanges of one isolate, by id.
#[derive(Default)]
pub struct Exchanges {
    map: HashMap<u32, Exchange>,
    next: u32,
}

struct Exchange {
    /// The wall-clock deadline of the request that started it.
    deadline: Instant,
    /// The request body, while the guest is still writing it.
    upload: Option<BodySender>,
    uploaded: usize,
    /// Until the head has been read.
    response: Option<FetchFuture>,
    /// From the head on, until read to its end.
    body: Option<BodyStream>,
    /// A chunk read from `body` that the guest has not taken yet.
    chunk: Option<Bytes>,
    /// Fired when the exchange goes: ops waiting on it stop waiting.
    cancel: CancellationToken,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Exchanges {
    fn insert(&mut self, exchange: Exchange) -> u32 {
        loop {
            self.next = self.next.checked_add(1).filter(|n| *n <= 0x3fff_ffff).unwrap_or(1);
            if !self.map.contains_key(&self.next) {
                break;
            }
        }
        self.map.insert(self.next, exchange);
        self.next
    }

    /// Drops the exchanges that outlived their request's deadline.
    pub fn sweep(&mut self, now: Instant) {
        self.map.retain(|_, e| e.deadline > now);
    }

    /// When the next exchange outlives its request's deadline.
    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.map.values().map(|e| e.deadline).min()
    }
}

fn err(code: &str, message: impl std::fmt::Display) -> JsErrorBox {
    JsErrorBox::generic(format!("{code}: {message}"))
}

fn aborted() -> JsErrorBox {
    err("aborted", "the exchange was aborted")
}

fn outlived() -> JsErrorBox {
    err("egress_timeout", "the exchange outlived the wall-clock limit of the request that started it")
}

fn exchanges(state: &mut OpState) -> &mut Exchanges {
    state.borrow_mut::<Exchanges>()
}

/// A fresh copy of request body bytes for [`op_wt_fetch_start`] or
/// [`op_wt_fetch_write`], in a buffer of the isolate's own allocator: the
/// exchange holds that buffer's memory, not a copy of its own, until the
/// bytes are sent, so bytes waiting to go out (fetches started and writes
/// not awaited) count against the container's ArrayBuffer limit. No guest
/// code can reach the copy to change it in flight.
#[op2]
pub fn op_wt_fetch_outgoing<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[buffer] bytes: &[u8],
) -> Result<v8::Local<'s, v8::Uint8Array>, JsErrorBox> {
    let budget = budget(scope);
    // guest_bytes makes room (a collection first) and refuses past the cap;
    // any refusal is this host error, whose code the shim reads.
    guest_bytes(scope, &budget, bytes.len(), |out| out.copy_from_slice(bytes)).map_err(|_| {
        budget.forget_refusal();
        let (cap_mib, left) = (budget.cap() >> 20, budget.remaining());
        let message = format_args!(
            "{} bytes of request body would pass this container's ArrayBuffer memory limit of {cap_mib} MiB ({left} bytes left)",
            bytes.len()
        );
        err("arraybuffer_limit", message)
    })
}

/// Starts an exchange; `mode` says how its body comes ([`BODY_NONE`],
/// [`BODY_FULL`]: `body` is all of it, [`BODY_STREAM`]: `body` is its
/// first chunk and writes follow).
#[op2]
#[smi]
pub fn op_wt_fetch_start(
    state: &mut OpState,
    #[smi] id: u32,
    #[serde] head: RequestHead,
    #[smi] mode: u32,
    #[buffer] body: JsBuffer,
) -> Result<u32, JsErrorBox> {
    if body.len() > MAX_REQUEST_BODY {
        return Err(err("egress_limit", format_args!("request body larger than {MAX_REQUEST_BODY} bytes")));
    }
    let head_bytes = head.bytes();
    if head_bytes > MAX_REQUEST_HEAD {
        return Err(err("egress_limit", format_args!("request head of {head_bytes} bytes (URL and headers) past the limit of {MAX_REQUEST_HEAD} bytes")));
    }
    let body = Bytes::from_owner(body);
    let (fetcher, deadline, req_id) = {
        let egress = state.borrow::<Egress>();
        let mut inflight = state.borrow::<Rc<RefCell<Inflight>>>().borrow_mut();
        let req_id = match inflight.count_subrequest(id, egress.max_subrequests) {
            Ok(req_id) => req_id,
            Err(Refused::Limit(limit)) => {
                return Err(err("egress_limit", format_args!("more than {limit} subrequests in one request")));
            }
            Err(Refused::Finished) => {
                return Err(err("request_finished", "the request this work belongs to has finished; it cannot fetch"));
            }
            Err(Refused::NoRequest) => {
                return Err(err("request_finished", "this work belongs to no request (outside any request's context); it cannot fetch"));
            }
        };
        (egress.fetcher.clone(), inflight.deadline(id).unwrap_or_else(Instant::now), req_id)
    };
    let table = exchanges(state);
    table.sweep(Instant::now());
    if table.map.len() >= MAX_EXCHANGES {
        return Err(err("egress_limit", format_args!("more than {MAX_EXCHANGES} exchanges open at once")));
    }
    let uploaded = body.len();
    let (upload, stream): (Option<BodySender>, Option<BodyStream>) = match mode {
        BODY_NONE => (None, None),
        BODY_FULL if body.is_empty() => (None, None),
        BODY_FULL => (None, Some(full_body(body))),
        BODY_STREAM => {
            let (tx, rx) = body_channel(UPLOAD_CHUNKS);
            // A fresh channel has room for the first chunk.
            if !body.is_empty() {
                tx.try_send(body);
            }
            (Some(tx), Some(Box::pin(rx)))
        }
        _ => return Err(JsErrorBox::type_error("invalid body mode")),
    };
    let response = fetcher.fetch(FetchRequest { req_id, head, body: stream });
    let exchange = Exchange { deadline, upload, uploaded, response: Some(response), body: None, chunk: None, cancel: CancellationToken::new() };
    Ok(table.insert(exchange))
}

/// Queues one chunk of a streamed request body; resolves once there was room.
#[op2]
pub async fn op_wt_fetch_write(state: Rc<RefCell<OpState>>, #[smi] rid: u32, #[buffer] chunk: JsBuffer) -> Result<(), JsErrorBox> {
    let (upload, cancel, deadline) = {
        let mut state = state.borrow_mut();
        let table = exchanges(&mut state);
        let Some(exchange) = table.map.get_mut(&rid) else { return Err(aborted()) };
        exchange.uploaded = exchange.uploaded.saturating_add(chunk.len());
        if exchange.uploaded > MAX_REQUEST_BODY {
            // Dropped unfinished: the upstream never sees a short body as whole.
            table.map.remove(&rid);
            return Err(err("egress_limit", format_args!("request body larger than {MAX_REQUEST_BODY} bytes")));
        }
        let Some(upload) = exchange.upload.clone() else {
            return Err(err("egress_failed", "the request body has already ended"));
        };
        (upload, exchange.cancel.clone(), exchange.deadline)
    };
    if chunk.is_empty() {
        return Ok(());
    }
    let chunk = Bytes::from_owner(chunk);
    tokio::select! {
        sent = upload.send(chunk) => match sent {
            true => Ok(()),
            // The egress stopped reading: the exchange failed, and reading
            // its head or body says why.
            false => Err(err("egress_failed", "the upstream no longer takes the request body")),
        },
        () = cancel.cancelled() => Err(aborted()),
        () = tokio::time::sleep_until(deadline) => {
            state.borrow_mut().borrow_mut::<Exchanges>().map.remove(&rid);
            Err(outlived())
        }
    }
}

/// Ends a streamed request body: it is complete.
#[op2(fast)]
pub fn op_wt_fetch_finish(state: &mut OpState, #[smi] rid: u32) {
    if let Some(upload) = exchanges(state).map.get_mut(&rid).and_then(|e| e.upload.take()) {
        upload.finish(Ok(()));
    }
}

/// The response head, once the upstream sent it.
#[op2]
#[serde]
pub async fn op_wt_fetch_head(state: Rc<RefCell<OpState>>, #[smi] rid: u32) -> Result<ResponseHead, JsErrorBox> {
    let (response, cancel, deadline) = {
        let mut state = state.borrow_mut();
        let Some(exchange) = exchanges(&mut state).map.get_mut(&rid) else { return Err(aborted()) };
        let Some(response) = exchange.response.take() else { return Err(JsErrorBox::type_error("the response head was already read")) };
        (response, exchange.cancel.clone(), exchange.deadline)
    };
    let outcome = within(&state, rid, &cancel, deadline, response).await?;
    let mut state = state.borrow_mut();
    let table = exchanges(&mut state);
    match outcome {
        Ok(response) => {
            let Some(exchange) = table.map.get_mut(&rid) else { return Err(aborted()) };
            exchange.body = Some(response.body);
            Ok(response.head)
        }
        Err(e) => {
            table.map.remove(&rid);
            Err(JsErrorBox::generic(e.to_guest()))
        }
    }
}

/// `work` for exchange `rid`, unless the exchange is aborted first, or
/// outlives the deadline of the request that started it (then it goes).
async fn within<T>(
    state: &Rc<RefCell<OpState>>,
    rid: u32,
    cancel: &CancellationToken,
    deadline: Instant,
    work: impl std::future::Future<Output = T>,
) -> Result<T, JsErrorBox> {
    tokio::select! {
        out = work => Ok(out),
        () = cancel.cancelled() => Err(aborted()),
        () = tokio::time::sleep_until(deadline) => {
            state.borrow_mut().borrow_mut::<Exchanges>().map.remove(&rid);
            Err(outlived())
        }
    }
}

/// Reads the next chunk of the response body as the upstream sent it and
/// resolves with its length, 0 at the end (chunks are never empty); the
/// bytes wait for [`op_wt_fetch_take`].
#[op2]
pub async fn op_wt_fetch_read(state: Rc<RefCell<OpState>>, #[smi] rid: u32) -> Result<u32, JsErrorBox> {
    let (mut body, cancel, deadline) = {
        let mut state = state.borrow_mut();
        let Some(exchange) = exchanges(&mut state).map.get_mut(&rid) else { return Err(aborted()) };
        if exchange.chunk.is_some() {
            return Err(JsErrorBox::type_error("the previous chunk was not taken"));
        }
        let Some(body) = exchange.body.take() else { return Err(JsErrorBox::type_error("no response body to read")) };
        (body, exchange.cancel.clone(), exchange.deadline)
    };
    let next = within(&state, rid, &cancel, deadline, body.next()).await?;
    let mut state = state.borrow_mut();
    let table = exchanges(&mut state);
    match next {
        Some(Ok(chunk)) => {
            let Some(exchange) = table.map.get_mut(&rid) else { return Err(aborted()) };
            exchange.body = Some(body);
            let len = chunk.len() as u32;
            exchange.chunk = Some(chunk);
            Ok(len)
        }
        None => {
            table.map.remove(&rid);
            Ok(0)
        }
        Some(Err(e)) => {
            table.map.remove(&rid);
            Err(JsErrorBox::generic(e.to_guest()))
        }
    }
}

/// Copies the chunk [`op_wt_fetch_read`] announced into `out`, which must
/// be exactly its length.
#[op2(fast)]
pub fn op_wt_fetch_take(state: &mut OpState, #[smi] rid: u32, #[buffer] out: &mut [u8]) -> Result<(), JsErrorBox> {
    let Some(exchange) = exchanges(state).map.get_mut(&rid) else { return Err(aborted()) };
    match exchange.chunk.take() {
        Some(chunk) if chunk.len() == out.len() => {
            out.copy_from_slice(&chunk);
            Ok(())
        }
        Some(chunk) => {
            exchange.chunk = Some(chunk);
            Err(JsErrorBox::range_error("the buffer is not the chunk's length"))
        }
        None => Err(JsErrorBox::type_error("no chunk was read")),
    }
}

/// Cancels an exchange, at the egress too; ops waiting on it fail with
/// `aborted`.
#[op2(fast)]
pub fn op_wt_fetch_abort(state: &mut OpState, #[smi] rid: u32) {
    exchanges(state).map.remove(&rid);
}
