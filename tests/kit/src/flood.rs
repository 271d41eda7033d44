//! Test kit: a flood of idle and slow connections against a listener, and
//! a well-behaved checker to time against it (`benches/flood.rs`, the
//! HAProxy test in `tests/live/http.rs`). Loopback only, by whoever calls
//! it.
//!
//! The flood keeps `idle` connections that never send a byte and `slow`
//! ones that send a request head one byte at a time, every `every`, never
//! finishing it; each is reopened as soon as the listener drops it. It
//! runs in a thread of its own (one tokio worker, as one local user's
//! process would) until stopped or dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A running flood; stopped (every connection closed) on drop.
#[derive(Debug)]
pub struct Flood {
    stop: watch::Sender<bool>,
    opened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    /// Starts `idle` idle and `slow` slow connections to `addr`, the slow
    /// ones sending a byte every `every`.
    pub fn start(addr: SocketAddr, idle: usize, slow: usize, every: Duration) -> Flood {
        let (stop, stopped) = watch::channel(false);
        let opened = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&opened);
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..idle + slow {
                    let every = (i >= idle).then_some(every);
                    tasks.spawn(one(addr, every, stopped.clone(), Arc::clone(&count)));
                }
                while tasks.join_next().await.is_some() {}
            });
        });
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    /// Connections tried so far (reopened ones included; some are reset
    /// before this side sees them connected).
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Stops it: every connection closed. Connections tried in all.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.opened()
    }

    fn halt(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One of the flood's connections, reopened whenever dropped: idle, or
/// slow (a byte every `every`).
async fn one(
    addr: SocketAddr,
    every: Option<Duration>,
    mut stop: watch::Receiver<bool>,
    opened: Arc<AtomicU64>,
) {
    const HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: flood\r\nX-Slow: ";
    while !*stop.borrow() {
        opened.fetch_add(1, Ordering::Relaxed);
        let connected = tokio::select! {
            c = tokio::net::TcpStream::connect(addr) => c,
            _ = stop.changed() => return,
        };
        let Ok(mut s) = connected else {
            // Out of ports or descriptors for a moment: try again soon.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut sent = 0;
        let mut tick = every.map(tokio::time::interval);
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                // Closed (or answered: a slow one never is).
                r = s.read(&mut buf) => if !matches!(r, Ok(n) if n > 0) { break },
                _ = async { tick.as_mut().expect("slow").tick().await }, if tick.is_some() => {
                    let byte = HEAD.get(sent).copied().unwrap_or(b'a');
                    sent += 1;
                    if s.write_all(&[byte]).await.is_err() {
                        break;
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// What a well-behaved checker got: connect, send `GET path`, read the
/// whole answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The status, `None` without an answer (closed, reset, timed out).
    pub status: Option<u16>,
    /// From before the connect to the end of the answer (or the failure).
    pub took: Duration,
}

/// One check of `path` on `addr`, given `limit` in all.
pub fn check(addr: SocketAddr, path: &str, limit: Duration) -> Checked {
    let start = Instant::now();
    let status = (|| {
        let mut s = TcpStream::connect_timeout(&addr, limit).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: check\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        let text = String::from_utf8_lossy(&out);
        text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    })();
    Checked {
        status,
        took: start.elapsed(),
    }
}
