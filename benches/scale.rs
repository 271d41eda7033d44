//! Scale: what one beat costs plusmoin as the number of nodes grows, against
//! simulated PostgreSQL servers (`plusmoin::fakepg`): 10% of the nodes
//! frozen (TCP accepted, never answered), the rest clusters of one master
//! and three slaves.
//!
//! Three processes per size, so that each figure is plusmoin's own: this
//! program orchestrates and prints the table; it runs itself again as
//! `--fake-server` (all the simulated nodes, one thread) and as
//! `--measure N PORT` (a real `Daemon` on a 2-thread runtime like
//! `plusmoin start`, timing `Daemon::beat` and reading its own CPU time
//! and peak memory). `--quick` skips 5,000 nodes and measures fewer beats.
//!
//! For digging: `SCALE_SIZES=1000` picks the sizes, `SCALE_WRAP="perf
//! record -g --"` runs the measuring process under a profiler, and
//! `SCALE_RT=current` gives it a single-threaded runtime instead,
//! `SCALE_FROZEN_EVERY=0` freezes no node (1: all of them).

use plusmoin::cluster::Place;
use plusmoin::daemon::Daemon;
use plusmoin::fakepg::{address, FakeNode, FakePg, Fault};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SLAVES_PER_MASTER: usize = 3;

/// Node `i` of `n`: every tenth frozen, the others in groups of a master
/// and its slaves (lags 0, 50, 100 ms).
fn layout(n: usize) -> Vec<FakeNode> {
    let mut nodes = Vec::with_capacity(n);
    let mut master = 0;
    let mut k = 0;
    // SCALE_FROZEN_EVERY=0: none frozen (to see what they cost).
    let every: usize = std::env::var("SCALE_FROZEN_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for i in 0..n {
        if every > 0 && i % every == every - 1 {
            nodes.push(FakeNode::master().with(Fault::Frozen));
            continue;
        }
        if k % (SLAVES_PER_MASTER + 1) == 0 {
            master = i;
            nodes.push(FakeNode::master());
        } else {
            let lag = Duration::from_millis(50 * (k % (SLAVES_PER_MASTER + 1) - 1) as u64);
            nodes.push(FakeNode::slave(master, lag));
        }
        k += 1;
    }
    nodes
}

/// What one `--measure` run reports.
#[derive(Debug, Serialize, Deserialize)]
struct Measured {
    nodes: usize,
    frozen: usize,
    first_beat_s: f64,
    beats: usize,
    beat_median_s: f64,
    beat_max_s: f64,
    cpu_per_beat_ms: f64,
    peak_rss_mb: f64,
    connections: usize,
    masters: usize,
    slaves: usize,
    down: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if args.iter().any(|a| a == "--fake-server") {
        fake_server();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let n: usize = args[i + 1].parse().expect("node count");
        let port: u16 = args[i + 2].parse().expect("port");
        let beats = if quick { 3 } else { 8 };
        let m = measure(n, port, beats);
        println!("{}", serde_json::to_string(&m).expect("json"));
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        // Built and run as a test (`cargo test --all-targets`): measuring
        // here would only slow the tests down.
        eprintln!("scale: run it with `cargo bench --bench scale`; nothing measured");
        return;
    }
    let sizes: Vec<usize> = match std::env::var("SCALE_SIZES") {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) if quick => vec![100, 1_000],
        Err(_) => vec![100, 1_000, 5_000],
    };
    let mut rows = Vec::new();
    for &n in &sizes {
        eprintln!("scale: {n} nodes…");
        rows.push(run_size(n, quick));
    }
    print_table(&rows);
}

/// A child process killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_size(n: usize, quick: bool) -> Measured {
    let exe = std::env::current_exe().expect("own executable");
    let mut server = Guard(
        Command::new(&exe)
            .arg("--fake-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake server"),
    );
    let spec = serde_json::to_string(&layout(n)).expect("json");
    {
        let mut stdin = server.0.stdin.take().expect("stdin");
        stdin.write_all(spec.as_bytes()).expect("send layout");
        stdin.write_all(b"\n").expect("send layout");
        // Kept open: the server exits when it closes (our exit or drop).
        server.0.stdin = Some(stdin);
    }
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("fake server port");
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("fake server said {line:?}"));
    // SCALE_WRAP="perf record -g --" (say) runs the measuring process under
    // a profiler.
    let wrap: Vec<String> = std::env::var("SCALE_WRAP")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.args(["--measure", &n.to_string(), &port.to_string()]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().expect("run the measuring process");
    let text = String::from_utf8_lossy(&out.stdout);
    let m: Measured = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "measuring {n} nodes failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    drop(server);
    m
}

/// `--fake-server`: reads the layout on stdin, prints the port, serves
/// until stdin closes.
fn fake_server() {
    let _ = plusmoin::lifecycle::raise_nofile_limit();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("layout");
    let nodes: Vec<FakeNode> = serde_json::from_str(&line).expect("layout json");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let pg = FakePg::start(nodes).await.expect("fake server");
        println!("{}", pg.port());
        std::io::stdout().flush().expect("flush");
        // Until the orchestrator closes our stdin (or dies).
        let _ = tokio::task::spawn_blocking(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await;
        drop(pg);
    });
}

fn config_text(n: usize, port: u16, dir: &std::path::Path) -> String {
    let nodes: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"host": "{}", "port": {port}}}"#, address(i)))
        .collect();
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    let d = dir.display();
    format!(
        r#"{{
  "dbname": "plusmoin", "user": "plusmoin", "password": "unused",
  "heartbeat": 1, "connect_timeout": {ct}, "max_sync_delay": 10, "recover_sync_delay": 5,
  "log_level": "info", "daemon_user": "{user}", "instance_name": "bench", "sslmode": "disable",
  "status_file": "{d}/status.json", "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
  "nodes": [{nodes}]
}}"#,
        ct = CONNECT_TIMEOUT.as_secs_f64(),
        nodes = nodes.join(",\n    ")
    )
}

fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// VmHWM (peak resident memory) of this process, in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// `--measure`: a real Daemon over `n` fake nodes; first beat (connecting
/// everything), one warm-up beat, then `beats` measured beats back to back
/// (each lasts about connect_timeout, because of the frozen nodes, just as
/// it would at heartbeat = connect_timeout).
fn measure(n: usize, port: u16, beats: usize) -> Measured {
    let _ = plusmoin::lifecycle::raise_nofile_limit();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plusmoin.json");
    let config = plusmoin::config::parse(&config_text(n, port, dir.path()), &path)
        .expect("bench configuration");
    let rt = if std::env::var("SCALE_RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(async move {
        let mut daemon = Daemon::new(config).expect("daemon");
        let t0 = Instant::now();
        daemon.beat_once().await;
        let first_beat = t0.elapsed();
        daemon.beat_once().await;
        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..beats {
            let cpu0 = cpu_time();
            let t0 = Instant::now();
            daemon.beat_once().await;
            walls.push(t0.elapsed());
            cpus.push(cpu_time().saturating_sub(cpu0));
        }
        walls.sort();
        // The median: other work on a shared machine inflates some beats.
        cpus.sort();
        let cpu = cpus[cpus.len() / 2];
        let count = |p: Place| daemon.state().nodes.iter().filter(|s| s.place == p).count();
        let down = daemon
            .state()
            .nodes
            .iter()
            .filter(|s| s.last_seen.is_none())
            .count();
        Measured {
            nodes: n,
            frozen: layout(n)
                .iter()
                .filter(|f| f.fault == Fault::Frozen)
                .count(),
            first_beat_s: first_beat.as_secs_f64(),
            beats,
            beat_median_s: walls[walls.len() / 2].as_secs_f64(),
            beat_max_s: walls[walls.len() - 1].as_secs_f64(),
            cpu_per_beat_ms: cpu.as_secs_f64() * 1000.0,
            peak_rss_mb: peak_rss_mb(),
            connections: daemon.connections_held(),
            masters: count(Place::Master),
            slaves: count(Place::Slave),
            down,
        }
    })
}

fn print_table(rows: &[Measured]) {
    println!(
        "\nOne beat against simulated servers (10% frozen; heartbeat = connect_timeout = {} s; \
         plusmoin on 2 threads)\n",
        CONNECT_TIMEOUT.as_secs()
    );
    println!(
        "{:>6} {:>7} {:>11} {:>12} {:>12} {:>14} {:>10} {:>6} {:>21}",
        "nodes",
        "frozen",
        "first beat",
        "beat median",
        "beat worst",
        "CPU/beat (med)",
        "peak RSS",
        "conns",
        "masters/slaves/down"
    );
    for r in rows {
        println!(
            "{:>6} {:>7} {:>9.3} s {:>10.3} s {:>10.3} s {:>11.1} ms {:>7.1} MB {:>6} {:>21}",
            r.nodes,
            r.frozen,
            r.first_beat_s,
            r.beat_median_s,
            r.beat_max_s,
            r.cpu_per_beat_ms,
            r.peak_rss_mb,
            r.connections,
            format!("{}/{}/{}", r.masters, r.slaves, r.down),
        );
    }
    println!(
        "\nA beat lasts connect_timeout ({} s) while any node is frozen; \"beat - {} s\" is the \
         time the decision takes past that deadline.",
        CONNECT_TIMEOUT.as_secs(),
        CONNECT_TIMEOUT.as_secs()
    );
    for r in rows {
        let past = r.beat_max_s - CONNECT_TIMEOUT.as_secs_f64();
        println!(
            "  {:>5} nodes: decided {:>4.0} ms after the deadline (worst)",
            r.nodes,
            past * 1000.0
        );
    }
}
