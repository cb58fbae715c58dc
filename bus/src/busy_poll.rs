//! Busy polling for a request/answer connection on the local host: after an answer, a
//! connection whose client asked again at once looks for its next request for a few
//! microseconds before going back to the reactor to sleep.
//!
//! A gateway that asks one request at a time waits for each answer, then sends the next. If the
//! serving thread has gone idle in between, the kernel must wake it for every request, and on a
//! virtual machine waking an idle CPU costs more than answering (20-30 µs measured, against 1-2 µs
//! for a limit decision). [`BusyPoll`] keeps the connection's task runnable for at most its
//! budget after the stream ran dry, looking at the socket directly once a microsecond and
//! yielding to the thread's other tasks between looks, so the thread does not sleep. It is meant
//! for a single-threaded runtime ([`crate::apart`]): on a multi-threaded one each yield would
//! wake an idle worker thread to steal the task, which costs what the spinning saves.
//! It spins only while the client's last gap between answer and request was short: a spin that
//! ran out stops the spinning, a gap within twice the budget starts it again. A gateway that asks
//! rarely costs no spinning; any request costs at most one budget of spinning after it.

use std::io::Read as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The default budget: long enough for a client on the same host to read an answer and send its
/// next request, short enough that a client that stopped costs little.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(DEFAULT_BUDGET_US);
/// [`DEFAULT_BUDGET`] in microseconds, as configuration files give it.
pub const DEFAULT_BUDGET_US: u64 = 50;

/// How often, at most, a spinning connection looks at its socket.
const LOOK_EVERY: Duration = Duration::from_micros(1);

/// A socket's descriptor, to read it while the reactor has not yet said it is readable.
pub trait Descriptor {
    /// The socket.
    fn descriptor(&self) -> BorrowedFd<'_>;
}

impl Descriptor for tokio::net::TcpStream {
    fn descriptor(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl Descriptor for tokio::net::UnixStream {
    fn descriptor(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

/// A socket's reading side that busy-polls for up to `budget` after it ran dry (see the module
/// documentation). A zero budget reads as the socket alone does.
pub struct BusyPoll<S> {
    io: S,
    budget: Duration,
    /// When a read first found nothing since the last bytes came.
    dry_since: Option<Instant>,
    /// Whether the client's last gap was within the budget.
    spin: bool,
    /// Whether an answer was written since the last bytes came: only then is the client
    /// expected to ask again (a server may look for more bytes before it has answered, and
    /// must not be held up then).
    answered: bool,
}

impl<S> BusyPoll<S> {
    /// Read `io`, spinning up to `budget` after it ran dry.
    pub fn new(io: S, budget: Duration) -> Self {
        Self { io, budget, dry_since: None, spin: true, answered: false }
    }

    /// Bytes came: spin next time if they came within the budget of the stream running dry, or,
    /// when this read did not spin, within twice the budget (the gap then includes this
    /// thread's own wake-up, which spinning would have saved).
    fn arrived(&mut self) {
        self.answered = false;
        if let Some(since) = self.dry_since.take() {
            let gap = since.elapsed();
            self.spin = gap <= self.budget || (!self.spin && gap <= self.budget.saturating_mul(2));
        }
    }
}

impl<S: AsyncRead + Descriptor + Unpin> AsyncRead for BusyPoll<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            this.arrived();
            return Poll::Ready(r);
        }
        // Nothing yet, as far as the reactor knows; the reactor has registered the waker.
        if this.budget.is_zero() || !this.answered {
            return Poll::Pending;
        }
        let now = Instant::now();
        let since = *this.dry_since.get_or_insert(now);
        if !this.spin || now.duration_since(since) > this.budget {
            return Poll::Pending;
        }
        // One look per poll, counted against the task's cooperative budget, then a yield: the
        // other tasks of the thread run between looks, and a gateway that always asks again in
        // time cannot keep the thread from its other connections. Look with poll(2), which
        // takes no lock of the socket (a read would contend with the sender's delivery into
        // it), about once a microsecond; read when something came.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        while now.elapsed() < LOOK_EVERY {
            std::hint::spin_loop();
        }
        let fd = this.io.descriptor();
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        let mut watched = [rustix::event::PollFd::new(&fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut watched, Some(&zero)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => {}
            // Readable, closed or failed: the read says which. The socket is non-blocking (the
            // reactor's), so the read returns at once.
            Ok(_) => {
                let socket = socket2::SockRef::from(&fd);
                match (&*socket).read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        coop.made_progress();
                        this.arrived();
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Err(e) => return Poll::Ready(Err(e.into())),
        }
        if since.elapsed() <= this.budget {
            // Look again after the thread's other ready tasks.
            cx.waker().wake_by_ref();
        }
        // Otherwise the reactor has the waker from the first read above.
        Poll::Pending
    }
}

/// Writes pass through; one that wrote something marks the request answered.
impl<S: AsyncWrite + Unpin> AsyncWrite for BusyPoll<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.answered = true;
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.answered = true;
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Requests sent while the server spins, and after it stopped spinning, all arrive in order.
    #[tokio::test]
    async fn every_byte_arrives_whether_spinning_or_sleeping() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut server = BusyPoll::new(a, Duration::from_micros(200));
        let client = tokio::spawn(async move {
            let mut answer = [0u8; 1];
            for i in 0..200u32 {
                b.write_all(&i.to_le_bytes()).await.unwrap();
                b.read_exact(&mut answer).await.unwrap();
                // Some gaps within the budget, some far beyond it.
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        for i in 0..200u32 {
            let mut got = [0u8; 4];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(u32::from_le_bytes(got), i);
            server.write_all(b"k").await.unwrap();
        }
        client.await.unwrap();
    }

    /// After a gap longer than the budget the server stops spinning; a short gap starts it
    /// again; nothing is measured while no answer was written.
    #[tokio::test]
    async fn a_long_gap_stops_the_spinning_and_a_short_one_starts_it() {
        let (a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut server = BusyPoll::new(a, Duration::from_millis(2));
        let mut one = [0u8; 1];
        b.write_all(b"x").await.unwrap();
        server.read_exact(&mut one).await.unwrap();
        assert!(server.spin);
        // No answer yet: a late request does not count as the client's gap.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            b.write_all(b"y").await.unwrap();
            b
        });
        server.read_exact(&mut one).await.unwrap();
        assert!(server.spin, "no answer was written: the 30 ms are the server's, not the client's");
        let mut b = late.await.unwrap();
        server.write_all(b"answer").await.unwrap();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            b.write_all(b"z").await.unwrap();
            b
        });
        server.read_exact(&mut one).await.unwrap();
        assert!(!server.spin, "a 30 ms gap after an answer is beyond the 2 ms budget");
        let mut b = late.await.unwrap();
        server.write_all(b"answer").await.unwrap();
        let quick = tokio::spawn(async move {
            b.write_all(b"w").await.unwrap();
            b
        });
        server.read_exact(&mut one).await.unwrap();
        let _b = quick.await.unwrap();
        assert!(server.spin, "a gap within twice the budget starts it again");
    }
}
