//! A real Prometheus server (Debian's `prometheus` package) scraping a
//! real plusmoin with the alert rules of `contrib/prometheus`: once a
//! standby stops, `PlusmoinStandbyDown` fires in Prometheus's own API.
//! Skipped (failed with `PLUSMOIN_REQUIRE_ALL=1`) without `prometheus`.
//!
//! The rules are loaded as shipped but for their `for:` durations, set to
//! 0s: what is tested is that the expressions fire on what plusmoin
//! serves, not how long the operator chose to wait.

use crate::http::free_port;
use crate::monitor::{healthy, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A Prometheus server of its own (port, data, configuration); killed on
/// drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second as job `plusmoin`, evaluating the
    /// rules every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus/plusmoin-alerts.yml"),
        )
        .expect("the shipped rules");
        let rules: Vec<String> = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 0s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_string(),
            })
            .collect();
        std::fs::write(dir.path().join("rules.yml"), rules.join("\n")).expect("write rules");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - rules.yml\n\
                 scrape_configs:\n  - job_name: plusmoin\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write configuration");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, dir };
        if !wait_until(LONG, || p.get("/-/ready").0 == 200) {
            panic!("prometheus never ready:\n{}", p.log());
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` in HTTP/1.0 (no chunks): the status and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The alerts Prometheus has, as its API gives them.
    fn alerts(&self) -> Vec<Value> {
        let (_, body) = self.get("/api/v1/alerts");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The value of `query` now, if it has one series.
    fn query(&self, query: &str) -> Option<f64> {
        let (_, body) = self.get(&format!("/api/v1/query?query={query}"));
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

fn firing(alerts: &[Value], name: &str, node: &str) -> bool {
    alerts.iter().any(|a| {
        a["labels"]["alertname"] == name && a["labels"]["node"] == node && a["state"] == "firing"
    })
}

#[test]
fn prometheus_fires_standby_down_when_a_standby_stops() {
    if !plusmoin_kit::on_path("prometheus") {
        plusmoin_kit::skip("prometheus is not installed (apt-get install prometheus)");
        return;
    }
    let sb = Sandbox::start(1).expect("sandbox");
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let p = Plusmoin::start(
        &sb,
        &Timings::default(),
        &format!(r#", "http_listen": "{addr}""#),
    );
    healthy(&p, &sb);
    let prom = Prometheus::start(addr);
    let n1 = node(&sb, 1);
    // Scraped: the standby is up, and no alert fires.
    let up = wait_until(LONG, || {
        prom.query(&format!("plusmoin_node_up{{node=%22{n1}%22}}")) == Some(1.0)
    });
    assert!(up, "plusmoin never scraped:\n{}", prom.log());
    // Before the first scrape PlusmoinAbsent fires (its `for:` is 0s
    // here): once scraped, nothing fires on a healthy cluster.
    let mut alerts = Vec::new();
    let quiet = wait_until(LONG, || {
        alerts = prom.alerts();
        !alerts.iter().any(|a| a["state"] == "firing")
    });
    assert!(quiet, "alerts fire on a healthy cluster: {alerts:#?}");

    sb.stop(1).expect("stop the standby");
    let fired = wait_until(LONG, || {
        alerts = prom.alerts();
        firing(&alerts, "PlusmoinStandbyDown", &n1)
    });
    assert!(
        fired,
        "PlusmoinStandbyDown never fired for {n1}: {alerts:#?}\n{}",
        prom.log()
    );
    let master = node(&sb, 0);
    assert!(
        !firing(&alerts, "PlusmoinStandbyDown", &master),
        "{alerts:#?}"
    );
}
