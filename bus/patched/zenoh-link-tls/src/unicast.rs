//
// Copyright (c) 2023 ZettaScale Technology
//
// This program and the accompanying materials are made available under the
// terms of the Eclipse Public License 2.0 which is available at
// http://www.eclipse.org/legal/epl-2.0, or the Apache License, Version 2.0
// which is available at https://www.apache.org/licenses/LICENSE-2.0.
//
// SPDX-License-Identifier: EPL-2.0 OR Apache-2.0
//
// Contributors:
//   ZettaScale Zenoh Team, <zenoh@zettascale.tech>
//
#[cfg(all(feature = "uring", target_os = "linux"))]
use std::os::fd::RawFd;
use std::{
    collections::{BTreeMap, HashMap},
    convert::TryInto,
    fmt::{self, Debug},
    future::poll_fn,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::Poll,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::{
    io::{AsyncRead, AsyncWrite, BufReader, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Mutex as AsyncMutex,
};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};
use zenoh_core::{bail, zasynclock};
use zenoh_link_commons::{
    get_ip_interface_names,
    tcp::get_tcp_addrs,
    tls::expiration::{LinkCertExpirationManager, LinkWithCertExpiration},
    LinkAuthId, LinkManagerUnicastTrait, LinkUnicast, LinkUnicastTrait, ListenersUnicastIP,
    NewLinkChannelSender, BIND_INTERFACE, BIND_SOCKET,
};
use zenoh_protocol::{
    core::{EndPoint, Locator, Priority},
    transport::BatchSize,
};
use zenoh_result::{zerror, ZResult};

use crate::{
    utils::{get_tls_addr, get_tls_host, get_tls_server_name, TlsClientConfig, TlsServerConfig},
    TLS_ACCEPT_THROTTLE_TIME, TLS_DEFAULT_MTU, TLS_LINGER_TIMEOUT, TLS_LOCATOR_PREFIX,
};

#[derive(Default, Debug, PartialEq, Eq, Hash)]
pub struct TlsCommonName(String);

// The TCP stream under TLS, with a read buffer: rustls reads at most 4 KiB at
// a time, one system call each without it, where the plain TCP link reads a
// whole batch (up to 64 KiB) in one.
type Tcp = BufReader<Slotted>;
const TCP_READ_BUFFER: usize = 64 * 1024;

// TLS handshakes in progress at one listener, at most, and from one host: each
// holds its read buffer and rustls's state until it completes, fails or times
// out (10 s by default). A connection past the bound of its host is closed at
// once; one past the listener's bound ends the oldest handshake in progress
// instead (a member's handshake takes milliseconds, so the oldest is one that
// is stalling), so that outsiders on many hosts cannot keep members out.
const MAX_HANDSHAKES: usize = 256;
const MAX_HANDSHAKES_PER_HOST: usize = 16;
// Connections taken whose handshake has not completed and that are not yet
// closed, at most: those in progress, and those ended or failed whose stream
// the listener's task has not dropped yet (a flood outpaces that task).
const MAX_UNFINISHED: usize = 2 * MAX_HANDSHAKES;
// Handshakes one host may start: a burst, then so many a second. Each costs
// the listener a key exchange and a signature before the peer proves anything.
const HANDSHAKE_BURST_PER_HOST: f64 = 32.0;
const HANDSHAKES_PER_SECOND_PER_HOST: f64 = 16.0;
// Hosts tracked at once, at most (those with a handshake in progress or that
// started one lately); a new host past it is closed at once.
const MAX_HOSTS: usize = 4096;
// Connections taken off the socket in one poll of the listener, at most.
const ACCEPTS_PER_POLL: usize = 64;

// Where a connection comes from, for the bounds per host: its IPv4 address, or
// the /64 of an IPv6 one (what one site is given).
fn host_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

// One host's handshakes: in progress, and those it may still start.
struct Host {
    in_progress: usize,
    tokens: f64,
    refilled: Instant,
}

impl Host {
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * HANDSHAKES_PER_SECOND_PER_HOST;
        self.tokens = (self.tokens + earned).min(HANDSHAKE_BURST_PER_HOST);
        self.refilled = now;
    }
}

// A handshake in progress: its host, and a handle on its socket (a duplicate
// descriptor) to end it early.
struct Pending {
    host: IpAddr,
    socket: socket2::Socket,
}

#[derive(Default)]
struct Progress {
    // By slot, oldest first (slots are numbered in the order taken).
    pending: BTreeMap<u64, Pending>,
    next: u64,
    hosts: HashMap<IpAddr, Host>,
    // Slots taken and not yet given back by their stream (see MAX_UNFINISHED).
    unfinished: usize,
}

impl Progress {
    // The handshake in `slot` is over (or ended here), if it was in progress.
    fn remove(&mut self, slot: u64) -> Option<Pending> {
        let pending = self.pending.remove(&slot)?;
        if let Some(host) = self.hosts.get_mut(&pending.host) {
            host.in_progress = host.in_progress.saturating_sub(1);
        }
        Some(pending)
    }
}

// The handshakes in progress at one listener.
#[derive(Default)]
struct Handshakes(Mutex<Progress>);

impl Handshakes {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        // Nothing panics under this lock (map updates only).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    // One more, from `peer` on `stream`: its slot, or why not.
    fn start(&self, peer: SocketAddr, stream: &TcpStream) -> Result<u64, String> {
        let now = Instant::now();
        let mut progress = self.progress();
        if progress.unfinished >= MAX_UNFINISHED {
            return Err(format!(
                "{} connections whose TLS handshake did not complete are not closed yet (at most {MAX_UNFINISHED})",
                progress.unfinished
            ));
        }
        let key = host_of(peer.ip());
        if progress.hosts.len() >= MAX_HOSTS && !progress.hosts.contains_key(&key) {
            progress.hosts.retain(|_, h| {
                h.refill(now);
                h.in_progress > 0 || h.tokens < HANDSHAKE_BURST_PER_HOST
            });
            if progress.hosts.len() >= MAX_HOSTS {
                return Err(format!("TLS handshakes from {MAX_HOSTS} hosts at once (at most)"));
            }
        }
        let host = progress.hosts.entry(key).or_insert(Host {
            in_progress: 0,
            tokens: HANDSHAKE_BURST_PER_HOST,
            refilled: now,
        });
        host.refill(now);
        if host.in_progress >= MAX_HANDSHAKES_PER_HOST {
            return Err(format!(
                "{} TLS handshakes in progress from that host (at most {MAX_HANDSHAKES_PER_HOST})",
                host.in_progress
            ));
        }
        if host.tokens < 1.0 {
            return Err(format!(
                "more TLS handshakes from that host than {HANDSHAKES_PER_SECOND_PER_HOST} a second \
                 (after a burst of {HANDSHAKE_BURST_PER_HOST})"
            ));
        }
        let socket = socket2::SockRef::from(stream)
            .try_clone()
            .map_err(|e| format!("cannot hold the connection: {e}"))?;
        host.tokens -= 1.0;
        host.in_progress += 1;
        if progress.pending.len() >= MAX_HANDSHAKES {
            let oldest = progress.pending.first_key_value().map(|(slot, _)| *slot);
            if let Some(victim) = oldest.and_then(|slot| progress.remove(slot)) {
                // Its handshake reads the end of the stream and fails (said and
                // counted as any other).
                let _ = victim.socket.shutdown(std::net::Shutdown::Both);
                tracing::debug!(
                    "Ended the oldest TLS handshake in progress, from {}: {MAX_HANDSHAKES} in progress",
                    victim.host
                );
            }
        }
        let slot = progress.next;
        progress.next += 1;
        progress.unfinished += 1;
        progress.pending.insert(slot, Pending { host: key, socket });
        Ok(slot)
    }

    // The handshake in `slot` completed, or its stream was dropped (once per slot).
    fn end(&self, slot: u64) {
        let mut progress = self.progress();
        progress.unfinished = progress.unfinished.saturating_sub(1);
        progress.remove(slot);
    }
}

// The TCP stream of a link. At a listener, it holds its handshake's slot until
// the handshake completes (the accept loop lets it go) or the stream is dropped
// (a handshake that failed or timed out): the slot is its own, whatever
// address and port a later connection reuses.
struct Slotted {
    stream: TcpStream,
    slot: Option<(Arc<Handshakes>, u64)>,
}

impl Slotted {
    fn dialed(stream: TcpStream) -> Self {
        Self { stream, slot: None }
    }

    // The handshake completed: its slot is free.
    fn handshake_done(&mut self) {
        if let Some((handshakes, slot)) = self.slot.take() {
            handshakes.end(slot);
        }
    }
}

impl Drop for Slotted {
    fn drop(&mut self) {
        self.handshake_done();
    }
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// The TCP listener, accepting streams with that read buffer, within the
// bounds on handshakes.
struct BufferedListener {
    socket: TcpListener,
    handshakes: Arc<Handshakes>,
}

impl tls_listener::AsyncAccept for BufferedListener {
    type Connection = Tcp;
    type Address = SocketAddr;
    type Error = io::Error;

    fn poll_accept(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<(Tcp, SocketAddr)>> {
        for _ in 0..ACCEPTS_PER_POLL {
            let (stream, addr) = match self.socket.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match self.handshakes.start(addr, &stream) {
                Ok(slot) => {
                    let stream = Slotted { stream, slot: Some((self.handshakes.clone(), slot)) };
                    let stream = BufReader::with_capacity(TCP_READ_BUFFER, stream);
                    return Poll::Ready(Ok((stream, addr)));
                }
                Err(why) => {
                    tracing::warn!("Can not accept TLS connection from {addr}: {why}");
                    drop(stream);
                }
            }
        }
        // A flood of connections past the bounds: let the other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

pub struct LinkUnicastTls {
    // The underlying socket as returned from the async-rustls library.
    // NOTE: TlsStream requires &mut for read and write operations, and both
    //       change the one rustls connection state it holds. The reading and
    //       the writing task therefore take this lock for each poll (never
    //       across an await), so that they never touch that state at the same
    //       time; read_mtx and write_mtx keep one reader and one writer.
    inner: Mutex<TlsStream<Tcp>>,
    // The source socket address of this link (address used on the local host)
    src_addr: SocketAddr,
    src_locator: Locator,
    // The destination socket address of this link (address used on the local host)
    dst_addr: SocketAddr,
    dst_locator: Locator,
    // Make sure there are no concurrent read or writes
    write_mtx: AsyncMutex<()>,
    read_mtx: AsyncMutex<()>,
    auth_identifier: LinkAuthId,
    mtu: BatchSize,
    expiration_manager: Option<LinkCertExpirationManager>,
}

impl LinkUnicastTls {
    fn new(
        socket: TlsStream<Tcp>,
        src_addr: SocketAddr,
        dst_addr: SocketAddr,
        auth_identifier: LinkAuthId,
        expiration_manager: Option<LinkCertExpirationManager>,
    ) -> LinkUnicastTls {
        let tcp_stream = &socket.get_ref().0.get_ref().stream;
        // Set the TLS nodelay option
        if let Err(err) = tcp_stream.set_nodelay(true) {
            tracing::warn!(
                "Unable to set NODEALY option on TLS link {} => {}: {}",
                src_addr,
                dst_addr,
                err
            );
        }

        // Set the TLS linger option
        #[allow(deprecated)]
        if let Err(err) = tcp_stream.set_linger(Some(Duration::from_secs(
            (*TLS_LINGER_TIMEOUT).try_into().unwrap(),
        ))) {
            tracing::warn!(
                "Unable to set LINGER option on TLS link {} => {}: {}",
                src_addr,
                dst_addr,
                err
            );
        }

        // Compute the MTU
        // See IETF RFC6691: https://datatracker.ietf.org/doc/rfc6691/
        let header = match src_addr.ip() {
            std::net::IpAddr::V4(_) => 40,
            std::net::IpAddr::V6(_) => 60,
        };
        #[allow(unused_mut)] // mut is not needed when target_family != unix
        let mut mtu = *TLS_DEFAULT_MTU - header;

        // target limitation of socket2: https://docs.rs/socket2/latest/src/socket2/sys/unix.rs.html#1544
        #[cfg(target_family = "unix")]
        {
            let socket = socket2::SockRef::from(tcp_stream);
            // Get the MSS and divide it by 2 to ensure we can at least fill half the MSS
            let mss = socket.mss().unwrap_or(mtu as u32) / 2;
            // Compute largest multiple of TCP MSS that is smaller of default MTU
            let mut tgt = mss;
            while (tgt + mss) < mtu as u32 {
                tgt += mss;
            }
            mtu = (mtu as u32).min(tgt) as BatchSize;
        }

        // Build the Tls object
        LinkUnicastTls {
            inner: Mutex::new(socket),
            src_addr,
            src_locator: Locator::new(TLS_LOCATOR_PREFIX, src_addr.to_string(), "").unwrap(),
            dst_addr,
            dst_locator: Locator::new(TLS_LOCATOR_PREFIX, dst_addr.to_string(), "").unwrap(),
            write_mtx: AsyncMutex::new(()),
            read_mtx: AsyncMutex::new(()),
            auth_identifier,
            mtu,
            expiration_manager,
        }
    }

    // The stream, for one poll. A poisoned lock means a poll panicked part-way
    // through a change of the TLS state: the link fails at once rather than go
    // on with that state.
    fn socket(&self) -> io::Result<MutexGuard<'_, TlsStream<Tcp>>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("TLS link unusable: a poll of its stream panicked"))
    }

    async fn write_some(&self, buffer: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.socket()?).poll_write(cx, buffer)).await
    }

    // Whatever rustls still holds goes to the socket: its poll_write answers
    // once the bytes are encrypted, even when the socket took none of them,
    // and nothing would send the rest before the next write.
    async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| Pin::new(&mut *self.socket()?).poll_flush(cx)).await
    }

    async fn read_some(&self, buffer: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut buf = ReadBuf::new(buffer);
            Pin::new(&mut *self.socket()?)
                .poll_read(cx, &mut buf)
                .map_ok(|()| buf.filled().len())
        })
        .await
    }

    async fn close(&self) -> ZResult<()> {
        tracing::trace!("Closing TLS link: {}", self);
        // Flush the TLS stream
        let _guard = zasynclock!(self.write_mtx);
        let res = self.flush().await;
        tracing::trace!("TLS link flush {}: {:?}", self, res);
        // Close the underlying TCP stream
        let res = poll_fn(|cx| Pin::new(self.socket()?.get_mut().0).poll_shutdown(cx)).await;
        tracing::trace!("TLS link shutdown {}: {:?}", self, res);
        res.map_err(|e| zerror!(e).into())
    }
}

#[async_trait]
impl LinkUnicastTrait for LinkUnicastTls {
    async fn close(&self) -> ZResult<()> {
        if let Some(expiration_manager) = &self.expiration_manager {
            if !expiration_manager.set_closing() {
                // expiration_task is closing link, return its returned ZResult to Transport
                return expiration_manager.wait_for_expiration_task().await;
            }
            // cancel the expiration task and close link
            expiration_manager.cancel_expiration_task();
            let res = self.close().await;
            let _ = expiration_manager.wait_for_expiration_task().await;
            return res;
        }
        self.close().await
    }

    async fn write(&self, buffer: &[u8], _priority: Option<Priority>) -> ZResult<usize> {
        let _guard = zasynclock!(self.write_mtx);
        let written = match self.write_some(buffer).await {
            Ok(n) => self.flush().await.map(|()| n),
            Err(e) => Err(e),
        };
        written.map_err(|e| {
            tracing::trace!("Write error on TLS link {}: {}", self, e);
            zerror!(e).into()
        })
    }

    async fn write_all(&self, buffer: &[u8], _priority: Option<Priority>) -> ZResult<()> {
        let _guard = zasynclock!(self.write_mtx);
        let mut written = 0;
        while written < buffer.len() {
            let n = self.write_some(&buffer[written..]).await.map_err(|e| {
                tracing::trace!("Write error on TLS link {}: {}", self, e);
                zerror!(e)
            })?;
            if n == 0 {
                tracing::trace!("Write error on TLS link {}: wrote zero bytes", self);
                bail!("TLS link {} wrote zero bytes", self);
            }
            written += n;
        }
        self.flush().await.map_err(|e| {
            tracing::trace!("Write error on TLS link {}: {}", self, e);
            zerror!(e).into()
        })
    }

    async fn read(&self, buffer: &mut [u8], _priority: Option<Priority>) -> ZResult<usize> {
        let _guard = zasynclock!(self.read_mtx);
        self.read_some(buffer).await.map_err(|e| {
            tracing::trace!("Read error on TLS link {}: {}", self, e);
            zerror!(e).into()
        })
    }

    async fn read_exact(&self, buffer: &mut [u8], _priority: Option<Priority>) -> ZResult<()> {
        let _guard = zasynclock!(self.read_mtx);
        let mut filled = 0;
        while filled < buffer.len() {
            let n = self.read_some(&mut buffer[filled..]).await.map_err(|e| {
                tracing::trace!("Read error on TLS link {}: {}", self, e);
                zerror!(e)
            })?;
            if n == 0 {
                tracing::trace!("Read error on TLS link {}: early eof", self);
                bail!("TLS link {}: early eof", self);
            }
            filled += n;
        }
        Ok(())
    }

    #[inline(always)]
    fn get_src(&self) -> &Locator {
        &self.src_locator
    }

    #[inline(always)]
    fn get_dst(&self) -> &Locator {
        &self.dst_locator
    }

    #[inline(always)]
    fn get_mtu(&self) -> BatchSize {
        self.mtu
    }

    #[inline(always)]
    fn get_interface_names(&self) -> Vec<String> {
        get_ip_interface_names(&self.src_addr)
    }

    #[inline(always)]
    fn is_reliable(&self) -> bool {
        super::IS_RELIABLE
    }

    #[inline(always)]
    fn is_streamed(&self) -> bool {
        true
    }

    #[inline(always)]
    fn get_auth_id(&self) -> &LinkAuthId {
        &self.auth_identifier
    }

    #[cfg(all(feature = "uring", target_os = "linux"))]
    fn get_fd(&self) -> ZResult<RawFd> {
        bail!("Correct FD unavailable for TLS extension")
    }
}

#[async_trait]
impl LinkWithCertExpiration for LinkUnicastTls {
    async fn expire(&self) -> ZResult<()> {
        let expiration_manager = self
            .expiration_manager
            .as_ref()
            .expect("expiration_manager should be set");
        if expiration_manager.set_closing() {
            return self.close().await;
        }
        // Transport is already closing the link
        Ok(())
    }
}

impl Drop for LinkUnicastTls {
    fn drop(&mut self) {
        // Close the underlying TCP stream
        let socket = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let (tcp_stream, _) = socket.get_mut();
        let _ = zenoh_runtime::ZRuntime::Acceptor
            .block_in_place(poll_fn(|cx| Pin::new(&mut *tcp_stream).poll_shutdown(cx)));
    }
}

impl fmt::Display for LinkUnicastTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} => {}", self.src_addr, self.dst_addr)?;
        Ok(())
    }
}

impl fmt::Debug for LinkUnicastTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("src", &self.src_addr)
            .field("dst", &self.dst_addr)
            .finish()
    }
}

pub struct LinkManagerUnicastTls {
    manager: NewLinkChannelSender,
    listeners: ListenersUnicastIP,
}

impl fmt::Debug for LinkManagerUnicastTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkManagerUnicastTls")
            .field("manager", &self.manager)
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl LinkManagerUnicastTls {
    pub fn new(manager: NewLinkChannelSender) -> Self {
        Self {
            manager,
            listeners: ListenersUnicastIP::new(),
        }
    }
}

#[async_trait]
impl LinkManagerUnicastTrait for LinkManagerUnicastTls {
    async fn new_link(&self, endpoint: EndPoint) -> ZResult<LinkUnicast> {
        let epaddr = endpoint.address();
        let epconf = endpoint.config();

        let server_name = get_tls_server_name(&epaddr)?;
        let addrs = get_tcp_addrs(endpoint.address()).await?;

        // if both `iface`, and `bind` are present, return error
        if let (Some(_), Some(_)) = (epconf.get(BIND_INTERFACE), epconf.get(BIND_SOCKET)) {
            bail!(
                "Using Config options `iface` and `bind` in conjunction is unsupported at this time {} {:?}",
                BIND_INTERFACE,
                BIND_SOCKET
            )
        }

        // Initialize the TLS Config
        let client_config = TlsClientConfig::new(&epconf)
            .await
            .map_err(|e| zerror!("Cannot create a new TLS listener to {endpoint}: {e}"))?;
        let config = Arc::new(client_config.client_config);
        let connector = TlsConnector::from(config);

        // Initialize the TcpStream
        let (tcp_stream, src_addr, dst_addr) = client_config
            .tcp_socket_config
            .new_link_first_reachable(addrs)
            .await
            .map_err(|e| {
                zerror!(
                    "Can not create a new TLS link bound to {:?}: {}",
                    server_name,
                    e
                )
            })?;

        // Initialize the TlsStream
        let tls_stream = connector
            .connect(
                server_name.to_owned(),
                BufReader::with_capacity(TCP_READ_BUFFER, Slotted::dialed(tcp_stream)),
            )
            .await
            .map_err(|e| {
                zerror!(
                    "Can not create a new TLS link bound to {:?}: {}",
                    server_name,
                    e
                )
            })?;

        let (_, tls_conn) = tls_stream.get_ref();
        let auth_identifier = get_server_cert_common_name(tls_conn)?;
        let certchain_expiration_time = get_cert_chain_expiration(&tls_conn.peer_certificates())?
            .expect("server should have certificate chain");

        let tls_stream = TlsStream::Client(tls_stream);

        let link = Arc::<LinkUnicastTls>::new_cyclic(|weak_link| {
            let mut expiration_manager = None;
            if client_config.tls_close_link_on_expiration {
                // setup expiration manager
                expiration_manager = Some(LinkCertExpirationManager::new(
                    weak_link.clone(),
                    src_addr,
                    dst_addr,
                    TLS_LOCATOR_PREFIX,
                    certchain_expiration_time,
                ))
            }
            LinkUnicastTls::new(
                tls_stream,
                src_addr,
                dst_addr,
                auth_identifier.into(),
                expiration_manager,
            )
        });

        Ok(LinkUnicast::from(link as Arc<dyn LinkUnicastTrait>))
    }

    async fn new_listener(&self, endpoint: EndPoint) -> ZResult<Locator> {
        let epaddr = endpoint.address();
        let epconf = endpoint.config();

        let addr = get_tls_addr(&epaddr).await?;
        let host = get_tls_host(&epaddr)?;

        // Initialize TlsConfig
        let tls_server_config = TlsServerConfig::new(&epconf)
            .await
            .map_err(|e| zerror!("Cannot create a new TLS listener on {addr}. {e}"))?;

        // Initialize the TcpListener
        let (socket, local_addr) = tls_server_config
            .tcp_socket_config
            .new_listener(&addr)
            .map_err(|e| zerror!("Can not create a new TLS listener on {}: {}", addr, e))?;

        let local_port = local_addr.port();

        // Initialize the TlsAcceptor
        let token = self.listeners.token.child_token();

        let task = {
            let acceptor = TlsAcceptor::from(Arc::new(tls_server_config.server_config));
            let token = token.clone();
            let manager = self.manager.clone();

            async move {
                accept_task(
                    socket,
                    acceptor,
                    token,
                    manager,
                    tls_server_config.tls_handshake_timeout,
                    tls_server_config.tls_close_link_on_expiration,
                )
                .await
            }
        };

        // Update the endpoint locator address
        let locator = Locator::new(
            endpoint.protocol(),
            format!("{host}:{local_port}"),
            endpoint.metadata(),
        )?;
        let endpoint = EndPoint::new(
            locator.protocol(),
            locator.address(),
            locator.metadata(),
            endpoint.config(),
        )?;
        self.listeners
            .add_listener(endpoint, local_addr, task, token)
            .await?;

        Ok(locator)
    }

    async fn del_listener(&self, endpoint: &EndPoint) -> ZResult<()> {
        let epaddr = endpoint.address();
        let addr = get_tls_addr(&epaddr).await?;
        self.listeners.del_listener(addr).await
    }

    async fn get_listeners(&self) -> Vec<EndPoint> {
        self.listeners.get_endpoints()
    }

    /// See [`zenoh_link_commons::ListenersUnicastIP::get_locators`].
    async fn get_locators(&self) -> Vec<Locator> {
        self.listeners.get_locators()
    }

    /// See [`zenoh_link_commons::ListenersUnicastIP::get_locators_noloopback`].
    async fn get_locators_noloopback(&self) -> Vec<Locator> {
        self.listeners.get_locators_noloopback()
    }
}

async fn accept_task(
    socket: TcpListener,
    acceptor: TlsAcceptor,
    token: CancellationToken,
    manager: NewLinkChannelSender,
    tls_handshake_timeout: Duration,
    tls_close_link_on_expiration: bool,
) -> ZResult<()> {
    let src_addr = socket.local_addr().map_err(|e| {
        let e = zerror!("Can not accept TLS connections: {}", e);
        tracing::warn!("{}", e);
        e
    })?;

    let mut listener = tls_listener::builder(acceptor)
        .handshake_timeout(tls_handshake_timeout)
        .listen(BufferedListener {
            socket,
            handshakes: Arc::new(Handshakes::default()),
        });

    tracing::trace!("Ready to accept TLS connections on: {:?}", src_addr);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,

            res = listener.accept() => {
                match res {
                    Ok((mut tls_stream, dst_addr)) => {
                        tls_stream.get_mut().0.get_mut().handshake_done();
                        let (tcp_stream, tls_conn) = tls_stream.get_ref();
                        let src_addr =  match tcp_stream.get_ref().stream.local_addr()  {
                            Ok(sa) => sa,
                            Err(e) => {
                                tracing::debug!("Can not accept TLS connection: {}", e);
                                continue;
                            }
                        };
                        let auth_identifier = match get_client_cert_common_name(tls_conn) {
                            Ok(auth_id) => auth_id,
                            Err(e) => {
                                tracing::warn!("Error getting client cert common name: {e}");
                                continue;
                            }
                        };

                        // Get certificate chain expiration
                        let mut maybe_expiration_time = None;
                        if tls_close_link_on_expiration {
                            let exp = match get_cert_chain_expiration(&tls_conn.peer_certificates()) {
                                Ok(exp) => exp,
                                Err(e) => {
                                    tracing::warn!("Error getting client cert expiration: {e}");
                                    continue;
                                }
                            };
                            match exp {
                                exp @ Some(_) => maybe_expiration_time = exp,
                                None => tracing::warn!(
                                    "Cannot monitor expiration for TLS link {:?} => {:?}: client does not have certificates",
                                    src_addr,
                                    dst_addr,
                                ),
                            }
                        }

                        tracing::debug!("Accepted TLS connection on {:?}: {:?}. {:?}.", src_addr, dst_addr, auth_identifier);
                        // Create the new link object
                        let link = Arc::<LinkUnicastTls>::new_cyclic(|weak_link| {
                            let mut expiration_manager = None;
                            if let Some(certchain_expiration_time) = maybe_expiration_time {
                                // setup expiration manager
                                expiration_manager = Some(LinkCertExpirationManager::new(
                                    weak_link.clone(),
                                    src_addr,
                                    dst_addr,
                                    TLS_LOCATOR_PREFIX,
                                    certchain_expiration_time,
                                ));
                            }
                            LinkUnicastTls::new(
                                tokio_rustls::TlsStream::Server(tls_stream),
                                src_addr,
                                dst_addr,
                                auth_identifier.into(),
                                expiration_manager,
                            )
                        });

                        // Communicate the new link to the initial transport manager
                        if let Err(e) = manager
                            .send_async(LinkUnicast::from(link as Arc<dyn LinkUnicastTrait>))
                            .await
                        {
                            tracing::error!("{}-{}: {}", file!(), line!(), e)
                        }
                    }
                    // A handshake that failed or timed out: said, and the next
                    // connection taken at once (published, each one held the
                    // listener shut for the throttle time below, so that a
                    // stream of connections that never finish a handshake kept
                    // every new peer out).
                    // (Its slot went with its stream.)
                    Err(tls_listener::Error::TlsAcceptError { error, peer_addr, .. }) => {
                        tracing::warn!("Can not accept TLS connection from {peer_addr}: {error}");
                    }
                    Err(tls_listener::Error::HandshakeTimeout { peer_addr, .. }) => {
                        tracing::warn!("Can not accept TLS connection from {peer_addr}: timeout during TLS handshake");
                    }
                    Err(e) => {
                        tracing::warn!("{}. Hint: increase the system open file limit.", e);
                        // Throttle the accept loop upon an error
                        // NOTE: This might be due to various factors. However, the most common case is that
                        //       the process has reached the maximum number of open files in the system. On
                        //       Linux systems this limit can be changed by using the "ulimit" command line
                        //       tool. In case of systemd-based systems, this can be changed by using the
                        //       "sysctl" command line tool.
                        tokio::time::sleep(Duration::from_micros(*TLS_ACCEPT_THROTTLE_TIME)).await;
                    }
                }
            }
        }
    }

    Ok(())
}

fn get_client_cert_common_name(tls_conn: &rustls::CommonState) -> ZResult<TlsAuthId> {
    if let Some(client_certs) = tls_conn.peer_certificates() {
        let (_, cert) = X509Certificate::from_der(client_certs[0].as_ref())?;
        let subject_name = &cert
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());

        Ok(TlsAuthId {
            auth_value: subject_name.map(|cn| cn.to_string()),
        })
    } else {
        Ok(TlsAuthId { auth_value: None })
    }
}

fn get_server_cert_common_name(tls_conn: &rustls::ClientConnection) -> ZResult<TlsAuthId> {
    let serv_certs = tls_conn.peer_certificates().unwrap();
    let mut auth_id = TlsAuthId { auth_value: None };

    // Need the first certificate in the chain so no need for looping
    if let Some(item) = serv_certs.iter().next() {
        let (_, cert) = X509Certificate::from_der(item.as_ref())?;
        let subject_name = &cert
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok());

        auth_id = TlsAuthId {
            auth_value: subject_name.map(|cn| cn.to_string()),
        };
        return Ok(auth_id);
    }
    Ok(auth_id)
}

/// Returns the minimum value of the `not_after` field in the given certificate chain.
/// Returns `None` if the input certificate chain is empty or `None`
fn get_cert_chain_expiration(
    cert_chain: &Option<&[rustls_pki_types::CertificateDer]>,
) -> ZResult<Option<OffsetDateTime>> {
    let mut link_expiration: Option<OffsetDateTime> = None;
    if let Some(remote_certs) = cert_chain {
        for cert in *remote_certs {
            let (_, cert) = X509Certificate::from_der(cert.as_ref())?;
            let cert_expiration = cert.validity().not_after.to_datetime();
            link_expiration = link_expiration
                .map(|current_min| current_min.min(cert_expiration))
                .or(Some(cert_expiration));
        }
    }
    Ok(link_expiration)
}

struct TlsAuthId {
    auth_value: Option<String>,
}

impl Debug for TlsAuthId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Common Name: {}",
            self.auth_value.as_deref().unwrap_or("None")
        )
    }
}

impl From<TlsAuthId> for LinkAuthId {
    fn from(value: TlsAuthId) -> Self {
        LinkAuthId::Tls(value.auth_value.clone())
    }
}
