//! The requests running in one isolate, keyed by the small integer id the
//! guest runner knows them by. Ops (guest side) and the isolate host (Rust
//! side) settle them here; whichever outcome comes first wins and every later
//! one is ignored, so a webtask that calls back twice, or fails after it
//! answered, cannot confuse its caller.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::host::Permit;
use super::request::{Reply, ReplyBody};
use super::Error;

pub type ReplyTx = oneshot::Sender<Result<Reply, Error>>;

struct Slot {
    reply: Option<ReplyTx>,
    /// `res.writeHead`'s status and headers, held until the first body
    /// byte (or `end`, or `flushHeaders`) as Node holds them: a first write
    /// past the response limit can then still fail the request whole.
    head: Option<(u16, Vec<(String, String)>)>,
    stream: Option<mpsc::UnboundedSender<Result<Bytes, Error>>>,
    sent: u64,
    cpu_start_ns: u64,
    deadline: Instant,
    req_id: Arc<str>,
    /// Console bytes this request logged.
    logged: u64,
    /// Fetches this request made.
    subrequests: u32,
    /// Returned before the outcome is sent, so a caller that sees the
    /// outcome never finds its request still counted as running.
    permit: Option<Permit>,
}

/// Why a fetch was not counted against its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its request has answered (or failed): work a request left behind,
    /// a timer say, cannot start subrequests of its own.
    Finished,
    /// No request at all: code running outside any request's context.
    NoRequest,
    /// The request already made this many, its limit.
    Limit(u32),
}

/// Requests in flight in one isolate.
pub struct Inflight {
    slots: HashMap<u32, Slot>,
    next_id: u32,
    response_limit: u64,
    /// Console output with no live request (timers left running): budgeted
    /// per isolate, as one request's would be, but per second.
    background: Background,
}

struct Background {
    rate: Option<super::console::Rate>,
    /// The "dropped" marker was logged since the bucket last ran dry.
    marked: bool,
}

impl Inflight {
    pub fn new(response_limit: u64) -> Self {
        Inflight { slots: HashMap::new(), next_id: 0, response_limit, background: Background { rate: None, marked: false } }
    }

    pub fn insert(&mut self, reply: ReplyTx, req_id: Arc<str>, cpu_start_ns: u64, deadline: Instant, permit: Permit) -> u32 {
        // Ids are positive small integers (0 means "no request" to the guest)
        // and never reused while a request with that id is alive.
        loop {
            self.next_id = self.next_id.checked_add(1).filter(|n| *n <= 0x3fff_ffff).unwrap_or(1);
            if !self.slots.contains_key(&self.next_id) {
                break;
            }
        }
        let slot = Slot { reply: Some(reply), head: None, stream: None, sent: 0, cpu_start_ns, deadline, req_id, logged: 0, subrequests: 0, permit: Some(permit) };
        self.slots.insert(self.next_id, slot);
        self.next_id
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn req_id(&self, id: u32) -> Option<&Arc<str>> {
        self.slots.get(&id).map(|s| &s.req_id)
    }

    /// The wall-clock deadline of request `id`, if it is live.
    pub fn deadline(&self, id: u32) -> Option<Instant> {
        self.slots.get(&id).map(|s| s.deadline)
    }

    /// Counts one fetch of request `id`; its request id, or why the fetch
    /// may not start.
    pub fn count_subrequest(&mut self, id: u32, limit: u32) -> Result<Arc<str>, Refused> {
        if id == 0 {
            return Err(Refused::NoRequest);
        }
        let slot = self.slots.get_mut(&id).ok_or(Refused::Finished)?;
        slot.subrequests += 1;
        if slot.subrequests > limit {
            return Err(Refused::Limit(limit));
        }
        Ok(slot.req_id.clone())
    }

    /// Counts `bytes` of console output against request `id`'s log budget:
    /// `Some(true)` to log, `Some(false)` to log the one "budget spent"
    /// marker, `None` to drop. Output with no live request (left-over
    /// timers) draws on the isolate's own `budget` per second instead, with
    /// one marker each time that runs dry.
    pub fn log_budget(&mut self, id: u32, bytes: usize, budget: u64) -> Option<bool> {
        let Some(slot) = self.slots.get_mut(&id) else {
            let bg = &mut self.background;
            let rate = bg.rate.get_or_insert_with(|| super::console::Rate::new(budget));
            return match (rate.take(bytes as u64), bg.marked) {
                (true, _) => {
                    bg.marked = false;
                    Some(true)
                }
                (false, false) => {
                    bg.marked = true;
                    Some(false)
                }
                (false, true) => None,
            };
        };
        let before = slot.logged;
        slot.logged = before.saturating_add(bytes as u64);
        match (before <= budget, slot.logged <= budget) {
            (_, true) => Some(true),
            (true, false) => Some(false),
            (false, false) => None,
        }
    }

    /// CPU clock at which the oldest request started.
    pub fn oldest_cpu_start(&self) -> Option<u64> {
        self.slots.values().map(|s| s.cpu_start_ns).min()
    }

    pub fn earliest_deadline(&self) -> Option<Instant> {
        self.slots.values().map(|s| s.deadline).min()
    }

    /// Ids whose wall-clock deadline has passed.
    pub fn expired(&self, now: Instant) -> Vec<u32> {
        self.slots.iter().filter(|(_, s)| s.deadline <= now).map(|(id, _)| *id).collect()
    }

    /// A callback-model result: `200` with the JSON value.
    pub fn complete(&mut self, id: u32, json: String) {
        let Some(mut slot) = self.slots.remove(&id) else { return };
        if json.len() as u64 > self.response_limit {
            return settle(&mut slot, Err(Error::ResponseLimit { limit_bytes: self.response_limit }));
        }
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        let reply = Reply { status: 200, headers, body: ReplyBody::Full(Bytes::from(json)) };
        settle(&mut slot, Ok(reply));
    }

    /// Ends request `id` with `err`; a streamed response is cut short.
    pub fn fail(&mut self, id: u32, err: Error) {
        if let Some(mut slot) = self.slots.remove(&id) {
            settle(&mut slot, Err(err));
        }
    }

    /// Ends every request: `culprit` (or, without one, the oldest, which
    /// a CPU figure is measured on) with `err`, the others with `others`.
    pub fn fail_all(&mut self, culprit: Option<u32>, err: &Error, others: &Error) {
        let culprit = culprit
            .filter(|id| self.slots.contains_key(id))
            // Requests started within one CPU reading tie: the first id wins.
            .or_else(|| self.slots.iter().min_by_key(|(id, s)| (s.cpu_start_ns, **id)).map(|(id, _)| *id));
        for (id, mut slot) in self.slots.drain() {
            let e = if Some(id) == culprit { err } else { others };
            settle(&mut slot, Err(e.clone()));
        }
    }

    /// `res.writeHead`: status and headers, sent with the first body bytes
    /// or at `end` (`res.flushHeaders()` writes an empty chunk); the body
    /// streams.
    pub fn head(&mut self, id: u32, status: u16, headers: Vec<(String, String)>) {
        // Counted as they go out, in UTF-8 (the runtime's own check counts
        // UTF-16 code units, a third of what CJK text takes).
        let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes as u64 > self.response_limit {
            return self.fail(id, Error::ResponseLimit { limit_bytes: self.response_limit });
        }
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if slot.reply.is_some() {
            slot.head = Some((status, headers));
        }
    }

    /// `res.write`; false once the request is over (or just went over its
    /// response limit and was ended: failed whole if nothing had gone out).
    pub fn write(&mut self, id: u32, chunk: Bytes) -> bool {
        let limit = self.response_limit;
        let Some(slot) = self.slots.get_mut(&id) else { return false };
        slot.sent += chunk.len() as u64;
        if slot.sent > limit {
            self.fail(id, Error::ResponseLimit { limit_bytes: limit });
            return false;
        }
        slot.send_head();
        match &slot.stream {
            Some(_) if chunk.is_empty() => true,
            Some(tx) => tx.send(Ok(chunk)).is_ok(),
            None => false,
        }
    }

    /// `res.end`: the head goes out if it has not, and the stream is closed
    /// by dropping its sender.
    pub fn end(&mut self, id: u32) {
        if let Some(mut slot) = self.slots.remove(&id) {
            slot.permit.take();
            slot.send_head();
        }
    }
}

impl Slot {
    /// Sends the held head, if any, opening the body stream.
    fn send_head(&mut self) {
        let Some((status, headers)) = self.head.take() else { return };
        let Some(reply) = self.reply.take() else { return };
        let (tx, rx) = mpsc::unbounded_channel();
        self.stream = Some(tx);
        let _ = reply.send(Ok(Reply { status, headers, body: ReplyBody::Stream(rx) }));
    }
}

fn settle(slot: &mut Slot, outcome: Result<Reply, Error>) {
    slot.permit.take();
    if let Some(reply) = slot.reply.take() {
        let _ = reply.send(outcome);
    } else if let (Some(tx), Err(err)) = (slot.stream.take(), outcome) {
        let _ = tx.send(Err(err));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subrequests_count_against_a_live_request_only() {
        let mut inflight = Inflight::new(0);
        let (reply, _rx) = oneshot::channel();
        let id = inflight.insert(reply, "r1".into(), 0, Instant::now(), Permit::from_counter(Default::default()));
        assert_eq!(inflight.count_subrequest(id, 2).as_deref(), Ok("r1"));
        assert_eq!(inflight.count_subrequest(id, 2).as_deref(), Ok("r1"));
        assert_eq!(inflight.count_subrequest(id, 2), Err(Refused::Limit(2)));
        // Left-over work of a request that has answered.
        assert_eq!(inflight.count_subrequest(id + 1, 2), Err(Refused::Finished));
        assert_eq!(inflight.count_subrequest(0, 2), Err(Refused::NoRequest));
    }

    #[test]
    fn output_without_a_request_has_a_budget_of_its_own() {
        let mut inflight = Inflight::new(0);
        // No request 7: background output, 1000 bytes a second.
        assert_eq!(inflight.log_budget(7, 600, 1000), Some(true));
        assert_eq!(inflight.log_budget(7, 600, 1000), Some(false));
        assert_eq!(inflight.log_budget(7, 600, 1000), None);
        assert_eq!(inflight.log_budget(7, 600, 1000), None);
    }
}
