//! Runs user trigger scripts (README "Triggers") and keeps each cluster's scripts in
//! event order without ever blocking the beat loop.
//!
//! This module owns everything between "an event needs a trigger" and "one
//! log line saying how it went": spawning the command without a shell in a
//! process group of its own, feeding the JSON payload on stdin, capturing a
//! bounded amount of its output, enforcing `trigger_timeout` by killing the
//! whole group, and the per-cluster queues of [`Dispatcher`].
//!
//! The payload is never logged: it describes the cluster and may one day
//! carry things an operator did not mean to put in a log file.

use crate::cluster::{ClusterId, EventKind};
use crate::config::TriggerCommand;
use crate::metrics::TriggerRun;
use crate::status::journal::{Entry, Journal};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How much of a trigger's output is kept for the log. More is read (so the
/// trigger never blocks on a full pipe) but only counted: a runaway script
/// must not put megabytes into the log or into memory.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long to keep reading after the trigger's main process is gone. A
/// script that backgrounds a process without redirecting it leaves our pipe
/// open in that process; waiting for EOF would then stall the cluster's queue
/// for as long as the background process lives.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// How long to wait for a SIGKILLed trigger to be reaped. Only a process
/// stuck in the kernel outlives this; it is then left to tokio's orphan
/// reaping rather than stalling the queue.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Queue lengths at which a cluster's backlog is reported: triggers slower
/// than the beat pile up, and an operator should hear about it.
const BACKLOG_WARNINGS: [usize; 4] = [10, 100, 1_000, 10_000];

/// One trigger to run for one event of one cluster.
#[derive(Debug, Clone)]
pub struct TriggerJob {
    pub kind: EventKind,
    pub cluster_id: ClusterId,
    pub command: TriggerCommand,
    /// The JSON payload, written to the trigger's stdin. Never logged.
    pub payload: String,
    pub timeout: Duration,
    /// The event's record in the journal, which the run's outcome names.
    pub event_id: Option<u64>,
}

/// Why a trigger could not be run or followed to its end.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("the trigger command is empty")]
    EmptyCommand,
    #[error("could not create a pipe for the trigger's output: {0}")]
    Pipe(#[source] io::Error),
    #[error("could not start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("could not wait for the trigger to exit: {0}")]
    Wait(#[source] io::Error),
}

/// What a trigger printed on stdout and stderr (one pipe, so the two stay
/// interleaved as the script wrote them), bounded to [`OUTPUT_LIMIT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedOutput {
    /// The first [`OUTPUT_LIMIT`] bytes.
    pub kept: Vec<u8>,
    /// How many bytes came after those and were thrown away.
    pub dropped: u64,
}

impl CapturedOutput {
    fn push(&mut self, bytes: &[u8]) {
        let room = OUTPUT_LIMIT.saturating_sub(self.kept.len());
        let take = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..take]);
        self.dropped += (bytes.len() - take) as u64;
    }

    /// The kept output as text, with a note when some was thrown away.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            text.push_str(&format!("… {} more bytes", self.dropped));
        }
        text
    }
}

impl fmt::Display for CapturedOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// How one run of a trigger ended.
#[derive(Debug)]
pub enum TriggerOutcome {
    Succeeded {
        elapsed: Duration,
        output: CapturedOutput,
    },
    /// Non-zero exit, or killed by a signal we did not send.
    Failed {
        status: ExitStatus,
        elapsed: Duration,
        output: CapturedOutput,
    },
    /// Still running at its deadline; it and its process group were killed.
    TimedOut {
        timeout: Duration,
        output: CapturedOutput,
    },
    /// Nothing ran: no such file, not executable, no pipe.
    CouldNotStart { error: TriggerError },
    /// It ran, but waiting for it failed; its process group was killed.
    WaitFailed {
        error: TriggerError,
        output: CapturedOutput,
    },
}

impl TriggerOutcome {
    /// The outcome as `plusmoin_trigger_runs_total` counts it: anything
    /// but a success or a timeout is a failure.
    fn counted(&self) -> TriggerRun {
        match self {
            TriggerOutcome::Succeeded { .. } => TriggerRun::Ok,
            TriggerOutcome::TimedOut { .. } => TriggerRun::TimedOut,
            _ => TriggerRun::Failed,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, TriggerOutcome::Succeeded { .. })
    }
}

/// Runs one trigger to its end (or its deadline) and logs one line about it.
///
/// Never panics and never hangs past `timeout` plus a few short graces, so a
/// cluster's queue always moves on.
pub async fn run_trigger(job: &TriggerJob) -> TriggerOutcome {
    let outcome = execute(job).await;
    log_outcome(job, &outcome);
    crate::metrics::COUNTERS.trigger_ran(job.kind, outcome.counted());
    outcome
}

fn log_outcome(job: &TriggerJob, outcome: &TriggerOutcome) {
    let cluster = job.cluster_id;
    let trigger = job.kind.as_str();
    let command = job.command.line.as_str();
    match outcome {
        TriggerOutcome::Succeeded { elapsed, output } => {
            // Heartbeat triggers run every beat: keep them out of an
            // info-level log. What a trigger prints is shown (bounded) so
            // that a trigger can report what it did.
            let elapsed_ms = elapsed.as_millis() as u64;
            let text = output.text();
            let output = text.trim_end();
            if job.kind == EventKind::PlusmoinHeartbeat {
                tracing::debug!(
                    cluster,
                    trigger,
                    command,
                    elapsed_ms,
                    output,
                    "trigger succeeded"
                );
            } else {
                tracing::info!(
                    cluster,
                    trigger,
                    command,
                    elapsed_ms,
                    output,
                    "trigger succeeded"
                );
            }
        }
        TriggerOutcome::Failed {
            status,
            elapsed,
            output,
        } => tracing::error!(
            cluster,
            trigger,
            command,
            status = %status,
            elapsed_ms = elapsed.as_millis() as u64,
            output = output.text().trim_end(),
            "trigger failed"
        ),
        TriggerOutcome::TimedOut { timeout, output } => tracing::error!(
            cluster,
            trigger,
            command,
            timeout_s = timeout.as_secs_f64(),
            output = output.text().trim_end(),
            "trigger timed out; killed it and every process it started"
        ),
        TriggerOutcome::CouldNotStart { error } => tracing::error!(
            cluster,
            trigger,
            command,
            error = %error,
            "could not start trigger"
        ),
        TriggerOutcome::WaitFailed { error, output } => tracing::error!(
            cluster,
            trigger,
            command,
            error = %error,
            output = output.text().trim_end(),
            "lost track of trigger; killed its process group"
        ),
    }
}

async fn execute(job: &TriggerJob) -> TriggerOutcome {
    let Some((program, args)) = job.command.argv.split_first() else {
        return TriggerOutcome::CouldNotStart {
            error: TriggerError::EmptyCommand,
        };
    };
    // One pipe for both stdout and stderr keeps their interleaving, as `2>&1`
    // would. CLOEXEC so that triggers spawned concurrently by other tasks do
    // not inherit our write end and hold the pipe open.
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(e) => return could_not_start(TriggerError::Pipe(e.into())),
    };
    let receiver = match tokio::net::unix::pipe::Receiver::from_owned_fd(read_end) {
        Ok(r) => r,
        Err(e) => return could_not_start(TriggerError::Pipe(e)),
    };
    let stderr_end: OwnedFd = match write_end.try_clone() {
        Ok(fd) => fd,
        Err(e) => return could_not_start(TriggerError::Pipe(e)),
    };

    let started = Instant::now();
    let deadline = started + job.timeout;
    // The command (which holds our copies of the write end) is dropped at the
    // end of this statement, so EOF on the pipe means every holder is gone.
    let spawned = Command::new(program)
        .args(args)
        .env("PLUSMOIN_TRIGGER", job.kind.as_str())
        .env("PLUSMOIN_CLUSTER_ID", job.cluster_id.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(stderr_end))
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            return could_not_start(TriggerError::Spawn {
                program: program.clone(),
                source,
            })
        }
    };
    // A pid of a child we have not reaped cannot be reused, and with
    // process_group(0) it is also the group id.
    let Some(pid) = child.id() else {
        // Already reaped: cannot happen before we wait, but never panic.
        return TriggerOutcome::WaitFailed {
            error: TriggerError::Wait(io::Error::other("the trigger has no pid")),
            output: CapturedOutput::default(),
        };
    };
    let mut group = GroupGuard {
        pgid: Pid::from_raw(pid as i32),
        armed: true,
        job_line: job.command.line.clone(),
        cluster: job.cluster_id,
        kind: job.kind,
    };

    let _writer = child
        .stdin
        .take()
        .map(|stdin| AbortOnDrop(tokio::spawn(feed(stdin, job.payload.clone().into_bytes()))));
    let captured = Arc::new(Mutex::new(CapturedOutput::default()));
    let mut reader = AbortOnDrop(tokio::spawn(drain(receiver, Arc::clone(&captured))));

    enum Ended {
        Exited(ExitStatus),
        TimedOut,
        WaitFailed(io::Error),
    }
    let ended = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => Ended::Exited(status),
        Ok(Err(e)) => {
            group.kill();
            Ended::WaitFailed(e)
        }
        Err(_) => {
            group.kill();
            if tokio::time::timeout(REAP_LIMIT, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    cluster = job.cluster_id,
                    trigger = job.kind.as_str(),
                    command = job.command.line.as_str(),
                    "killed trigger has not exited yet; leaving it to be reaped later"
                );
            }
            Ended::TimedOut
        }
    };
    let elapsed = started.elapsed();

    if tokio::time::timeout(PIPE_GRACE, &mut reader.0)
        .await
        .is_err()
    {
        // Something the trigger started still holds the pipe open.
        if matches!(ended, Ended::Exited(_)) {
            tracing::warn!(
                cluster = job.cluster_id,
                trigger = job.kind.as_str(),
                command = job.command.line.as_str(),
                "trigger exited but left a process holding its output open; killing its process group"
            );
        }
        group.kill();
        reader.0.abort();
    }
    group.armed = false;

    let output = std::mem::take(&mut *lock(&captured));
    match ended {
        Ended::Exited(status) if status.success() => TriggerOutcome::Succeeded { elapsed, output },
        Ended::Exited(status) => TriggerOutcome::Failed {
            status,
            elapsed,
            output,
        },
        Ended::TimedOut => TriggerOutcome::TimedOut {
            timeout: job.timeout,
            output,
        },
        Ended::WaitFailed(e) => TriggerOutcome::WaitFailed {
            error: TriggerError::Wait(e),
            output,
        },
    }
}

fn could_not_start(error: TriggerError) -> TriggerOutcome {
    TriggerOutcome::CouldNotStart { error }
}

/// Writes the payload and closes stdin. Runs as its own task so a trigger
/// that never reads stdin cannot stall us once the pipe buffer is full.
async fn feed(mut stdin: ChildStdin, payload: Vec<u8>) {
    let result = async {
        stdin.write_all(&payload).await?;
        stdin.shutdown().await
    }
    .await;
    match result {
        Ok(()) => {}
        // The trigger exited (or closed stdin) without reading it all: its
        // right, not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => tracing::debug!(error = %e, "writing the trigger's stdin failed"),
    }
}

/// Reads the output pipe to EOF, keeping the first [`OUTPUT_LIMIT`] bytes.
async fn drain(mut pipe: tokio::net::unix::pipe::Receiver, sink: Arc<Mutex<CapturedOutput>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => lock(&sink).push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "reading the trigger's output failed");
                return;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Kills the trigger's whole process group when the run is abandoned (its
/// future dropped, e.g. at shutdown), so nothing it started outlives it.
/// `kill_on_drop` alone would only kill the main process.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
    job_line: String,
    cluster: ClusterId,
    kind: EventKind,
}

impl GroupGuard {
    fn kill(&self) {
        match killpg(self.pgid, Signal::SIGKILL) {
            // ESRCH: everything in the group is already gone.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(
                cluster = self.cluster,
                trigger = self.kind.as_str(),
                command = self.job_line.as_str(),
                error = %e,
                "could not kill the trigger's process group"
            ),
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::warn!(
                cluster = self.cluster,
                trigger = self.kind.as_str(),
                command = self.job_line.as_str(),
                "trigger abandoned; killing it and every process it started"
            );
            self.kill();
        }
    }
}

/// Runs triggers beside the beat loop: one ordered queue per cluster.
///
/// The trigger contract (README "Triggers") wants one cluster's triggers in the order of its events, and a
/// slow trigger must never hold up probing or another cluster. So each
/// cluster gets a worker task draining an unbounded queue, and
/// [`Dispatcher::dispatch`] only enqueues.
pub struct Dispatcher {
    inner: Mutex<Inner>,
    /// Where each run's outcome is recorded.
    journal: Journal,
}

#[derive(Default)]
struct Inner {
    queues: BTreeMap<ClusterId, Queue>,
    workers: JoinSet<()>,
}

struct Queue {
    tx: mpsc::UnboundedSender<TriggerJob>,
    /// Jobs sent and not yet started.
    backlog: Arc<AtomicUsize>,
    /// A `plusmoin_heartbeat` job is queued and not started yet.
    heartbeat_queued: Arc<AtomicBool>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Dispatcher {
    pub fn new() -> Self {
        Dispatcher {
            inner: Mutex::new(Inner::default()),
            journal: Journal::default(),
        }
    }

    /// Records each run's outcome in `journal` (workers started from now).
    pub(crate) fn set_journal(&mut self, journal: Journal) {
        self.journal = journal;
    }

    /// Queues `job` behind the earlier jobs of its cluster. Never blocks.
    ///
    /// Must be called from within a tokio runtime; outside one the job is
    /// dropped with an error logged rather than a panic.
    pub fn dispatch(&self, job: TriggerJob) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                cluster = job.cluster_id,
                trigger = job.kind.as_str(),
                command = job.command.line.as_str(),
                "no tokio runtime to run the trigger on; dropped it"
            );
            return;
        };
        let mut inner = lock(&self.inner);
        let Inner { queues, workers } = &mut *inner;
        let cluster = job.cluster_id;
        let mut job = job;
        // At most two rounds: a worker can only be gone if it panicked, and
        // then a fresh one takes over its cluster.
        for _ in 0..2 {
            let queue = queues.entry(cluster).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let backlog = Arc::new(AtomicUsize::new(0));
                let heartbeat_queued = Arc::new(AtomicBool::new(false));
                workers.spawn_on(
                    worker(
                        rx,
                        Arc::clone(&backlog),
                        Arc::clone(&heartbeat_queued),
                        self.journal.clone(),
                    ),
                    &runtime,
                );
                Queue {
                    tx,
                    backlog,
                    heartbeat_queued,
                }
            });
            // A heartbeat trigger slower than the beat must not pile up:
            // while one still waits its turn, later ones are skipped (the
            // order of the other triggers is kept; they are never skipped).
            if job.kind == EventKind::PlusmoinHeartbeat
                && queue.heartbeat_queued.swap(true, Ordering::SeqCst)
            {
                tracing::debug!(
                    cluster,
                    "plusmoin_heartbeat trigger of an earlier beat still waits; skipped this one"
                );
                return;
            }
            let waiting = queue.backlog.fetch_add(1, Ordering::SeqCst) + 1;
            match queue.tx.send(job) {
                Ok(()) => {
                    if BACKLOG_WARNINGS.contains(&waiting) {
                        tracing::warn!(
                            cluster,
                            waiting,
                            "triggers are piling up: they run slower than events arrive"
                        );
                    }
                    return;
                }
                Err(mpsc::error::SendError(returned)) => {
                    tracing::error!(cluster, "trigger worker was gone; starting a new one");
                    queues.remove(&cluster);
                    job = returned;
                }
            }
        }
    }

    /// Frees the queue of cluster `id`, which no longer exists (the state
    /// machine dropped it: see `cluster::Decision::dropped`). The
    /// jobs already queued for it still run, in order: closing the queue
    /// lets its worker end once it is idle, and an ended worker is reaped
    /// here (by this call or a later one). Unknown ids are ignored.
    ///
    /// Cluster ids are never reused, so no job should come for `id` again;
    /// one that did would get a fresh queue, not ordered after the old one.
    pub(crate) fn forget_cluster(&self, id: ClusterId) {
        let mut inner = lock(&self.inner);
        // Dropping the sender closes the channel: the worker drains what is
        // queued, then `recv` returns `None` and it ends.
        inner.queues.remove(&id);
        while let Some(ended) = inner.workers.try_join_next() {
            if let Err(e) = ended {
                tracing::error!(error = %e, "trigger worker failed");
            }
        }
    }

    /// Stops accepting jobs (it consumes the dispatcher), lets the queued
    /// and running jobs finish for up to `grace`, then kills whatever still
    /// runs, along with every process it started.
    pub async fn shutdown(self, grace: Duration) {
        let Inner {
            queues,
            mut workers,
        } = self
            .inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let waiting: usize = queues
            .values()
            .map(|q| q.backlog.load(Ordering::SeqCst))
            .sum();
        // Closing the channels lets each worker exit once its queue is empty.
        drop(queues);
        let deadline = Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, workers.join_next()).await {
                Ok(None) => return,
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => tracing::error!(error = %e, "trigger worker failed"),
                Err(_) => break,
            }
        }
        tracing::warn!(
            grace_s = grace.as_secs_f64(),
            queued_at_shutdown = waiting,
            "triggers still running at the end of the shutdown grace; killing them"
        );
        // Aborting drops each running `run_trigger` future, whose guard kills the
        // trigger's process group.
        workers.shutdown().await;
    }
}

async fn worker(
    mut rx: mpsc::UnboundedReceiver<TriggerJob>,
    backlog: Arc<AtomicUsize>,
    heartbeat_queued: Arc<AtomicBool>,
    journal: Journal,
) {
    while let Some(job) = rx.recv().await {
        backlog.fetch_sub(1, Ordering::SeqCst);
        if job.kind == EventKind::PlusmoinHeartbeat {
            heartbeat_queued.store(false, Ordering::SeqCst);
        }
        let outcome = run_trigger(&job).await;
        journal.record(outcome_entry(&job, &outcome));
    }
}

/// A run's outcome as the journal records it (`trigger_run`): `ok`,
/// `failed` with its exit status (or signal), `timed_out`,
/// `could_not_start`, `lost_track`; the event it ran for by id.
fn outcome_entry(job: &TriggerJob, outcome: &TriggerOutcome) -> Entry {
    use std::os::unix::process::ExitStatusExt;
    let mut e = Entry::new("trigger_run")
        .cluster(Some(job.cluster_id))
        .with("event", job.kind.as_str());
    if let Some(id) = job.event_id {
        e = e.with("event_id", id);
    }
    let ms = |d: &Duration| d.as_millis() as u64;
    match outcome {
        TriggerOutcome::Succeeded { elapsed, .. } => {
            e.with("outcome", "ok").with("elapsed_ms", ms(elapsed))
        }
        TriggerOutcome::Failed {
            status, elapsed, ..
        } => {
            let e = e
                .why(format!("{} {status}", job.command.line))
                .with("outcome", "failed")
                .with("elapsed_ms", ms(elapsed));
            match (status.code(), status.signal()) {
                (Some(code), _) => e.with("exit_status", code),
                (None, Some(sig)) => e.with("signal", sig),
                _ => e,
            }
        }
        TriggerOutcome::TimedOut { timeout, .. } => e
            .why(format!(
                "{} still ran after {} s: killed",
                job.command.line,
                timeout.as_secs_f64()
            ))
            .with("outcome", "timed_out"),
        TriggerOutcome::CouldNotStart { error } => {
            e.why(error.to_string()).with("outcome", "could_not_start")
        }
        TriggerOutcome::WaitFailed { error, .. } => {
            e.why(error.to_string()).with("outcome", "lost_track")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TriggerCommand;

    fn append(
        cluster_id: ClusterId,
        file: &std::path::Path,
        line: &str,
        delay: &str,
    ) -> TriggerJob {
        let script = format!("sleep {delay}; echo {line} >> \"$0\"");
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            script,
            file.display().to_string(),
        ];
        TriggerJob {
            kind: EventKind::SlaveUp,
            cluster_id,
            command: TriggerCommand {
                line: argv.join(" "),
                argv,
            },
            payload: "{}".into(),
            timeout: Duration::from_secs(30),
            event_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn forget_cluster_frees_its_queue_once_idle_and_runs_what_was_queued() {
        let dir = tempfile::TempDir::new().unwrap();
        let out = dir.path().join("ran");
        let d = Dispatcher::new();
        d.dispatch(append(7, &out, "a", "0.3"));
        d.dispatch(append(7, &out, "b", "0"));
        d.dispatch(append(8, &out, "other", "0"));
        d.forget_cluster(7);
        {
            let inner = lock(&d.inner);
            assert!(!inner.queues.contains_key(&7), "cluster 7's queue is gone");
            assert!(inner.queues.contains_key(&8), "cluster 8's queue is kept");
            assert_eq!(inner.workers.len(), 2, "7's worker still runs its jobs");
        }
        // Once idle, 7's worker ends and is reaped; 8's (still open) stays.
        let deadline = Instant::now() + Duration::from_secs(20);
        while lock(&d.inner).workers.len() > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.forget_cluster(99);
        }
        assert_eq!(lock(&d.inner).workers.len(), 1);
        d.shutdown(Duration::from_secs(20)).await;
        let ran = std::fs::read_to_string(&out).unwrap();
        let mine: Vec<&str> = ran.lines().filter(|l| *l != "other").collect();
        assert_eq!(mine, ["a", "b"], "queued jobs ran, in order");
    }
}
