//! The only way guest code reaches the network: a guest `fetch` (or Node
//! `http` request) becomes a [`FetchRequest`] handed to the host's
//! [`Fetcher`]. The engine defines the shapes and the per-request cap; the
//! policy (which addresses, timeouts, sizes) and the actual connection
//! belong to the node's egress (in a worker process, across the protocol),
//! never to the isolate.
//!
//! An exchange streams both ways: the request's head goes out first and its
//! body follows as the guest writes it; the response's head comes back as
//! soon as the upstream sends it and its body follows chunk by chunk, as
//! the guest reads it. Bodies are [`BodyStream`]s: a chunk at a time, the
//! end stated explicitly (a stream that stops without saying it ended
//! cleanly has failed, never a short body taken for a whole one).
//! Dropping the response future or the response body cancels the exchange
//! at the egress, connection included.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Largest request body a guest may send with one fetch.
pub const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;
/// Largest request head (URL, method and headers, in bytes) of one fetch:
/// four times what common servers take (16 KiB); a head goes to the node
/// as one frame.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

impl RequestHead {
    /// Its size as it goes out: URL, method, names and values.
    pub fn bytes(&self) -> usize {
        self.url.len() + self.method.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// What a guest asks for, ahead of any body byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestHead {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
}

/// The upstream's status and headers, ahead of its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// A body as it flows: `Ok` chunks, then the end of the stream when the
/// body is complete, or an `Err` (and then the end) when it is not.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

pub struct FetchRequest {
    /// The id of the request whose guest code made it.
    pub req_id: Arc<str>,
    pub head: RequestHead,
    /// `None`: no body at all. A request body that fails (the guest
    /// aborted, or broke a limit) abandons the whole exchange.
    pub body: Option<BodyStream>,
}

pub struct FetchResponse {
    pub head: ResponseHead,
    /// Dropping it before its end cancels the exchange.
    pub body: BodyStream,
}

/// Why a fetch failed; `code` reaches the guest as `err.code`.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    /// `egress_denied`, `egress_limit`, `egress_timeout`, `egress_failed`.
    pub code: String,
    pub message: String,
    /// What Node would call the failure, where the egress can tell
    /// (`ECONNREFUSED`, `ECONNRESET`, `ENOTFOUND`, `ETIMEDOUT`...): the
    /// Node `http` client reports it as the error's `code`.
    pub syscode: Option<String>,
}

impl FetchError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        FetchError { code: code.into(), message: message.into(), syscode: None }
    }

    pub fn with_syscode(mut self, syscode: &str) -> Self {
        self.syscode = Some(syscode.into());
        self
    }

    /// How the error crosses to the guest: `<code>[/<syscode>]: <message>`,
    /// which the runtime turns back into an `Error` with `.code`.
    pub fn to_guest(&self) -> String {
        match &self.syscode {
            Some(sys) => format!("{}/{sys}: {}", self.code, self.message),
            None => format!("{}: {}", self.code, self.message),
        }
    }
}

pub type FetchFuture = Pin<Box<dyn Future<Output = Result<FetchResponse, FetchError>>>>;

/// Performs fetches for guest code. Called on the isolate's thread; the
/// future need not be `Send`. Dropping the future before it resolves
/// cancels the exchange.
pub trait Fetcher: Send + Sync + 'static {
    fn fetch(&self, request: FetchRequest) -> FetchFuture;
}

/// The fetcher of an engine with no network: every fetch is denied.
pub struct NoNetwork;

impl Fetcher for NoNetwork {
    fn fetch(&self, request: FetchRequest) -> FetchFuture {
        Box::pin(async move { Err(FetchError::new("egress_denied", format!("no network egress is configured ({})", request.head.url))) })
    }
}

/// A bounded channel carrying one body: [`BodySender::send`] waits while
/// `capacity` chunks are unread (back-pressure), and the receiving
/// [`BodyReceiver`] is a [`BodyStream`].
pub fn body_channel(capacity: usize) -> (BodySender, BodyReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    let outcome = Arc::new(OnceLock::new());
    (BodySender { tx, outcome: outcome.clone() }, BodyReceiver { rx, outcome, done: false, keep: None })
}

/// The sending half of [`body_channel`]. Dropped without [`finish`]
/// (`BodySender::finish`), the body failed. Clones feed the same body.
#[derive(Clone)]
pub struct BodySender {
    tx: mpsc::Sender<Bytes>,
    outcome: Arc<OnceLock<Result<(), FetchError>>>,
}

impl BodySender {
    /// Waits for room, then queues `chunk`; `false` once the receiver is gone.
    pub async fn send(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Queues `chunk` if there is room now; `false` if not (or no receiver).
    pub fn try_send(&self, chunk: Bytes) -> bool {
        self.tx.try_send(chunk).is_ok()
    }

    /// Ends the body: complete with `Ok`, failed with `Err`. Never waits.
    pub fn finish(self, outcome: Result<(), FetchError>) {
        let _ = self.outcome.set(outcome);
    }

    /// Resolves when the receiver is gone (the exchange was cancelled).
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The receiving half of [`body_channel`].
pub struct BodyReceiver {
    rx: mpsc::Receiver<Bytes>,
    outcome: Arc<OnceLock<Result<(), FetchError>>>,
    done: bool,
    /// Dropped with the receiver: what cancels the producer (an abort guard).
    keep: Option<Box<dyn Send>>,
}

impl BodyReceiver {
    /// Keeps `guard` alive as long as this receiver, and drops it with it.
    pub fn keeping(mut self, guard: impl Send + 'static) -> Self {
        self.keep = Some(Box::new(guard));
        self
    }
}

impl Stream for BodyReceiver {
    type Item = Result<Bytes, FetchError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(chunk))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                match self.outcome.get() {
                    Some(Ok(())) => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e.clone()))),
                    None => Poll::Ready(Some(Err(FetchError::new("egress_failed", "the body ended before it was complete")))),
                }
            }
        }
    }
}

/// A body of one chunk known in full.
pub fn full_body(bytes: Bytes) -> BodyStream {
    Box::pin(futures::stream::iter((!bytes.is_empty()).then_some(Ok(bytes))))
}

/// Aborts a spawned task when dropped (unless disarmed).
pub struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl AbortOnDrop {
    pub fn new(task: tokio::task::AbortHandle) -> Self {
        AbortOnDrop(Some(task))
    }

    /// From now on dropping it leaves the task alone (for a task that ends
    /// itself and drops its own guard on the way).
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_body_ends_only_when_it_says_so() {
        let (tx, mut rx) = body_channel(2);
        assert!(tx.send(Bytes::from_static(b"a")).await);
        tx.finish(Ok(()));
        assert_eq!(rx.next().await.unwrap().unwrap(), "a");
        assert!(rx.next().await.is_none());

        let (tx, mut rx) = body_channel(2);
        assert!(tx.send(Bytes::from_static(b"a")).await);
        drop(tx);
        assert_eq!(rx.next().await.unwrap().unwrap(), "a");
        assert_eq!(rx.next().await.unwrap().unwrap_err().code, "egress_failed");
        assert!(rx.next().await.is_none());

        let (tx, mut rx) = body_channel(2);
        tx.finish(Err(FetchError::new("egress_limit", "too big")));
        assert_eq!(rx.next().await.unwrap().unwrap_err().code, "egress_limit");
    }
}
