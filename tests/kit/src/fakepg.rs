//! A simulated PostgreSQL server, for tests and benchmarks only: thousands
//! of "nodes" in one process, each a listener on its own loopback address
//! (127.77.x.y, all on one port), answering just the statements plusmoin
//! sends (README "How it works") over the real wire protocol, so that the real
//! tokio-postgres probes run unchanged against it.
//!
//! Each node plays a [`Role`] — a master, whose heartbeat writes are kept,
//! or a slave of one of those masters, replaying the writes its master
//! received at least `lag` ago, as streaming replication would — and may
//! carry a [`Fault`]: slow (every answer delayed), frozen (TCP accepted,
//! nothing ever answered) or refusing (nothing listens: connection
//! refused).
//!
//! What it speaks: SSLRequest (declined), startup with AuthenticationOk (no
//! password asked), the extended protocol (Parse, Describe, Bind, Execute,
//! Close, Sync, Flush) for the role statement, the heartbeat upsert, the
//! heartbeat select, the two in one (the default role statement and the
//! heartbeat select, answered exactly as they would be apart; a master's
//! write answers its WAL position (256 bytes more at each write),
//! `synchronous_standby_names` (`ANY 1 (*)` for a master with slaves, else
//! empty), `synchronous_commit` `on` and its slaves as `pg_stat_replication`
//! rows, all streaming, `quorum` (so its commits never wait); a slave's
//! reads answer the position of the write it replays), the question
//! of who owns plusmoin's tables (plusmoin's role, always) and the holds
//! read (an empty `plusmoin_hold`, as a
//! deployment that created it has), simple Query (the system identifier: a master's index, shared by
//! its slaves; anything else answered with an empty command completion,
//! enough for `CREATE TABLE IF NOT EXISTS`), Terminate.
//! Results are binary or text as the client asks (timestamps binary only).
//! Anything else gets an ErrorResponse, never a panic.
//!
//! It is a test kit (`tests/kit`): the integration tests and benches build
//! it, `cargo build --release` (the binary, the Debian package) does not.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Not in recovery; keeps the heartbeat rows written to it.
    Master,
    /// In recovery, replaying node `master`'s writes `lag_ms` late.
    Slave { master: usize, lag_ms: u64 },
}

/// How a node misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    None,
    /// Every answer (including the startup's) is sent `ms` late.
    Slow {
        ms: u64,
    },
    /// Accepts TCP and reads, never answers: a SIGSTOPped postmaster.
    Frozen,
    /// Nothing listens on its address (set at start: connection refused).
    /// Set on a running server, new connections are accepted and closed at
    /// once, and open ones are closed at their next message.
    Refusing,
}

/// One simulated node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeNode {
    pub role: Role,
    pub fault: Fault,
}

impl FakeNode {
    pub fn master() -> FakeNode {
        FakeNode {
            role: Role::Master,
            fault: Fault::None,
        }
    }
    pub fn slave(master: usize, lag: Duration) -> FakeNode {
        FakeNode {
            role: Role::Slave {
                master,
                lag_ms: lag.as_millis() as u64,
            },
            fault: Fault::None,
        }
    }
    pub fn with(mut self, fault: Fault) -> FakeNode {
        self.fault = fault;
        self
    }
}

/// The loopback address of node `i`: 127.77.x.y, y never 0 or 255.
pub fn address(i: usize) -> Ipv4Addr {
    let hi = i / 250;
    let lo = i % 250 + 1;
    Ipv4Addr::new(127, 77, (hi % 256) as u8, lo as u8)
}

/// A configuration watching `n` simulated nodes served on `port` (a daemon
/// over them, for tests and benches): files in `dir`, this user as
/// `daemon_user`, max_sync_delay 10 s and recover_sync_delay 5 s.
pub fn config_text(
    n: usize,
    port: u16,
    dir: &std::path::Path,
    heartbeat: Duration,
    connect_timeout: Duration,
    instance: &str,
) -> String {
    let nodes: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"host": "{}", "port": {port}}}"#, address(i)))
        .collect();
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into());
    let d = dir.display();
    format!(
        r#"{{
  "dbname": "plusmoin", "user": "plusmoin", "password": "unused",
  "heartbeat": {hb}, "connect_timeout": {ct}, "max_sync_delay": 10, "recover_sync_delay": 5,
  "log_level": "info", "daemon_user": "{user}", "instance_name": "{instance}", "sslmode": "disable",
  "status_file": "{d}/status.json", "pid_file": "{d}/plusmoin.pid", "log_file": "{d}/plusmoin.log",
  "nodes": [{nodes}]
}}"#,
        hb = heartbeat.as_secs_f64(),
        ct = connect_timeout.as_secs_f64(),
        nodes = nodes.join(",\n    ")
    )
}

/// How many writes per master and instance are kept for slaves to replay.
const HISTORY: usize = 64;

/// One heartbeat row as written by plusmoin.
#[derive(Debug, Clone)]
struct Row {
    cluster_id: Option<i32>,
    master_name: String,
    /// Microseconds since 2000-01-01 UTC (PostgreSQL's binary timestamptz).
    beat_at: i64,
    /// The master's WAL position just after this write.
    wal: i64,
}

/// Writes received by each master node: instance name → (when, row), newest last.
type Store = HashMap<usize, HashMap<String, VecDeque<(Instant, Row)>>>;

struct Shared {
    nodes: Vec<Mutex<FakeNode>>,
    store: Mutex<Store>,
    /// Statements executed (Execute messages) per node.
    executed: Vec<AtomicU64>,
    /// Each master's WAL position.
    wal: Vec<AtomicU64>,
    /// Each master's `synchronous_standby_names` and `pg_stat_replication`
    /// rows (JSON, as plusmoin's write reads them; `None` without slaves).
    replication: Vec<(&'static str, Option<String>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn node(&self, i: usize) -> FakeNode {
        lock(&self.nodes[i]).clone()
    }
}

/// A running set of simulated nodes; every task stops on drop.
pub struct FakePg {
    port: u16,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakePg {
    /// Binds every node not [`Fault::Refusing`] on its [`address`], all on
    /// one free port, and serves them on the current tokio runtime.
    pub async fn start(nodes: Vec<FakeNode>) -> io::Result<FakePg> {
        let mut last = None;
        for _ in 0..10 {
            match Self::try_start(&nodes).await {
                Ok(pg) => return Ok(pg),
                // Someone holds this port on one of our addresses (or on
                // 0.0.0.0): take another one.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    async fn try_start(nodes: &[FakeNode]) -> io::Result<FakePg> {
        // The port comes from a probe bind on an address no node uses.
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::new(127, 77, 255, 254), 0))?;
            l.local_addr()?.port()
        };
        let shared = Arc::new(Shared {
            nodes: nodes.iter().cloned().map(Mutex::new).collect(),
            store: Mutex::new(HashMap::new()),
            executed: nodes.iter().map(|_| AtomicU64::new(0)).collect(),
            wal: nodes.iter().map(|_| AtomicU64::new(0)).collect(),
            replication: (0..nodes.len())
                .map(|m| replication(nodes, m, port))
                .collect(),
        });
        let mut listeners = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            if node.fault == Fault::Refusing {
                continue;
            }
            let l = bind(SocketAddrV4::new(address(i), port))?;
            listeners.push((i, l));
        }
        let tasks = listeners
            .into_iter()
            .map(|(i, l)| tokio::spawn(accept_loop(l, i, shared.clone())))
            .collect();
        Ok(FakePg {
            port,
            shared,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn len(&self) -> usize {
        self.shared.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.nodes.is_empty()
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(address(i), self.port))
    }

    /// Node `i`'s name as plusmoin's configuration would write it.
    pub fn name(&self, i: usize) -> plusmoin::cluster::NodeName {
        plusmoin::cluster::NodeName::new(address(i).to_string(), self.port)
    }

    /// How many statements node `i` has been asked to execute, over all
    /// its connections: what a probe costs, in statements.
    pub fn executed(&self, i: usize) -> u64 {
        self.shared.executed[i].load(Ordering::Relaxed)
    }

    /// Changes node `i`'s fault from its next message on.
    pub fn set_fault(&self, i: usize, fault: Fault) {
        lock(&self.shared.nodes[i]).fault = fault;
    }
}

impl Drop for FakePg {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Master `m`'s `synchronous_standby_names` and `pg_stat_replication`
/// rows: its slaves, named as plusmoin names them.
fn replication(nodes: &[FakeNode], m: usize, port: u16) -> (&'static str, Option<String>) {
    let rows: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.role, Role::Slave { master, .. } if master == m))
        .map(|(i, _)| format!(r#"["{}:{port}","streaming","quorum"]"#, address(i)))
        .collect();
    if rows.is_empty() {
        ("", None)
    } else {
        ("ANY 1 (*)", Some(format!("[{}]", rows.join(","))))
    }
}

/// A listener with a long backlog: a beat opens thousands of connections
/// at once.
fn bind(addr: SocketAddrV4) -> io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::V4(addr))?;
    socket.listen(4096)
}

async fn accept_loop(listener: TcpListener, node: usize, shared: Arc<Shared>) {
    // Connection tasks are owned here, so aborting this task (FakePg's
    // drop) ends them too.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(stream, node, shared.clone()));
                }
                // Out of descriptors, say: let the client time out.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// One message from the client: its type byte (0 for the startup packet)
/// and its body.
struct Msg {
    tag: u8,
    body: Vec<u8>,
}

const SSL_REQUEST: i32 = 80877103;
const GSS_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;
const MAX_MESSAGE: usize = 1 << 20;

async fn read_untagged(r: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let len = r.read_i32().await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|l| (4..=MAX_MESSAGE).contains(l))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?;
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn read_msg(r: &mut BufReader<TcpStream>) -> io::Result<Msg> {
    let tag = r.read_u8().await?;
    let body = read_untagged(r).await?;
    Ok(Msg { tag, body })
}

/// What the statement a client prepared does, told from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Role,
    Upsert,
    Select,
    /// The default role statement and the heartbeat select in one: a
    /// single row, the heartbeat columns NULL without a row to replay.
    Combined,
    /// The maintenance holds (`plusmoin_hold`): an empty table.
    Holds,
    /// Who owns one of plusmoin's tables: plusmoin's role.
    Owner,
    /// Anything else: answered with no rows.
    Other,
}

impl Kind {
    fn of(query: &str) -> Kind {
        // plusmoin names the schema of its tables; the simulated server
        // has only that one.
        let q = query
            .to_ascii_lowercase()
            .replace("public.plusmoin_", "plusmoin_");
        if q.contains("from pg_catalog.pg_class") {
            Kind::Owner
        } else if q.contains("insert into plusmoin_heartbeat") {
            Kind::Upsert
        } else if q.contains("join plusmoin_heartbeat") && q.contains("pg_is_in_recovery()") {
            Kind::Combined
        } else if q.contains("from plusmoin_heartbeat") {
            Kind::Select
        } else if q.contains("from plusmoin_hold") {
            Kind::Holds
        } else if q.trim_start().starts_with("select") {
            Kind::Role
        } else {
            Kind::Other
        }
    }

    fn params(self) -> &'static [i32] {
        match self {
            Kind::Upsert => &[TEXT, INT4, TEXT, TIMESTAMPTZ],
            Kind::Select | Kind::Combined => &[TEXT],
            Kind::Holds => &[TEXT_ARRAY],
            Kind::Role | Kind::Owner | Kind::Other => &[],
        }
    }

    fn columns(self) -> &'static [(&'static str, i32, i16)] {
        match self {
            Kind::Role => &[("pg_is_in_recovery", BOOL, 1)],
            Kind::Select => &[
                ("master_name", TEXT, -1),
                ("cluster_id", INT4, 4),
                ("beat_at", TIMESTAMPTZ, 8),
                ("received", INT8, 8),
                ("replayed", INT8, 8),
            ],
            Kind::Combined => &[
                ("pg_is_in_recovery", BOOL, 1),
                ("master_name", TEXT, -1),
                ("cluster_id", INT4, 4),
                ("beat_at", TIMESTAMPTZ, 8),
                ("found", BOOL, 1),
                ("received", INT8, 8),
                ("replayed", INT8, 8),
            ],
            Kind::Upsert => &[
                ("wal", INT8, 8),
                ("standby_names", TEXT, -1),
                ("synchronous_commit", TEXT, -1),
                ("walsenders", TEXT, -1),
            ],
            Kind::Holds => &[
                ("node", TEXT, -1),
                ("placed_by", TEXT, -1),
                ("placed_at", TIMESTAMPTZ, 8),
                ("reason", TEXT, -1),
                ("ignored", INT8, 8),
            ],
            Kind::Owner => &[("owner", TEXT, -1), ("me", TEXT, -1), ("trusted", BOOL, 1)],
            Kind::Other => &[],
        }
    }
}

const BOOL: i32 = 16;
const INT8: i32 = 20;
const INT4: i32 = 23;
const TEXT: i32 = 25;
const TEXT_ARRAY: i32 = 1009;
const TIMESTAMPTZ: i32 = 1184;

struct Portal {
    kind: Kind,
    params: Vec<Option<Vec<u8>>>,
    param_binary: Vec<bool>,
    result_binary: bool,
}

/// The wire output of one connection, flushed at Sync or Flush.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
}

impl Out {
    fn msg(&mut self, tag: u8, body: &[u8]) {
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        self.buf.extend_from_slice(body);
    }
    fn error(&mut self, code: &str, message: &str) {
        let mut b = Vec::new();
        for (field, value) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', code),
            (b'M', message),
        ] {
            b.push(field);
            cstr(&mut b, value);
        }
        b.push(0);
        self.msg(b'E', &b);
    }
    fn complete(&mut self, tag: &str) {
        let mut b = Vec::new();
        cstr(&mut b, tag);
        self.msg(b'C', &b);
    }
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

/// A cursor over a message body; every read checks the bounds.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn bad() -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, "malformed message")
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(Self::bad());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> io::Result<i16> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> io::Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn count(&mut self) -> io::Result<usize> {
        usize::try_from(self.i16()?).map_err(|_| Self::bad())
    }
    fn cstr(&mut self) -> io::Result<String> {
        let end = self.0.iter().position(|&c| c == 0).ok_or_else(Self::bad)?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
}

/// Sends `out` after the node's delay, unless it froze meanwhile.
async fn flush(w: &mut BufReader<TcpStream>, out: &mut Out, node: &FakeNode) -> io::Result<()> {
    if let Fault::Slow { ms } = node.fault {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    w.get_mut().write_all(&out.buf).await?;
    out.buf.clear();
    Ok(())
}

/// Reads and drops everything until the client gives up.
async fn play_dead(r: &mut BufReader<TcpStream>) {
    let mut sink = [0u8; 4096];
    while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Plays `fault`: a frozen node never answers again (until the client
/// goes), a refusing one closes. True when the connection is over.
async fn hangs_up(r: &mut BufReader<TcpStream>, fault: Fault) -> bool {
    match fault {
        Fault::Frozen => {
            play_dead(r).await;
            true
        }
        Fault::Refusing => true,
        Fault::None | Fault::Slow { .. } => false,
    }
}

async fn serve(stream: TcpStream, index: usize, shared: Arc<Shared>) {
    let mut r = BufReader::new(stream);
    let _ = serve_conn(&mut r, index, &shared).await;
}

async fn serve_conn(r: &mut BufReader<TcpStream>, index: usize, shared: &Shared) -> io::Result<()> {
    let node = shared.node(index);
    if hangs_up(r, node.fault).await {
        return Ok(());
    }
    // Startup, after declining TLS or GSS encryption as often as asked.
    loop {
        let body = read_untagged(r).await?;
        let mut b = Body(&body);
        match b.i32()? {
            SSL_REQUEST | GSS_REQUEST => r.get_mut().write_all(b"N").await?,
            CANCEL_REQUEST => return Ok(()),
            _ => break,
        }
    }
    let mut out = Out::default();
    out.msg(b'R', &0i32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0 (plusmoin fakepg)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("TimeZone", "UTC"),
        ("standard_conforming_strings", "on"),
    ] {
        let mut b = Vec::new();
        cstr(&mut b, k);
        cstr(&mut b, v);
        out.msg(b'S', &b);
    }
    let mut key = (index as i32).to_be_bytes().to_vec();
    key.extend_from_slice(&0i32.to_be_bytes());
    out.msg(b'K', &key);
    out.msg(b'Z', b"I");
    flush(r, &mut out, &node).await?;

    let mut statements: HashMap<String, Kind> = HashMap::new();
    let mut portals: HashMap<String, Portal> = HashMap::new();
    // After an error, the extended protocol skips everything up to Sync.
    let mut failed = false;
    loop {
        let msg = read_msg(r).await?;
        let node = shared.node(index);
        if hangs_up(r, node.fault).await {
            return Ok(());
        }
        let mut b = Body(&msg.body);
        match msg.tag {
            b'X' => return Ok(()),
            b'S' => {
                failed = false;
                out.msg(b'Z', b"I");
                flush(r, &mut out, &node).await?;
            }
            b'H' => flush(r, &mut out, &node).await?,
            b'Q' => {
                // Simple query: the system identifier (a master's index,
                // which its slaves share, as a base backup's copy does), or
                // CREATE TABLE IF NOT EXISTS and the like.
                let query = b.cstr()?;
                if query.contains("pg_control_system()") {
                    let system = match node.role {
                        Role::Master => index,
                        Role::Slave { master, .. } => master,
                    };
                    let mut d = 1i16.to_be_bytes().to_vec();
                    cstr(&mut d, "system_identifier");
                    d.extend_from_slice(&0i32.to_be_bytes());
                    d.extend_from_slice(&0i16.to_be_bytes());
                    d.extend_from_slice(&INT8.to_be_bytes());
                    d.extend_from_slice(&8i16.to_be_bytes());
                    d.extend_from_slice(&(-1i32).to_be_bytes());
                    d.extend_from_slice(&0i16.to_be_bytes());
                    out.msg(b'T', &d);
                    data_row(&mut out, &[Some(system.to_string().into_bytes())]);
                    out.complete("SELECT 1");
                } else {
                    out.msg(b'I', &[]);
                }
                out.msg(b'Z', b"I");
                flush(r, &mut out, &node).await?;
            }
            _ if failed => {}
            b'P' => {
                let name = b.cstr()?;
                let kind = Kind::of(&b.cstr()?);
                statements.insert(name, kind);
                out.msg(b'1', &[]);
            }
            b'D' => {
                let what = b.u8()?;
                let name = b.cstr()?;
                let kind = if what == b'S' {
                    statements.get(&name).copied()
                } else {
                    portals.get(&name).map(|p| p.kind)
                };
                let Some(kind) = kind else {
                    out.error("26000", &format!("unknown statement or portal {name:?}"));
                    failed = true;
                    continue;
                };
                if what == b'S' {
                    let params = kind.params();
                    let mut d = (params.len() as i16).to_be_bytes().to_vec();
                    for oid in params {
                        d.extend_from_slice(&oid.to_be_bytes());
                    }
                    out.msg(b't', &d);
                }
                row_description(&mut out, kind);
            }
            b'B' => {
                let portal = b.cstr()?;
                let stmt = b.cstr()?;
                let Some(&kind) = statements.get(&stmt) else {
                    out.error(
                        "26000",
                        &format!("prepared statement {stmt:?} does not exist"),
                    );
                    failed = true;
                    continue;
                };
                let formats: Vec<i16> =
                    (0..b.count()?).map(|_| b.i16()).collect::<Result<_, _>>()?;
                let n = b.count()?;
                let mut params = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = b.i32()?;
                    params.push(match usize::try_from(len) {
                        Ok(len) => Some(b.take(len)?.to_vec()),
                        Err(_) => None,
                    });
                }
                let param_binary = (0..n)
                    .map(|i| match formats.as_slice() {
                        [] => false,
                        [f] => *f == 1,
                        fs => fs.get(i) == Some(&1),
                    })
                    .collect();
                let results: Vec<i16> =
                    (0..b.count()?).map(|_| b.i16()).collect::<Result<_, _>>()?;
                let result_binary = results.first() == Some(&1);
                portals.insert(
                    portal,
                    Portal {
                        kind,
                        params,
                        param_binary,
                        result_binary,
                    },
                );
                out.msg(b'2', &[]);
            }
            b'E' => {
                shared.executed[index].fetch_add(1, Ordering::Relaxed);
                let name = b.cstr()?;
                let Some(portal) = portals.get(&name) else {
                    out.error("34000", &format!("portal {name:?} does not exist"));
                    failed = true;
                    continue;
                };
                if let Err((code, message)) = execute(shared, index, &node, portal, &mut out) {
                    out.error(code, &message);
                    failed = true;
                }
            }
            b'C' => {
                let what = b.u8()?;
                let name = b.cstr()?;
                if what == b'S' {
                    statements.remove(&name);
                } else {
                    portals.remove(&name);
                }
                out.msg(b'3', &[]);
            }
            other => {
                out.error(
                    "08P01",
                    &format!("unexpected message type {:?}", other as char),
                );
                failed = true;
            }
        }
    }
}

fn row_description(out: &mut Out, kind: Kind) {
    let columns = kind.columns();
    if columns.is_empty() {
        out.msg(b'n', &[]);
        return;
    }
    let mut d = (columns.len() as i16).to_be_bytes().to_vec();
    for (name, oid, len) in columns {
        cstr(&mut d, name);
        d.extend_from_slice(&0i32.to_be_bytes());
        d.extend_from_slice(&0i16.to_be_bytes());
        d.extend_from_slice(&oid.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&(-1i32).to_be_bytes());
        d.extend_from_slice(&0i16.to_be_bytes());
    }
    out.msg(b'T', &d);
}

type SqlError = (&'static str, String);

fn text_param(p: &Portal, i: usize) -> Result<Option<String>, SqlError> {
    match p.params.get(i) {
        Some(Some(v)) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        Some(None) => Ok(None),
        None => Err(("08P01", format!("parameter ${} missing", i + 1))),
    }
}

fn int_param(p: &Portal, i: usize) -> Result<Option<i32>, SqlError> {
    let bad = || ("22P02", format!("parameter ${} is not an integer", i + 1));
    match p.params.get(i) {
        Some(Some(v)) if p.param_binary[i] => {
            let b: [u8; 4] = v.as_slice().try_into().map_err(|_| bad())?;
            Ok(Some(i32::from_be_bytes(b)))
        }
        Some(Some(v)) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(bad),
        Some(None) => Ok(None),
        None => Err(("08P01", format!("parameter ${} missing", i + 1))),
    }
}

fn timestamp_param(p: &Portal, i: usize) -> Result<i64, SqlError> {
    match p.params.get(i) {
        Some(Some(v)) if p.param_binary[i] => {
            let b: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| ("22007", "bad binary timestamptz".to_string()))?;
            Ok(i64::from_be_bytes(b))
        }
        _ => Err((
            "0A000",
            "fakepg takes timestamptz parameters in binary only".to_string(),
        )),
    }
}

/// Runs one bound statement on node `index`, appending its rows and its
/// completion to `out`.
fn execute(
    shared: &Shared,
    index: usize,
    node: &FakeNode,
    p: &Portal,
    out: &mut Out,
) -> Result<(), SqlError> {
    match p.kind {
        Kind::Role => {
            data_row(out, &[Some(in_recovery(node, p))]);
            out.complete("SELECT 1");
        }
        Kind::Upsert => {
            if node.role != Role::Master {
                return Err((
                    "25006",
                    "cannot execute INSERT in a read-only transaction".into(),
                ));
            }
            let instance = text_param(p, 0)?.unwrap_or_default();
            let wal = shared.wal[index].fetch_add(256, Ordering::Relaxed) as i64 + 256;
            let row = Row {
                cluster_id: int_param(p, 1)?,
                master_name: text_param(p, 2)?.unwrap_or_default(),
                beat_at: timestamp_param(p, 3)?,
                wal,
            };
            {
                let mut store = lock(&shared.store);
                let rows = store.entry(index).or_default().entry(instance).or_default();
                rows.push_back((Instant::now(), row));
                if rows.len() > HISTORY {
                    rows.pop_front();
                }
            }
            let (names, walsenders) = &shared.replication[index];
            data_row(
                out,
                &[
                    Some(int8_value(wal, p)),
                    Some(names.as_bytes().to_vec()),
                    Some(b"on".to_vec()),
                    walsenders.as_ref().map(|w| w.as_bytes().to_vec()),
                ],
            );
            out.complete("SELECT 1");
        }
        Kind::Select => match replayed(shared, index, node, p)? {
            Some(row) => {
                let positions = positions(node, Some(&row), p);
                let mut values = heartbeat_values(Some(row)).to_vec();
                values.extend(positions);
                data_row(out, &values);
                out.complete("SELECT 1");
            }
            None => out.complete("SELECT 0"),
        },
        Kind::Combined => {
            let row = replayed(shared, index, node, p)?;
            let found = row.is_some();
            let positions = positions(node, row.as_ref(), p);
            let mut values = vec![Some(in_recovery(node, p))];
            values.extend(heartbeat_values(row));
            values.push(Some(bool_value(found, p)));
            values.extend(positions);
            data_row(out, &values);
            out.complete("SELECT 1");
        }
        Kind::Owner => {
            let me = b"plusmoin".to_vec();
            data_row(
                out,
                &[Some(me.clone()), Some(me), Some(bool_value(true, p))],
            );
            out.complete("SELECT 1");
        }
        Kind::Holds => {
            // No hold, no row of another node: the one row saying so.
            let ignored = if p.result_binary {
                0i64.to_be_bytes().to_vec()
            } else {
                b"0".to_vec()
            };
            data_row(out, &[None, None, None, None, Some(ignored)]);
            out.complete("SELECT 1");
        }
        Kind::Other => out.complete("SELECT 0"),
    }
    Ok(())
}

/// A boolean result, binary or text as the client asked.
fn bool_value(v: bool, p: &Portal) -> Vec<u8> {
    if p.result_binary {
        vec![u8::from(v)]
    } else {
        (if v { "t" } else { "f" }).as_bytes().to_vec()
    }
}

/// An int8 result, binary or text as the client asked.
fn int8_value(v: i64, p: &Portal) -> Vec<u8> {
    if p.result_binary {
        v.to_be_bytes().to_vec()
    } else {
        v.to_string().into_bytes()
    }
}

/// A node's received and replayed WAL positions: on a slave, the position
/// of the write it replays (0 before any); NULL on a master.
fn positions(node: &FakeNode, row: Option<&Row>, p: &Portal) -> [Option<Vec<u8>>; 2] {
    if node.role == Role::Master {
        return [None, None];
    }
    let at = row.map_or(0, |r| r.wal);
    [Some(int8_value(at, p)), Some(int8_value(at, p))]
}

/// `pg_is_in_recovery()` on `node`.
fn in_recovery(node: &FakeNode, p: &Portal) -> Vec<u8> {
    bool_value(matches!(node.role, Role::Slave { .. }), p)
}

/// The heartbeat row of instance `$1` as node `index` shows it: a master
/// its latest write, a slave its master's latest write at least its lag
/// old (none yet: `None`).
fn replayed(
    shared: &Shared,
    index: usize,
    node: &FakeNode,
    p: &Portal,
) -> Result<Option<Row>, SqlError> {
    let instance = text_param(p, 0)?.unwrap_or_default();
    let (source, lag) = match node.role {
        Role::Master => (index, Duration::ZERO),
        Role::Slave { master, lag_ms } => (master, Duration::from_millis(lag_ms)),
    };
    let row = {
        let store = lock(&shared.store);
        let now = Instant::now();
        store
            .get(&source)
            .and_then(|m| m.get(&instance))
            .and_then(|rows| {
                rows.iter()
                    .rev()
                    .find(|(at, _)| now.duration_since(*at) >= lag)
                    .map(|(_, r)| r.clone())
            })
    };
    if row.is_some() && !p.result_binary {
        return Err(("0A000", "fakepg returns timestamptz in binary only".into()));
    }
    Ok(row)
}

/// A heartbeat row's master_name, cluster_id and beat_at (binary); NULLs
/// without a row.
fn heartbeat_values(row: Option<Row>) -> [Option<Vec<u8>>; 3] {
    match row {
        Some(row) => [
            Some(row.master_name.into_bytes()),
            row.cluster_id.map(|c| c.to_be_bytes().to_vec()),
            Some(row.beat_at.to_be_bytes().to_vec()),
        ],
        None => [None, None, None],
    }
}

fn data_row(out: &mut Out, values: &[Option<Vec<u8>>]) {
    let mut d = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(v) => {
                d.extend_from_slice(&(v.len() as i32).to_be_bytes());
                d.extend_from_slice(v);
            }
            None => d.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    out.msg(b'D', &d);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_told_apart() {
        assert_eq!(Kind::of("SELECT pg_is_in_recovery()"), Kind::Role);
        assert_eq!(Kind::of("  select true"), Kind::Role);
        assert_eq!(
            Kind::of("INSERT INTO plusmoin_heartbeat (a) VALUES ($1)"),
            Kind::Upsert
        );
        assert_eq!(
            Kind::of("SELECT master_name FROM plusmoin_heartbeat WHERE x"),
            Kind::Select
        );
        assert_eq!(
            Kind::of("SELECT node, placed_by, placed_at, reason FROM plusmoin_hold"),
            Kind::Holds
        );
        assert_eq!(Kind::of("CREATE TABLE x ()"), Kind::Other);
        // As plusmoin sends them: the schema named, and the ownership
        // question before any statement on a table.
        assert_eq!(
            Kind::of("INSERT INTO public.plusmoin_heartbeat (a) VALUES ($1)"),
            Kind::Upsert
        );
        assert_eq!(
            Kind::of("SELECT 1 FROM public.plusmoin_hold AS x"),
            Kind::Holds
        );
        for table in ["plusmoin_heartbeat", "plusmoin_hold"] {
            assert_eq!(Kind::of(&plusmoin::probe::owner_query(table)), Kind::Owner);
        }
    }

    /// The probe's combined statement is told from the role statement and
    /// the heartbeat select it stands for, and answered with their columns.
    #[test]
    fn combined_statement_is_told_apart() {
        let kind = Kind::of(plusmoin::probe::COMBINED);
        assert_eq!(kind, Kind::Combined);
        let names: Vec<&str> = kind.columns().iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            [
                "pg_is_in_recovery",
                "master_name",
                "cluster_id",
                "beat_at",
                "found",
                "received",
                "replayed"
            ]
        );
        assert_eq!(kind.columns()[1..4], Kind::Select.columns()[..3]);
        assert_eq!(kind.columns()[5..], Kind::Select.columns()[3..]);
        assert_eq!(kind.params(), Kind::Select.params());
        // A custom role statement stays a role statement.
        assert_eq!(
            Kind::of("SELECT pg_is_in_recovery() AS in_recovery"),
            Kind::Role
        );
    }

    #[test]
    fn addresses_are_loopback_and_distinct() {
        let all: std::collections::HashSet<Ipv4Addr> = (0..10_000).map(address).collect();
        assert_eq!(all.len(), 10_000);
        assert!(all.iter().all(|a| a.is_loopback()));
        assert!(all
            .iter()
            .all(|a| a.octets()[3] != 0 && a.octets()[3] != 255));
    }

    #[test]
    fn body_reads_are_bounded() {
        let mut b = Body(&[0, 1]);
        assert!(b.i32().is_err());
        let mut b = Body(b"abc");
        assert!(b.cstr().is_err());
    }
}
