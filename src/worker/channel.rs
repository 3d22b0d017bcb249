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
//! straight to the socket; only a write that finds it full registers (a
//! duplicate descriptor, since epoll keeps one interest per descriptor)
//! for writability, and only until it gets through.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct Channel {
    socket: AsyncFd<UnixStream>,
    /// Registered for writability while a write waits for room.
    room: Option<AsyncFd<OwnedFd>>,
}

impl Channel {
    /// Takes one end of a connected unix stream socket. Must be called
    /// within a tokio runtime.
    pub fn new(socket: OwnedFd) -> io::Result<Channel> {
        let socket = UnixStream::from(socket);
        socket.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays open
        // and the same for as long as the registration lives.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Channel { socket, room: None })
    }

    /// Runs `write` until it gets through, waiting for room in between.
    fn poll_write_with(&mut self, cx: &mut Context<'_>, mut write: impl FnMut(&UnixStream) -> io::Result<usize>) -> Poll<io::Result<usize>> {
        let Channel { socket, room } = self;
        loop {
            if let Some(waiting) = room {
                let mut ready = ready!(waiting.poll_write_ready(cx))?;
                if let Ok(written) = ready.try_io(|_| write(socket.get_ref())) {
                    *room = None;
                    return Poll::Ready(written);
                }
                continue;
            }
            match write(socket.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let dup = socket.get_ref().as_fd().try_clone_to_owned()?;
                    // SAFETY: as in `new`: the AsyncFd owns the duplicate.
                    *room = Some(unsafe { AsyncFd::register_with_interest(dup, Interest::WRITABLE) }?);
                }
                written => return Poll::Ready(written),
            }
        }
    }
}

impl AsyncRead for Channel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match ready.try_io(|socket| socket.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Channel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut socket| socket.write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_with(cx, |mut socket| socket.write_vectored(bufs))
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
    fn registered(fd: &impl AsFd) -> Vec<u32> {
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
        (Channel::new(a.into()).unwrap(), Channel::new(b.into()).unwrap())
    }

    #[tokio::test]
    async fn a_channel_is_never_registered_for_writability_while_it_has_room() {
        let (mut node, mut worker) = pair();
        node.write_all(b"a frame").await.unwrap();
        let mut buf = [0u8; 7];
        worker.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"a frame");
        let events = registered(node.socket.get_ref());
        // (mio's epoll shows up twice: tokio holds a duplicate of it.)
        assert!(!events.is_empty(), "not registered at all");
        assert!(events.iter().all(|e| e & libc::EPOLLOUT as u32 == 0), "registered for writability: {events:x?}");
    }

    #[tokio::test]
    async fn a_write_that_finds_the_socket_full_waits_for_room_then_lets_go() {
        let (mut node, mut worker) = pair();
        let sent: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let socket = node.socket.get_ref().as_fd().try_clone_to_owned().unwrap();
        let writer = tokio::spawn(async move {
            node.write_all(&sent).await.unwrap();
            node
        });
        // The writer fills the socket and waits for room, registered for it.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let events = registered(&socket);
        assert!(events.iter().any(|e| e & libc::EPOLLOUT as u32 != 0), "not waiting for room: {events:x?}");
        let mut received = vec![0u8; expected.len()];
        worker.read_exact(&mut received).await.unwrap();
        assert!(received == expected, "bytes lost or out of order");
        let node = writer.await.unwrap();
        assert!(node.room.is_none(), "still registered for writability after the write got through");
        let events = registered(&socket);
        assert!(events.iter().all(|e| e & libc::EPOLLOUT as u32 == 0), "still registered for writability: {events:x?}");
    }
}
