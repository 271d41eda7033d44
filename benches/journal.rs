//! The event journal's cost (README "Event history"): a flapping network
//! of 1,000 nodes, one record per node per beat (a `slave_down` or
//! `slave_up` with its node, cluster and reason), one beat a second for a
//! minute, the files capped at 4 MiB so that they rotate every few beats.
//! Printed: the CPU the journal took per beat (the whole process: the
//! deciding loop's part, handing records over, and the writer thread's,
//! serialising, writing, rotating), the longest time a beat spent handing
//! its records over, the records written and dropped, and the files' size
//! against the cap. `--quick` runs 5 beats.

use std::time::Duration;

const NODES: usize = 1_000;
const CAP: u64 = 4 * 1024 * 1024;

fn cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    t(u.user_time()) + t(u.system_time())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let beats = if quick { 5 } else { 60 };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.jsonl");
    let before = cpu();
    let (handed_over, written, dropped) =
        plusmoin::status::journal_flood(&path, CAP, NODES, beats, Duration::from_secs(1));
    let used = cpu() - before;
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let kept = size(&path) + size(&dir.path().join("events.jsonl.1"));
    let per_beat = used / beats as u32;
    let longest = handed_over.iter().max().copied().unwrap_or_default();
    println!("journal: {NODES} records a beat, {beats} beats of 1 s, cap {CAP} bytes");
    println!(
        "  CPU per beat      {:>8.3} ms  (aim: under 5 ms) {}",
        per_beat.as_secs_f64() * 1e3,
        if per_beat < Duration::from_millis(5) {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "  longest hand-over {:>8.3} ms  (the deciding loop's part of one beat)",
        longest.as_secs_f64() * 1e3
    );
    println!("  records written   {:>8}", written);
    println!("  records dropped   {:>8}", dropped);
    println!(
        "  files on disk     {:>8} bytes (cap {CAP}) {}",
        kept,
        if kept <= CAP { "held" } else { "NOT HELD" }
    );
}
