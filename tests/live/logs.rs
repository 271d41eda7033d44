//! `log_format: json`: every line plusmoin logs is one JSON object, and an
//! event's line carries the event's own fields, as a log shipper needs.

use crate::monitor::{node, Plusmoin, Timings};
use plusmoin::demo::sandbox::Sandbox;
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

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
    // The harness also captures stderr, where `start` tells the person who
    // ran it about warnings before logging begins ("plusmoin: …"): those
    // are for a terminal, not the log.
    let lines = || -> Vec<Value> {
        p.log()
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("plusmoin: "))
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}"))
            })
            .collect()
    };
    assert!(crate::wait_until(LONG, || lines().iter().any(|l| {
        l["message"] == "trigger succeeded" && l["trigger"] == "slave_down"
    })));
    let lines = lines();
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
