//! The HTTP listener (`http_listen`) on a real plusmoin watching real
//! servers: /metrics parsed and compared with the status, /primary and
//! /replica following a failover, `?lag=` against a standby whose replay is
//! paused, a real HAProxy routing on those checks, and hostile clients
//! (garbage, oversized, slow) that never hold the beat back.

use crate::monitor::{healthy, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin::web::{CONNECTION_LIFETIME, FIRST_BYTE_TIMEOUT, HEAD_TIMEOUT, MAX_PER_PEER};
use plusmoin_kit::exposition::{self, Exposition};
use plusmoin_kit::flood::Flood;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

/// A loopback port free a moment ago.
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}

/// plusmoin with its listener on a free loopback port.
fn start(sb: &Sandbox, t: &Timings) -> (Plusmoin, SocketAddr) {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let p = Plusmoin::start(sb, t, &format!(r#", "http_listen": "{addr}""#));
    let up = wait_until(LONG, || get(addr, "/metrics").0 == 200);
    if !up {
        p.fail(&format!("the listener never answered on {addr}"));
    }
    (p, addr)
}

/// One raw request; the status (0 when the connection was closed without
/// an answer) and the whole response as text.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    // The server may answer and close before reading it all.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// `GET path`: the status and the body.
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: plusmoin\r\nConnection: close\r\n\r\n");
    let (status, text) = raw(addr, req.as_bytes());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn code(addr: SocketAddr, path: &str) -> u16 {
    get(addr, path).0
}

fn scrape(addr: SocketAddr) -> Exposition {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    exposition::parse(&body).unwrap_or_else(|e| panic!("not the text format: {e}\n{body}"))
}

/// The status and the metrics of one same decision: /status, /metrics,
/// /status again until both statuses are the same decision.
fn consistent(p: &Plusmoin, addr: SocketAddr) -> (Value, Exposition) {
    let mut last = None;
    let ok = wait_until(LONG, || {
        let before: Value = serde_json::from_str(&get(addr, "/status").1).unwrap_or(Value::Null);
        let m = scrape(addr);
        let after: Value = serde_json::from_str(&get(addr, "/status").1).unwrap_or(Value::Null);
        let same = before["updated_at_unix"].is_number() && before == after;
        if same {
            last = Some((after, m));
        }
        same
    });
    if !ok {
        p.fail("no two /status answers of the same decision around a scrape");
    }
    last.expect("set when ok")
}

/// Every node of the status: name, state, cluster ("" for none).
fn status_nodes(st: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut push = |n: &Value| {
        out.push((
            n["name"].as_str().unwrap_or("").to_string(),
            n["state"].as_str().unwrap_or("").to_string(),
            n["cluster_id"]
                .as_u64()
                .map(|c| c.to_string())
                .unwrap_or_default(),
        ))
    };
    for c in st["clusters"].as_array().into_iter().flatten() {
        for n in std::iter::once(&c["master"])
            .filter(|m| !m.is_null())
            .chain(c["slaves"].as_array().into_iter().flatten())
            .chain(c["lost"].as_array().into_iter().flatten())
        {
            push(n);
        }
    }
    for n in st["clusterless"].as_array().into_iter().flatten() {
        push(n);
    }
    out
}

/// The metrics say what the status says, node by node.
fn assert_agree(st: &Value, m: &Exposition) {
    let nodes = status_nodes(st);
    assert!(!nodes.is_empty(), "{st:#}");
    for (name, state, cluster) in &nodes {
        let labels = [("node", name.as_str()), ("cluster", cluster.as_str())];
        let places = m.matching("plusmoin_node_place", &labels);
        assert_eq!(places.len(), 4, "{name}: {places:?}");
        for p in places {
            let want = if &p.labels["place"] == state {
                1.0
            } else {
                0.0
            };
            assert_eq!(p.value, want, "{name} is {state}: {p:?}");
        }
        let lag = st["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["slaves"].as_array().into_iter().flatten())
            .find(|n| n["name"] == name.as_str())
            .and_then(|n| n["lag"].as_f64());
        if let Some(lag) = lag {
            assert_eq!(
                m.value("plusmoin_node_lag_seconds", &labels),
                Some(lag),
                "{name}"
            );
        }
    }
    for c in st["clusters"].as_array().into_iter().flatten() {
        let id = c["cluster_id"].to_string();
        let has = if c["has_master"] == true { 1.0 } else { 0.0 };
        assert_eq!(
            m.value("plusmoin_cluster_has_master", &[("cluster", id.as_str())]),
            Some(has)
        );
    }
    assert_eq!(
        m.value("plusmoin_last_beat_timestamp_seconds", &[]),
        st["updated_at_unix"].as_f64()
    );
}

fn counter(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.value(name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

#[test]
fn metrics_agree_with_the_status_and_count_a_standby_stopped_and_started() {
    let sb = Sandbox::start(2).expect("sandbox");
    let (p, addr) = start(&sb, &Timings::default());
    healthy(&p, &sb);
    let n2 = node(&sb, 2);

    let (st, m) = consistent(&p, addr);
    assert_agree(&st, &m);
    // /status is the status file's JSON (same decision: same document).
    let file = p.wait_status("the file at the same decision", LONG, |f| {
        f["updated_at_unix"].as_f64() >= st["updated_at_unix"].as_f64()
    });
    if file["updated_at_unix"] == st["updated_at_unix"] {
        assert_eq!(file, st);
    }
    assert_eq!(
        m.value(
            "plusmoin_node_up",
            &[("node", n2.as_str()), ("cluster", "0")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value(
            "plusmoin_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let ev = |m: &Exposition, k| counter(m, "plusmoin_events_total", &[("event", k)]);
    let runs = |m: &Exposition, t| {
        counter(
            m,
            "plusmoin_trigger_runs_total",
            &[("trigger", t), ("outcome", "ok")],
        )
    };
    assert!(ev(&m, "plusmoin_up") >= 1.0);
    assert!(ev(&m, "plusmoin_heartbeat") >= 1.0);
    assert!(counter(&m, "plusmoin_beat_duration_seconds_count", &[]) >= 1.0);
    let (down0, up0) = (ev(&m, "slave_down"), ev(&m, "slave_up"));
    let (down_runs0, up_runs0) = (runs(&m, "slave_down"), runs(&m, "slave_up"));

    sb.stop(2).expect("stop standby 2");
    let mut m = scrape(addr);
    let moved = wait_until(LONG, || {
        m = scrape(addr);
        ev(&m, "slave_down") == down0 + 1.0 && runs(&m, "slave_down") == down_runs0 + 1.0
    });
    assert!(
        moved,
        "slave_down counted, and its trigger run: {:?}",
        m.matching("plusmoin_trigger_runs_total", &[("outcome", "ok")])
    );
    let labels = [("node", n2.as_str()), ("cluster", "0")];
    assert_eq!(m.value("plusmoin_node_up", &labels), Some(0.0));
    assert_eq!(
        m.value(
            "plusmoin_node_place",
            &[("node", n2.as_str()), ("cluster", "0"), ("place", "lost")]
        ),
        Some(1.0)
    );
    let (st, m) = consistent(&p, addr);
    assert_agree(&st, &m);

    sb.start_node(2).expect("start standby 2");
    let mut m = scrape(addr);
    let moved = wait_until(LONG, || {
        m = scrape(addr);
        ev(&m, "slave_up") == up0 + 1.0 && runs(&m, "slave_up") == up_runs0 + 1.0
    });
    assert!(
        moved,
        "slave_up counted, and its trigger run: {:?}",
        m.matching("plusmoin_trigger_runs_total", &[("outcome", "ok")])
    );
    assert_eq!(ev(&m, "slave_down"), down0 + 1.0, "no other slave_down");
    healthy(&p, &sb);
    let (st, m) = consistent(&p, addr);
    assert_agree(&st, &m);
    assert_eq!(m.value("plusmoin_node_up", &labels), Some(1.0));
    // Nothing secret: the password is nowhere in what is served.
    for path in ["/metrics", "/status", "/health"] {
        assert!(!get(addr, path).1.contains(SANDBOX_PASSWORD), "{path}");
    }
}

#[test]
fn primary_and_replica_follow_a_failover_within_a_beat_and_lag_is_honoured() {
    let t = Timings::default();
    let sb = Sandbox::start(2).expect("sandbox");
    let (p, addr) = start(&sb, &t);
    healthy(&p, &sb);
    let (n0, n1, n2) = (node(&sb, 0), node(&sb, 1), node(&sb, 2));
    let primary = |n: &str| code(addr, &format!("/primary/{n}"));
    let replica = |n: &str| code(addr, &format!("/replica/{n}"));
    assert!(wait_until(LONG, || primary(&n0) == 200), "n0 primary");
    assert_eq!((primary(&n1), primary(&n2)), (503, 503));
    assert_eq!((replica(&n1), replica(&n2), replica(&n0)), (200, 200, 503));
    assert_eq!(code(addr, "/primary/nowhere:1"), 404);
    assert_eq!(code(addr, &format!("/replica/{n1}?lag=soon")), 400);
    assert_eq!(code(addr, "/health"), 200);

    // ?lag=: standby 2's replay paused, its lag grows beat after beat.
    sb.sql(2, "SELECT pg_wal_replay_pause()")
        .expect("pause replay");
    let _resume = Resume(&sb, 2);
    let tight = format!("/replica/{n2}?lag=0.5");
    // Over 0.5 s behind but still in sync by max_sync_delay: the tight
    // bound says no while plain /replica still says yes.
    let mut seen = (0, 0);
    let ok = wait_until(LONG, || {
        seen = (code(addr, &tight), replica(&n2));
        seen == (503, 200)
    });
    assert!(ok, "?lag=0.5 refused while /replica accepts: last {seen:?}");
    assert_eq!(code(addr, &format!("/replica/{n2}?lag=1000")), 200);
    // Past max_sync_delay it is lost: plain /replica says no too.
    assert!(
        wait_until(LONG, || replica(&n2) == 503),
        "lost past max_sync_delay"
    );
    sb.sql(2, "SELECT pg_wal_replay_resume()")
        .expect("resume replay");
    assert!(wait_until(LONG, || code(addr, &tight) == 200), "caught up");

    // Failover: the primary killed, standby 1 promoted.
    sb.kill9(0).expect("kill primary");
    let killed = Instant::now();
    assert!(
        wait_until(LONG, || primary(&n0) == 503),
        "the dead primary is no longer primary"
    );
    let down_after = killed.elapsed();
    sb.promote(1).expect("promote standby 1");
    let promoted = Instant::now();
    // Until then, never two primaries; polled as fast as answers come.
    let mut both = false;
    let flipped = wait_until(LONG, || {
        let (a, b) = (primary(&n0), primary(&n1));
        both |= a == 200 && b == 200;
        b == 200
    });
    let took = promoted.elapsed();
    assert!(flipped, "the promoted standby became primary");
    assert!(!both, "two primaries answered 200 at once");
    assert_eq!(replica(&n1), 503, "a master is no replica");
    // A beat: the promoted standby keeps its connection, so the next beat's
    // probe sees it, and the beat is decided by connect_timeout at the
    // latest. The dead one dropped its connection: seen at once.
    let beat = Duration::from_secs_f64(t.heartbeat + t.connect_timeout);
    assert!(
        took <= beat,
        "/primary flipped {took:?} after the promotion"
    );
    assert!(
        down_after <= beat,
        "/primary of the dead one: {down_after:?}"
    );
}

/// Resumes WAL replay on drop, should the test fail while it is paused.
struct Resume<'a>(&'a Sandbox, usize);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.sql(self.1, "SELECT pg_wal_replay_resume()");
    }
}

/// A foreground HAProxy; killed on drop.
pub(crate) struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// `show stat` on its stats socket: one map of column to value per
    /// proxy and server.
    fn stats(&self) -> Result<Vec<std::collections::HashMap<String, String>>, String> {
        use std::os::unix::net::UnixStream;
        let mut s = UnixStream::connect(self.dir.path().join("stats.sock"))
            .map_err(|e| format!("stats socket: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(b"show stat\n").map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let mut lines = out.lines();
        let head: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| format!("not show stat: {out}"))?
            .split(',')
            .collect();
        Ok(lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                head.iter()
                    .zip(l.split(','))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect())
    }

    /// The `status` and `chkdown` (times it went down) of `server` in
    /// `backend`.
    fn server(&self, backend: &str, server: &str) -> Result<(String, u64), String> {
        let rows = self.stats()?;
        let row = rows
            .iter()
            .find(|r| r["pxname"] == backend && r["svname"] == server)
            .ok_or_else(|| format!("no {backend}/{server} in {rows:?}"))?;
        Ok((
            row["status"].clone(),
            row["chkdown"].parse().unwrap_or_default(),
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why the HAProxy tests are skipped (or, under PLUSMOIN_REQUIRE_ALL, fail).
pub(crate) const HAPROXY_MISSING: &str = "haproxy is not installed (apt-get install haproxy)";

/// The haproxy the tests run: [`HAPROXY_ENV`] when set (a path: the test
/// of a missing haproxy points it at none), else the first found in PATH
/// or in the system's sbin directories, where Debian puts it and which a
/// normal user's PATH lacks.
const HAPROXY_ENV: &str = "PLUSMOIN_TEST_HAPROXY";

fn haproxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(HAPROXY_ENV) {
        return PathBuf::from(p);
    }
    plusmoin_kit::find_program("haproxy", &["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .unwrap_or_else(|| PathBuf::from("haproxy"))
}

/// Without haproxy, the tests needing it print why they are skipped and
/// pass; with PLUSMOIN_REQUIRE_ALL=1 (as .ci/run sets it) they fail, saying
/// why. Runs this test binary again, on each of them.
#[test]
fn haproxy_tests_without_haproxy_skip_saying_why_unless_all_are_required() {
    let dir = tempfile::tempdir().unwrap();
    for test in [
        "http::haproxy_routes_writes_to_the_primary_and_follows_the_promotion",
        "split::a_second_master_gets_no_writes_through_haproxy_and_a_restart_routes_to_none",
    ] {
        without_haproxy(test, &dir.path().join("no-haproxy"));
    }
}

/// Runs `test` with `missing` as the haproxy, without and with
/// PLUSMOIN_REQUIRE_ALL.
fn without_haproxy(test: &str, missing: &Path) {
    let child = |require: Option<&str>| {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(HAPROXY_ENV, missing)
            .env_remove(plusmoin_kit::REQUIRE_ALL);
        if let Some(v) = require {
            c.env(plusmoin_kit::REQUIRE_ALL, v);
        }
        let o = c.output().expect("run the live tests");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), all)
    };
    let (ok, all) = child(None);
    assert!(ok, "without haproxy: {all}");
    assert!(
        all.contains(&format!("skipped: {HAPROXY_MISSING}")),
        "{all}"
    );
    assert!(all.contains("1 passed"), "{all}");
    let (ok, all) = child(Some("1"));
    assert!(!ok, "with PLUSMOIN_REQUIRE_ALL=1 it must fail: {all}");
    assert!(
        all.contains(
            "PLUSMOIN_REQUIRE_ALL is set, and this test cannot run: haproxy is not installed"
        ),
        "{all}"
    );
}

pub(crate) fn haproxy_installed() -> bool {
    Command::new(haproxy_bin())
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The ports HAProxy serves clients on.
pub(crate) struct Ports {
    pub write: u16,
    pub read: u16,
    pub reporting: u16,
}

/// HAProxy running the shipped `contrib/haproxy.cfg`, made to fit the
/// sandbox: plusmoin at `plusmoin`, db1 = node 0, db2 = node 2, db3 = node
/// 1, client ports on loopback.
pub(crate) fn haproxy(sb: &Sandbox, plusmoin: SocketAddr, ports: &Ports) -> Haproxy {
    let dir = tempfile::tempdir().expect("temp dir");
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/haproxy.cfg"))
            .expect("contrib/haproxy.cfg");
    let cfg = template
        .replace("db1:5432", &node(sb, 0))
        .replace("db2:5432", &node(sb, 2))
        .replace("db3:5432", &node(sb, 1))
        .replace("PLUSMOIN_HOST", &plusmoin.ip().to_string())
        .replace("port 9187", &format!("port {}", plusmoin.port()))
        .replace("*:5000", &format!("127.0.0.1:{}", ports.write))
        .replace("*:5001", &format!("127.0.0.1:{}", ports.read))
        .replace("*:5002", &format!("127.0.0.1:{}", ports.reporting))
        // Its state, for the tests to read.
        .replacen(
            "global\n",
            &format!(
                "global\n    stats socket {}/stats.sock\n",
                dir.path().display()
            ),
            1,
        );
    let left = cfg
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find(|l| {
            ["db1:", "db2:", "db3:", "*:", "port 9187"]
                .iter()
                .any(|t| l.contains(t))
        });
    assert_eq!(left, None, "not fitted to the sandbox:\n{cfg}");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).expect("write haproxy.cfg");
    let check = Command::new(haproxy_bin())
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("haproxy -c");
    assert!(
        check.status.success(),
        "haproxy refuses the configuration: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("log");
    let child = Command::new(haproxy_bin())
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start haproxy");
    Haproxy { child, dir }
}

/// Through `port`: the port of the server reached and whether it is in
/// recovery; with `write`, a row inserted first (which only a primary
/// takes).
pub(crate) fn through(port: u16, write: bool) -> Result<(i32, bool), String> {
    let db = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let conninfo = format!(
            "host=127.0.0.1 port={port} user={SANDBOX_USER} password={SANDBOX_PASSWORD} \
             dbname={SANDBOX_DBNAME} connect_timeout=3"
        );
        let (client, conn) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&conninfo, tokio_postgres::NoTls),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        if write {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS http_test_writes (at timestamptz); \
                     INSERT INTO http_test_writes VALUES (now())",
                )
                .await
                .map_err(db)?;
        }
        let row = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .map_err(db)?;
        drop(client);
        let _ = conn.await;
        Ok((row.get(0), row.get(1)))
    })
}

#[test]
fn haproxy_routes_writes_to_the_primary_and_follows_the_promotion() {
    if !haproxy_installed() {
        // .ci/run installs it, and sets PLUSMOIN_REQUIRE_ALL: there, a
        // missing haproxy fails.
        plusmoin_kit::skip(HAPROXY_MISSING);
        return;
    }
    let sb = Sandbox::start(2).expect("sandbox");
    let (p, addr) = start(&sb, &Timings::default());
    healthy(&p, &sb);
    let ports = Ports {
        write: free_port(),
        read: free_port(),
        reporting: free_port(),
    };
    let (write, read) = (ports.write, ports.read);
    let _h = haproxy(&sb, addr, &ports);
    let port = |i: usize| i32::from(sb.port(i));

    let mut last = Err(String::new());
    let ok = consistently(write, true, Ok((port(0), false)), &mut last);
    assert!(
        ok,
        "writes through HAProxy reach the primary only: {last:?}"
    );
    // Reads go to the standbys, both in turn.
    let mut seen = std::collections::BTreeSet::new();
    let ok = wait_until(LONG, || {
        match through(read, false) {
            Ok((p, true)) => {
                seen.insert(p);
            }
            other => last = other,
        }
        seen.len() == 2
    });
    assert!(ok, "reads reach both standbys: {seen:?}, last {last:?}");
    assert_eq!(
        seen,
        [port(1), port(2)].into(),
        "only standbys on the read port"
    );

    // The reporting port: standby 2 alone.
    let ok = consistently(ports.reporting, false, Ok((port(2), true)), &mut last);
    assert!(ok, "the reporting port reaches standby 2: {last:?}");

    sb.kill9(0).expect("kill primary");
    sb.promote(1).expect("promote standby 1");
    let ok = consistently(write, true, Ok((port(1), false)), &mut last);
    assert!(ok, "writes follow the promotion: {last:?}");
    // Standby 2, repointed to the new primary, serves reads again.
    sb.repoint(2, 1).expect("repoint standby 2");
    // And nothing else: the new primary is no replica.
    let ok = consistently(read, false, Ok((port(2), true)), &mut last);
    assert!(ok, "reads reach the repointed standby only: {last:?}");
}

/// Waits until four connections in a row through `port` all give `want`
/// (HAProxy balances round-robin over the servers it has up, so a second
/// server up would take one of them); `last` is the last answer.
pub(crate) fn consistently(
    port: u16,
    write: bool,
    want: Result<(i32, bool), String>,
    last: &mut Result<(i32, bool), String>,
) -> bool {
    wait_until(LONG, || {
        (0..4).all(|_| {
            *last = through(port, write);
            *last == want
        })
    })
}

#[test]
fn haproxy_keeps_the_primary_up_through_a_flood_of_idle_and_slow_connections() {
    if !haproxy_installed() {
        plusmoin_kit::skip(HAPROXY_MISSING);
        return;
    }
    // The flood's 2,000 descriptors.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    let sb = Sandbox::start(2).expect("sandbox");
    let (p, addr) = start(&sb, &Timings::default());
    healthy(&p, &sb);
    let ports = Ports {
        write: free_port(),
        read: free_port(),
        reporting: free_port(),
    };
    let h = haproxy(&sb, addr, &ports);
    let primary = node(&sb, 0);
    let mut last = Err(String::new());
    let ok = consistently(
        ports.write,
        true,
        Ok((i32::from(sb.port(0)), false)),
        &mut last,
    );
    assert!(ok, "writes reach the primary before the flood: {last:?}");
    let (status, downs) = h.server("pg_primary", &primary).expect("stats");
    assert_eq!(status, "UP");

    // One local user: 1,000 connections that send nothing and 1,000 that
    // trickle a request head, each reopened as soon as it is dropped. With
    // fall 2 and fastinter 250 ms, two checks lost in a row would take the
    // primary out (and, with on-marked-down shutdown-sessions, cut every
    // client); ten seconds see more than ten checks of each server.
    let flood = Flood::start(addr, 1000, 1000, Duration::from_millis(300));
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut writes = (0, 0);
    while started.elapsed() < Duration::from_secs(10) {
        let (status, _) = h.server("pg_primary", &primary).expect("stats");
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        writes.1 += 1;
        if through(ports.write, true) == Ok((i32::from(sb.port(0)), false)) {
            writes.0 += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tried = flood.stop();
    let (_, downs_after) = h.server("pg_primary", &primary).expect("stats");
    assert!(tried > 2000, "the flood ran: {tried} connections tried");
    assert_eq!(
        (seen.as_slice(), downs_after),
        (&["UP".to_string()][..], downs),
        "the primary's state through the flood; HAProxy's log:\n{}",
        h.log()
    );
    assert_eq!(
        writes.0, writes.1,
        "writes through HAProxy during the flood"
    );
}

/// When each status the daemon wrote was decided, polled every 50 ms for
/// `period`.
fn beats_during(p: &Plusmoin, period: Duration, mut meanwhile: impl FnMut()) -> Vec<f64> {
    let mut at: Vec<f64> = Vec::new();
    let end = Instant::now() + period;
    while Instant::now() < end {
        meanwhile();
        if let Some(t) = p.status()["updated_at_unix"].as_f64() {
            if at.last() != Some(&t) {
                at.push(t);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    at
}

/// The longest gap between two decisions, counting from the first and up
/// to now.
fn longest_gap(at: &[f64]) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    at.windows(2)
        .map(|w| w[1] - w[0])
        .chain(at.last().map(|l| now - l))
        .fold(0.0, f64::max)
}

#[test]
fn garbage_oversized_and_slow_requests_get_4xx_or_are_dropped_and_the_beat_goes_on() {
    let t = Timings {
        heartbeat: 1.0,
        ..Timings::default()
    };
    let sb = Sandbox::start(1).expect("sandbox");
    let (p, addr) = start(&sb, &t);
    healthy(&p, &sb);
    // A status older than three beats is what /health and `plusmoin
    // status` call stale: the beat must never come that late.
    let stale = 3.0 * t.heartbeat;

    // Slow clients first: as many as the listener takes from one address,
    // each trickling a request head that never ends.
    let mut slow: Vec<TcpStream> = (0..MAX_PER_PEER)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ")
                .expect("start a request");
            s
        })
        .collect();
    let opened = Instant::now();
    // One more, sending its whole request, is answered: the oldest slow
    // one makes room, closed long before its head is due.
    let (status, _) = raw(addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "past the limit, a whole request is answered");
    let mut buf = [0u8; 64];
    let _ = slow[0].set_read_timeout(Some(HEAD_TIMEOUT));
    let evicted = match slow[0].read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        evicted && opened.elapsed() < HEAD_TIMEOUT - FIRST_BYTE_TIMEOUT,
        "the oldest slow client evicted: {evicted} after {:?}",
        opened.elapsed()
    );
    let beats = beats_during(&p, Duration::from_secs(3), || {
        for s in &mut slow {
            let _ = s.write_all(b"a");
        }
    });
    assert!(beats.len() >= 2, "beats went on: {beats:?}");
    assert!(
        longest_gap(&beats) <= stale,
        "a beat came late while slow clients held every connection: {beats:?}"
    );
    // Each is dropped once its head is overdue (5 s), while still sending.
    for (i, s) in slow.iter_mut().enumerate() {
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            // Closed (or reset).
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            // An answer (408) is fine too, as long as it is 4xx.
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 4"), "slow client {i}: {text}");
            }
            Err(e) => panic!("slow client {i} still open after 20 s more: {e}"),
        }
    }
    // By the head's deadline, not by the connection's lifetime (the
    // bound halfway between tells which).
    let bound = (HEAD_TIMEOUT + CONNECTION_LIFETIME) / 2;
    assert!(
        opened.elapsed() < bound,
        "slow clients dropped after {:?}, not within {bound:?}",
        opened.elapsed()
    );
    drop(slow);
    assert!(
        wait_until(LONG, || code(addr, "/health") == 200),
        "serving again"
    );

    let huge_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let long_uri = format!(
        "GET /primary/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(20_000)
    );
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n");
    let mut junk = vec![0u8; 1 << 20];
    for (i, b) in junk.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary junk", junk),
        ("not HTTP", b"HELLO plusmoin\r\n\r\n".to_vec()),
        ("huge header", huge_header.into_bytes()),
        ("long URI", long_uri.into_bytes()),
        ("many headers", many_headers.into_bytes()),
        (
            "a body",
            b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "a huge body announced",
            b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n".to_vec(),
        ),
        (
            "chunked",
            b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("PUT", b"PUT /status HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad escape", b"GET /primary/%zz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bad version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
    ];
    let beats = beats_during(&p, Duration::from_millis(100), || {});
    let mut at = beats;
    for (what, req) in &cases {
        let (status, text) = raw(addr, req);
        assert!(
            status == 0 || (400..500).contains(&status) || status == 505,
            "{what}: {status} {text}"
        );
        if let Some(t) = p.status()["updated_at_unix"].as_f64() {
            if at.last() != Some(&t) {
                at.push(t);
            }
        }
    }
    assert!(
        longest_gap(&at) <= stale,
        "a beat came late during the bad requests: {at:?}"
    );
    // Still alive, still serving, no panic anywhere.
    assert_eq!(code(addr, "/health"), 200);
    // HEAD: the status and headers, no body.
    let (status, text) = raw(addr, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body: {text:?}");
    assert_eq!(code(addr, &format!("/primary/{}", node(&sb, 0))), 200);
    let log = p.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_changed_http_listen_on_reload_is_warned_about_and_the_listener_stays() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings::default();
    let (p, addr) = start(&sb, &t);
    healthy(&p, &sb);
    let other: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let t = Timings {
        heartbeat: 0.6,
        ..t
    };
    p.write_config(&sb, &t, &format!(r#", "http_listen": "{other}""#), &[0, 1]);
    let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let warned = wait_until(LONG, || {
        p.log().contains(&format!(
            "http_listen changed from {addr} to {other}: this takes a restart"
        ))
    });
    assert!(warned, "warned: {}", p.log());
    // The rest of the configuration was taken.
    p.wait_status("the new heartbeat", LONG, |st| st["heartbeat"] == 0.6);
    assert_eq!(code(addr, "/health"), 200, "the old listener stays");
    assert_eq!(code(other, "/health"), 0, "nothing on the new address");
}

#[test]
fn a_taken_http_listen_port_is_a_start_error() {
    let sb = Sandbox::start(0).expect("sandbox");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let p = Plusmoin::configure(
        &sb,
        &Timings::default(),
        &format!(r#", "http_listen": "{addr}""#),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(["-x", "start"])
        .output()
        .expect("run plusmoin");
    // In the foreground the error is a line of the log (stdout), in the
    // log's format, like everything the daemon says.
    let err =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on http_listen {addr}: ")),
        "{err}"
    );
}

#[test]
fn with_pgpool_metrics_show_pgpools_view_and_count_the_attach() {
    let (sb, pg) = crate::pgpool::setup(2);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let extra = format!(
        r#"{}, "http_listen": "{addr}""#,
        crate::pgpool::section(&pg, pg.pcppass_file())
    );
    let p = Plusmoin::start(&sb, &Timings::default(), &extra);
    healthy(&p, &sb);
    let n2 = node(&sb, 2);
    let pgpool_says = |m: &Exposition, status: &str| {
        m.value(
            "plusmoin_node_pgpool_status",
            &[("node", n2.as_str()), ("cluster", "0"), ("status", status)],
        )
    };
    let attached = |m: &Exposition| {
        pgpool_says(m, "up") == Some(1.0) || pgpool_says(m, "waiting") == Some(1.0)
    };
    let mut m = Exposition::default();
    let ok = wait_until(LONG, || {
        m = scrape(addr);
        attached(&m) && m.value("plusmoin_pgpool_acting", &[]) == Some(1.0)
    });
    assert!(
        ok,
        "pgpool's view of node 2: {:?}",
        m.matching("plusmoin_node_pgpool_status", &[])
    );
    assert_eq!(m.value("plusmoin_pgpool_pcp_error", &[]), Some(0.0));
    // Every attach plusmoin sends is counted, whatever its outcome: on a
    // loaded machine pcp_attach_node now and then reports a failure for
    // an attach pgpool then carries out (counted `failed`, node up).
    let attaches = |m: &Exposition| {
        ["ok", "not_taken", "failed"]
            .iter()
            .map(|outcome| {
                counter(
                    m,
                    "plusmoin_pcp_actions_total",
                    &[("action", "attach"), ("outcome", outcome)],
                )
            })
            .sum::<f64>()
    };
    let before = attaches(&m);

    sb.stop(2).expect("stop standby 2");
    let ok = wait_until(LONG, || {
        m = scrape(addr);
        pgpool_says(&m, "down") == Some(1.0)
    });
    assert!(
        ok,
        "node 2 down in pgpool: {:?}",
        m.matching("plusmoin_node_pgpool_status", &[])
    );

    // auto_failback is off: the attach is plusmoin's, and counted.
    sb.start_node(2).expect("start standby 2");
    let ok = wait_until(LONG, || {
        m = scrape(addr);
        attached(&m) && attaches(&m) > before
    });
    assert!(
        ok,
        "attach counted and node 2 up again: {:?} {:?}",
        m.matching("plusmoin_pcp_actions_total", &[]),
        m.matching("plusmoin_node_pgpool_status", &[("node", n2.as_str())])
    );
}
