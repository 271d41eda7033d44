//! plusmoin's tables against a hostile or careless database (issue 20):
//! another role's `plusmoin_hold` or `plusmoin_heartbeat` is never used, a
//! flood of hold rows never reaches plusmoin's memory or status file, and
//! control characters in a hold row never reach a log line or a terminal
//! raw.

use crate::holds::{ok, plusmoin, read_holds, stderr, stdout, write_config};
use crate::monitor::{node, Plusmoin, Timings};
use plusmoin::cluster::{NodeName, Observation, Time};
use plusmoin::config::SslMode;
use plusmoin::demo::sandbox::Sandbox;
use plusmoin::probe::{Monitor, ProbeSettings, ProbeTarget};
use plusmoin_kit::probe::probe_once;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// A role that may create tables in `public` (PostgreSQL 15 needs the
/// grant; before, every role could), with a log table anyone may write and
/// a trigger function writing to it: whatever fires it leaves a row there.
const ROGUE: &str = "CREATE ROLE rogue; \
     GRANT CREATE ON SCHEMA public TO rogue; \
     SET ROLE rogue; \
     CREATE TABLE public.rogue_log (what text); \
     GRANT INSERT ON public.rogue_log TO PUBLIC; \
     CREATE FUNCTION public.rogue_fire() RETURNS trigger LANGUAGE plpgsql AS $$ \
       BEGIN \
         INSERT INTO public.rogue_log VALUES (TG_TABLE_NAME || ' ' || TG_OP || ' as ' || current_user); \
         RETURN NULL; \
       END $$";

/// The rogue role's `table`, created with `columns` and `rows` (an
/// INSERT's VALUES, or empty), with the trigger on every write (it also
/// cancels the write) and every right granted to everyone.
fn rogue_table(sb: &Sandbox, table: &str, columns: &str, rows: &str) {
    let insert = if rows.is_empty() {
        String::new()
    } else {
        format!("INSERT INTO public.{table} VALUES {rows}; ")
    };
    sb.sql(
        0,
        &format!(
            "SET ROLE rogue; \
             CREATE TABLE public.{table} ({columns}); {insert}\
             CREATE TRIGGER fire BEFORE INSERT OR UPDATE OR DELETE ON public.{table} \
               FOR EACH ROW EXECUTE FUNCTION public.rogue_fire(); \
             GRANT ALL ON public.{table} TO PUBLIC"
        ),
    )
    .expect("rogue table");
}

/// What the rogue's triggers recorded (empty: they never fired).
fn rogue_log(sb: &Sandbox) -> String {
    sb.sql(0, "SELECT string_agg(what, '; ') FROM public.rogue_log")
        .expect("rogue log")
}

fn settings(instance: &str) -> ProbeSettings {
    ProbeSettings {
        sslmode: SslMode::Disable,
        ..crate::probe::settings(instance, Duration::from_secs(10))
    }
}

fn beat(rt: &tokio::runtime::Runtime, p: &mut Monitor, sb: &Sandbox) -> Vec<Observation> {
    let targets: Vec<ProbeTarget> = (0..sb.len())
        .map(|i| ProbeTarget {
            name: NodeName::new(sb.host(), sb.port(i)),
            cluster_id: Some(0),
        })
        .collect();
    rt.block_on(probe_once(p, &targets, Time::now()))
        .into_iter()
        .map(|(_, o)| o)
        .collect()
}

fn down_reason(o: &Observation) -> &str {
    match o {
        Observation::Down { reason } => reason,
        other => panic!("expected down, got {other:?}"),
    }
}

/// A `plusmoin_heartbeat` of another role's: the master (and the standby
/// replaying it) is down, with the owner and the fix named, whichever
/// statement path the probe takes; the table's trigger never fires. Once
/// it is dropped, plusmoin creates its own.
#[test]
fn another_roles_heartbeat_table_is_never_used() {
    let sb = Sandbox::start(1).expect("sandbox");
    sb.sql(0, ROGUE).expect("rogue");
    rogue_table(
        &sb,
        "plusmoin_heartbeat",
        "instance_name text PRIMARY KEY, cluster_id integer, master_name text NOT NULL, \
         beat_at timestamptz NOT NULL",
        // A fresh row for this instance: a standby reading it would look in sync.
        "('pm', 0, 'forged:1', now() + interval '1 day')",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The default role statement (one statement on a standby) and a custom
    // one (the two statements apart).
    let mut custom = settings("pm");
    custom.is_slave_statement = "SELECT pg_is_in_recovery() AS r".into();
    for s in [settings("pm"), custom] {
        let mut p = Monitor::new(s).expect("monitor");
        for _ in 0..3 {
            let obs = beat(&rt, &mut p, &sb);
            for o in &obs {
                let r = down_reason(o);
                assert!(
                    r.starts_with(
                        "table public.plusmoin_heartbeat belongs to role \"rogue\", not to \"plusmoin\""
                    ),
                    "{r}"
                );
                assert!(r.contains("DROP TABLE public.plusmoin_heartbeat"), "{r}");
                assert!(
                    r.contains("ALTER TABLE public.plusmoin_heartbeat OWNER TO plusmoin"),
                    "{r}"
                );
            }
        }
    }
    assert_eq!(rogue_log(&sb), "", "the rogue's trigger fired");

    // Dropped: plusmoin's own table, at the next beat.
    sb.sql(0, "DROP TABLE public.plusmoin_heartbeat")
        .expect("drop");
    let mut p = Monitor::new(settings("pm")).expect("monitor");
    let obs = beat(&rt, &mut p, &sb);
    assert!(matches!(obs[0], Observation::Master { .. }), "{obs:?}");
    assert_eq!(
        sb.sql(
            0,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'plusmoin_heartbeat'"
        )
        .expect("owner"),
        "plusmoin"
    );
    assert_eq!(rogue_log(&sb), "");
}

/// A `plusmoin_hold` of another role's: `hold` and `release` refuse it
/// naming the owner, its rows never count as holds, its trigger never
/// fires. Once it is dropped, `hold` creates plusmoin's own.
#[test]
fn another_roles_hold_table_is_never_used() {
    let sb = Sandbox::start(2).expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let c = write_config(&sb, dir.path(), "pgpool1", "", false);
    let (n1, n2) = (node(&sb, 1), node(&sb, 2));
    sb.sql(0, ROGUE).expect("rogue");
    rogue_table(
        &sb,
        "plusmoin_hold",
        "node text PRIMARY KEY, placed_by text NOT NULL, \
         placed_at timestamptz NOT NULL DEFAULT now(), reason text",
        &format!("('{n2}', 'rogue', now(), 'detach it')"),
    );
    let refused = |out: &std::process::Output| {
        assert!(!out.status.success(), "{out:?}");
        let err = stderr(out);
        assert!(
            err.contains("table public.plusmoin_hold belongs to role \"rogue\""),
            "{err}"
        );
        assert!(
            err.contains("ALTER TABLE public.plusmoin_hold OWNER TO plusmoin"),
            "{err}"
        );
        assert!(
            err.contains(&format!("on the master {}", node(&sb, 0))),
            "{err}"
        );
    };
    refused(&plusmoin(&c, &["hold", &n1, "--reason", "x"]));
    refused(&plusmoin(&c, &["release", &n2]));
    // The daemon's read: refused too, so the rogue's row holds nothing.
    let h = read_holds(&c, &sb, &[0, 1, 2]);
    assert!(!h.known(), "the rogue's table was read");
    assert!(h.current().is_empty(), "{:?}", h.current());
    assert_eq!(rogue_log(&sb), "", "the rogue's trigger fired");
    assert_eq!(
        sb.sql(0, "SELECT node FROM public.plusmoin_hold")
            .expect("rows"),
        n2,
        "the rogue's table is untouched"
    );

    sb.sql(0, "DROP TABLE public.plusmoin_hold").expect("drop");
    let out = ok(plusmoin(&c, &["hold", &n1]));
    assert!(out.contains(&format!("{n1} held (by ")), "{out}");
    assert_eq!(
        sb.sql(
            0,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'plusmoin_hold'"
        )
        .expect("owner"),
        "plusmoin"
    );
    assert_eq!(read_holds(&c, &sb, &[0]).names(), [n1.as_str()]);
    assert_eq!(rogue_log(&sb), "");
}

/// `VmHWM` (peak resident memory) of process `pid`, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A million rows in `plusmoin_hold`, none of a configured node, and one
/// of a configured node with a 100 kB `placed_by` and a 1 MB reason: a
/// running plusmoin reads only what it needs. It stays under 100 MB
/// resident at its peak, its status file under 1 MB, and it says what it
/// left out and cut.
#[test]
fn a_million_hold_rows_never_reach_plusmoin() {
    let sb = Sandbox::start(0).expect("sandbox");
    let n0 = node(&sb, 0);
    sb.sql(
        0,
        &format!(
            "{}; ALTER TABLE public.plusmoin_hold OWNER TO plusmoin; \
             INSERT INTO public.plusmoin_hold (node, placed_by, reason) \
               SELECT 'flood-' || i, repeat('f', 100), repeat('r', 100) \
               FROM generate_series(1, 1000000) AS i; \
             INSERT INTO public.plusmoin_hold (node, placed_by, reason) \
               VALUES ('{n0}', repeat('p', 100000), repeat('w', 1000000))",
            plusmoin::hold::HOLD_TABLE_DDL
        ),
    )
    .expect("flood");
    let p = Plusmoin::start(&sb, &Timings::default(), "");
    let st = p.wait_status("the hold of node 0", LONG, |st| {
        st["holds"][0]["node"] == n0.as_str()
    });
    let hold = &st["holds"][0];
    assert_eq!(
        st["holds"].as_array().map(Vec::len),
        Some(1),
        "{}",
        st["holds"]
    );
    assert_eq!(
        hold["placed_by"].as_str().map(|s| s.chars().count()),
        Some(plusmoin::hold::PLACED_BY_CAP + 1),
        "cut, and marked with …"
    );
    assert_eq!(
        hold["reason"].as_str().map(|s| s.chars().count()),
        Some(plusmoin::hold::REASON_CAP + 1)
    );
    // Five more beats, each reading the holds with the flood there.
    let since = st["updated_at_unix"].as_f64().unwrap_or_default();
    p.wait_status("five more beats", LONG, |st| {
        st["updated_at_unix"].as_f64().unwrap_or_default() >= since + 2.5
    });
    let peak = peak_rss_kb(p.pid());
    let status_size = std::fs::metadata(p.status_path()).expect("status").len();
    eprintln!("plusmoin peak RSS {peak} kB, status file {status_size} bytes");
    assert!(peak < 100 * 1024, "peak resident memory {peak} kB");
    assert!(status_size < 1 << 20, "status file of {status_size} bytes");
    let log = p.log();
    assert!(
        log.contains(
            "1000 or more rows of public.plusmoin_hold naming no configured node: ignored"
        ),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "the hold of {n0}: its placed_by is longer than 256 characters; cut there"
        )),
        "{log}"
    );
    assert!(
        log.contains("its reason is longer than 1024 characters"),
        "{log}"
    );
}

/// No raw control character from the text: newlines only between lines.
fn assert_inert(what: &str, text: &str) {
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| c != '\n' && c.is_control())
        .collect();
    assert!(raw.is_empty(), "{what} holds raw {raw:?}:\n{text}");
    let forged: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("2099-01-01") || l.starts_with("FORGED"))
        .collect();
    assert!(forged.is_empty(), "{what} has forged lines {forged:?}");
}

/// A hold row whose `placed_by` and `reason` carry a newline, a terminal
/// title sequence and a screen clear, and a row whose node does: `hold`,
/// `release`, `status --table`, the status file and the daemon's log show
/// them escaped.
#[test]
fn control_characters_of_a_hold_row_are_shown_escaped() {
    let sb = Sandbox::start(1).expect("sandbox");
    let n1 = node(&sb, 1);
    let t = Timings {
        log_level: "info",
        ..Timings::default()
    };
    let p = Plusmoin::configure(&sb, &t, "");
    let c = p.config_path.clone();
    ok(plusmoin(&c, &["hold", &n1]));
    sb.sql(
        0,
        &format!(
            "UPDATE public.plusmoin_hold SET \
               placed_by = E'mallory@h\\n2099-01-01T00:00:00Z ERROR forged\\x1b]0;title\\x07', \
               reason = E'why\\x1b[2J\\nFORGED too' \
             WHERE node = '{n1}'; \
             INSERT INTO public.plusmoin_hold (node, placed_by) \
               VALUES (E'ghost\\n2099-01-01 \\x1b[2J', E'x\\x1b[2J')"
        ),
    )
    .expect("update");
    let mut p = p;
    p.spawn();
    let st = p.wait_status("the hold of node 1", LONG, |st| {
        st["holds"][0]["node"] == n1.as_str()
    });
    let placed_by = st["holds"][0]["placed_by"].as_str().unwrap_or_default();
    assert_eq!(
        placed_by,
        "mallory@h\\n2099-01-01T00:00:00Z ERROR forged\\u{1b}]0;title\\u{7}"
    );
    assert_eq!(
        st["holds"][0]["reason"].as_str(),
        Some("why\\u{1b}[2J\\nFORGED too")
    );
    let status = std::fs::read_to_string(p.status_path()).expect("status");
    assert_inert("the status file", &status);

    let table = plusmoin(&c, &["status", "--table"]);
    let shown = stdout(&table);
    assert!(shown.contains("held by mallory@h\\n2099"), "{table:?}");
    assert_inert("status --table", &shown);
    assert_inert("status --table (stderr)", &stderr(&table));

    let again = plusmoin(&c, &["hold", &n1]);
    let shown = ok(again.clone());
    assert!(
        shown.contains("was already held (by mallory@h\\n"),
        "{shown}"
    );
    assert_inert("hold", &shown);
    assert_inert("hold (stderr)", &stderr(&again));

    let release = plusmoin(&c, &["release", &n1]);
    let shown = ok(release.clone());
    assert!(shown.contains("the hold placed by mallory@h\\n"), "{shown}");
    assert_inert("release", &shown);
    assert_inert("release (stderr)", &stderr(&release));

    p.wait_status("no hold", LONG, |st| {
        st["holds"].as_array().is_some_and(Vec::is_empty)
    });
    let log = p.log();
    assert!(log.contains("node held"), "{log}");
    assert!(log.contains("mallory@h\\n2099"), "{log}");
    assert!(
        log.contains("1 row of public.plusmoin_hold naming no configured node: ignored"),
        "{log}"
    );
    assert_inert("the daemon's log", &log);
    let log_file = std::fs::read_to_string(p.dir.path().join("plusmoin.log")).unwrap_or_default();
    assert_inert("the daemon's log file", &log_file);
}
