//! The listener: HTTP/1.1 on hyper, bounded everywhere a client could make
//! it hold on to something. A request's head is at most [`MAX_HEAD`] bytes
//! (431 past it) and must arrive within [`HEAD_TIMEOUT`]; no body is ever
//! read (a request announcing one is refused); one request per connection
//! (no keep-alive), each connection closed after [`CONNECTION_LIFETIME`]
//! at the latest; at most [`MAX_CONNECTIONS`] at once, more are closed at
//! once. Answers come from [`super::routes`].

use super::metrics::COUNTERS;
use super::routes;
use super::Snapshots;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

/// The longest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8 * 1024;
/// A client must have sent its whole request head by then.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// No connection stays open longer (a client reading its answer slowly).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);
/// Connections served at once; more are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` (before the daemon says it is ready, so a taken port is a
/// start error). Needs no runtime.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
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
pub fn serve(listener: std::net::TcpListener, snapshots: Snapshots) -> std::io::Result<Listener> {
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, "HTTP listener on: /metrics /status /health /primary/HOST:PORT /replica/HOST:PORT");
    let task = tokio::spawn(accept(listener, snapshots));
    Ok(Listener { addr, task })
}

async fn accept(listener: TcpListener, snapshots: Snapshots) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
    let mut full_said = false;
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, mostly: wait a little rather
                // than spin.
                warn!("HTTP listener: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !full_said {
                warn!(
                    peer = %peer,
                    "HTTP listener: {MAX_CONNECTIONS} connections open; closing new ones until some end"
                );
                full_said = true;
            }
            drop(stream);
            continue;
        };
        full_said = false;
        let snapshots = snapshots.clone();
        let builder = Arc::clone(&builder);
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let reply = answer(&req, &snapshots);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(peer = %peer, "HTTP connection ended: {e}"),
                Err(_) => debug!(peer = %peer, "HTTP connection closed: open too long"),
            }
        });
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
