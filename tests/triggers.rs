//! Trigger scripts run as real processes: payload and environment, exit
//! statuses, timeouts that kill what the trigger started, bounded output,
//! and the per-cluster ordering of the dispatcher. No database needed.

use plusmoin::actions::trigger::{
    run_trigger, CapturedOutput, Dispatcher, TriggerError, TriggerJob, TriggerOutcome, OUTPUT_LIMIT,
};
use plusmoin::cluster::{ClusterId, EventKind};
use plusmoin::config::TriggerCommand;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Writes an executable `sh` script and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn job(argv: &[&str], kind: EventKind, cluster_id: ClusterId, payload: &str) -> TriggerJob {
    TriggerJob {
        kind,
        cluster_id,
        command: TriggerCommand {
            line: shell_words::join(argv),
            argv: argv.iter().map(|s| s.to_string()).collect(),
        },
        payload: payload.to_string(),
        timeout: Duration::from_secs(30),
        event_id: None,
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Alive and not a zombie: a killed grandchild may linger as a zombie until
/// whoever adopted it reaps it, which is not our business.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            !matches!(state, "Z" | "X" | "x")
        }
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Kills the pids recorded by a test, and the process groups they lead,
/// even when it fails, so no `sleep 300` is left behind. Every trigger leads
/// its own group, so a recorded script pid also names its foreground
/// children.
struct KillOnDrop(Vec<PathBuf>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, killpg, Signal};
        use nix::unistd::Pid;
        for f in &self.0 {
            if let Ok(s) = std::fs::read_to_string(f) {
                if let Ok(pid) = s.trim().parse::<i32>() {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn payload_arrives_exactly_on_stdin_with_env_and_literal_args() {
    let dir = TempDir::new().unwrap();
    let s = script(
        dir.path(),
        "t.sh",
        &format!(
            "cat > {d}/stdin\nprintf '%s|%s' \"$PLUSMOIN_TRIGGER\" \"$PLUSMOIN_CLUSTER_ID\" > {d}/env\nprintf '%s' \"$1\" > {d}/arg1\nprintf '%s' \"$#\" > {d}/argc",
            d = dir.path().display()
        ),
    );
    let payload = "{\"cluster_id\": 7,\n \"trigger\": null, \"note\": \"é ✓ $HOME `x`\"}\n";
    let j = job(
        &[p(&s), "two words $HOME;*"],
        EventKind::SlaveUp,
        7,
        payload,
    );
    let outcome = run_trigger(&j).await;
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(
        std::fs::read(dir.path().join("stdin")).unwrap(),
        payload.as_bytes()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("env")).unwrap(),
        "slave_up|7"
    );
    // No shell in between: the argument arrives as one word, unexpanded.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("arg1")).unwrap(),
        "two words $HOME;*"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("argc")).unwrap(),
        "1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_zero_succeeds_with_its_output() {
    let dir = TempDir::new().unwrap();
    let s = script(dir.path(), "ok.sh", "echo hello; echo oops >&2; exit 0");
    let outcome = run_trigger(&job(&[p(&s)], EventKind::MasterUp, 0, "{}")).await;
    match outcome {
        TriggerOutcome::Succeeded { output, .. } => {
            assert_eq!(output.text(), "hello\noops\n");
        }
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nonzero_exit_fails_with_captured_output() {
    let dir = TempDir::new().unwrap();
    let s = script(
        dir.path(),
        "bad.sh",
        "echo 'to stdout'; echo 'to stderr' >&2; exit 3",
    );
    let outcome = run_trigger(&job(&[p(&s)], EventKind::MasterDown, 1, "{}")).await;
    match outcome {
        TriggerOutcome::Failed { status, output, .. } => {
            assert_eq!(status.code(), Some(3));
            assert_eq!(
                output,
                CapturedOutput {
                    kept: b"to stdout\nto stderr\n".to_vec(),
                    dropped: 0
                }
            );
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_by_signal_is_a_failure() {
    let dir = TempDir::new().unwrap();
    let s = script(dir.path(), "sig.sh", "kill -TERM $$; sleep 5");
    let outcome = run_trigger(&job(&[p(&s)], EventKind::SlaveDown, 0, "{}")).await;
    match outcome {
        TriggerOutcome::Failed { status, .. } => {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(15));
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nonexistent_command_could_not_start() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("no-such-trigger");
    let outcome = run_trigger(&job(&[p(&missing)], EventKind::SlaveUp, 0, "{}")).await;
    match outcome {
        TriggerOutcome::CouldNotStart {
            error: TriggerError::Spawn { program, source },
        } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert_eq!(program, p(&missing));
        }
        other => panic!("expected could-not-start, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn non_executable_file_could_not_start() {
    let dir = TempDir::new().unwrap();
    let s = script(dir.path(), "noexec.sh", "exit 0");
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outcome = run_trigger(&job(&[p(&s)], EventKind::SlaveUp, 0, "{}")).await;
    match outcome {
        TriggerOutcome::CouldNotStart {
            error: TriggerError::Spawn { source, .. },
        } => assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied),
        other => panic!("expected could-not-start, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_command_could_not_start() {
    let outcome = run_trigger(&job(&[], EventKind::SlaveUp, 0, "{}")).await;
    assert!(
        matches!(
            outcome,
            TriggerOutcome::CouldNotStart {
                error: TriggerError::EmptyCommand
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hang_past_timeout_kills_the_trigger_and_what_it_started() {
    let dir = TempDir::new().unwrap();
    let bg = dir.path().join("bg.pid");
    let main = dir.path().join("main.pid");
    let _guard = KillOnDrop(vec![bg.clone(), main.clone()]);
    let s = script(
        dir.path(),
        "hang.sh",
        &format!(
            "echo $$ > {main}\nsleep 300 &\necho $! > {bg}\necho started\nsleep 300",
            main = p(&main),
            bg = p(&bg)
        ),
    );
    let mut j = job(&[p(&s)], EventKind::MasterDown, 0, "{}");
    // Room for the script to record its pids and print "started" (all
    // asserted below) before its timeout, even on a loaded machine.
    let timeout = Duration::from_secs(2);
    j.timeout = timeout;
    let start = Instant::now();
    let outcome = run_trigger(&j).await;
    let took = start.elapsed();
    match &outcome {
        TriggerOutcome::TimedOut { timeout: t, output } => {
            assert_eq!(*t, timeout);
            assert_eq!(output.text(), "started\n");
        }
        other => panic!("expected timeout, got {other:?}"),
    }
    assert!(took >= timeout, "returned early: {took:?}");
    assert!(took < timeout + Duration::from_secs(4), "took {took:?}");
    let (bg_pid, main_pid) = (read_pid(&bg), read_pid(&main));
    assert!(
        wait_until(Duration::from_secs(5), || !alive(bg_pid)
            && !alive(main_pid))
        .await,
        "background child {bg_pid} or main {main_pid} survived the timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exited_trigger_with_background_child_holding_output_does_not_hang() {
    let dir = TempDir::new().unwrap();
    let bg = dir.path().join("bg.pid");
    let _guard = KillOnDrop(vec![bg.clone()]);
    // The background sleep inherits stdout and stderr, so the pipe stays open
    // after the script itself exits.
    let s = script(
        dir.path(),
        "bg.sh",
        &format!("sleep 300 &\necho $! > {}\necho done\nexit 0", p(&bg)),
    );
    let start = Instant::now();
    let outcome = run_trigger(&job(&[p(&s)], EventKind::SlaveUp, 0, "{}")).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    match outcome {
        TriggerOutcome::Succeeded { output, .. } => assert_eq!(output.text(), "done\n"),
        other => panic!("expected success, got {other:?}"),
    }
    let pid = read_pid(&bg);
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)).await,
        "background child {pid} holding the pipe was not killed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_megabytes_of_output_are_bounded_and_fully_drained() {
    let dir = TempDir::new().unwrap();
    let total: usize = 5_000_000;
    let s = script(
        dir.path(),
        "loud.sh",
        &format!("head -c {total} /dev/zero | tr '\\0' x\nexit 1"),
    );
    let outcome = run_trigger(&job(&[p(&s)], EventKind::SlaveDown, 0, "{}")).await;
    match outcome {
        TriggerOutcome::Failed { status, output, .. } => {
            assert_eq!(status.code(), Some(1));
            assert_eq!(output.kept.len(), OUTPUT_LIMIT);
            assert!(output.kept.iter().all(|&b| b == b'x'));
            assert_eq!(output.dropped, (total - OUTPUT_LIMIT) as u64);
            assert!(output
                .text()
                .ends_with(&format!("… {} more bytes", total - OUTPUT_LIMIT)));
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_that_never_reads_a_large_payload_completes() {
    let dir = TempDir::new().unwrap();
    let s = script(dir.path(), "deaf.sh", "sleep 0.2\nexit 0");
    let payload = "y".repeat(1 << 20);
    let mut j = job(&[p(&s)], EventKind::PlusmoinHeartbeat, 0, &payload);
    j.timeout = Duration::from_secs(10);
    let outcome = run_trigger(&j).await;
    assert!(outcome.is_success(), "{outcome:?}");
}

/// The payload is written beside the trigger, not before its deadline
/// starts: a trigger that never reads stdin and hangs is still killed at
/// its timeout, however large the payload (far above a pipe's buffer).
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_trigger_that_never_reads_a_large_payload_is_still_timed_out() {
    let dir = TempDir::new().unwrap();
    let pid = dir.path().join("deaf.pid");
    let _guard = KillOnDrop(vec![pid.clone()]);
    let s = script(
        dir.path(),
        "deaf.sh",
        &format!("echo $$ > {}\nexec sleep 300", p(&pid)),
    );
    let mut j = job(&[p(&s)], EventKind::SlaveDown, 0, &"y".repeat(4 << 20));
    j.timeout = Duration::from_secs(1);
    // The bound only keeps a broken build from hanging the suite: the
    // trigger's own timeout is 1 s, and REAP_LIMIT and PIPE_GRACE add
    // at most 5.5 s to it.
    let outcome = tokio::time::timeout(Duration::from_secs(30), run_trigger(&j))
        .await
        .expect("run returned: the deadline held while stdin was full");
    assert!(
        matches!(outcome, TriggerOutcome::TimedOut { .. }),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_that_reads_a_large_payload_gets_all_of_it() {
    let dir = TempDir::new().unwrap();
    let s = script(dir.path(), "count.sh", "wc -c");
    let payload = "z".repeat(3 << 20);
    let outcome = run_trigger(&job(&[p(&s)], EventKind::PlusmoinUp, 0, &payload)).await;
    match outcome {
        TriggerOutcome::Succeeded { output, .. } => {
            assert_eq!(output.text().trim(), (3 << 20).to_string())
        }
        other => panic!("expected success, got {other:?}"),
    }
}

/// Call before a test installs its own subscriber. tracing caches, per log
/// line (callsite), whether anyone wants it, decided when some thread first
/// reaches it; while a single dispatcher exists it asks only that thread's
/// subscriber. A line another test reached first, in a thread without one,
/// would then stay muted for the capturing test, depending on which test got
/// there first. A second dispatcher, kept for the binary's life, makes
/// tracing ask every subscriber.
fn every_subscriber_asked() {
    static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
}

#[derive(Clone, Default)]
struct SharedLog(Arc<Mutex<Vec<u8>>>);

impl Write for SharedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_is_logged_with_fields_and_output_but_never_the_payload() {
    let dir = TempDir::new().unwrap();
    let s = script(dir.path(), "fail.sh", "echo 'something broke'; exit 4");
    every_subscriber_asked();
    let log = SharedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let secret = "PAYLOAD-MARKER-4f1c";
    let j = job(
        &[p(&s), "--flag"],
        EventKind::MasterDown,
        5,
        &format!("{{\"x\": \"{secret}\"}}"),
    );
    let outcome = run_trigger(&j).await;
    assert!(
        matches!(outcome, TriggerOutcome::Failed { .. }),
        "{outcome:?}"
    );
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let failure: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("trigger failed"))
        .collect();
    assert_eq!(failure.len(), 1, "log was:\n{text}");
    let line = failure[0];
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("cluster=5"), "{line}");
    assert!(line.contains("trigger=\"master_down\""), "{line}");
    assert!(
        line.contains(&format!("command=\"{} --flag\"", p(&s))),
        "{line}"
    );
    assert!(line.contains("exit status: 4"), "{line}");
    assert!(line.contains("something broke"), "{line}");
    assert!(
        !text.contains(secret),
        "payload leaked into the log:\n{text}"
    );
}

/// A script that appends its first argument to `file` after sleeping
/// `$2` seconds.
fn appender(dir: &Path, file: &Path) -> PathBuf {
    script(
        dir,
        "append.sh",
        &format!("sleep \"$2\"\necho \"$1\" >> {}", p(file)),
    )
}

fn lines(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dispatcher_keeps_the_order_of_one_cluster() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("order");
    let s = appender(dir.path(), &out);
    let d = Dispatcher::new();
    let n = 12;
    for i in 0..n {
        // Earlier jobs sleep longer: run concurrently, they would finish in
        // reverse.
        let delay = format!("0.{:02}", (n - i) * 3);
        d.dispatch(job(
            &[p(&s), &i.to_string(), &delay],
            EventKind::SlaveUp,
            0,
            "{}",
        ));
    }
    d.shutdown(Duration::from_secs(60)).await;
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(lines(&out), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_heartbeat_triggers_do_not_pile_up_and_others_keep_their_order() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("order");
    let s = appender(dir.path(), &out);
    let d = Dispatcher::new();
    // hb0 runs (until the test says go, up to 20 s) while the next beats'
    // heartbeats arrive: one of them waits its turn, the others are
    // skipped; every other trigger runs, in order.
    let go = dir.path().join("go");
    let first = script(
        dir.path(),
        "first.sh",
        &format!(
            "echo started >> {f}\ni=0\nwhile [ $i -lt 200 ] && [ ! -e {go} ]; do sleep 0.1; i=$((i+1)); done\necho hb0 >> {f}",
            f = p(&out),
            go = p(&go)
        ),
    );
    d.dispatch(job(&[p(&first)], EventKind::PlusmoinHeartbeat, 0, "{}"));
    assert!(wait_until(Duration::from_secs(10), || !lines(&out).is_empty()).await);
    for beat in 1..5 {
        let down = format!("down{beat}");
        d.dispatch(job(&[p(&s), &down, "0"], EventKind::SlaveDown, 0, "{}"));
        let hb = format!("hb{beat}");
        d.dispatch(job(
            &[p(&s), &hb, "0"],
            EventKind::PlusmoinHeartbeat,
            0,
            "{}",
        ));
    }
    // Everything is queued behind the running hb0: let it finish.
    std::fs::write(&go, "").unwrap();
    d.shutdown(Duration::from_secs(60)).await;
    assert_eq!(
        lines(&out),
        ["started", "hb0", "down1", "hb1", "down2", "down3", "down4"],
        "hb2..hb4 skipped while hb1 waited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_trigger_of_one_cluster_does_not_delay_another() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("records");
    // Cluster 0's job waits (up to 20 s) for cluster 1's record before writing
    // its own: if the clusters shared a queue, cluster 1's job would only run
    // afterwards and the records would come out in dispatch order.
    let slow = script(
        dir.path(),
        "slow.sh",
        &format!(
            "i=0\nwhile [ $i -lt 200 ] && ! grep -q c1 {f} 2>/dev/null; do sleep 0.1; i=$((i+1)); done\necho c0 >> {f}",
            f = p(&out)
        ),
    );
    let quick = script(dir.path(), "quick.sh", &format!("echo c1 >> {}", p(&out)));
    let d = Dispatcher::new();
    d.dispatch(job(&[p(&slow)], EventKind::MasterDown, 0, "{}"));
    d.dispatch(job(&[p(&quick)], EventKind::MasterDown, 1, "{}"));
    d.shutdown(Duration::from_secs(60)).await;
    assert_eq!(lines(&out), vec!["c1".to_string(), "c0".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_running_and_queued_jobs() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("done");
    let s = appender(dir.path(), &out);
    let d = Dispatcher::new();
    d.dispatch(job(&[p(&s), "first", "0.5"], EventKind::SlaveDown, 3, "{}"));
    d.dispatch(job(&[p(&s), "second", "0"], EventKind::SlaveUp, 3, "{}"));
    d.shutdown(Duration::from_secs(60)).await;
    // Not a poll: shutdown promised both had finished when it returned.
    assert_eq!(lines(&out), vec!["first".to_string(), "second".to_string()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_kills_what_outlives_the_grace() {
    let dir = TempDir::new().unwrap();
    let main = dir.path().join("main.pid");
    let bg = dir.path().join("bg.pid");
    let never = dir.path().join("never");
    let _guard = KillOnDrop(vec![bg.clone(), main.clone()]);
    let s = script(
        dir.path(),
        "stuck.sh",
        &format!(
            "sleep 300 &\necho $! > {bg}\necho $$ > {main}.tmp && mv {main}.tmp {main}\nsleep 300\ntouch {never}",
            bg = p(&bg),
            main = p(&main),
            never = p(&never)
        ),
    );
    let d = Dispatcher::new();
    let mut j = job(&[p(&s)], EventKind::MasterDown, 0, "{}");
    j.timeout = Duration::from_secs(600);
    d.dispatch(j);
    // A queued job behind it never gets to run.
    d.dispatch(job(
        &["/bin/touch", p(&never)],
        EventKind::MasterUp,
        0,
        "{}",
    ));
    assert!(
        wait_until(Duration::from_secs(10), || main.exists()).await,
        "the trigger never started"
    );
    let start = Instant::now();
    d.shutdown(Duration::from_millis(300)).await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let (main_pid, bg_pid) = (read_pid(&main), read_pid(&bg));
    assert!(
        wait_until(Duration::from_secs(5), || !alive(main_pid)
            && !alive(bg_pid))
        .await,
        "main {main_pid} or background {bg_pid} survived shutdown"
    );
    assert!(!never.exists());
}

#[test]
fn dispatch_outside_a_runtime_drops_the_job_without_panicking() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("ran");
    let d = Dispatcher::new();
    d.dispatch(job(
        &["/bin/touch", p(&out)],
        EventKind::PlusmoinUp,
        0,
        "{}",
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(d.shutdown(Duration::from_secs(5)));
    assert!(!out.exists());
}

/// The log lines written while `f` runs, on a current-thread runtime so the
/// dispatcher's workers (spawned on it) log into the same capture.
fn logged<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    every_subscriber_asked();
    let log = SharedLog::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    });
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// The only line of `log` containing `needle`.
fn the_line<'a>(log: &'a str, needle: &str) -> &'a str {
    let found: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(
        found.len(),
        1,
        "one {needle:?} line expected; log was:\n{log}"
    );
    found[0]
}

/// Triggers that cannot do their job: a program that does not exist, a
/// script that is not executable, one that prints "waiting" and hangs
/// (killed when the guard drops, whatever the test's outcome).
struct Bad {
    missing: PathBuf,
    noexec: PathBuf,
    hang: PathBuf,
    _guard: KillOnDrop,
}

fn bad_triggers(dir: &Path) -> Bad {
    let noexec = script(dir, "noexec.sh", "exit 0");
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pid = dir.join("hang.pid");
    let hang = script(
        dir,
        "hang.sh",
        &format!("echo $$ > {}\necho waiting\nsleep 300", p(&pid)),
    );
    Bad {
        missing: dir.join("no-such-trigger"),
        noexec,
        hang,
        _guard: KillOnDrop(vec![pid]),
    }
}

#[test]
fn could_not_start_and_timed_out_are_each_one_error_line_naming_the_command() {
    let dir = TempDir::new().unwrap();
    let Bad {
        missing,
        noexec,
        hang,
        _guard,
    } = bad_triggers(dir.path());
    let ((), log) = logged(async {
        run_trigger(&job(&[p(&missing), "--x"], EventKind::SlaveUp, 2, "{}")).await;
        run_trigger(&job(&[p(&noexec)], EventKind::SlaveDown, 3, "{}")).await;
        let mut j = job(&[p(&hang)], EventKind::MasterDown, 4, "{}");
        // Room for the script to print "waiting" (asserted below) before
        // its timeout, even on a loaded machine.
        j.timeout = Duration::from_millis(2500);
        run_trigger(&j).await;
    });

    let starts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("could not start trigger"))
        .collect();
    assert_eq!(starts.len(), 2, "log was:\n{log}");
    let (gone, denied) = (starts[0], starts[1]);
    assert!(gone.contains("ERROR"), "{gone}");
    assert!(gone.contains("cluster=2"), "{gone}");
    assert!(gone.contains("trigger=\"slave_up\""), "{gone}");
    assert!(
        gone.contains(&format!("command=\"{} --x\"", p(&missing))),
        "{gone}"
    );
    assert!(gone.contains("No such file or directory"), "{gone}");
    assert!(denied.contains("ERROR"), "{denied}");
    assert!(denied.contains("cluster=3"), "{denied}");
    assert!(denied.contains("trigger=\"slave_down\""), "{denied}");
    assert!(
        denied.contains(&format!("command=\"{}\"", p(&noexec))),
        "{denied}"
    );
    assert!(denied.contains("Permission denied"), "{denied}");

    let timed_out = the_line(
        &log,
        "trigger timed out; killed it and every process it started",
    );
    assert!(timed_out.contains("ERROR"), "{timed_out}");
    assert!(timed_out.contains("cluster=4"), "{timed_out}");
    assert!(timed_out.contains("trigger=\"master_down\""), "{timed_out}");
    assert!(
        timed_out.contains(&format!("command=\"{}\"", p(&hang))),
        "{timed_out}"
    );
    assert!(timed_out.contains("timeout_s=2.5"), "{timed_out}");
    assert!(timed_out.contains("waiting"), "its output: {timed_out}");
}

#[test]
fn failing_unstartable_and_timed_out_triggers_do_not_block_the_next_ones_of_their_cluster() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("ran");
    let s = appender(dir.path(), &out);
    let failing = script(dir.path(), "fail.sh", "exit 7");
    let Bad {
        missing,
        noexec,
        hang,
        _guard,
    } = bad_triggers(dir.path());
    let ((), log) = logged(async {
        let d = Dispatcher::new();
        // One cluster, one queue: each bad trigger sits in front of a good
        // one, which must still run, in order.
        d.dispatch(job(&[p(&failing)], EventKind::SlaveDown, 6, "{}"));
        d.dispatch(job(
            &[p(&s), "after-failure", "0"],
            EventKind::SlaveDown,
            6,
            "{}",
        ));
        d.dispatch(job(&[p(&missing)], EventKind::SlaveUp, 6, "{}"));
        d.dispatch(job(
            &[p(&s), "after-missing", "0"],
            EventKind::SlaveUp,
            6,
            "{}",
        ));
        d.dispatch(job(&[p(&noexec)], EventKind::MasterDown, 6, "{}"));
        d.dispatch(job(
            &[p(&s), "after-noexec", "0"],
            EventKind::MasterDown,
            6,
            "{}",
        ));
        let mut hung = job(&[p(&hang)], EventKind::MasterUp, 6, "{}");
        hung.timeout = Duration::from_millis(500);
        d.dispatch(hung);
        d.dispatch(job(
            &[p(&s), "after-timeout", "0"],
            EventKind::MasterUp,
            6,
            "{}",
        ));
        // The grace is far longer than all of this takes: shutdown returns
        // once the queue is empty.
        d.shutdown(Duration::from_secs(60)).await;
    });
    assert_eq!(
        lines(&out),
        [
            "after-failure",
            "after-missing",
            "after-noexec",
            "after-timeout"
        ],
        "log was:\n{log}"
    );
    assert!(the_line(&log, "trigger failed").contains("exit status: 7"));
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("could not start trigger"))
            .count(),
        2,
        "{log}"
    );
    the_line(&log, "trigger timed out");
    assert!(
        !log.contains("still running at the end of the shutdown grace"),
        "{log}"
    );
}
