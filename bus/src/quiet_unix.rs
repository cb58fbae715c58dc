//! A Unix stream socket that wakes its thread for what the peer sends, not for the peer reading
//! what was sent to it.
//!
//! Linux marks a Unix stream socket writable again each time its peer reads from it (the buffer
//! the answer held is freed), and a socket registered with the reactor for both directions, as
//! tokio's `UnixStream` is, wakes its sleeping thread for that. A gateway asking one request at a
//! time therefore woke the serving thread twice per request: once when it read the answer, once
//! for its next request (1.93 context switches of the gateway thread per request at 1,250
//! requests/s, against 1.00 over TCP, which signals room only to a writer that had found none).
//!
//! [`QuietUnixStream`] is registered for reading only. It writes straight to the socket, and
//! asks the reactor about room only when a write would block: then it registers a duplicate of
//! the descriptor for writing, and drops it once the write went through.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A Unix stream registered with the reactor for reading, and for writing only while a write
/// waits for room (see the module documentation).
pub struct QuietUnixStream {
    io: AsyncFd<UnixStream>,
    /// A duplicate of the socket's descriptor registered for writing, while a write waits.
    write_waits: Option<AsyncFd<OwnedFd>>,
}

impl QuietUnixStream {
    /// Serve `stream` (made non-blocking here). Must be called within a tokio runtime.
    pub fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self { io: register(stream, Interest::READABLE)?, write_waits: None })
    }

    /// Take over a stream accepted by tokio (its registration for both directions ends).
    pub fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Self::new(stream.into_std()?)
    }

    /// Write what fits now: `None` when nothing does.
    fn try_write(&self, buf: &[u8]) -> Option<io::Result<usize>> {
        loop {
            match self.io.get_ref().write(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                done => return Some(done),
            }
        }
    }
}

/// Register `socket` with the reactor for `interest`.
fn register<S: Owns>(socket: S, interest: Interest) -> io::Result<AsyncFd<S>> {
    // SAFETY: `S` is a `UnixStream` or an `OwnedFd`, each the sole owner of its descriptor: it
    // stays open, and the same, until the value is dropped, which the `AsyncFd` does only after
    // deregistering it; `as_raw_fd` returns that descriptor every time.
    #[allow(unsafe_code)]
    unsafe {
        AsyncFd::register_with_interest(socket, interest).map_err(|e| e.into_parts().1)
    }
}

/// What [`register`] may take: a value that owns its descriptor.
trait Owns: std::os::fd::AsRawFd {}
impl Owns for UnixStream {}
impl Owns for OwnedFd {}

impl crate::busy_poll::Descriptor for QuietUnixStream {
    fn descriptor(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.io.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            match self.io.get_ref().read(unfilled) {
                Ok(n) => {
                    // A read that left room emptied the socket: the next one waits for the
                    // reactor rather than asking the kernel again (bytes that come later signal
                    // anew), as tokio's own streams do.
                    if n > 0 && n < room {
                        ready.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let Some(done) = this.try_write(buf) {
                this.write_waits = None;
                return Poll::Ready(done);
            }
            // No room: wait for some through a registration for writing, made for this wait.
            let waits = match this.write_waits.take() {
                Some(waits) => waits,
                None => register(this.io.get_ref().as_fd().try_clone_to_owned()?, Interest::WRITABLE)?,
            };
            let polled = waits.poll_write_ready(cx).map_ok(|mut ready| {
                // Room was signalled after the write above found none, or before: either way,
                // write again, and wait for the next signal if there is still none.
                ready.clear_ready();
            });
            this.write_waits = Some(waits);
            ready!(polled)?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match self.io.get_ref().shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            done => done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Times the calling thread went to sleep so far (its voluntary context switches; being
    /// preempted by the client's thread is not a sleep).
    fn sleeps() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    /// A client on another thread asks one request at a time: the serving thread sleeps once per
    /// request, not twice (with tokio's `UnixStream`, registered for writing too, it slept 799
    /// times for 400 requests).
    #[test]
    fn the_serving_thread_wakes_once_per_request() {
        const REQUESTS: u64 = 400;
        let (server, client) = UnixStream::pair().unwrap();
        let client = std::thread::spawn(move || {
            let mut client = client;
            let mut answer = [0u8; 5];
            for _ in 0..REQUESTS {
                client.write_all(b"PING\n").unwrap();
                // Read the answer once the server has gone to sleep waiting for the next
                // request, and ask that one a while later, as a paced gateway does.
                std::thread::sleep(std::time::Duration::from_micros(300));
                client.read_exact(&mut answer).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(300));
                assert_eq!(&answer, b"PONG\n");
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let slept = rt.block_on(async {
            let mut server = QuietUnixStream::new(server).unwrap();
            let mut request = [0u8; 5];
            let before = sleeps();
            for _ in 0..REQUESTS {
                server.read_exact(&mut request).await.unwrap();
                server.write_all(b"PONG\n").await.unwrap();
            }
            sleeps() - before
        });
        client.join().unwrap();
        // One sleep per request (waiting for it), and some slack.
        assert!(slept <= REQUESTS + REQUESTS / 4, "the serving thread slept {slept} times for {REQUESTS} requests");
    }

    /// A peer that stops reading fills the socket: the writer waits for room without spinning,
    /// and every byte arrives in order once the peer reads again.
    #[tokio::test]
    async fn a_write_into_a_full_socket_waits_for_room_and_loses_nothing() {
        let (server, client) = UnixStream::pair().unwrap();
        let mut server = QuietUnixStream::new(server).unwrap();
        let mut client = QuietUnixStream::new(client).unwrap();
        let sent: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            server.shutdown().await.unwrap();
            server
        });
        // The writer blocks on a full socket while nobody reads.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!writer.is_finished(), "4 MiB fit in a Unix socket's buffer");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got == expected, "{} bytes arrived of {}", got.len(), expected.len());
        let server = writer.await.unwrap();
        assert!(server.write_waits.is_none(), "the registration for writing outlived the wait");
    }
}
