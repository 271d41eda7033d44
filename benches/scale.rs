//! Scale: what plusmoin costs as the number of nodes grows, against
//! simulated PostgreSQL servers (`plusmoin_kit::fakepg`): 10% of the nodes
//! frozen (TCP accepted, never answered), the rest clusters of one master
//! and three slaves.
//!
//! Per beat: how long after the tick each node's answer is decided (median
//! and worst over the nodes that answer, and apart from them the frozen
//! ones, which must not hold the others back), CPU per beat, peak memory,
//! connections held. Then the cost of retrying dead servers: 1,000 healthy
//! nodes, alone and beside 1,000 that refuse connections (lost, so each is
//! tried again every `retry_interval`, 0.25 s): CPU per second of the real
//! deciding loop, beats included.
//!
//! Three processes per size, so that each figure is plusmoin's own: this
//! program orchestrates and prints the tables; it runs itself again as
//! `--fake-server` (all the simulated nodes, one thread) and as
//! `--measure N PORT` or `--retry N DEAD PORT` (the real deciding loop,
//! `plusmoin::daemon::run`, on a 2-thread runtime like `plusmoin start`, running as a task on its
//! workers as there, reading its own CPU time and peak memory). `--quick` skips 5,000 nodes and measures fewer beats.
//!
//! For digging: `SCALE_SIZES=1000` picks the sizes, `SCALE_WRAP="perf
//! record -g --"` runs the measuring process under a profiler, and
//! `SCALE_RT=current` gives it a single-threaded runtime instead,
//! `SCALE_FROZEN_EVERY=0` freezes no node (1: all of them),
//! `SCALE_RETRY=0` skips the dead-server part, `SCALE_BEATS=N` measures N
//! beats.
//!
//! Memory is read twice: after the measured beats, and after half a minute
//! more of the real deciding loop (not with `--quick`):
//! resident memory keeps growing for a while after the heap has stopped
//! growing, as the allocator's pages (each connection's read and write
//! buffers, 8 KB each in tokio-postgres, walked through as messages come)
//! are touched one after another.

use plusmoin::cluster::{NodeName, Place, State};
use plusmoin::daemon::{Inputs, Observer};
use plusmoin_kit::fakepg::{address, FakeNode, FakePg, Fault};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::ControlFlow;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The measured runs' heartbeat, as in their configuration.
const HEARTBEAT: Duration = CONNECT_TIMEOUT;
const SLAVES_PER_MASTER: usize = 3;

/// Every how many nodes one is frozen (SCALE_FROZEN_EVERY; 0: none).
fn frozen_every() -> usize {
    std::env::var("SCALE_FROZEN_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// Node `i` of `n`: every tenth frozen, the others in groups of a master
/// and its slaves (lags 0, 50, 100 ms).
fn layout(n: usize) -> Vec<FakeNode> {
    layout_with(n, frozen_every())
}

/// `n` nodes, one in `every` frozen (0: none).
fn layout_with(n: usize, every: usize) -> Vec<FakeNode> {
    let mut nodes = Vec::with_capacity(n);
    let mut master = 0;
    let mut k = 0;
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
    /// From the tick to each answering (not frozen) node's decision.
    decided_median_ms: f64,
    decided_worst_ms: f64,
    /// Frozen nodes whose news was decided within a beat (should be none:
    /// they answer nothing), over all measured beats.
    frozen_decided: usize,
    /// The 99th percentile of the same.
    decided_p99_ms: f64,
    /// The worst of the same over the masters alone: their writes, which
    /// their slaves' reads wait for.
    masters_worst_ms: f64,
    cpu_per_beat_ms: f64,
    peak_rss_mb: f64,
    /// After half a minute more (not with `--quick`).
    later_rss_mb: Option<f64>,
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
    if let Some(i) = args.iter().position(|a| a == "--retry") {
        let n: usize = args[i + 1].parse().expect("node count");
        let dead: usize = args[i + 2].parse().expect("dead count");
        let port: u16 = args[i + 3].parse().expect("port");
        let r = measure_retry(n, dead, port, if quick { 2 } else { 4 });
        println!("{}", serde_json::to_string(&r).expect("json"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let n: usize = args[i + 1].parse().expect("node count");
        let port: u16 = args[i + 2].parse().expect("port");
        let beats = std::env::var("SCALE_BEATS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 3 } else { 8 });
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
        let nodes = layout(n);
        rows.push(run_child(&nodes, &["--measure", &n.to_string()], quick));
    }
    let mut retry: Vec<Retried> = Vec::new();
    if std::env::var("SCALE_RETRY").as_deref() != Ok("0") {
        for dead in [0, 1_000] {
            eprintln!("scale: 1000 nodes and {dead} dead…");
            let mut nodes = layout_with(1_000, 0);
            nodes.extend((0..dead).map(|_| FakeNode::master().with(Fault::Refusing)));
            retry.push(run_child(
                &nodes,
                &["--retry", "1000", &dead.to_string()],
                quick,
            ));
        }
    }
    print_table(&rows);
    print_retry(&retry);
}

/// A child process killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `nodes` from a `--fake-server` child, runs this program again
/// with `args` and the server's port, and reads the last line it prints.
fn run_child<T: serde::de::DeserializeOwned>(nodes: &[FakeNode], args: &[&str], quick: bool) -> T {
    let exe = std::env::current_exe().expect("own executable");
    let mut server = Guard(
        Command::new(&exe)
            .arg("--fake-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fake server"),
    );
    let spec = serde_json::to_string(nodes).expect("json");
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
    cmd.args(args).arg(port.to_string());
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.output().expect("run the measuring process");
    let text = String::from_utf8_lossy(&out.stdout);
    let m: T = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "measuring ({}) failed: {}\n{}",
                args.join(" "),
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

/// `n` simulated nodes on `port`, beating every `heartbeat`.
fn config_text(n: usize, port: u16, dir: &std::path::Path, heartbeat: Duration) -> String {
    plusmoin_kit::fakepg::config_text(n, port, dir, heartbeat, CONNECT_TIMEOUT, "bench")
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

/// Runs `job` as a task on [`runtime`]'s workers.
fn on_workers<T: Send + 'static>(job: impl std::future::Future<Output = T> + Send + 'static) -> T {
    runtime().block_on(async move { tokio::spawn(job).await.expect("measuring task") })
}

fn runtime() -> tokio::runtime::Runtime {
    if std::env::var("SCALE_RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("runtime")
}

/// The `p` quantile (0 to 1) of `v`, nearest rank.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The loop's inputs for a bench: no signals, no reloads, no listener.
fn inputs(path: std::path::PathBuf) -> Inputs<std::future::Pending<()>> {
    // Never reloaded: the sender is dropped, the loop stops listening.
    let (_, reload) = tokio::sync::mpsc::unbounded_channel();
    Inputs {
        config_path: path,
        shutdown: std::future::pending(),
        reload,
        http: None,
    }
}

/// Watches the real loop for `--measure`: the first beat (connecting
/// everything), one warm-up beat, then `beats` measured beats (each from
/// one tick to the next, as they follow each other), then half a minute
/// more (`later`) for the second memory reading.
struct Watch {
    frozen: HashSet<NodeName>,
    beats: usize,
    later: bool,
    start: Instant,
    begun: usize,
    first_beat: Option<Duration>,
    /// The measured beat in progress: when it began, the CPU then.
    current: Option<(tokio::time::Instant, Duration)>,
    cpus: Vec<f64>,
    decided: Vec<f64>,
    answered: Vec<(NodeName, f64)>,
    frozen_decided: usize,
    peak: f64,
    later_until: Option<Instant>,
    done: bool,
    result: Option<Measured>,
}

impl Observer for Watch {
    fn beat_began(&mut self, now: tokio::time::Instant) -> ControlFlow<()> {
        self.begun += 1;
        // Beat 1 primes, beat 2 warms up: beats 3.. are measured.
        if let Some((_, cpu0)) = self.current.take() {
            self.cpus
                .push(cpu_time().saturating_sub(cpu0).as_secs_f64() * 1000.0);
        }
        if (3..3 + self.beats).contains(&self.begun) {
            self.current = Some((now, cpu_time()));
        } else if self.begun == 3 + self.beats {
            self.peak = peak_rss_mb();
            if self.later {
                self.later_until = Some(Instant::now() + Duration::from_secs(30));
            } else {
                self.done = true;
            }
        } else if self.later_until.is_some_and(|t| t <= Instant::now()) {
            self.done = true;
        }
        ControlFlow::Continue(())
    }
    fn wants_answers(&self) -> bool {
        true
    }
    fn decided(&mut self, nodes: &[NodeName], now: tokio::time::Instant) {
        let Some((t0, _)) = self.current else { return };
        let at = (now - t0).as_secs_f64() * 1000.0;
        for node in nodes {
            if self.frozen.contains(node) {
                self.frozen_decided += 1;
            } else {
                self.decided.push(at);
                self.answered.push((node.clone(), at));
            }
        }
    }
    fn beat_decided(&mut self, state: &State, connections: usize) -> ControlFlow<()> {
        if self.first_beat.is_none() {
            self.first_beat = Some(self.start.elapsed());
        }
        if !self.done {
            return ControlFlow::Continue(());
        }
        let worst = self.decided.iter().copied().fold(f64::NAN, f64::max);
        let masters_worst = self
            .answered
            .iter()
            .filter(|(n, _)| state.node(n).is_some_and(|s| s.place == Place::Master))
            .map(|(_, at)| *at)
            .fold(f64::NAN, f64::max);
        let count = |p: Place| state.nodes.iter().filter(|s| s.place == p).count();
        let down = state.nodes.iter().filter(|s| s.last_seen.is_none()).count();
        self.result = Some(Measured {
            nodes: state.nodes.len(),
            frozen: self.frozen.len(),
            first_beat_s: self.first_beat.unwrap_or_default().as_secs_f64(),
            beats: self.beats,
            decided_median_ms: median(&mut self.decided),
            decided_worst_ms: worst,
            frozen_decided: self.frozen_decided,
            decided_p99_ms: percentile(&mut self.decided, 0.99),
            masters_worst_ms: masters_worst,
            // The median: other work on a shared machine inflates some beats.
            cpu_per_beat_ms: median(&mut self.cpus),
            peak_rss_mb: self.peak,
            later_rss_mb: self.later.then(peak_rss_mb),
            connections,
            masters: count(Place::Master),
            slaves: count(Place::Slave),
            down,
        });
        ControlFlow::Break(())
    }
}

/// `--measure`: the real deciding loop over `n` fake nodes, watched by
/// [`Watch`]. Each beat lasts about connect_timeout, because of the frozen
/// nodes, though every other node is decided as its answer comes; beats
/// follow each other, each closed by the next one's tick.
fn measure(n: usize, port: u16, beats: usize) -> Measured {
    let _ = plusmoin::lifecycle::raise_nofile_limit();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plusmoin.json");
    let config = plusmoin::config::parse(&config_text(n, port, dir.path(), HEARTBEAT), &path)
        .expect("bench configuration");
    let nodes = layout(n);
    let frozen: HashSet<NodeName> = nodes
        .iter()
        .enumerate()
        .filter(|(_, f)| f.fault == Fault::Frozen)
        .map(|(i, _)| NodeName::new(address(i).to_string(), port))
        .collect();
    let watch = Watch {
        frozen,
        beats,
        later: beats >= 8,
        start: Instant::now(),
        begun: 0,
        first_beat: None,
        current: None,
        cpus: Vec::new(),
        decided: Vec::new(),
        answered: Vec::new(),
        frozen_decided: 0,
        peak: 0.0,
        later_until: None,
        done: false,
        result: None,
    };
    // On the workers, as `plusmoin start` runs the deciding loop.
    let watch =
        on_workers(plusmoin::daemon::run(config, inputs(path), watch)).expect("the deciding loop");
    watch.result.expect("measured")
}

/// What one `--retry` run reports.
#[derive(Debug, Serialize, Deserialize)]
struct Retried {
    nodes: usize,
    dead: usize,
    seconds: usize,
    cpu_ms_per_s: f64,
    peak_rss_mb: f64,
    lost: usize,
}

/// Watches the real loop for `--retry`: after the first decision and a
/// warm-up beat, the CPU over `secs` beats of a second.
struct RetryWatch {
    n: usize,
    dead: usize,
    secs: usize,
    begun: usize,
    from: Option<(Instant, Duration)>,
    cpu_ms_per_s: f64,
    done: bool,
    result: Option<Retried>,
}

impl Observer for RetryWatch {
    fn beat_began(&mut self, _now: tokio::time::Instant) -> ControlFlow<()> {
        self.begun += 1;
        if self.begun == 3 {
            self.from = Some((Instant::now(), cpu_time()));
        } else if self.begun == 3 + self.secs {
            if let Some((t0, cpu0)) = self.from {
                let cpu = cpu_time().saturating_sub(cpu0).as_secs_f64() * 1000.0;
                self.cpu_ms_per_s = cpu / t0.elapsed().as_secs_f64();
            }
            self.done = true;
        }
        ControlFlow::Continue(())
    }
    fn beat_decided(&mut self, state: &State, _connections: usize) -> ControlFlow<()> {
        if !self.done {
            return ControlFlow::Continue(());
        }
        let lost = state
            .nodes
            .iter()
            .filter(|s| s.place == Place::Lost || s.last_seen.is_none())
            .count();
        self.result = Some(Retried {
            nodes: self.n,
            dead: self.dead,
            seconds: self.secs,
            cpu_ms_per_s: self.cpu_ms_per_s,
            peak_rss_mb: peak_rss_mb(),
            lost,
        });
        ControlFlow::Break(())
    }
}

/// `--retry`: `n` healthy nodes and `dead` refusing ones, heartbeat 1 s;
/// after the first decision and a second of warm-up, the CPU the deciding
/// loop takes over `secs` seconds (beats, and the dead ones' retries).
fn measure_retry(n: usize, dead: usize, port: u16, secs: usize) -> Retried {
    let _ = plusmoin::lifecycle::raise_nofile_limit();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plusmoin.json");
    let text = config_text(n + dead, port, dir.path(), Duration::from_secs(1));
    let config = plusmoin::config::parse(&text, &path).expect("bench configuration");
    let watch = RetryWatch {
        n,
        dead,
        secs,
        begun: 0,
        from: None,
        cpu_ms_per_s: f64::NAN,
        done: false,
        result: None,
    };
    // On the workers, as `plusmoin start` runs the deciding loop.
    let watch =
        on_workers(plusmoin::daemon::run(config, inputs(path), watch)).expect("the deciding loop");
    watch.result.expect("measured")
}

fn print_table(rows: &[Measured]) {
    println!(
        "\nOne beat against simulated servers (10% frozen; heartbeat = connect_timeout = {} s; \
         plusmoin on 2 threads)\n",
        CONNECT_TIMEOUT.as_secs()
    );
    println!(
        "{:>6} {:>7} {:>6} {:>14} {:>15} {:>12} {:>14} {:>15} {:>14} {:>9} {:>12} {:>6} {:>21}",
        "nodes",
        "frozen",
        "beats",
        "masters worst",
        "decided median",
        "decided p99",
        "decided worst",
        "frozen news",
        "CPU/beat (med)",
        "RSS",
        "RSS 30 s on",
        "conns",
        "masters/slaves/down"
    );
    for r in rows {
        println!(
            "{:>6} {:>7} {:>6} {:>11.1} ms {:>12.1} ms {:>9.1} ms {:>11.1} ms {:>15} {:>11.1} ms {:>6.1} MB {:>9.1} MB {:>6} {:>21}",
            r.nodes,
            r.frozen,
            r.beats,
            r.masters_worst_ms,
            r.decided_median_ms,
            r.decided_p99_ms,
            r.decided_worst_ms,
            r.frozen_decided,
            r.cpu_per_beat_ms,
            r.peak_rss_mb,
            r.later_rss_mb.unwrap_or(f64::NAN),
            r.connections,
            format!("{}/{}/{}", r.masters, r.slaves, r.down),
        );
    }
    println!(
        "\n\"decided\": from the tick to the decision of each answering node's news, over \
         all measured beats (frozen nodes apart); \"masters worst\": the same, worst over \
         the masters alone (their slaves are read 20 ms after their write is back). \"frozen news\": news about frozen nodes \
         decided during those beats: their own probes (retries, being lost) giving up after \
         connect_timeout, decided as they came. Beats run back to back, each decided \
         by the next one's tick, as `plusmoin start` runs them. \"RSS\": peak resident \
         memory after the measured beats; \"RSS 30 s on\": after half a minute more of the \
         deciding loop (not measured with --quick)."
    );
    if let Some(r) = rows.iter().find(|r| r.nodes == 1_000) {
        let aim = |ok: bool| if ok { "met" } else { "MISSED" };
        let rss = r
            .later_rss_mb
            .map_or(r.peak_rss_mb, |l| l.max(r.peak_rss_mb));
        println!(
            "Aims at 1,000 nodes: decided within 50 ms of the tick: {} (worst {:.1} ms); \
             under 30 ms of CPU per beat: {} ({:.1} ms); under 30 MB: {} ({:.1} MB)",
            aim(r.decided_worst_ms < 50.0),
            r.decided_worst_ms,
            aim(r.cpu_per_beat_ms < 30.0),
            r.cpu_per_beat_ms,
            aim(rss < 30.0),
            rss
        );
    }
}

fn print_retry(rows: &[Retried]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\nRetrying dead servers (connection refused; retried every 0.25 s for their first \
         30 s away): the whole deciding loop, heartbeat 1 s, plusmoin on 2 threads\n"
    );
    println!(
        "{:>14} {:>6} {:>9} {:>14} {:>10} {:>6}",
        "healthy nodes", "dead", "seconds", "CPU per second", "peak RSS", "lost"
    );
    for r in rows {
        println!(
            "{:>14} {:>6} {:>9} {:>11.1} ms {:>7.1} MB {:>6}",
            r.nodes, r.dead, r.seconds, r.cpu_ms_per_s, r.peak_rss_mb, r.lost
        );
    }
}
