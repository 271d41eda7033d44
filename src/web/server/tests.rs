use super::*;
use std::io::{Read, Write};

fn ip(last: u8) -> IpAddr {
    IpAddr::from([10, 0, 0, last])
}

/// Admits a connection from `peer`, whole request or not; its flags.
fn admit(t: &mut Table, peer: IpAddr, whole: bool) -> (Admission, Arc<Flags>) {
    let flags = Arc::new(Flags::default());
    flags.requested.store(whole, Ordering::Relaxed);
    let (tx, _) = oneshot::channel();
    (t.admit(peer, Arc::clone(&flags), tx, None), flags)
}

fn evicted_ids(t: &Table, before: &[u64]) -> Vec<u64> {
    before
        .iter()
        .copied()
        .filter(|id| !t.open.contains_key(id))
        .collect()
}

#[test]
fn past_the_per_peer_limit_that_peers_oldest_pending_connection_goes() {
    let mut t = Table::new(100, 3);
    let ids: Vec<u64> = (0..3)
        .map(|_| admit(&mut t, ip(1), false).0.id.expect("room"))
        .collect();
    let (a, _) = admit(&mut t, ip(2), false);
    assert!(a.id.is_some() && a.evicted.is_empty(), "another peer: room");
    let (a, _) = admit(&mut t, ip(1), false);
    assert!(a.id.is_some(), "the new one is served");
    assert_eq!(a.evicted.len(), 1);
    assert_eq!(evicted_ids(&t, &ids), vec![ids[0]], "the oldest");
    assert_eq!((t.count(&ip(1)), t.count(&ip(2)), t.len()), (3, 1, 4));
}

#[test]
fn connections_that_delivered_their_request_are_never_evicted() {
    let mut t = Table::new(100, 3);
    let (first, flags) = admit(&mut t, ip(1), false);
    admit(&mut t, ip(1), true);
    admit(&mut t, ip(1), true);
    // Its request came after it was admitted: no longer evictable.
    flags.requested.store(true, Ordering::Relaxed);
    let (a, _) = admit(&mut t, ip(1), false);
    assert_eq!((a.id, a.evicted.len()), (None, 0), "refused, none evicted");
    assert!(t.open.contains_key(&first.id.expect("admitted")));
    assert_eq!(t.count(&ip(1)), 3);
    // A pending one among them goes, and the new one stays.
    let mut t = Table::new(100, 2);
    admit(&mut t, ip(1), true);
    let (p, _) = admit(&mut t, ip(1), false);
    let (a, _) = admit(&mut t, ip(1), true);
    assert!(a.id.is_some());
    assert_eq!(evicted_ids(&t, &[p.id.expect("admitted")]).len(), 1);
}

#[test]
fn past_the_global_limit_the_heaviest_peer_makes_room() {
    let mut t = Table::new(4, 10);
    // B's connection is the oldest, but A has three.
    let b = admit(&mut t, ip(2), false).0.id.expect("room");
    let a: Vec<u64> = (0..3)
        .map(|_| admit(&mut t, ip(1), false).0.id.expect("room"))
        .collect();
    let (c, _) = admit(&mut t, ip(3), false);
    assert!(c.id.is_some());
    assert_eq!(evicted_ids(&t, &a), vec![a[0]], "A's oldest");
    assert!(t.open.contains_key(&b), "B keeps its only one");
    assert_eq!(t.len(), 4);
    // Its own pending one is the only victim: the new one is refused.
    let mut t = Table::new(1, 10);
    admit(&mut t, ip(1), true);
    let (a, _) = admit(&mut t, ip(2), false);
    assert_eq!((a.id, t.len(), t.count(&ip(2))), (None, 1, 0));
}

#[test]
fn removing_a_connection_gives_its_peer_room_back() {
    let mut t = Table::new(10, 2);
    let x = admit(&mut t, ip(1), false).0.id.expect("room");
    admit(&mut t, ip(1), false);
    t.remove(x);
    t.remove(x);
    assert_eq!(t.count(&ip(1)), 1);
    let (a, _) = admit(&mut t, ip(1), false);
    assert!(a.id.is_some() && a.evicted.is_empty());
}

#[test]
fn dropped_connections_are_counted_by_reason() {
    use super::super::{exposition, metrics};
    let c = crate::metrics::Counters::new();
    c.http_dropped(HttpDrop::Evicted);
    c.http_dropped(HttpDrop::Evicted);
    c.http_dropped(HttpDrop::Idle);
    let m = exposition::parse(&metrics::render(None, &c)).expect("text format");
    let n = |r| m.value("plusmoin_http_connections_dropped_total", &[("reason", r)]);
    assert_eq!(
        (n("evicted"), n("idle"), n("refused")),
        (Some(2.0), Some(1.0), Some(0.0))
    );
    assert_eq!(
        m.types["plusmoin_http_connections_dropped_total"],
        "counter"
    );
}

#[test]
fn the_listener_takes_at_most_a_quarter_of_the_open_file_limit() {
    assert_eq!(limits_for(1024), (128, 128));
    assert_eq!(limits_for(4096), (512, MAX_PER_PEER));
    assert_eq!(limits_for(524_288), (MAX_CONNECTIONS, MAX_PER_PEER));
    assert_eq!(limits_for(64), (16, 16), "always a few");
}

#[test]
fn a_head_is_whole_at_its_empty_line() {
    assert!(head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(head_complete(b"GET / HTTP/1.0\n\n"));
    assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    assert!(!head_complete(b""));
}

/// A listener on loopback in a runtime of its own (two workers, as the
/// daemon's), with no decision published: /health answers 503.
fn listening() -> (tokio::runtime::Runtime, Listener) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let publisher = super::super::Publisher::new();
    let snapshots = publisher.subscribe();
    let l = bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let listener = rt.block_on(async { serve(l, snapshots) }).expect("serve");
    (rt, listener)
}

/// GET /health on a new connection: the answer's first line.
fn check(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.lines().next().unwrap_or("").to_string()
}

/// Reads `s` until it is closed (EOF or reset): how long that took.
fn closed_after(s: &mut std::net::TcpStream, start: Instant, within: Duration) -> Duration {
    s.set_read_timeout(Some(within)).ok();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("still open after {within:?}: {e}"),
        }
    }
}

#[test]
fn a_checker_is_answered_while_one_peers_slow_connections_fill_its_limit() {
    let (_rt, l) = listening();
    let started = Instant::now();
    // Each sends the start of a head, then nothing.
    let mut slow: Vec<std::net::TcpStream> = (0..MAX_PER_PEER)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(l.addr()).expect("connect");
            s.write_all(b"GET /health HTTP/1.1\r\n").expect("write");
            s
        })
        .collect();
    let first = check(l.addr());
    assert!(first.starts_with("HTTP/1.1 503"), "answered: {first:?}");
    // Room was made from the oldest, long before its head was due.
    let took = closed_after(&mut slow[0], started, HEAD_TIMEOUT);
    assert!(took < HEAD_TIMEOUT / 2, "evicted after {took:?}");
    // Each next checker makes room again.
    for _ in 0..3 {
        assert!(check(l.addr()).starts_with("HTTP/1.1 503"));
    }
}

#[test]
fn a_connection_that_sends_nothing_is_reset_after_the_first_byte_timeout() {
    let (_rt, l) = listening();
    let started = Instant::now();
    let mut idle = std::net::TcpStream::connect(l.addr()).expect("connect");
    let took = closed_after(&mut idle, started, HEAD_TIMEOUT * 2);
    assert!(
        took >= FIRST_BYTE_TIMEOUT && took < (FIRST_BYTE_TIMEOUT + HEAD_TIMEOUT) / 2,
        "closed after {took:?}"
    );
    // One that sends its request at once is served meanwhile.
    assert!(check(l.addr()).starts_with("HTTP/1.1 503"));
}
