//! The node ↔ worker channel: the worker's unix socket as tokio reads and
//! writes it, registered with the reactor for reading only. Both ends use
//! it; the frames on it are `protocol`'s business.
//!
//! Why not `tokio::net::UnixStream`: that registers for readability and
//! writability alike, and a unix socket signals writability to its peer's
//! epoll every time it reads from it (the kernel's `unix_write_space` does
//! not ask whether the writer ever ran out of room). Every request then
//! woke the node's thread and the worker's once more for nothing, about a
//! quarter of a worker's CPU per request on a two-core VM, where waking a
//! thread on another CPU is an interprocessor interrupt. Here a write goes
//! straight to the socket; only once one finds it full is a duplicate
//! descriptor (epoll keeps one interest per descriptor) registered for
//! writability, until a write gets all its bytes in.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct Channel {
    socket: AsyncFd<UnixStream>,
    room: Room,
    /// The runtime the socket is registered with: the duplicate must be too,
    /// whichever runtime polls a write.
    runtime: tokio::runtime::Handle,
    /// Set once [`Channel::last_words`] was asked for: held around every
    /// write, with whether the last one got all its bytes in.
    gate: Option<Arc<Mutex<bool>>>,
}

/// One frame another thread may write to a channel whose own writer is
/// stuck (a worker whose isolate thread, which runs its event loop, is in
/// a native built-in that will not return soon), right before the process
/// ends. Written only at a frame boundary: never into the middle of a
/// frame the channel's writer got only partly out.
pub struct LastWords {
    socket: UnixStream,
    gate: Arc<Mutex<bool>>,
}

impl LastWords {
    /// Writes `bytes` (one whole frame) if the channel is between frames
    /// and has room for them; whether it did. The channel writes nothing
    /// after this, whatever it says: the caller is about to end the process.
    pub fn say(self, bytes: &[u8]) -> bool {
        let aligned = self.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let said = *aligned && (&self.socket).write_all(bytes).is_ok();
        // Held for good: a writer that wakes up now waits for the exit.
        std::mem::forget(aligned);
        said
    }
}

/// The duplicate descriptor a blocked write waits on. Made with the
/// channel, so a process out of descriptors fails at spawn, not when a
/// reply first fills the socket.
enum Room {
    Spare(OwnedFd),
    /// Registered for writability: a write is waiting, or the last one
    /// only got part of its bytes in (the socket is full).
    Waiting(AsyncFd<OwnedFd>),
    /// Only while being moved between the two.
    Gone,
}

impl Channel {
    /// Takes one end of a connected unix stream socket. Must be called
    /// within a tokio runtime with IO enabled.
    ///
    /// A write future dropped while it waits for room leaves the duplicate
    /// registered, so the peer's reads wake this side again until the next
    /// write gets all its bytes in; the node and the worker only drop
    /// their writers with the channel.
    pub fn new(socket: OwnedFd) -> io::Result<Channel> {
        let spare = socket.try_clone()?;
        let socket = UnixStream::from(socket);
        socket.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays open
        // and the same for as long as the registration lives.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Channel { socket, room: Room::Spare(spare), runtime: tokio::runtime::Handle::current(), gate: None })
    }

    /// The [`LastWords`] another thread may say on this channel. From then
    /// on every write takes a lock (uncontended: one writer).
    pub fn last_words(&mut self) -> io::Result<LastWords> {
        let socket = self.socket.get_ref().try_clone()?;
        let gate = self.gate.get_or_insert_with(|| Arc::new(Mutex::new(true))).clone();
        Ok(LastWords { socket, gate })
    }

    /// Runs `write` (of `wanted` bytes) until it gets through, waiting for
    /// room in between, then settles the room by how much got in.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
        write: impl FnMut(&UnixStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let gate = self.gate.clone();
        let mut aligned = gate.as_deref().map(|g| g.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let written = ready!(self.poll_write_once(cx, write))?;
        self.settled(written, wanted);
        if let Some(aligned) = aligned.as_deref_mut() {
            // `Framed` hands over all it holds: all of it in is a boundary.
            *aligned = written >= wanted;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_write_once(&mut self, cx: &mut Context<'_>, mut write: impl FnMut(&UnixStream) -> io::Result<usize>) -> Poll<io::Result<usize>> {
        let Channel { socket, room, runtime, .. } = self;
        loop {
            if let Room::Waiting(waiting) = room {
                let mut ready = ready!(waiting.poll_write_ready(cx))?;
                // The write goes through the socket's own descriptor: the
                // readiness is the socket's, whichever descriptor saw it.
                match ready.try_io(|_| write(socket.get_ref())) {
                    Ok(written) => return Poll::Ready(written),
                    Err(_would_block) => continue,
                }
            }
            match write(socket.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => room.wait(runtime)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                written => return Poll::Ready(written),
            }
        }
    }

    /// After a write of `wanted` bytes got `written` in. A short write on
    /// a stream socket means it is full: the next write would only find
    /// that out, so the duplicate is registered (or stays) now.
    fn settled(&mut self, written: usize, wanted: usize) {
        if written >= wanted {
            self.room.release();
        } else if let Err(e) = self.room.wait(&self.runtime) {
            // The bytes are in; the next write that must wait tries again
            // and fails with this.
            tracing::debug!(error = %e, "could not wait for room on the channel yet");
        }
    }
}

impl Room {
    /// Registers the spare for writability (once; it stays registered).
    fn wait(&mut self, runtime: &tokio::runtime::Handle) -> io::Result<()> {
        match std::mem::replace(self, Room::Gone) {
            Room::Spare(fd) => {
                let _entered = runtime.enter();
                // SAFETY: as in `Channel::new`: the AsyncFd owns the duplicate.
                match unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) } {
                    Ok(registered) => *self = Room::Waiting(registered),
                    Err(e) => {
                        let (fd, err) = e.into_parts();
                        *self = Room::Spare(fd);
                        return Err(err);
                    }
                }
                Ok(())
            }
            waiting @ Room::Waiting(_) => {
                *self = waiting;
                Ok(())
            }
            Room::Gone => unreachable!("Room::Gone outlives a swap"),
        }
    }

    /// Deregisters the duplicate (`into_inner` does) and keeps it.
    fn release(&mut self) {
        *self = match std::mem::replace(self, Room::Gone) {
            Room::Waiting(registered) => Room::Spare(registered.into_inner()),
            other => other,
        };
    }
}

impl AsyncRead for Channel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            let unfilled = buf.remaining();
            // Into the buffer's uninitialised part as it is: `Framed` hands
            // over a frame's whole reservation, and zeroing it on every read
            // costs the square of a large frame's size over the read size.
            // SAFETY: read(2) writes at most `unfilled` bytes there, reads
            // none and de-initialises none; the bytes it reports written are
            // then initialised.
            let n = unsafe {
                let target = buf.unfilled_mut();
                libc::read(ready.get_inner().as_raw_fd(), target.as_mut_ptr().cast(), target.len())
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => ready.clear_ready(),
                    io::ErrorKind::Interrupted => {}
                    _ => return Poll::Ready(Err(err)),
                }
                continue;
            }
            let n = n as usize;
            // SAFETY: the kernel initialised the first `n` bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            // Edge-triggered: a short read emptied the socket, and the next
            // read would only say so (EOF, n = 0, stays ready).
            if n > 0 && n < unfilled {
                ready.clear_ready();
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for Channel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, buf.len(), |mut socket| socket.write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let wanted = bufs.iter().map(|b| b.len()).sum();
        self.get_mut().poll_write_with(cx, wanted, |mut socket| socket.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The events `fd`'s file is registered for, in every epoll instance
    /// of this process (from `/proc/self/fdinfo`, matched by inode).
    fn registered(fd: &impl std::os::fd::AsFd) -> Vec<u32> {
        let inode = format!("{:x}", nix::sys::stat::fstat(fd).unwrap().st_ino);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("eventpoll"));
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy()));
            let (true, Ok(info)) = (is_epoll, info) else { continue };
            // "tfd: 7 events: 80002019 data: ... pos:0 ino:1a2b sdev:9"
            for line in info.lines().filter(|l| l.starts_with("tfd:")) {
                let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name)).map(str::to_owned);
                let events = line.split_whitespace().skip_while(|f| *f != "events:").nth(1).unwrap();
                if field("ino:").as_deref() == Some(inode.as_str()) {
                    found.push(u32::from_str_radix(events, 16).unwrap());
                }
            }
        }
        found
    }

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        // Small, so a few KiB fill it on any host.
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        (Channel::new(a.into()).unwrap(), Channel::new(b.into()).unwrap())
    }

    fn has(events: &[u32], flag: i32) -> bool {
        events.iter().any(|e| e & flag as u32 != 0)
    }

    /// Fails instead of hanging on a lost wake-up.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(10), f).await.expect("hung: a wake-up was lost")
    }

    #[tokio::test]
    async fn a_channel_is_never_registered_for_writability_while_it_has_room() {
        let (mut node, mut worker) = pair();
        node.write_all(b"a frame").await.unwrap();
        let mut buf = [0u8; 7];
        within(worker.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, b"a frame");
        let events = registered(node.socket.get_ref());
        assert!(has(&events, libc::EPOLLIN), "not registered for reading: {events:x?}");
        assert!(!has(&events, libc::EPOLLOUT), "registered for writability: {events:x?}");
    }

    #[tokio::test]
    async fn a_write_that_finds_the_socket_full_waits_for_room_then_lets_go() {
        let (mut node, mut worker) = pair();
        let sent: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let socket = node.socket.get_ref().try_clone().unwrap();
        let writer = tokio::spawn(async move {
            node.write_all(&sent).await.unwrap();
            node
        });
        // On the test's current-thread runtime the writer runs until it
        // waits (for room, registered for it) before this task goes on.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let events = registered(&socket);
        assert!(has(&events, libc::EPOLLOUT), "not waiting for room: {events:x?}");
        let mut received = vec![0u8; expected.len()];
        within(worker.read_exact(&mut received)).await.unwrap();
        assert!(received == expected, "bytes lost or out of order");
        let mut node = within(writer).await.unwrap();
        assert!(matches!(node.room, Room::Spare(_)), "still registered for writability after the write got through");
        let events = registered(&socket);
        assert!(!has(&events, libc::EPOLLOUT), "still registered for writability: {events:x?}");
        // Letting go of the duplicate left the socket's own registration.
        node.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        within(worker.read_exact(&mut more)).await.unwrap();
        worker.write_all(b"back").await.unwrap();
        within(node.read_exact(&mut more)).await.unwrap();
        assert_eq!(&more, b"back");
    }

    #[tokio::test]
    async fn a_closed_peer_is_an_end_for_the_reader_and_an_error_for_a_waiting_writer() {
        let (mut node, worker) = pair();
        let (mut other_node, mut other_worker) = pair();
        let waiting = other_node.socket.get_ref().try_clone().unwrap();
        let writer = tokio::spawn(async move { other_node.write_all(&vec![7u8; 1 << 20]).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(has(&registered(&waiting), libc::EPOLLOUT), "the writer is not waiting for room");
        drop(worker);
        let mut rest = Vec::new();
        assert_eq!(within(node.read_to_end(&mut rest)).await.unwrap(), 0);
        // The peer of a writer waiting for room goes away.
        let mut some = [0u8; 10];
        other_worker.read_exact(&mut some).await.unwrap();
        drop(other_worker);
        let err = within(writer).await.unwrap().unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset), "{err:?}");
    }

    #[tokio::test]
    async fn frames_of_every_size_cross_in_both_directions_at_once() {
        use futures::{SinkExt, StreamExt};
        use tokio_util::codec::{Framed, LengthDelimitedCodec};
        let (node, worker) = pair();
        let codec = || LengthDelimitedCodec::builder().max_frame_length(8 << 20).new_codec();
        let (node, mut worker) = (Framed::new(node, codec()), Framed::new(worker, codec()));
        let frames: Vec<Vec<u8>> = [0usize, 1, 7, 4096, 65_537, 1 << 20, 3, 5 << 20]
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j % 253) as u8).collect())
            .collect();
        let echo = tokio::spawn(async move {
            while let Some(frame) = worker.next().await {
                worker.send(frame.unwrap().freeze()).await.unwrap();
            }
        });
        let sending = frames.clone();
        let (sink, mut stream) = node.split();
        let send = tokio::spawn(async move {
            let mut sink = sink;
            for frame in sending {
                sink.send(bytes::Bytes::from(frame)).await.unwrap();
            }
            sink
        });
        for frame in &frames {
            let echoed = within(stream.next()).await.unwrap().unwrap();
            assert!(echoed[..] == frame[..], "frame of {} bytes came back as {} bytes", frame.len(), echoed.len());
        }
        drop(within(send).await.unwrap());
        drop(stream);
        within(echo).await.unwrap();
    }
}
