//! End-to-end: a real `plusmoin -x start` watching a real sandbox cluster,
//! asserting on the status file and on the payloads a recording trigger
//! received (issue 3).

use crate::wait_until;
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin_kit::sandbox::SandboxExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Beat timings small enough for tests.
pub struct Timings {
    pub heartbeat: f64,
    pub connect_timeout: f64,
    pub max_sync_delay: f64,
    pub recover_sync_delay: f64,
    pub instance_name: &'static str,
    /// `None`: the current user (no privilege change).
    pub daemon_user: Option<&'static str>,
    pub log_level: &'static str,
    /// More node objects (JSON), e.g. nodes of another sandbox.
    pub extra_nodes: Vec<String>,
    /// `None`: `status.json` in the test's directory.
    pub status_file: Option<PathBuf>,
    /// How the password is given: `None` writes `"password": "…"`; the
    /// string replaces that member (empty: no password key at all).
    pub password_json: Option<String>,
    pub trigger_timeout: f64,
    /// Trigger commands replacing the recording script, by trigger name.
    pub triggers: Vec<(&'static str, String)>,
}

/// The defaults keep beats fast (0.5 s) but give every probe margins a
/// loaded 2-core machine cannot eat: a probe there can take well over a
/// second, so a healthy node is only called down after 3 s without an
/// answer, and a slave out of sync after 6 s of lag. Tests needing faster
/// detection say so with their own values and margins that follow from them.
impl Default for Timings {
    fn default() -> Self {
        Timings {
            heartbeat: 0.5,
            connect_timeout: 3.0,
            max_sync_delay: 6.0,
            recover_sync_delay: 3.0,
            instance_name: "test",
            daemon_user: None,
            log_level: "debug",
            extra_nodes: Vec::new(),
            status_file: None,
            password_json: None,
            trigger_timeout: 10.0,
            triggers: Vec::new(),
        }
    }
}

/// One event a trigger recorded.
#[derive(Debug, Clone)]
pub struct Ev {
    pub kind: String,
    pub payload: Value,
    /// When the trigger ran (its file's name), in nanoseconds since the
    /// Unix epoch.
    pub at_nanos: u128,
}

impl Ev {
    /// Seconds from `t` (wall clock) to when the trigger ran.
    pub fn secs_after(&self, t: std::time::SystemTime) -> f64 {
        let t = t
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        (self.at_nanos as f64 - t as f64) / 1e9
    }
    pub fn about(&self, node: &str) -> bool {
        self.payload["trigger"]["name"] == node
    }
    pub fn cluster(&self) -> u64 {
        self.payload["cluster_id"].as_u64().unwrap_or(u64::MAX)
    }
}

/// A foreground plusmoin process; killed (TERM, then KILL) on drop.
pub struct Plusmoin {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Extra environment for the plusmoin process.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

pub const RECORD: &str = r#"#!/bin/sh
# Records one event per file: first line the trigger, then the payload.
d="$(dirname "$0")/events"
f="$d/$(date +%s%N)-$$"
{ printf '%s\n' "$PLUSMOIN_TRIGGER"; cat; } > "$f.tmp" && mv "$f.tmp" "$f.ev"
# What a trigger can see besides stdin, for the secrets checks.
{ env; tr '\0' ' ' < /proc/$$/cmdline; } > "$f.env"
"#;

pub fn node(sb: &Sandbox, i: usize) -> String {
    format!("{}:{}", sb.host(), sb.port(i))
}

/// Waits (30 s at most) until the first cluster has node 0 as master and
/// every other node of `sb` as a slave in sync.
pub fn healthy(p: &Plusmoin, sb: &Sandbox) {
    let n0 = node(sb, 0);
    let slaves: Vec<String> = (1..sb.len()).map(|i| node(sb, i)).collect();
    p.wait_status(
        "one cluster, every slave in sync",
        Duration::from_secs(30),
        |st| {
            st["clusters"][0]["master"]["name"] == n0.as_str()
                && names(&st["clusters"][0]["slaves"]) == slaves
        },
    );
}

impl Plusmoin {
    /// Writes a configuration for `sb` (with `extra` top-level JSON members
    /// appended) and starts plusmoin on it.
    pub fn start(sb: &Sandbox, t: &Timings, extra: &str) -> Plusmoin {
        let mut p = Plusmoin::configure(sb, t, extra);
        p.spawn();
        p
    }

    /// Writes the configuration without starting plusmoin.
    pub fn configure(sb: &Sandbox, t: &Timings, extra: &str) -> Plusmoin {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("events")).expect("events dir");
        let script = dir.path().join("record.sh");
        std::fs::write(&script, RECORD).expect("write script");
        make_executable(&script);
        let config_path = dir.path().join("plusmoin.json");
        let p = Plusmoin {
            dir,
            config_path,
            env: Vec::new(),
            child: None,
        };
        let all: Vec<usize> = (0..sb.len()).collect();
        p.write_config(sb, t, extra, &all);
        p
    }

    /// (Re)writes the configuration, watching the sandbox nodes `nodes`.
    pub fn write_config(&self, sb: &Sandbox, t: &Timings, extra: &str, nodes: &[usize]) {
        let nodes: Vec<String> = nodes
            .iter()
            .map(|&i| format!(r#"{{"host": "{}", "port": {}}}"#, sb.host(), sb.port(i)))
            .chain(t.extra_nodes.iter().cloned())
            .collect();
        let record = self.dir.path().join("record.sh");
        let triggers: Vec<String> = [
            "plusmoin_up",
            "plusmoin_heartbeat",
            "master_up",
            "master_down",
            "slave_up",
            "slave_down",
            "sync_lost",
            "sync_ok",
        ]
        .iter()
        .map(|name| {
            let command = t
                .triggers
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| record.display().to_string(), |(_, c)| c.clone());
            format!("{name:?}: {command:?}")
        })
        .collect();
        let d = self.dir.path().display();
        let config = format!(
            r#"{{
  "dbname": "{SANDBOX_DBNAME}", "user": "{SANDBOX_USER}", {password}
  "heartbeat": {hb}, "connect_timeout": {ct}, "max_sync_delay": {max}, "recover_sync_delay": {rec},
  "trigger_timeout": {tt}, "log_level": "{level}", "daemon_user": "{user}", "instance_name": "{instance}",
  "sslmode": "disable",
  "status_file": "{status}", "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
  "nodes": [{nodes}],
  "triggers": {{{triggers}}}{extra}
}}"#,
            hb = t.heartbeat,
            ct = t.connect_timeout,
            tt = t.trigger_timeout,
            triggers = triggers.join(", "),
            max = t.max_sync_delay,
            rec = t.recover_sync_delay,
            user = t.daemon_user.map(String::from).unwrap_or_else(current_user),
            instance = t.instance_name,
            level = t.log_level,
            password = match &t.password_json {
                None => format!(r#""password": "{SANDBOX_PASSWORD}","#),
                Some(p) if p.is_empty() => String::new(),
                Some(p) => format!("{p},"),
            },
            status = t
                .status_file
                .clone()
                .unwrap_or_else(|| self.dir.path().join("status.json"))
                .display(),
            nodes = nodes.join(", "),
        );
        // Atomically, so a daemon reloading never reads half of it.
        let tmp = self.dir.path().join("plusmoin.json.tmp");
        std::fs::write(&tmp, config).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// Starts the process (again, after `kill`).
    pub fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.log"))
            .expect("stdout log");
        let err = out.try_clone().expect("clone");
        let child = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
            .arg("-c")
            .arg(&self.config_path)
            .args(["-x", "start"])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn plusmoin");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after 10 s); returns
    /// whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Every event recorded so far, in the order the triggers ran.
    pub fn events(&self) -> Vec<Ev> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("events"))
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "ev"));
        files.sort_by_key(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let nanos: u128 = name
                .split('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (nanos, name)
        });
        files
            .iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(p).ok()?;
                let (kind, json) = text.split_once('\n')?;
                let at_nanos = p
                    .file_name()?
                    .to_string_lossy()
                    .split('-')
                    .next()?
                    .parse()
                    .ok()?;
                Some(Ev {
                    kind: kind.to_string(),
                    payload: serde_json::from_str(json).ok()?,
                    at_nanos,
                })
            })
            .collect()
    }

    /// Events other than `plusmoin_heartbeat`.
    pub fn changes(&self) -> Vec<Ev> {
        self.events()
            .into_iter()
            .filter(|e| e.kind != "plusmoin_heartbeat")
            .collect()
    }

    /// Waits for an event matching `pred`; panics with what was seen.
    pub fn wait_event(&self, what: &str, timeout: Duration, pred: impl Fn(&Ev) -> bool) -> Ev {
        let mut found = None;
        wait_until(timeout, || {
            found = self.events().into_iter().find(&pred);
            found.is_some()
        });
        found.unwrap_or_else(|| self.fail(&format!("no event {what} within {timeout:?}")))
    }

    pub fn status_path(&self) -> PathBuf {
        let text = std::fs::read_to_string(&self.config_path).unwrap_or_default();
        let cfg: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        cfg["status_file"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.path().join("status.json"))
    }

    pub fn status(&self) -> Value {
        std::fs::read(self.status_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }

    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut st = Value::Null;
        let ok = wait_until(timeout, || {
            st = self.status();
            pred(&st)
        });
        if !ok {
            self.fail(&format!(
                "status never showed {what} within {timeout:?}; last: {st:#}"
            ));
        }
        st
    }

    pub fn fail(&self, msg: &str) -> ! {
        let kinds: Vec<String> = self
            .changes()
            .iter()
            .map(|e| {
                format!(
                    "{}({}, {})",
                    e.kind,
                    e.cluster(),
                    e.payload["trigger"]["name"]
                )
            })
            .collect();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{msg}\nevents: {kinds:?}\nplusmoin log tail:\n{}",
            tail.join("\n")
        );
    }
}

impl Drop for Plusmoin {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

pub fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

/// Names in a status/payload node list.
pub fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

const LONG: Duration = Duration::from_secs(20);

fn one_healthy_cluster(p: &Plusmoin, sb: &Sandbox) -> Value {
    let (n0, n1, n2) = (node(sb, 0), node(sb, 1), node(sb, 2));
    p.wait_status("one cluster with master and two slaves", LONG, |st| {
        st["clusters"].as_array().map(|c| c.len()) == Some(1)
            && st["clusters"][0]["master"]["name"] == n0.as_str()
            && names(&st["clusters"][0]["slaves"]) == [n1.clone(), n2.clone()]
    })
}

#[test]
fn start_reports_one_cluster_and_slave_stop_and_start_give_slave_down_and_up() {
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &Timings::default(), "");
    let (n0, n1, n2) = (node(&sb, 0), node(&sb, 1), node(&sb, 2));
    one_healthy_cluster(&p, &sb);
    // A few beats pass with nothing but plusmoin_up and heartbeats.
    let beats = |p: &Plusmoin| {
        p.events()
            .iter()
            .filter(|e| e.kind == "plusmoin_heartbeat")
            .count()
    };
    assert!(wait_until(LONG, || beats(&p) >= 4), "{}", p.log());
    let changes = p.changes();
    let kinds: Vec<&str> = changes.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["plusmoin_up"],
        "only plusmoin_up at start: {changes:?}"
    );
    let up = &changes[0].payload;
    assert_eq!(up["cluster_id"], 0);
    assert_eq!(up["trigger"], Value::Null);
    assert_eq!(up["master"]["name"], n0.as_str());
    assert_eq!(up["master"]["is_slave"], false);
    assert_eq!(names(&up["slaves"]), [n1.clone(), n2.clone()]);
    assert_eq!(up["slaves"][0]["master_name"], n0.as_str());
    assert_eq!(up["slaves"][0]["is_slave"], true);
    assert_eq!(up["slaves"][0]["cluster_id"], 0);
    let first_heartbeat = p
        .events()
        .into_iter()
        .find(|e| e.kind == "plusmoin_heartbeat")
        .expect("heartbeat");
    assert_eq!(first_heartbeat.payload["trigger"], Value::Null);

    sb.stop(2).expect("stop standby");
    let down = p.wait_event("slave_down for the stopped standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    assert_eq!(down.cluster(), 0);
    assert_eq!(names(&down.payload["lost"]), [n2.as_str()]);
    assert_eq!(names(&down.payload["slaves"]), [n1.as_str()]);
    p.wait_status("the stopped standby lost", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n2.as_str()]
    });

    sb.start_node(2).expect("start standby");
    let up = p.wait_event("slave_up for the restarted standby", LONG, |e| {
        e.kind == "slave_up" && e.about(&n2)
    });
    assert_eq!(up.cluster(), 0);
    assert_eq!(names(&up.payload["slaves"]), [n1.clone(), n2.clone()]);
    one_healthy_cluster(&p, &sb);
}

#[test]
fn frozen_master_gives_master_down_and_thawed_master_up() {
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &Timings::default(), "");
    let n0 = node(&sb, 0);
    one_healthy_cluster(&p, &sb);
    sb.freeze(0).expect("freeze");
    let down = p.wait_event("master_down", LONG, |e| e.kind == "master_down");
    assert!(down.about(&n0));
    assert_eq!(down.cluster(), 0);
    assert_eq!(down.payload["master"], Value::Null);
    let st = p.wait_status("cluster 0 kept without master", LONG, |st| {
        st["clusters"][0]["has_master"] == false
    });
    assert_eq!(st["clusters"][0]["cluster_id"], 0);
    assert_eq!(
        names(&st["clusters"][0]["slaves"]).len(),
        2,
        "slaves stay: {st:#}"
    );
    assert_eq!(names(&st["clusters"][0]["lost"]), [n0.as_str()]);
    sb.thaw(0).expect("thaw");
    let up = p.wait_event("master_up", LONG, |e| e.kind == "master_up");
    assert!(up.about(&n0));
    assert_eq!(up.cluster(), 0);
    one_healthy_cluster(&p, &sb);
}

#[test]
fn failover_keeps_cluster_id_and_returning_old_master_splits() {
    let sb = Sandbox::start(2).expect("sandbox");
    let p = Plusmoin::start(&sb, &Timings::default(), "");
    let (n0, n1, n2) = (node(&sb, 0), node(&sb, 1), node(&sb, 2));
    one_healthy_cluster(&p, &sb);

    sb.kill9(0).expect("kill primary");
    sb.promote(1).expect("promote standby 1");
    let up = p.wait_event("master_up for the promoted standby", LONG, |e| {
        e.kind == "master_up" && e.about(&n1)
    });
    assert_eq!(up.cluster(), 0, "same cluster id");
    assert_eq!(up.payload["master"]["name"], n1.as_str());

    sb.repoint(2, 1).expect("repoint standby 2");
    let st = p.wait_status("standby 2 in sync with the new master", LONG, |st| {
        st["clusters"][0]["master"]["name"] == n1.as_str()
            && names(&st["clusters"][0]["slaves"]) == [n2.as_str()]
            && st["clusters"][0]["slaves"][0]["master_name"] == n1.as_str()
    });
    assert_eq!(names(&st["clusters"][0]["lost"]), [n0.as_str()]);
    // If it fell out of sync meanwhile, it came back with slave_up.
    let changes = p.changes();
    let last_for_n2 = changes
        .iter()
        .rev()
        .find(|e| e.about(&n2) && (e.kind == "slave_down" || e.kind == "slave_up"));
    if let Some(e) = last_for_n2 {
        assert_eq!(e.kind, "slave_up", "{changes:?}");
    }

    sb.start_node(0).expect("old primary back");
    let split = p.wait_event("master_up for the returning old master", LONG, |e| {
        e.kind == "master_up" && e.about(&n0)
    });
    assert_eq!(split.cluster(), 1, "it founds a new cluster");
    let st = p.wait_status("two clusters", LONG, |st| {
        st["clusters"].as_array().map(|c| c.len()) == Some(2)
    });
    assert_eq!(st["clusters"][0]["cluster_id"], 0);
    assert_eq!(st["clusters"][0]["master"]["name"], n1.as_str());
    assert_eq!(names(&st["clusters"][0]["slaves"]), [n2.as_str()]);
    assert_eq!(st["clusters"][1]["cluster_id"], 1);
    assert_eq!(st["clusters"][1]["master"]["name"], n0.as_str());
}

#[test]
fn frozen_slave_does_not_delay_detection_of_stopped_slave() {
    let sb = Sandbox::start(2).expect("sandbox");
    // A long connect_timeout: the frozen standby is down only 10 s after
    // it froze, while the stopped one's closed connection is news at once.
    // A monitor that made the others wait for the frozen one would report
    // the stopped standby no sooner than that.
    let t = Timings {
        connect_timeout: 10.0,
        ..Timings::default()
    };
    let p = Plusmoin::start(&sb, &t, "");
    let (n1, n2) = (node(&sb, 1), node(&sb, 2));
    one_healthy_cluster(&p, &sb);
    let frozen_at = std::time::SystemTime::now();
    sb.freeze(1).expect("freeze standby 1");
    let _thaw = Thaw(&sb, 1);
    sb.stop(2).expect("stop standby 2");
    let stopped_down = p.wait_event("slave_down for the stopped standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n2)
    });
    let frozen_down = p.wait_event("slave_down for the frozen standby", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    assert_eq!(frozen_down.cluster(), 0);
    assert!(
        stopped_down.at_nanos < frozen_down.at_nanos,
        "the stopped standby was reported after the frozen one"
    );
    let took = stopped_down.secs_after(frozen_at);
    assert!(
        took < t.connect_timeout,
        "the stopped standby was reported {took:.1} s after the freeze, not before the frozen one's deadline"
    );
    let st = p.wait_status("both standbys lost", LONG, |st| {
        names(&st["clusters"][0]["lost"]) == [n1.clone(), n2.clone()]
    });
    assert!(
        st["clusters"][0]["lost"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("no answer within 10s"),
        "{st:#}"
    );
}

/// Thaws a frozen node, also when the test fails.
struct Thaw<'a>(&'a Sandbox, usize);
impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = self.0.thaw(self.1);
    }
}

#[test]
fn sigterm_finishes_cleanly_and_removes_pid_file() {
    let sb = Sandbox::start(1).expect("sandbox");
    let mut p = Plusmoin::start(&sb, &Timings::default(), "");
    p.wait_status("one cluster", LONG, |st| {
        st["clusters"][0]["has_master"] == true
    });
    let pid_file = p.dir.path().join("plusmoin.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(pid, p.pid());
    assert!(p.terminate(), "exit status 0 after SIGTERM: {}", p.log());
    assert!(!pid_file.exists());
}

/// Fails if `secret` appears in anything plusmoin wrote or showed: its log
/// and output, the status file, every trigger payload, environment and
/// command line. (The configuration file itself holds it, of course.)
pub fn assert_no_secret(p: &Plusmoin, secret: &str) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(p.dir.path(), &mut files);
    let mut checked = 0;
    for f in files {
        if f == p.config_path || f.file_name().is_some_and(|n| n == "record.sh") {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(secret),
            "secret found in {}:\n{}",
            f.display(),
            text.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 3, "too few files checked: {checked}");
}
