//! What a real server says reaches logs and `status --table` as one inert
//! line: a relation name with a newline and an escape sequence, echoed back
//! in PostgreSQL's error, is escaped in the probe's reason. So does what pcp
//! prints: a watchdog leader named with escape sequences reaches neither
//! the daemon's log nor `status`, `status --table` or `check-config` raw.

use plusmoin::cluster::{NodeName, Observation, Time};
use plusmoin::config::{Secret, SslMode};
use plusmoin::demo::sandbox::{Sandbox, SANDBOX_DBNAME, SANDBOX_PASSWORD, SANDBOX_USER};
use plusmoin::probe::{Monitor, ProbeSettings, ProbeTarget};
use plusmoin_kit::probe::probe_once;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use crate::monitor::{make_executable, Plusmoin, Timings};
use crate::wait_until;

#[test]
fn control_characters_from_the_server_are_escaped_in_reasons() {
    let sb = Sandbox::start(0).expect("sandbox");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut p = Monitor::new(ProbeSettings {
        dbname: SANDBOX_DBNAME.into(),
        user: SANDBOX_USER.into(),
        password: Secret::new(SANDBOX_PASSWORD),
        node_passwords: Default::default(),
        instance_name: "escape".into(),
        // The server's error names this relation, newline and all.
        is_slave_statement: "SELECT true FROM \"no\nplusmoin: forged\u{1b}[31m\"".into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        connect_timeout: Duration::from_secs(5),
        retry_interval: Duration::from_millis(250),
    })
    .expect("monitor");
    let target = ProbeTarget {
        name: NodeName::new(sb.host(), sb.port(0)),
        cluster_id: None,
    };
    let out = rt.block_on(probe_once(&mut p, &[target], Time::now()));
    let Observation::Down { reason } = &out[0].1 else {
        panic!("expected down, got {:?}", out[0].1);
    };
    assert!(
        !reason.chars().any(char::is_control),
        "control characters in {reason:?}"
    );
    assert!(
        reason.contains("no\\nplusmoin: forged\\u{1b}[31m"),
        "escaped relation name in {reason:?}"
    );
}

/// A fake pcp: `$1` is the command, the rest ignored. `pcp_node_info` says
/// the node is pgpool's primary; `pcp_watchdog_info -v` names a leader with
/// a window title, a screen clear, a C1 CSI, DEL, a bidi override and a
/// newline (a forged line after it); with a file `pcp-fail` beside it, it
/// fails printing them on stderr.
const HOSTILE_PCP: &str = r#"#!/bin/sh
d="$(dirname "$0")"
case "$1" in
  info) echo "127.0.0.1 5432 2 0.5 up primary" ;;
  watchdog)
    if [ -f "$d/pcp-fail" ]; then
      printf 'ERROR: \033]0;pwned\007\033[2J\302\2332J\177\342\200\256 refused\n' >&2
      exit 1
    fi
    printf 'Watchdog Cluster Information\n'
    printf 'Quorum state             : QUORUM EXIST\n'
    printf 'Leader Node Name         : \033]0;pwned\007\033[2Jevil\302\2332J\177\342\200\256\nplusmoin: forged line\n\n'
    printf 'Watchdog Node Information\n'
    printf 'Node Name         : me\nStatus Name       : STANDBY\n' ;;
  *) exit 0 ;;
esac
"#;

/// The characters of `bytes` a terminal would act on (newlines apart).
fn raw_controls(bytes: &[u8]) -> Vec<char> {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| {
            c != '\n' && c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

use crate::daemon::plusmoin as run;

/// `what`'s stdout and stderr: none of them raw, and `expect` in them.
fn assert_inert(what: &str, o: &Output, expect: &str) -> String {
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for b in [&o.stdout, &o.stderr] {
        let raw = raw_controls(b);
        assert!(raw.is_empty(), "{what}: raw {raw:?} in {out:?}");
    }
    assert!(
        out.contains(expect),
        "{what}: {expect:?} missing from {out}"
    );
    out
}

#[test]
fn control_characters_from_pcp_reach_no_log_status_or_check_config_raw() {
    let sb = Sandbox::start(0).expect("sandbox");
    let t = Timings::default();
    let mut p = Plusmoin::configure(&sb, &t, "");
    let d = p.dir.path().to_path_buf();
    let pcp = d.join("pcp.sh");
    std::fs::write(&pcp, HOSTILE_PCP).unwrap();
    make_executable(&pcp);
    std::fs::write(
        d.join("pgpool.conf"),
        format!(
            "backend_hostname0 = '{}'\nbackend_port0 = {}\n",
            sb.host(),
            sb.port(0)
        ),
    )
    .unwrap();
    let pcppass = d.join("pcppass");
    std::fs::write(&pcppass, "*:*:pgpool:secret\n").unwrap();
    std::fs::set_permissions(&pcppass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cmd = |c: &str| format!("{} {c} {{{{node_id}}}}", pcp.display());
    let extra = format!(
        r#", "pgpool": {{"pcp_user": "pgpool", "pcppass_file": "{}",
            "pgpool_conf": "{}/pgpool.conf", "pcp_timeout": 10,
            "templates": {{"attach": "{}", "detach": "{}", "node_info": "{}",
                           "watchdog_info": "{}"}}}}"#,
        pcppass.display(),
        d.display(),
        cmd("attach"),
        cmd("detach"),
        cmd("info"),
        cmd("watchdog"),
    );
    p.write_config(&sb, &t, &extra, &[0]);
    p.spawn();
    let leader = |st: &serde_json::Value| {
        st["pgpool"]["watchdog"]
            .as_str()
            .is_some_and(|w| w.contains("pwned"))
    };
    p.wait_status(
        "the sidecar reports the watchdog",
        Duration::from_secs(30),
        leader,
    );

    let o = run(&p, &["status", "--table"]);
    assert!(o.status.success(), "{o:?}");
    assert_inert("status --table", &o, "leader \\u{1b}]0;pwned\\u{7}");
    let o = run(&p, &["status"]);
    assert!(o.status.success(), "{o:?}");
    assert_inert("status", &o, "pwned");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let watchdog = json["pgpool"]["watchdog"].as_str().unwrap();
    assert!(raw_controls(watchdog.as_bytes()).is_empty(), "{watchdog:?}");
    let o = run(&p, &["check-config"]);
    assert!(o.status.success(), "{o:?}");
    assert_inert("check-config", &o, "pgpool says: watchdog:");

    // pcp failing with them on stderr: check-config's warning, the
    // daemon's error and the status file's.
    std::fs::write(d.join("pcp-fail"), "").unwrap();
    let o = run(&p, &["check-config"]);
    assert_inert(
        "failing check-config",
        &o,
        "cannot ask pgpool about its watchdog",
    );
    assert_inert("failing check-config", &o, "ERROR: \\u{1b}]0;pwned");
    let failed = |st: &serde_json::Value| {
        st["pgpool"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("pwned"))
    };
    p.wait_status(
        "the sidecar reports pcp failing",
        Duration::from_secs(30),
        failed,
    );
    let o = run(&p, &["status", "--table"]);
    assert_inert("failing status --table", &o, "pgpool: cannot be asked");
    let o = run(&p, &["status"]);
    assert_inert("failing status", &o, "refused");

    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = p.log();
            log.contains("leader \\u{1b}]0;pwned") && log.contains("ERROR: \\u{1b}]0;pwned")
        }),
        "the daemon never logged the watchdog and the failure: {}",
        p.log()
    );
    assert!(p.terminate(), "clean exit");
    let log = std::fs::read(p.dir.path().join("stdout.log")).unwrap();
    let raw = raw_controls(&log);
    assert!(raw.is_empty(), "raw {raw:?} in the log: {}", p.log());
}

/// A heartbeat row naming its master with control characters (replayed by
/// a standby; plusmoin wrote no such row, someone with rights on the table
/// did): the name reaches the reason, the status and the log escaped.
#[test]
fn a_master_name_with_control_characters_in_a_heartbeat_row_is_escaped() {
    let sb = Sandbox::start(1).expect("sandbox");
    let t = Timings::default();
    let p = Plusmoin::configure(&sb, &t, "");
    // Only the standby is watched: nobody rewrites the row.
    p.write_config(&sb, &t, "", &[1]);
    let forged = "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\nplusmoin: forged line\u{9b}2J";
    let sql = format!(
        "SET ROLE {SANDBOX_USER}; {create}; \
         INSERT INTO plusmoin_heartbeat (instance_name, cluster_id, master_name, beat_at) \
         VALUES ('{instance}', 0, '{forged}', now())",
        create = plusmoin::probe::HEARTBEAT_TABLE_DDL,
        instance = t.instance_name,
    );
    sb.sql_in(0, SANDBOX_DBNAME, &sql).expect("insert the row");
    let mut p = p;
    p.spawn();
    let st = p.wait_status("the standby's reason", Duration::from_secs(30), |st| {
        st["clusterless"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("evil"))
    });
    let reason = st["clusterless"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\nplusmoin: forged line\\u{9b}2J"),
        "escaped in the reason: {reason:?}"
    );
    for args in [&["status", "--table"][..], &["status"][..]] {
        assert_inert(&args.join(" "), &run(&p, args), "evil");
    }
    let log = p.log();
    assert!(
        raw_controls(log.as_bytes()).is_empty() && !log.contains("\nplusmoin: forged line"),
        "raw in the log: {log:?}"
    );
}
