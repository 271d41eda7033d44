//! Two masters of one replication set (a standby promoted while its
//! primary is still up): `/primary` answers 200 for one of them at most,
//! so a real HAProxy in front never sends a write to the second one; after
//! a restart that finds both, for neither; once one is gone, for the other.

use crate::http::{
    consistently, free_port, get, haproxy, haproxy_installed, through, Ports, HAPROXY_MISSING,
};
use crate::monitor::{healthy, node, Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn masters(p: &Plusmoin) -> Vec<String> {
    let st = p.status();
    st["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["master"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Writes through HAProxy's write port, and asks plusmoin about the second
/// master, every 50 ms for `period`: every write that gets through lands on
/// `on`, and `/primary/{second}` never answers 200. Returns how many writes
/// went through.
fn only_writes_to(
    p: &Plusmoin,
    write_port: u16,
    on: i32,
    addr: SocketAddr,
    second: &str,
    period: Duration,
) -> usize {
    let end = Instant::now() + period;
    let mut through_ok = 0;
    while Instant::now() < end {
        if let Ok((port, _)) = through(write_port, true) {
            if port != on {
                p.fail(&format!(
                    "a write through HAProxy reached the second master on port {port}; log:\n{}",
                    p.log()
                ));
            }
            through_ok += 1;
        }
        let (code, body) = get(addr, &format!("/primary/{second}"));
        assert_ne!(code, 200, "/primary/{second} answered 200: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    through_ok
}

#[test]
fn a_second_master_gets_no_writes_through_haproxy_and_a_restart_routes_to_none() {
    if !haproxy_installed() {
        plusmoin_kit::skip(HAPROXY_MISSING);
        return;
    }
    let sb = Sandbox::start(2).expect("sandbox");
    let t = Timings::default();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listen = format!(r#", "http_listen": "{addr}""#);
    let mut p = Plusmoin::start(&sb, &t, &listen);
    healthy(&p, &sb);
    let ports = Ports {
        write: free_port(),
        read: free_port(),
        reporting: free_port(),
    };
    let _h = haproxy(&sb, addr, &ports);
    let port = |i: usize| i32::from(sb.port(i));
    let (first, second) = (node(&sb, 0), node(&sb, 1));
    // HAProxy starts with every server up until checks say otherwise: four
    // writes in a row on the primary (round-robin over the servers up)
    // show it has checked the others down before the promotion.
    let mut last = Err(String::new());
    let up = consistently(ports.write, true, Ok((port(0), false)), &mut last);
    assert!(
        up,
        "writes through HAProxy reach the primary only: {last:?}"
    );

    // Standby 1 is promoted while the primary stays up: two masters.
    sb.promote(1).expect("promote standby 1");
    let split = p.wait_status("two masters", LONG, |st| {
        st["primary_refused"][second.as_str()].is_string()
    });
    assert!(
        masters(&p).contains(&second) && masters(&p).contains(&first),
        "both are masters: {split}"
    );
    let why = split["primary_refused"][second.as_str()]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains(&first), "the incumbent is named: {why}");
    let (code, body) = get(addr, &format!("/primary/{second}"));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not routed to"), "{body}");
    assert_eq!(get(addr, &format!("/primary/{first}")).0, 200);
    let metrics = get(addr, "/metrics").1;
    let refused = format!("plusmoin_primary_refused{{node=\"{second}\",cluster=");
    assert!(
        metrics.lines().any(|l| l.starts_with(&refused)
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)),
        "the refusal is a metric:\n{metrics}"
    );
    assert!(
        p.log().contains("primary_refused"),
        "the refusal is logged:\n{}",
        p.log()
    );
    // Several of HAProxy's check rounds: no write ever reaches the second
    // master, and writes keep reaching the first.
    let n = only_writes_to(
        &p,
        ports.write,
        port(0),
        addr,
        &second,
        Duration::from_secs(4),
    );
    assert!(n > 10, "writes kept going through: {n}");

    // A restart that finds both masters cannot tell which one is the
    // primary: neither is routed to.
    drop(p);
    p = Plusmoin::start(&sb, &t, &listen);
    let st = p.wait_status("both refused", LONG, |st| {
        st["primary_refused"][first.as_str()].is_string()
            && st["primary_refused"][second.as_str()].is_string()
    });
    let why = st["primary_refused"][first.as_str()]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("cannot tell"), "{why}");
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        for n in [&first, &second] {
            let (code, body) = get(addr, &format!("/primary/{n}"));
            assert_eq!(code, 503, "after the restart, /primary/{n}: {body}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The first one goes: the second one is the only master, and the
    // primary.
    sb.kill9(0).expect("kill the first master");
    let ok = wait_until(LONG, || through(ports.write, true) == Ok((port(1), false)));
    assert!(ok, "writes reach the one master left: {:?}", p.status());
}

/// Masters of two replication sets (two sandboxes, each its own initdb)
/// are no rivals: both are routed to, from the first decision on. This is
/// what reading the system identifier buys; without it they would be
/// refused together.
#[test]
fn masters_of_two_replication_sets_are_both_primaries() {
    let a = Sandbox::start(1).expect("sandbox a");
    let b = Sandbox::start(0).expect("sandbox b");
    let t = Timings {
        extra_nodes: vec![format!(
            r#"{{"host": "{}", "port": {}}}"#,
            b.host(),
            b.port(0)
        )],
        ..Timings::default()
    };
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let p = Plusmoin::start(&a, &t, &format!(r#", "http_listen": "{addr}""#));
    let (ma, mb) = (node(&a, 0), node(&b, 0));
    let st = p.wait_status("two clusters", LONG, |st| {
        let m = masters(&p);
        m.contains(&ma) && m.contains(&mb) && st.is_object()
    });
    assert!(
        st.get("primary_refused").is_none(),
        "no master refused: {st:#}"
    );
    let ok = wait_until(LONG, || {
        get(addr, &format!("/primary/{ma}")).0 == 200
            && get(addr, &format!("/primary/{mb}")).0 == 200
    });
    assert!(ok, "both are primaries: {:#}", p.status());
}
