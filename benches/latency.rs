//! Detection latency on a real sandbox cluster (a primary and two
//! standbys), watched by the real `plusmoin -x start` with heartbeat 1 s and
//! connect_timeout 1 s. Each trial waits a random fraction of a heartbeat
//! (so faults land at every phase of the beat), injects a fault, and takes
//! the time from just before the fault to the first thing the trigger
//! script does: write a nanosecond timestamp (`date +%s%N`, a few ms of
//! shell start-up included, so the figures err on the slow side).
//!
//! Standby 1 is stopped (`pg_ctl stop -m fast`), killed (SIGKILL) or frozen
//! (SIGSTOP) and brought back; the primary is killed and restarted (crash
//! recovery) rather than replaced by a fresh sandbox: same measurement,
//! a fraction of the time. `--quick` runs 3 trials of each instead of 10;
//! `LATENCY_VERBOSE=1` prints every sample.

use plusmoin::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HEARTBEAT: f64 = 1.0;
const CONNECT_TIMEOUT: f64 = 1.0;
const WAIT: Duration = Duration::from_secs(20);

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
    fn start(sb: &Sandbox) -> Plusmoin {
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
  "heartbeat": {HEARTBEAT}, "connect_timeout": {CONNECT_TIMEOUT},
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
    /// Sleeps a random time in [0, heartbeat).
    fn sleep(&mut self) {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let frac = (self.0 % 1000) as f64 / 1000.0;
        if std::env::var_os("LATENCY_VERBOSE").is_some() {
            eprintln!("  (phase {frac:.3} of a heartbeat)");
        }
        std::thread::sleep(Duration::from_secs_f64(frac * HEARTBEAT));
    }
}

/// Latencies of one row, in seconds.
struct Row {
    what: &'static str,
    aim: Option<f64>,
    aim_text: &'static str,
    samples: Vec<f64>,
}

impl Row {
    fn new(what: &'static str, aim: Option<f64>, aim_text: &'static str) -> Row {
        Row {
            what,
            aim,
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

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // Built and run as a test (`cargo test --all-targets`): measuring
        // here would only slow the tests down.
        eprintln!("latency: run it with `cargo bench --bench latency`; nothing measured");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let trials = if quick { 3 } else { 10 };
    let began = Instant::now();
    let hb_aim = HEARTBEAT + 0.2;
    let freeze_aim = HEARTBEAT + CONNECT_TIMEOUT + 0.2;
    let mut rows = vec![
        Row::new(
            "standby stop    -> slave_down",
            Some(hb_aim),
            "heartbeat + 0.2 s",
        ),
        Row::new(
            "standby kill -9 -> slave_down",
            Some(hb_aim),
            "heartbeat + 0.2 s",
        ),
        Row::new(
            "standby freeze  -> slave_down",
            Some(freeze_aim),
            "heartbeat + connect_timeout + 0.2 s",
        ),
        Row::new(
            "standby restart -> slave_up",
            None,
            "(restart returned; see next row)",
        ),
        Row::new(
            "standby streams -> slave_up",
            Some(HEARTBEAT + 0.2),
            "heartbeat (+ 0.2 s) after catching up",
        ),
        Row::new("standby thaw    -> slave_up", None, "(not an aim)"),
        Row::new(
            "primary kill -9 -> master_down",
            Some(hb_aim),
            "heartbeat + 0.2 s",
        ),
    ];
    let sb = Sandbox::start(2).expect("sandbox (PostgreSQL must be installed)");
    let p = Plusmoin::start(&sb);
    p.wait_healthy(&sb);
    let victim = node(&sb, 1);
    let mut phase = Phase::new();
    for (row, fault) in [(0, Fault::Stop), (1, Fault::Kill), (2, Fault::Freeze)] {
        for _ in 0..trials {
            phase.sleep();
            let t0 = now_ns();
            match fault {
                Fault::Stop => sb.stop(1).expect("stop standby"),
                Fault::Kill => sb.kill9(1).expect("kill standby"),
                Fault::Freeze => sb.freeze(1).expect("freeze standby"),
            }
            let down = p.wait_event("slave_down", &victim, t0);
            rows[row].push(t0, down);
            match fault {
                Fault::Stop | Fault::Kill => {
                    phase.sleep();
                    sb.start_node(1).expect("restart standby");
                    let restarted = now_ns();
                    sb.wait_until_streaming(1, WAIT).expect("standby streams");
                    let streaming = now_ns();
                    let up = p.wait_event("slave_up", &victim, down);
                    rows[3].push(restarted, up);
                    // Seen streaming by our (100 ms) polling, possibly after
                    // plusmoin saw it in sync: then it counts as zero.
                    rows[4].push(streaming.min(up), up);
                }
                Fault::Freeze => {
                    phase.sleep();
                    let thawed = now_ns();
                    sb.thaw(1).expect("thaw standby");
                    let up = p.wait_event("slave_up", &victim, down);
                    rows[5].push(thawed, up);
                }
            }
            p.wait_healthy(&sb);
        }
        eprintln!(
            "latency: {} done ({:.0} s)",
            rows[row].what,
            began.elapsed().as_secs_f64()
        );
    }
    let primary = node(&sb, 0);
    for _ in 0..trials {
        phase.sleep();
        let t0 = now_ns();
        sb.kill9(0).expect("kill primary");
        let down = p.wait_event("master_down", &primary, t0);
        rows[6].push(t0, down);
        sb.start_node(0).expect("restart primary");
        p.wait_event("master_up", &primary, down);
        for i in 1..sb.len() {
            sb.wait_until_streaming(i, WAIT)
                .expect("standby streams again");
        }
        p.wait_healthy(&sb);
    }
    eprintln!("latency: all done ({:.0} s)", began.elapsed().as_secs_f64());
    drop(p);
    drop(sb);
    print_table(&rows);
}

fn print_table(rows: &[Row]) {
    println!(
        "\nDetection latency, real PostgreSQL {} (heartbeat {HEARTBEAT} s, connect_timeout \
         {CONNECT_TIMEOUT} s; fault -> start of the trigger)\n",
        pg_version().unwrap_or_default()
    );
    println!(
        "{:<32} {:>6} {:>9} {:>9}  {:<6} aim",
        "from -> trigger", "trials", "median", "worst", "met"
    );
    for r in rows {
        let mut s = r.samples.clone();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            continue;
        }
        let median = s[s.len() / 2];
        let worst = s[s.len() - 1];
        let met = match r.aim {
            Some(aim) if worst <= aim => "yes",
            Some(_) => "NO",
            None => "-",
        };
        let aim = match r.aim {
            Some(a) => format!("<= {a:.1} s: {}", r.aim_text),
            None => r.aim_text.to_string(),
        };
        println!(
            "{:<32} {:>6} {:>7.3} s {:>7.3} s  {:<6} {aim}",
            r.what,
            s.len(),
            median,
            worst,
            met
        );
    }
}

fn pg_version() -> Option<String> {
    let bin: PathBuf = plusmoin::sandbox::pg_bin_dir().ok()?;
    let out = Command::new(Path::new(&bin).join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2).map(String::from)
}
