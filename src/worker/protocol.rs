//! The node ↔ worker protocol: length-prefixed frames (u32, big endian)
//! over the worker's inherited unix socket (see `channel`), each one postcard-encoded
//! message. The first frame from a worker is `Ready` with the protocol
//! version; a node that gets any other version kills the worker.
//!
//! JSON appears only where the value is JSON anyway (`context.data`,
//! secrets, meta, error details); code, bodies and chunks travel as bytes.
//!
//! A guest egress exchange (`fetch`, Node `http`) streams both ways under
//! a worker-chosen `fid`, ids only ever increasing:
//!
//! ```text
//! worker: FetchStart{head, body} [FetchBody]* [FetchEnd]     FetchCredit*   [FetchAbort]
//! node:   FetchCredit*        FetchHead{Ok} [FetchChunk]* FetchDone  |  FetchHead{Err}
//! ```
//!
//! Either direction is flow-controlled by credit: at most [`FETCH_WINDOW`]
//! bytes of body may be unacknowledged per exchange and direction, each
//! chunk at most [`FETCH_CHUNK`] bytes. The node acknowledges request body
//! bytes as the upstream connection takes them, the worker response bytes
//! as the guest reads them; so neither side buffers more than a window for
//! a slow peer. A worker that sends past its window, past the request body
//! limit, a body after its end, or credit for bytes it was never sent is
//! killed. `FetchAbort` cancels an exchange at the node, connection
//! included; frames about an exchange that already ended (they cross its
//! end on the wire) are ignored.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::engine::fetch::{FetchError, RequestHead, ResponseHead};
use crate::engine::{Context, Error};

pub const VERSION: u32 = 7;

/// Body bytes one exchange may have unacknowledged, per direction.
pub const FETCH_WINDOW: usize = 128 * 1024;

/// Largest body chunk of one `FetchBody` or `FetchChunk` frame.
pub const FETCH_CHUNK: usize = 32 * 1024;

/// Largest frame either side accepts: a run carries code and body (each
/// bounded by the node's HTTP limits) and a reply chunk at most a response.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The one container this worker serves from now to its end.
    Assign { container: String },
    Run { id: u64, req_id: String, code: ByteBuf, context: WireContext },
    /// Finish what runs, then exit.
    Shutdown,
    /// The response head of exchange `fid`, or why there is none (then
    /// the exchange is over).
    FetchHead { fid: u64, result: Result<ResponseHead, FetchError> },
    /// Response body bytes, within the credit the worker granted.
    FetchChunk { fid: u64, data: ByteBuf },
    /// The response body is complete (`Ok`) or failed; the exchange is over.
    FetchDone { fid: u64, result: Result<(), FetchError> },
    /// The upstream took `bytes` more of the request body: the worker may
    /// send that many more.
    FetchCredit { fid: u64, bytes: u32 },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// Jailed, snapshot loaded, isolate ready; `jail` says what applied.
    Ready { version: u32, pid: u32, jail: Vec<crate::jail::LayerReport> },
    /// Status and headers; `body` is the whole body, or `None` when chunks follow.
    Head { id: u64, status: u16, headers: Vec<(String, String)>, body: Option<ByteBuf> },
    Chunk { id: u64, data: ByteBuf },
    End { id: u64 },
    /// The run failed; `error` is the JSON of an [`Error`].
    Failed { id: u64, error: ByteBuf },
    /// Guest egress for request `req_id`: the node applies its policy
    /// (and counts it against that request's subrequests) and answers
    /// with `FetchHead`. With `body`, `FetchBody` chunks and `FetchEnd`
    /// follow.
    FetchStart { fid: u64, req_id: String, head: RequestHead, body: bool },
    FetchBody { fid: u64, data: ByteBuf },
    /// The request body is complete.
    FetchEnd { fid: u64 },
    /// The guest read `bytes` more of the response body: the node may
    /// send that many more.
    FetchCredit { fid: u64, bytes: u32 },
    /// The guest gave up on the exchange (or failed its request body).
    FetchAbort { fid: u64 },
    /// A guest console line. The node attributes it to the container this
    /// worker is assigned to, and keeps `req_id` only if it names a request
    /// the node gave this worker.
    Log { req_id: String, level: u8, msg: String },
    /// The worker's last frame: a limit fired and could not be enforced in
    /// the isolate (its stop did not land), so the worker ends itself.
    /// `error` is the JSON of the limit's [`Error`]; the node fails the
    /// oldest request in flight with it (the figure is measured on that
    /// one) and the others as recycled.
    Overrun { error: ByteBuf },
}

/// [`Context`] on the wire: JSON maps as JSON text.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireContext {
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Option<ByteBuf>,
    pub content_type: Option<String>,
    pub data: ByteBuf,
    pub secrets: ByteBuf,
    pub meta: ByteBuf,
    pub method: String,
    pub url: String,
}

fn json_map(map: &serde_json::Map<String, serde_json::Value>) -> ByteBuf {
    if map.is_empty() {
        return ByteBuf::new();
    }
    ByteBuf::from(serde_json::to_vec(map).unwrap_or_default())
}

fn map_json(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    if bytes.is_empty() {
        return Ok(Default::default());
    }
    serde_json::from_slice(bytes).map_err(Error::internal)
}

impl From<Context> for WireContext {
    fn from(c: Context) -> Self {
        WireContext {
            data: json_map(&c.data),
            secrets: json_map(&c.secrets),
            meta: json_map(&c.meta),
            query: c.query,
            headers: c.headers,
            body: c.body.map(|b| ByteBuf::from(Vec::from(b))),
            content_type: c.content_type,
            method: c.method,
            url: c.url,
        }
    }
}

impl TryFrom<WireContext> for Context {
    type Error = Error;
    fn try_from(w: WireContext) -> Result<Self, Error> {
        Ok(Context {
            data: map_json(&w.data)?,
            secrets: map_json(&w.secrets)?,
            meta: map_json(&w.meta)?,
            query: w.query,
            headers: w.headers,
            body: w.body.map(|b| Bytes::from(b.into_vec())),
            content_type: w.content_type,
            method: w.method,
            url: w.url,
        })
    }
}

pub fn error_bytes(err: &Error) -> ByteBuf {
    ByteBuf::from(serde_json::to_vec(err).unwrap_or_default())
}

pub fn error_from_bytes(bytes: &[u8]) -> Error {
    serde_json::from_slice(bytes).unwrap_or_else(|e| Error::internal(format!("unreadable worker error: {e}")))
}

/// Frames one message type out and another in.
pub struct Codec<In, Out> {
    frames: LengthDelimitedCodec,
    _types: std::marker::PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for Codec<In, Out> {
    fn default() -> Self {
        Self::with_max_frame(MAX_FRAME)
    }
}

impl<In, Out> Codec<In, Out> {
    /// A codec that refuses incoming frames over `max` bytes.
    pub fn with_max_frame(max: usize) -> Self {
        let frames = LengthDelimitedCodec::builder().max_frame_length(max).new_codec();
        Codec { frames, _types: std::marker::PhantomData }
    }
}

/// Largest frame a node accepts from a worker whose responses are capped
/// at `response_bytes`: a whole reply or a guest fetch, plus framing.
pub fn max_worker_frame(response_bytes: u64) -> usize {
    (response_bytes as usize).max(crate::engine::fetch::MAX_REQUEST_BODY) + 64 * 1024
}

impl<In: for<'de> Deserialize<'de>, Out> Decoder for Codec<In, Out> {
    type Item = In;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, std::io::Error> {
        let Some(frame) = self.frames.decode(src)? else { return Ok(None) };
        postcard::from_bytes(&frame).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

impl<In, Out: Serialize> Encoder<Out> for Codec<In, Out> {
    type Error = std::io::Error;
    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        let bytes = postcard::to_stdvec(&item).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.frames.encode(Bytes::from(bytes), dst)
    }
}

/// The node's end: sends `ToWorker`, receives `FromWorker`.
pub type NodeCodec = Codec<FromWorker, ToWorker>;
/// The worker's end.
pub type WorkerCodec = Codec<ToWorker, FromWorker>;

/// Writes everything `rx` yields to `sink`, one flush (one write) per
/// batch of messages ready at once rather than one per message. Ends when
/// `rx` closes, or with the sink's error.
///
/// When `busy()` says more senders are at work, the first message of a
/// batch yields before it is written: tokio defers a yielding task until
/// its thread has run the tasks already woken (or, under load, until the
/// runtime's next maintenance pass, 61 polls at most), so those woken
/// together with its sender add theirs to the batch. Without it a
/// multi-thread runtime runs this task straight after each sender (its
/// LIFO slot): under load the node wrote one frame per `writev` and woke
/// its worker once per request. Only when busy: a lone request would wait
/// for an idle epoll poll for nothing.
pub async fn write_batched<M, S>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<M>,
    mut sink: S,
    mut taken: impl FnMut(&M),
    busy: impl Fn() -> bool,
) -> Result<(), S::Error>
where
    S: futures::Sink<M> + Unpin,
{
    use futures::SinkExt;
    while let Some(first) = rx.recv().await {
        if busy() {
            tokio::task::yield_now().await;
        }
        taken(&first);
        sink.feed(first).await?;
        while let Ok(more) = rx.try_recv() {
            taken(&more);
            sink.feed(more).await?;
        }
        sink.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    /// Items sent and not yet flushed, and each flushed batch.
    type Recorded = (Vec<u32>, Vec<Vec<u32>>);

    /// Records the batches it was flushed in.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<Recorded>>);

    impl futures::Sink<u32> for Batches {
        type Error = std::convert::Infallible;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: u32) -> Result<(), Self::Error> {
            self.0.lock().unwrap().0.push(item);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let mut state = self.0.lock().unwrap();
            let batch = std::mem::take(&mut state.0);
            if !batch.is_empty() {
                state.1.push(batch);
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    /// Eight senders woken at once, each sending one message from its own
    /// task, on the node's kind of runtime: how many writes they took.
    fn batches_of_woken_senders(busy: bool) -> Vec<Vec<u32>> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let sink = Batches::default();
        let writes_to = sink.clone();
        // All on the runtime's one worker thread, so that every wake-up
        // stays in its local queue, as on a node's thread under load.
        let run = rt.spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let writer = tokio::spawn(super::write_batched(rx, writes_to, |_| {}, move || busy));
            let go = Arc::new(tokio::sync::Barrier::new(9));
            let senders: Vec<_> = (0..8)
                .map(|i| {
                    let (tx, go) = (tx.clone(), go.clone());
                    tokio::spawn(async move {
                        go.wait().await;
                        tx.send(i).unwrap();
                    })
                })
                .collect();
            go.wait().await;
            for sender in senders {
                sender.await.unwrap();
            }
            drop(tx);
            writer.await.unwrap().unwrap();
        });
        rt.block_on(run).unwrap();
        let batches = sink.0.lock().unwrap().1.clone();
        assert_eq!(batches.iter().flatten().count(), 8, "{batches:?}");
        batches
    }

    #[test]
    fn a_busy_writer_takes_what_senders_woken_together_send_in_one_write() {
        let busy = batches_of_woken_senders(true);
        assert_eq!(busy.len(), 1, "{busy:?}");
        // The case it exists for: without the wait, the runtime runs the
        // writer right after the first sender.
        let eager = batches_of_woken_senders(false);
        assert!(eager.len() > 1, "{eager:?}");
    }
}
