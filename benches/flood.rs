//! Health checks under a flood: plusmoin's HTTP listener (`web::bind` and
//! `web::serve`, in a two-worker runtime as the daemon runs it), answering
//! from a published decision in which `db:5432` is a master, while one
//! local process keeps 1,000 idle connections and 1,000 slow ones (a byte
//! of request head every 300 ms, never finished) open to it, reopening
//! each as soon as it is dropped. A well-behaved checker (connect, send
//! `GET /primary/db:5432`, read the answer: what HAProxy does) asks every
//! 20 ms; each check is given 1 s. Printed: the checker's latency (median,
//! p99, worst) and how many checks were answered, without the flood and
//! with it, and what the flood cost (connections it opened, connections
//! the listener dropped, by reason).
//!
//! Loopback only; about 10 s (`--quick`: 2 s of checks instead of 6).

use plusmoin::cluster::{decide, NodeName, Observation, Policy, State, Time};
use plusmoin::metrics::COUNTERS;
use plusmoin::payload::Status;
use plusmoin::web::metrics::render;
use plusmoin::web::Publisher;
use plusmoin_kit::exposition;
use plusmoin_kit::flood::{check, Checked, Flood};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDLE: usize = 1000;
const SLOW: usize = 1000;
const SLOW_EVERY: Duration = Duration::from_millis(300);
const CHECK_EVERY: Duration = Duration::from_millis(20);
const CHECK_LIMIT: Duration = Duration::from_secs(1);
/// The flood's connections are all open (or being reopened) by then.
const WARM_UP: Duration = Duration::from_secs(1);
const PATH: &str = "/primary/db:5432";

/// `db:5432` the master of cluster 0, decided now; the heartbeat is an
/// hour, so the decision stays fresh for the whole bench.
fn publish(publisher: &Publisher) {
    let policy = Policy {
        max_sync_delay: Duration::from_secs(10),
        recover_sync_delay: Duration::from_secs(5),
        max_lag_bytes: None,
        recover_lag_bytes: None,
    };
    let now = Time::now();
    let db = NodeName::new("db", 5432);
    let obs = [(
        db.clone(),
        Observation::Master {
            wrote_at: now,
            repl: None,
        },
    )];
    let state = decide(State::default(), &[db], &obs, now, &policy, true).state;
    let status = Status::new(&state, "flood", now, Duration::from_secs(3600));
    publisher.publish(Arc::new(status), &HashSet::new());
}

/// Checks every [`CHECK_EVERY`] for `period`.
fn checks(addr: SocketAddr, period: Duration) -> Vec<Checked> {
    let end = Instant::now() + period;
    let mut out = Vec::new();
    while Instant::now() < end {
        let next = Instant::now() + CHECK_EVERY;
        out.push(check(addr, PATH, CHECK_LIMIT));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One line of the table.
fn row(what: &str, got: &[Checked]) {
    let mut took: Vec<Duration> = got.iter().map(|c| c.took).collect();
    took.sort();
    let at = |q: f64| took[((took.len() as f64 - 1.0) * q).round() as usize];
    let answered = got.iter().filter(|c| c.status.is_some()).count();
    let ok = got.iter().filter(|c| c.status == Some(200)).count();
    let within = got
        .iter()
        .filter(|c| c.status.is_some() && c.took <= Duration::from_millis(100))
        .count();
    println!(
        "| {what} | {answered}/{} ({ok} × 200) | {within} | {} | {} | {} |",
        got.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(at(1.0)),
    );
}

/// The listener's dropped-connection counters.
fn dropped() -> [f64; 3] {
    let m = exposition::parse(&render(None, &COUNTERS)).expect("text format");
    ["evicted", "idle", "refused"].map(|r| {
        m.value("plusmoin_http_connections_dropped_total", &[("reason", r)])
            .unwrap_or(0.0)
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let period = Duration::from_secs(if quick { 2 } else { 6 });
    // The flood's 2,000 descriptors and the listener's.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let publisher = Publisher::new();
    let snapshots = publisher.subscribe();
    publish(&publisher);
    let bound = plusmoin::web::bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let listener = rt
        .block_on(async { plusmoin::web::serve(bound, snapshots) })
        .expect("serve");
    let addr = listener.addr();

    println!("plusmoin HTTP listener on {addr}: a checker every {CHECK_EVERY:?}, {PATH}");
    println!();
    println!("| flood | answered/asked | within 100 ms | median | p99 | worst |");
    println!("|---|---|---|---|---|---|");
    row("none", &checks(addr, period / 2));

    let before = dropped();
    let flood = Flood::start(addr, IDLE, SLOW, SLOW_EVERY);
    std::thread::sleep(WARM_UP);
    let opened_before = flood.opened();
    let started = Instant::now();
    let got = checks(addr, period);
    let flooded = started.elapsed();
    let opened = flood.opened() - opened_before;
    let total = flood.stop();
    row(
        &format!("{IDLE} idle + {SLOW} slow (a byte every {SLOW_EVERY:?})"),
        &got,
    );
    let after = dropped();
    println!();
    println!(
        "The flood tried {total} connections ({:.0}/s while checked); the listener dropped {:.0} evicted, {:.0} idle, {:.0} refused.",
        opened as f64 / flooded.as_secs_f64(),
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
    );
    drop(listener);
}
