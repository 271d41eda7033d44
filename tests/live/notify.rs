//! systemd notifications (sd_notify) from a real `plusmoin -x start`: this
//! test plays systemd's side of `NOTIFY_SOCKET` and `WATCHDOG_USEC`.

use crate::monitor::{Plusmoin, Timings};
use crate::wait_until;
use plusmoin::demo::sandbox::Sandbox;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

/// One datagram, with whether the status file existed when it came.
#[derive(Debug, Clone)]
struct Msg {
    text: String,
    status_written: bool,
}

fn has(m: &Msg, line: &str) -> bool {
    m.text.lines().any(|l| l == line)
}

#[test]
fn notifies_ready_reload_watchdog_and_stopping() {
    let sb = Sandbox::start(2).expect("sandbox");
    let t = Timings::default();
    let mut p = Plusmoin::configure(&sb, &t, "");
    let status = p.status_path();
    let sock_path = p.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let got: Arc<Mutex<Vec<Msg>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let got = got.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    // Checked as the message comes: the daemon writes the
                    // status file at its first decision, before READY=1.
                    let status_written = status.exists();
                    got.lock().unwrap().push(Msg {
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        status_written,
                    });
                }
            }
        })
    };
    let msgs = || got.lock().unwrap().clone();
    p.env
        .push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    // Two seconds: a beat every 0.5 s feeds it in time.
    p.env.push(("WATCHDOG_USEC".into(), "2000000".into()));
    p.spawn();

    if !wait_until(LONG, || msgs().iter().any(|m| has(m, "READY=1"))) {
        p.fail(&format!("no READY=1: {:?}", msgs()));
    }
    let first = msgs();
    let ready = first.iter().find(|m| has(m, "READY=1")).unwrap();
    assert!(
        ready.status_written,
        "READY=1 only after the first decision (status written): {first:?}"
    );
    assert!(
        first
            .iter()
            .take_while(|m| !has(m, "READY=1"))
            .all(|m| !has(m, "WATCHDOG=1")),
        "nothing before READY=1: {first:?}"
    );

    // The watchdog is fed every beat.
    if !wait_until(LONG, || {
        msgs().iter().filter(|m| has(m, "WATCHDOG=1")).count() >= 4
    }) {
        p.fail(&format!("WATCHDOG=1 not repeated: {:?}", msgs()));
    }

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    let before = msgs().len();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    if !wait_until(LONG, || {
        let m = msgs();
        let after = &m[before..];
        after
            .iter()
            .position(|m| has(m, "RELOADING=1"))
            .is_some_and(|i| after[i + 1..].iter().any(|m| has(m, "READY=1")))
    }) {
        p.fail(&format!("no RELOADING=1 then READY=1: {:?}", msgs()));
    }
    let m = msgs();
    let reloading = m[before..].iter().find(|m| has(m, "RELOADING=1")).unwrap();
    let usec = reloading
        .text
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    let usec: u64 = usec.parse().expect("MONOTONIC_USEC is a number");
    // CLOCK_MONOTONIC never runs ahead of CLOCK_BOOTTIME (/proc/uptime).
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        usec > 0 && usec as f64 <= (uptime + 1.0) * 1e6,
        "MONOTONIC_USEC {usec} is CLOCK_MONOTONIC (uptime {uptime} s)"
    );

    // SIGTERM: STOPPING=1 before it exits.
    let before = msgs().len();
    assert!(p.terminate(), "clean exit on SIGTERM");
    // Sent before it exited: waiting only for the reader thread to get it.
    wait_until(LONG, || {
        msgs()[before..].iter().any(|m| has(m, "STOPPING=1"))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let m = msgs();
    assert!(
        m[before..].iter().any(|m| has(m, "STOPPING=1")),
        "STOPPING=1 on SIGTERM: {m:?}"
    );
}
