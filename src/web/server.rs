//! The listener: HTTP/1.1 on hyper, bounded everywhere a client could make
//! it hold on to something, and built so that a flood of idle or slow
//! connections cannot keep a health check from being answered.
//!
//! - A request's head is at most [`MAX_HEAD`] bytes (431 past it); its
//!   first byte must come within [`FIRST_BYTE_TIMEOUT`] of the connection,
//!   the whole head within [`HEAD_TIMEOUT`]; no body is ever read (a
//!   request announcing one is refused); one request per connection (no
//!   keep-alive), each connection closed after [`CONNECTION_LIFETIME`] at
//!   the latest.
//! - At most [`MAX_CONNECTIONS`] connections at once, at most
//!   [`MAX_PER_PEER`] from one IP address. A connection past either limit
//!   is still served: room is made by dropping the oldest connection that
//!   has not yet delivered a whole request head (an idle or a trickling
//!   one), from the peer that has the most connections. Only when every
//!   connection has delivered its request (they are being answered) is the
//!   new one closed instead. A checker sends its whole request at once, so
//!   it is the newest pending connection and answered long before a flood
//!   could reach it; the flooder's oldest connections go first.
//! - Whether a connection's head is already whole is seen at accept (a
//!   peek), so a checker whose request came with its connection is never
//!   evicted even if the accept loop runs ahead of the tasks serving.
//! - The socket listens with a [`LISTEN_BACKLOG`]-deep queue (std's bind
//!   uses 128): connections wait there while the accept loop works rather
//!   than having their SYN dropped (a client retries a dropped SYN after a
//!   second). The accept loop never waits on a connection: it accepts,
//!   peeks, makes room, and hands the connection to a task of its own.
//!
//! Answers come from [`super::routes`]. Dropped connections (evicted, idle,
//! refused) are counted in [`COUNTERS`] (`plusmoin_http_connections_dropped_total`).

use super::routes;
use super::Snapshots;
use crate::metrics::{HttpDrop, COUNTERS};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Request, Response};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// The longest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;
/// A connection that has sent nothing by then is dropped (a checker sends
/// its request as soon as it is connected).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(1);
/// A client must have sent its whole request head by then.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection stays open longer (a client reading its answer slowly).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);
/// Connections open at once; past it the oldest one without a whole
/// request head makes room. Lower when the open-file limit is under eight
/// times this: the listener takes at most a quarter of it.
const MAX_CONNECTIONS: usize = 1024;
/// Connections open at once from one IP address; past it that address'
/// oldest one without a whole request head makes room. (On loopback every
/// client is 127.0.0.1: there it is the eviction that protects a checker.)
pub const MAX_PER_PEER: usize = 256;
/// Connections the kernel keeps waiting for the accept loop (capped by
/// `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` (before the daemon says it is ready, so a taken port is a
/// start error), with a `LISTEN_BACKLOG`-deep accept queue. Needs no
/// runtime.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's bind: a restart does not wait for old connections'
    // TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The running listener; dropping it stops it and every connection it has.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Listener {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `listener` (from [`bind`]) in its own task, answering from the
/// latest of `snapshots`. Needs the runtime.
pub fn serve(listener: std::net::TcpListener, snapshots: Snapshots) -> io::Result<Listener> {
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, "HTTP listener on: /metrics /status /health /primary/HOST:PORT /replica/HOST:PORT");
    let task = tokio::spawn(accept(listener, snapshots));
    Ok(Listener { addr, task })
}

/// The connection limits: [`MAX_CONNECTIONS`] and [`MAX_PER_PEER`], lower
/// when the open-file limit is low. Each connection takes two descriptors
/// (its own and the duplicate peeked through): the listener never takes
/// more than a quarter of the limit, so that a flood cannot starve the
/// probes' connections to the servers of descriptors.
fn limits() -> (usize, usize) {
    use nix::sys::resource::{getrlimit, Resource};
    let files = getrlimit(Resource::RLIMIT_NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let (max, per_peer) = limits_for(files);
    if max < MAX_CONNECTIONS {
        warn!(
            open_files = files,
            "HTTP listener: at most {max} connections at once (a quarter of the open-file limit)"
        );
    }
    (max, per_peer)
}

/// [`limits`] under an open-file limit of `files`.
fn limits_for(files: u64) -> (usize, usize) {
    let max = usize::try_from(files / 8)
        .unwrap_or(usize::MAX)
        .clamp(16, MAX_CONNECTIONS);
    (max, MAX_PER_PEER.min(max))
}

/// What a connection's task and the accept loop both know of it.
#[derive(Debug, Default)]
struct Flags {
    /// Its whole request head has come: it is being answered, never
    /// evicted.
    requested: AtomicBool,
    /// Closed with a reset (RST) rather than a FIN: it was evicted or sent
    /// nothing. No TIME_WAIT is left behind for each of a flood's
    /// connections, and no answer is lost (there is none).
    reset: AtomicBool,
}

/// An open connection, as the table knows it.
#[derive(Debug)]
struct Open {
    peer: IpAddr,
    flags: Arc<Flags>,
    /// Told when the connection is evicted.
    evict: Option<oneshot::Sender<()>>,
    /// A duplicate of its descriptor, to see what it has sent so far.
    view: Option<std::net::TcpStream>,
}

impl Open {
    fn pending(&self) -> bool {
        !self.flags.requested.load(Ordering::Relaxed)
    }

    /// Whether it still has not delivered a whole request head: as its
    /// task last saw, or as a peek sees now. A checker whose head came
    /// just after its connection was accepted, and whose task has not run
    /// yet, is seen here and kept.
    fn still_pending(&self, buf: &mut [u8]) -> bool {
        if !self.pending() {
            return false;
        }
        if self.view.as_ref().is_some_and(|v| arrived(v, buf).1) {
            self.flags.requested.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Tells its task to close it, with a reset.
    fn evict(mut self) {
        self.flags.reset.store(true, Ordering::Relaxed);
        if let Some(tx) = self.evict.take() {
            let _ = tx.send(());
        }
    }
}

/// The open connections, oldest first, and the limits they are held to.
#[derive(Debug)]
struct Table {
    max: usize,
    per_peer_max: usize,
    next: u64,
    open: BTreeMap<u64, Open>,
    per_peer: HashMap<IpAddr, usize>,
    /// For peeks.
    buf: Vec<u8>,
}

/// What [`Table::admit`] decided.
#[derive(Debug)]
struct Admission {
    /// The new connection's id, `None` when it was refused.
    id: Option<u64>,
    /// Connections dropped to make room, to be told.
    evicted: Vec<Open>,
}

impl Table {
    fn new(max: usize, per_peer_max: usize) -> Table {
        Table {
            max,
            per_peer_max,
            next: 0,
            open: BTreeMap::new(),
            per_peer: HashMap::new(),
            buf: vec![0; MAX_HEAD],
        }
    }

    fn len(&self) -> usize {
        self.open.len()
    }

    fn count(&self, peer: &IpAddr) -> usize {
        self.per_peer.get(peer).copied().unwrap_or(0)
    }

    fn remove(&mut self, id: u64) -> Option<Open> {
        let o = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&o.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&o.peer);
            }
        }
        Some(o)
    }

    /// The connection to drop first: one that has not delivered its
    /// request head, of `peer` if given, else of the peer with the most
    /// connections (that has such a one); the oldest of those.
    fn victim(&mut self, peer: Option<IpAddr>) -> Option<u64> {
        let Table { open, buf, .. } = self;
        let mut oldest = |p: IpAddr| {
            open.iter()
                .find(|(_, o)| o.peer == p && o.still_pending(buf))
                .map(|(id, _)| *id)
        };
        if let Some(p) = peer {
            return oldest(p);
        }
        let mut peers: Vec<(usize, IpAddr)> = self.per_peer.iter().map(|(p, n)| (*n, *p)).collect();
        peers.sort_unstable_by_key(|(n, _)| std::cmp::Reverse(*n));
        peers.into_iter().find_map(|(_, p)| oldest(p))
    }

    /// Takes a new connection from `peer`, making room if need be.
    fn admit(
        &mut self,
        peer: IpAddr,
        flags: Arc<Flags>,
        evict: oneshot::Sender<()>,
        view: Option<std::net::TcpStream>,
    ) -> Admission {
        let id = self.next;
        self.next += 1;
        self.open.insert(
            id,
            Open {
                peer,
                flags,
                evict: Some(evict),
                view,
            },
        );
        *self.per_peer.entry(peer).or_default() += 1;
        let mut evicted = Vec::new();
        let mut refused = false;
        while self.count(&peer) > self.per_peer_max {
            match self.victim(Some(peer)) {
                Some(v) if v != id => evicted.extend(self.remove(v)),
                _ => {
                    refused = true;
                    break;
                }
            }
        }
        while !refused && self.len() > self.max {
            match self.victim(None) {
                Some(v) if v != id => evicted.extend(self.remove(v)),
                _ => refused = true,
            }
        }
        if refused {
            self.remove(id);
        }
        Admission {
            id: (!refused).then_some(id),
            evicted,
        }
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // Nothing panics while holding it; a poisoned table is still whole.
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes its connection from the table when the connection's task ends
/// (aborted included).
struct Registered {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.table).remove(self.id);
    }
}

/// Whether `head` holds a whole request head (an empty line ends it; a
/// bare LF is taken as hyper takes it).
fn head_complete(head: &[u8]) -> bool {
    head.windows(2).any(|w| w == b"\n\n") || head.windows(3).any(|w| w == b"\n\r\n")
}

/// A duplicate of `stream`'s descriptor, to peek at what came: tokio has
/// not seen a just-accepted stream readable yet, so its own peek would not
/// even try. Non-blocking as the stream (the flag is the socket's).
fn view(stream: &TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let fd = stream.as_fd().try_clone_to_owned().ok()?;
    Some(std::net::TcpStream::from(fd))
}

/// What a connection has sent so far: whether anything, and whether a
/// whole request head (a checker's).
fn arrived(view: &std::net::TcpStream, buf: &mut [u8]) -> (bool, bool) {
    match view.peek(buf) {
        Ok(n) => (n > 0, head_complete(&buf[..n])),
        // Nothing yet (WouldBlock), or an error its task will see.
        Err(_) => (false, false),
    }
}

/// Warnings about dropped connections, at most one a minute.
#[derive(Debug, Default)]
struct Said {
    last: Option<Instant>,
    evicted: u64,
    refused: u64,
}

impl Said {
    fn note(&mut self, evicted: usize, refused: bool) {
        self.evicted += evicted as u64;
        self.refused += u64::from(refused);
        if self.evicted + self.refused == 0 {
            return;
        }
        if self
            .last
            .is_some_and(|l| l.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        warn!(
            evicted = self.evicted,
            refused = self.refused,
            "HTTP listener: full ({MAX_CONNECTIONS} connections, {MAX_PER_PEER} per address); \
             dropping the oldest that have not sent a whole request"
        );
        self.last = Some(Instant::now());
        self.evicted = 0;
        self.refused = 0;
    }
}

async fn accept(listener: TcpListener, snapshots: Snapshots) {
    let (max, per_peer) = limits();
    let table = Arc::new(Mutex::new(Table::new(max, per_peer)));
    // Dropped with this task: every connection ends with the listener.
    let mut connections = JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD)
        // hyper's smallest read buffer (8 KiB): no body is ever read.
        .max_buf_size(8192)
        .keep_alive(false);
    let builder = Arc::new(builder);
    let mut said = Said::default();
    let mut accept_failed: Option<Instant> = None;
    let mut peek = vec![0u8; MAX_HEAD];
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, mostly: a pending connection
                // gives its own back, else wait a little rather than spin.
                let victim = {
                    let mut t = lock(&table);
                    let v = t.victim(None);
                    v.and_then(|v| t.remove(v))
                };
                match victim {
                    Some(v) => {
                        v.evict();
                        COUNTERS.http_dropped(HttpDrop::Evicted);
                        tokio::task::yield_now().await;
                    }
                    None => {
                        if accept_failed.map_or(true, |t| t.elapsed() >= Duration::from_secs(60)) {
                            warn!("HTTP listener: cannot accept a connection: {e}");
                            accept_failed = Some(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                continue;
            }
        };
        let view = view(&stream);
        let (sent, whole) = view
            .as_ref()
            .map_or((false, false), |v| arrived(v, &mut peek));
        let flags = Arc::new(Flags {
            requested: AtomicBool::new(whole),
            reset: AtomicBool::new(false),
        });
        let (tx, rx) = oneshot::channel();
        let admission = lock(&table).admit(peer.ip(), Arc::clone(&flags), tx, view);
        let refused = admission.id.is_none();
        said.note(admission.evicted.len(), refused);
        for o in admission.evicted {
            o.evict();
            COUNTERS.http_dropped(HttpDrop::Evicted);
        }
        let Some(id) = admission.id else {
            COUNTERS.http_dropped(HttpDrop::Refused);
            reset(&stream);
            continue;
        };
        let registered = Registered {
            table: Arc::clone(&table),
            id,
        };
        let conn = Conn { stream, flags };
        connections.spawn(serve_one(
            conn,
            peer,
            sent,
            rx,
            Arc::clone(&builder),
            snapshots.clone(),
            registered,
        ));
    }
}

/// Makes closing `stream` send a reset.
fn reset(stream: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// One connection, from its first byte to its answer; or until evicted.
async fn serve_one(
    conn: Conn,
    peer: SocketAddr,
    sent: bool,
    evicted: oneshot::Receiver<()>,
    builder: Arc<hyper::server::conn::http1::Builder>,
    snapshots: Snapshots,
    _registered: Registered,
) {
    let flags = Arc::clone(&conn.flags);
    let served = async move {
        if !sent {
            let mut one = [0u8; 1];
            match tokio::time::timeout(FIRST_BYTE_TIMEOUT, conn.stream.peek(&mut one)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return,
                Err(_) => {
                    conn.flags.reset.store(true, Ordering::Relaxed);
                    COUNTERS.http_dropped(HttpDrop::Idle);
                    debug!(peer = %peer, "HTTP connection closed: nothing sent");
                    return;
                }
            }
        }
        let requested = Arc::clone(&conn.flags);
        let service = hyper::service::service_fn(move |req| {
            requested.requested.store(true, Ordering::Relaxed);
            // `/events` reads the journal's files: on a blocking thread.
            let pending = match super::events::wanted(&req, &snapshots) {
                Some(events) => Err(events),
                None => Ok(answer(&req, &snapshots)),
            };
            async move {
                Ok::<_, Infallible>(match pending {
                    Ok(reply) => reply,
                    Err(events) => events.answer().await,
                })
            }
        });
        let io = hyper_util::rt::TokioIo::new(conn);
        if let Err(e) = builder.serve_connection(io, service).await {
            debug!(peer = %peer, "HTTP connection ended: {e}");
        }
    };
    tokio::select! {
        r = tokio::time::timeout(CONNECTION_LIFETIME, served) => {
            if r.is_err() {
                debug!(peer = %peer, "HTTP connection closed: open too long");
            }
        }
        _ = evicted => {
            debug!(peer = %peer, requested = flags.requested.load(Ordering::Relaxed), "HTTP connection evicted");
        }
    }
}

/// A connection's stream, closed with a reset when its flags say so.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    flags: Arc<Flags>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.flags.reset.load(Ordering::Relaxed) {
            reset(&self.stream);
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The response to `req`, from the latest snapshot.
fn answer(req: &Request<Incoming>, snapshots: &Snapshots) -> Response<Full<Bytes>> {
    let head = req.method() == hyper::Method::HEAD;
    let has_body = req.headers().contains_key(TRANSFER_ENCODING)
        || req
            .headers()
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let reply = if has_body {
        routes::Reply {
            status: 413,
            content_type: "text/plain; charset=utf-8",
            body: "a request body is never accepted here\n".into(),
        }
    } else {
        let snapshot = snapshots.borrow().clone();
        let now = crate::cluster::Time::now().as_secs_f64();
        routes::route(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query(),
            snapshot.as_ref(),
            now,
            &COUNTERS,
        )
    };
    respond(reply, head)
}

/// `reply` as a response (its head only for `HEAD`).
pub(super) fn respond(reply: routes::Reply, head: bool) -> Response<Full<Bytes>> {
    let len = reply.body.len();
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(reply.body)
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    if reply.status == 405 {
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

#[cfg(test)]
mod tests;
