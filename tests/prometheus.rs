//! The alert rules of `contrib/prometheus` checked by the real tools:
//! `promtool check rules` accepts them, and `promtool test rules` runs
//! their unit tests (`plusmoin-alerts.test.yml`), in which each alert fires
//! and clears. Skipped (failed with `PLUSMOIN_REQUIRE_ALL=1`) without
//! promtool (Debian: `apt-get install prometheus`). That every metric they
//! use is served is checked beside `/metrics` (src/web/tests.rs).

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> Option<String> {
    if !plusmoin_kit::on_path("promtool") {
        plusmoin_kit::skip("promtool is not installed (apt-get install prometheus)");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Some(text)
}

#[test]
fn promtool_checks_the_alert_rules() {
    if let Some(out) = promtool(&["check", "rules", "plusmoin-alerts.yml"]) {
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn promtool_unit_tests_fire_and_clear_every_alert() {
    let Some(out) = promtool(&["test", "rules", "plusmoin-alerts.test.yml"]) else {
        return;
    };
    assert!(out.contains("SUCCESS"), "{out}");
    // Every alert of the rules is tested, firing (an expected alert) and
    // clearing (none expected afterwards).
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let rules = std::fs::read_to_string(dir.join("plusmoin-alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir.join("plusmoin-alerts.test.yml")).expect("tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    // The tests, as (alert, fires) per eval_time.
    let mut cases = Vec::new();
    let lines: Vec<&str> = tests.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.trim().strip_prefix("alertname: ") {
            let fires = lines.get(i + 1).is_some_and(|n| n.trim() == "exp_alerts:");
            cases.push((name, fires));
        }
    }
    for a in alerts {
        assert!(cases.contains(&(a, true)), "{a} never tested firing");
        let fired = cases.iter().position(|c| *c == (a, true)).unwrap_or(0);
        assert!(
            cases[fired..].contains(&(a, false)),
            "{a} never tested clearing after it fired"
        );
    }
}
