//! The log: with `log_format: json` every line plusmoin writes is one JSON
//! object, from its first warning on, and an event's line carries the
//! event's own fields, as a log shipper needs; in either format the lines
//! are for people: a node down is one error until it answers again, and
//! observations are said in words, never in Rust's debug shapes.

use crate::monitor::{healthy, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// Every line of `text`, each parsed as JSON (panics on the first that is
/// not, naming it).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\nin:\n{text}"))
        })
        .collect()
}

/// Whether any of `line`'s values (the message or a field) says `text`.
fn mentions(line: &Value, text: &str) -> bool {
    line.as_object().is_some_and(|o| {
        o.iter()
            .any(|(k, v)| k != "timestamp" && v.as_str().is_some_and(|s| s.contains(text)))
    })
}

/// Rust's debug shapes (`Some(…)`, `Heartbeat { … }`, `Time(1796…)`):
/// none belongs in a line for people.
fn debug_shape(text: &str) -> Option<&'static str> {
    let re = regex::Regex::new(r"Some\(|None\b|Time\(|\b[A-Z]\w* \{ |\{ \w+: |\w\(\d+\)").unwrap();
    re.is_match(text).then_some("a debug shape")
}

#[test]
fn json_log_lines_parse_and_carry_the_event_fields() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings {
        log_level: "info",
        ..Timings::default()
    };
    let mut p = Plusmoin::start(&sb, &t, r#", "log_format": "json""#);
    let n1 = node(&sb, 1);
    p.wait_status("the standby in sync", LONG, |st| {
        st["clusters"][0]["slaves"][0]["name"] == n1.as_str()
    });
    sb.stop(1).expect("stop the standby");
    p.wait_event("slave_down", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    // The trigger ran, so its "trigger succeeded" line follows the event's.
    // The harness captures stdout and stderr together: every line of both
    // is the log's.
    assert!(wait_until(LONG, || json_lines(&p.log()).iter().any(|l| {
        l["message"] == "trigger succeeded" && l["trigger"] == "slave_down"
    })));
    let lines = json_lines(&p.log());
    for l in &lines {
        assert!(l.is_object(), "{l}");
        assert!(
            l["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{l}"
        );
        assert!(l["level"].is_string(), "{l}");
        assert!(l["message"].is_string(), "{l}");
    }
    let event = lines
        .iter()
        .find(|l| l["message"] == "event" && l["event"] == "slave_down")
        .unwrap_or_else(|| panic!("no slave_down line in {lines:#?}"));
    assert_eq!(event["node"], n1.as_str(), "{event}");
    assert_eq!(event["level"], "INFO", "{event}");
    assert!(event["cluster"].is_u64(), "{event}");
    assert!(p.terminate(), "clean exit");
}

/// A configuration others may read (it holds the password) makes `start`
/// warn: in the foreground, with `log_format: json`, that warning is a JSON
/// line of the log like every other, and so is a start that fails (a
/// second plusmoin on the same pid file), on stdout or stderr alike.
#[test]
fn with_json_every_line_is_json_from_the_start_warnings_on() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings {
        log_level: "info",
        ..Timings::default()
    };
    let mut p = Plusmoin::configure(&sb, &t, r#", "log_format": "json""#);
    std::fs::set_permissions(&p.config_path, std::fs::Permissions::from_mode(0o644))
        .expect("chmod the configuration");
    p.spawn();
    healthy(&p, &sb);

    // A second one on the same configuration: the pid file is taken.
    let second = Command::new(env!("CARGO_BIN_EXE_plusmoin"))
        .arg("-c")
        .arg(&p.config_path)
        .args(["-x", "start"])
        .stdin(Stdio::null())
        .output()
        .expect("run a second plusmoin");
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let out = String::from_utf8_lossy(&second.stdout).into_owned()
        + &String::from_utf8_lossy(&second.stderr);
    let refused = json_lines(&out);
    assert!(
        refused
            .iter()
            .any(|l| l["level"] == "ERROR" && mentions(l, "already running")),
        "the refusal is logged as JSON: {out}"
    );
    assert!(
        refused.iter().any(|l| l["level"] == "WARN"),
        "so is the warning: {out}"
    );

    assert!(p.terminate(), "clean exit");
    let log = p.log();
    let lines = json_lines(&log);
    let config = p.config_path.display().to_string();
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN" && mentions(l, &config))
        .unwrap_or_else(|| panic!("no warning about {config} in:\n{log}"));
    assert!(
        mentions(warning, "readable by group or others"),
        "{warning}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "plusmoin starting"),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "plusmoin stopped"),
        "{log}"
    );
}

/// A standby stopped as pg_ctl stops it first says it is shutting down,
/// then refuses connections, while plusmoin tries it again every
/// `retry_interval`: one error line about it all that time, and one info
/// line when it answers again, saying in words what it answered.
#[test]
fn a_stopped_standby_is_one_error_line_and_one_line_when_it_is_back() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings {
        log_level: "debug",
        ..Timings::default()
    };
    let p = Plusmoin::start(&sb, &t, r#", "log_format": "json""#);
    healthy(&p, &sb);
    let n1 = node(&sb, 1);
    let about = |l: &Value| l["node"] == n1.as_str() || mentions(l, &n1);
    let errors = |lines: &[Value]| -> usize {
        lines
            .iter()
            .filter(|l| l["level"] == "ERROR" && about(l))
            .count()
    };
    let retried = |lines: &[Value]| -> usize {
        lines
            .iter()
            .filter(|l| l["node"] == n1.as_str() && l["cause"] == "retry")
            .count()
    };

    sb.stop(1).expect("stop the standby");
    p.wait_event("slave_down", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    // The retries go on (every 0.25 s): let a dozen pass.
    if !wait_until(LONG, || retried(&json_lines(&p.log())) >= 12) {
        p.fail("fewer than 12 retries of the stopped standby");
    }
    let lines = json_lines(&p.log());
    assert_eq!(
        errors(&lines),
        1,
        "one error line for the stopped standby:\n{}",
        p.log()
    );
    let down = lines
        .iter()
        .find(|l| l["level"] == "ERROR" && about(l))
        .expect("the error line");
    assert_eq!(down["message"], "node down", "{down}");
    assert!(
        down["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{down}"
    );

    sb.start_node(1).expect("start the standby again");
    p.wait_event("slave_up", LONG, |e| e.kind == "slave_up" && e.about(&n1));
    let lines = json_lines(&p.log());
    assert_eq!(errors(&lines), 1, "still one error line:\n{}", p.log());
    let back: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "node answers again" && l["node"] == n1.as_str())
        .collect();
    assert_eq!(back.len(), 1, "one line when it is back:\n{}", p.log());
    assert_eq!(back[0]["level"], "INFO", "{}", back[0]);
    let said = back[0]["observation"].as_str().unwrap_or_default();
    assert!(said.starts_with("slave"), "{}", back[0]);
}

/// A scenario (start, a standby stopped and started again, stop) in the
/// text format at debug level: no line, whatever its level, shows Rust's
/// debug shapes; a slave's observation reads `slave of HOST:PORT,
/// heartbeat 0.3 s old`.
#[test]
fn log_lines_show_no_debug_shapes() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings {
        log_level: "debug",
        ..Timings::default()
    };
    let mut p = Plusmoin::start(&sb, &t, "");
    healthy(&p, &sb);
    let (n0, n1) = (node(&sb, 0), node(&sb, 1));
    sb.stop(1).expect("stop the standby");
    p.wait_event("slave_down", LONG, |e| {
        e.kind == "slave_down" && e.about(&n1)
    });
    sb.start_node(1).expect("start the standby again");
    p.wait_event("slave_up", LONG, |e| e.kind == "slave_up" && e.about(&n1));
    assert!(p.terminate(), "clean exit");
    let log = p.log();
    for l in log.lines() {
        assert!(debug_shape(l).is_none(), "a debug shape in {l:?}");
    }
    let words = regex::Regex::new(&format!(
        r"observation=slave of {}, heartbeat \d+\.\d s old",
        regex::escape(&n0)
    ))
    .unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("node answers again") && words.is_match(l)),
        "the standby back, in words:\n{log}"
    );
}

#[test]
fn debug_shapes_are_recognised() {
    for shaped in [
        "observation=Slave { heartbeat: Some(Heartbeat { master_name: \"db1\" }) }",
        "written_at: Time(1796583112464493)",
        "old_pid=Some(42)",
    ] {
        assert!(debug_shape(shaped).is_some(), "{shaped}");
    }
    for plain in [
        "observation=slave of 127.0.0.1:5432, heartbeat 0.3 s old",
        "plusmoin is already running (pid 42, /run/p.pid)",
    ] {
        assert!(debug_shape(plain).is_none(), "{plain}");
    }
}
