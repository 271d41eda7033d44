//! Detection latency on a real sandbox cluster (a primary and two
//! standbys), watched by the real `plusmoin -x start` with heartbeat 1 s and
//! then 5 s, connect_timeout 1 s. Each trial waits a random fraction of a
//! heartbeat (so faults land at every phase of the beat), injects a fault,
//! and takes the time from just before the fault to the first thing the
//! trigger script does: write a nanosecond timestamp (`date +%s%N`, a few
//! ms of shell start-up included, so the figures err on the slow side).
//!
//! Standby 1 is stopped (`pg_ctl stop -m fast`), killed (SIGKILL) or frozen
//! (SIGSTOP) and brought back; the primary is killed and restarted (crash
//! recovery) rather than replaced by a fresh sandbox: same measurement,
//! a fraction of the time. In every trial standby 2 is frozen at the same
//! moment (and thawed when the victim is brought back): a design whose
//! beat waits for its slowest server would show that server's
//! connect_timeout in every figure. `--quick` runs 2 trials of each instead
//! of 10 (5 at heartbeat 5 s); `LATENCY_VERBOSE=1` prints every
//! sample.

use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin_kit::sandbox::SandboxExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HEARTBEATS: [f64; 2] = [1.0, 5.0];
const CONNECT_TIMEOUT: f64 = 1.0;
/// plusmoin's default `retry_interval`: a lost node is tried again this often.
const RETRY_INTERVAL: f64 = 0.25;
const WAIT: Duration = Duration::from_secs(30);
/// The standby faulted in every trial, and the one frozen meanwhile.
const VICTIM: usize = 1;
const OTHER: usize = 2;

/// The trigger: the timestamp first, then who and what.
const SCRIPT: &str = r#"#!/bin/sh
t=$(date +%s%N)
d="$(dirname "$0")/events"
{ printf '%s %s\n' "$t" "$PLUSMOIN_TRIGGER"; cat; } > "$d/$t-$$.tmp" && mv "$d/$t-$$.tmp" "$d/$t-$$.ev"
"#;

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A foreground plusmoin and its trigger directory; stopped on drop.
struct Plusmoin {
    dir: tempfile::TempDir,
    child: Child,
}

impl Plusmoin {
    fn start(sb: &Sandbox, heartbeat: f64) -> Plusmoin {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("events")).expect("events dir");
        let script = dir.path().join("trigger.sh");
        std::fs::write(&script, SCRIPT).expect("write the trigger");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let nodes: Vec<String> = (0..sb.len())
            .map(|i| format!(r#"{{"host": "{}", "port": {}}}"#, sb.host(), sb.port(i)))
            .collect();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| "root".to_string(), |u| u.name);
        let (s, d) = (script.display(), dir.path().display());
        let config = format!(
            r#"{{
  "dbname": "{SANDBOX_DBNAME}", "user": "{SANDBOX_USER}", "password": "{SANDBOX_PASSWORD}",
  "heartbeat": {heartbeat}, "connect_timeout": {CONNECT_TIMEOUT},
  "max_sync_delay": 5, "recover_sync_delay": 2, "trigger_timeout": 10,
  "log_level": "info", "daemon_user": "{user}", "instance_name": "latency", "sslmode": "disable",
  "status_file": "{d}/status.json", "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
  "nodes": [{nodes}],
  "triggers": {{"plusmoin_up": "{s}", "master_up": "{s}", "master_down": "{s}",
                "slave_up": "{s}", "slave_down": "{s}"}}
}}"#,
            nodes = nodes.join(", ")
        );
        let config_path = dir.path().join("plusmoin.json");
        std::fs::write(&config_path, config).expect("write the configuration");
        let log = std::fs::File::create(dir.path().join("stdout.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
            .arg("-c")
            .arg(&config_path)
            .args(["-x", "start"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start plusmoin");
        Plusmoin { dir, child }
    }

    /// (timestamp ns, event, node name) of every trigger run so far.
    fn events(&self) -> Vec<(i128, String, String)> {
        let Ok(rd) = std::fs::read_dir(self.dir.path().join("events")) else {
            return Vec::new();
        };
        let files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "ev"))
            .collect();
        let mut out: Vec<(i128, String, String)> = files
            .iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                let (head, json) = text.split_once('\n')?;
                let (t, kind) = head.split_once(' ')?;
                let payload: Value = serde_json::from_str(json).ok()?;
                let node = payload["trigger"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                Some((t.parse().ok()?, kind.to_string(), node))
            })
            .collect();
        out.sort();
        out
    }

    /// The start time of the first `kind` trigger about `node` after `after`.
    fn wait_event(&self, kind: &str, node: &str, after: i128) -> i128 {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .events()
                .into_iter()
                .find(|(t, k, n)| *t > after && k == kind && n == node);
            if let Some((t, _, _)) = found {
                return t;
            }
            if Instant::now() > deadline {
                self.fail(&format!("no {kind} about {node} within {WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status(&self) -> Value {
        std::fs::read(self.dir.path().join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the status shows one cluster: node 0 master, the others
    /// slaves in sync.
    fn wait_healthy(&self, sb: &Sandbox) {
        let master = node(sb, 0);
        let slaves: Vec<Value> = (1..sb.len()).map(|i| Value::from(node(sb, i))).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let st = self.status();
            let c = &st["clusters"][0];
            let names: Vec<Value> = c["slaves"]
                .as_array()
                .map(|a| a.iter().map(|n| n["name"].clone()).collect())
                .unwrap_or_default();
            if c["master"]["name"] == master.as_str() && names == slaves {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("cluster never healthy; status: {st}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail(&self, msg: &str) -> ! {
        let log = std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{msg}\nplusmoin log tail:\n{}", tail.join("\n"));
    }
}

impl Drop for Plusmoin {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(sb: &Sandbox, i: usize) -> String {
    format!("{}:{}", sb.host(), sb.port(i))
}

/// A tiny xorshift, seeded from the clock: trials land at random phases.
struct Phase(u64);

impl Phase {
    fn new() -> Phase {
        Phase(now_ns() as u64 | 1)
    }
    /// Sleeps a random time in [0, period).
    fn sleep(&mut self, period: f64) {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let frac = (self.0 % 1000) as f64 / 1000.0;
        if std::env::var_os("LATENCY_VERBOSE").is_some() {
            eprintln!("  (phase {frac:.3} of {period} s)");
        }
        std::thread::sleep(Duration::from_secs_f64(frac * period));
    }
}

/// Latencies of one row, in seconds.
struct Row {
    heartbeat: f64,
    what: &'static str,
    /// Aims on the median and on the worst trial.
    aim_median: Option<f64>,
    aim_worst: Option<f64>,
    aim_text: String,
    samples: Vec<f64>,
}

impl Row {
    fn new(
        heartbeat: f64,
        what: &'static str,
        aim_median: Option<f64>,
        aim_worst: Option<f64>,
        aim_text: String,
    ) -> Row {
        Row {
            heartbeat,
            what,
            aim_median,
            aim_worst,
            aim_text,
            samples: Vec::new(),
        }
    }
    fn push(&mut self, from: i128, to: i128) {
        let secs = (to - from) as f64 / 1e9;
        if std::env::var_os("LATENCY_VERBOSE").is_some() {
            eprintln!("  {}: {secs:.3} s", self.what);
        }
        self.samples.push(secs);
    }
}

#[derive(Clone, Copy)]
enum Fault {
    Stop,
    Kill,
    Freeze,
}

const STOP: usize = 0;
const KILL: usize = 1;
const FREEZE: usize = 2;
const STREAMS: usize = 3;
const RESTART: usize = 4;
const THAW: usize = 5;
const PRIMARY: usize = 6;

fn rows_for(hb: f64) -> Vec<Row> {
    let dropped = || "median <= 0.1 s, worst <= 0.3 s (dropped connection)".to_string();
    vec![
        Row::new(
            hb,
            "standby stop    -> slave_down",
            Some(0.1),
            Some(0.3),
            dropped(),
        ),
        Row::new(
            hb,
            "standby kill -9 -> slave_down",
            Some(0.1),
            Some(0.3),
            dropped(),
        ),
        Row::new(
            hb,
            "standby freeze  -> slave_down",
            None,
            Some(hb + CONNECT_TIMEOUT),
            format!(
                "worst <= {:.1} s (heartbeat + connect_timeout)",
                hb + CONNECT_TIMEOUT
            ),
        ),
        Row::new(
            hb,
            "standby streams -> slave_up",
            None,
            Some(RETRY_INTERVAL + 0.2),
            format!(
                "worst <= {:.2} s (retry_interval + 0.2 s)",
                RETRY_INTERVAL + 0.2
            ),
        ),
        Row::new(
            hb,
            "standby restart -> slave_up",
            None,
            None,
            "(from pg_ctl start returning; not an aim)".into(),
        ),
        Row::new(
            hb,
            "standby thaw    -> slave_up",
            None,
            None,
            "(not an aim)".into(),
        ),
        Row::new(
            hb,
            "primary kill -9 -> master_down",
            Some(0.1),
            Some(0.3),
            dropped(),
        ),
    ]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Built and run as a test (`cargo test --all-targets`): measuring
        // here would only slow the tests down.
        eprintln!("latency: run it with `cargo bench --bench latency`; nothing measured");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let began = Instant::now();
    let sb = Sandbox::start(2).expect("sandbox (PostgreSQL must be installed)");
    let mut all = Vec::new();
    for hb in HEARTBEATS {
        let trials = match (quick, hb <= 1.0) {
            (true, _) => 2,
            (false, true) => 10,
            (false, false) => 5,
        };
        let rows = measure(&sb, hb, trials, began);
        all.extend(rows);
    }
    eprintln!("latency: all done ({:.0} s)", began.elapsed().as_secs_f64());
    drop(sb);
    print_table(&all);
}

fn measure(sb: &Sandbox, hb: f64, trials: usize, began: Instant) -> Vec<Row> {
    let mut rows = rows_for(hb);
    let p = Plusmoin::start(sb, hb);
    p.wait_healthy(sb);
    let victim = node(sb, VICTIM);
    let mut phase = Phase::new();
    for (row, fault) in [
        (STOP, Fault::Stop),
        (KILL, Fault::Kill),
        (FREEZE, Fault::Freeze),
    ] {
        for _ in 0..trials {
            phase.sleep(hb);
            sb.freeze(OTHER).expect("freeze the other standby");
            let t0 = now_ns();
            match fault {
                Fault::Stop => sb.stop(VICTIM).expect("stop standby"),
                Fault::Kill => sb.kill9(VICTIM).expect("kill standby"),
                Fault::Freeze => sb.freeze(VICTIM).expect("freeze standby"),
            }
            let down = p.wait_event("slave_down", &victim, t0);
            rows[row].push(t0, down);
            // Brought back at a random moment within a second.
            phase.sleep(1.0);
            sb.thaw(OTHER).expect("thaw the other standby");
            match fault {
                Fault::Stop | Fault::Kill => {
                    sb.start_node(VICTIM).expect("restart standby");
                    let restarted = now_ns();
                    sb.wait_until_streaming(VICTIM, WAIT)
                        .expect("standby streams");
                    let streaming = now_ns();
                    let up = p.wait_event("slave_up", &victim, down);
                    rows[RESTART].push(restarted, up);
                    // Seen streaming by our (100 ms) polling, possibly after
                    // plusmoin saw it in sync: then it counts as zero.
                    rows[STREAMS].push(streaming.min(up), up);
                }
                Fault::Freeze => {
                    let thawed = now_ns();
                    sb.thaw(VICTIM).expect("thaw standby");
                    let up = p.wait_event("slave_up", &victim, down);
                    rows[THAW].push(thawed, up);
                }
            }
            p.wait_healthy(sb);
        }
        eprintln!(
            "latency: heartbeat {hb} s: {} done ({:.0} s)",
            rows[row].what,
            began.elapsed().as_secs_f64()
        );
    }
    let primary = node(sb, 0);
    for _ in 0..trials {
        phase.sleep(hb);
        sb.freeze(OTHER).expect("freeze the other standby");
        let t0 = now_ns();
        sb.kill9(0).expect("kill primary");
        let down = p.wait_event("master_down", &primary, t0);
        rows[PRIMARY].push(t0, down);
        sb.thaw(OTHER).expect("thaw the other standby");
        sb.start_node(0).expect("restart primary");
        p.wait_event("master_up", &primary, down);
        for i in 1..sb.len() {
            sb.wait_until_streaming(i, WAIT)
                .expect("standby streams again");
        }
        p.wait_healthy(sb);
    }
    eprintln!(
        "latency: heartbeat {hb} s done ({:.0} s)",
        began.elapsed().as_secs_f64()
    );
    rows
}

fn print_table(rows: &[Row]) {
    println!(
        "\nDetection latency, real PostgreSQL {} (connect_timeout {CONNECT_TIMEOUT} s, \
         retry_interval {RETRY_INTERVAL} s; standby {OTHER} frozen at the same moment in every \
         trial; fault -> start of the trigger)\n",
        pg_version().unwrap_or_default()
    );
    println!(
        "{:>4} {:<32} {:>6} {:>9} {:>9}  {:<4} aim",
        "hb", "from -> trigger", "trials", "median", "worst", "met"
    );
    for r in rows {
        let mut s = r.samples.clone();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            continue;
        }
        let median = s[s.len() / 2];
        let worst = s[s.len() - 1];
        let met = match (r.aim_median, r.aim_worst) {
            (None, None) => "-",
            (m, w) if !matches!(m, Some(m) if median > m) && !matches!(w, Some(w) if worst > w) => {
                "yes"
            }
            _ => "NO",
        };
        println!(
            "{:>2} s {:<32} {:>6} {:>7.3} s {:>7.3} s  {:<4} {}",
            r.heartbeat,
            r.what,
            s.len(),
            median,
            worst,
            met,
            r.aim_text
        );
    }
}

fn pg_version() -> Option<String> {
    let bin: PathBuf = plusmoin::demo::sandbox::pg_bin_dir().ok()?;
    let out = Command::new(Path::new(&bin).join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2).map(String::from)
}
