//! Starting and stopping real broker processes for tests.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The runnel binary under test: `RUNNEL_BIN` if set, else the one cargo built for this test.
pub fn runnel_bin() -> PathBuf {
    std::env::var_os("RUNNEL_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_runnel")))
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A broker process with its own data directory.
pub struct BrokerProcess {
    /// The running child, if started.
    pub child: Option<Child>,
    /// Client port.
    pub port: u16,
    /// Data directory (kept across restarts).
    pub data: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
}

impl BrokerProcess {
    /// Starts a broker on a free port with a fresh data directory.
    pub fn start(dir: &Path, extra: &[&str]) -> BrokerProcess {
        Self::start_on(dir, free_port(), extra)
    }

    /// Starts a broker whose client listener is on `port` (the overrides may set `listeners`).
    pub fn start_on(dir: &Path, port: u16, extra: &[&str]) -> BrokerProcess {
        let mut b = BrokerProcess {
            child: None,
            port,
            data: dir.join("data"),
            log: dir.join("broker.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        b.restart();
        b
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process again on the same port and data, waiting until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new(runnel_bin());
        cmd.arg("broker").arg("--override").arg(format!("log.dirs={}", self.data.display()));
        if !self.extra.iter().any(|e| e.starts_with("listeners=")) {
            cmd.arg("--override").arg(format!("listeners=PLAINTEXT://127.0.0.1:{}", self.port));
        }
        for e in &self.extra {
            cmd.arg("--override").arg(e);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("start runnel broker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("broker exited with {status} during start; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker did not accept connections within 30 s; log:\n{}", self.log_tail());
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("broker running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().unwrap()
    }

    /// The last lines of the broker's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh temporary directory, removed on drop unless `RUNNEL_CHAOS_KEEP` is set (then its
/// path is printed, to read the node logs after a run).
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("RUNNEL_CHAOS_KEEP").is_some();
    let dir = tempfile::Builder::new().prefix(&format!("runnel-{name}-")).disable_cleanup(keep).tempdir().unwrap();
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// A current-thread tokio runtime for driving the client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Who opened a connection through a [`Network`] proxy: a cluster node, or anything else (the
/// test's own clients).
pub const CLIENT: i32 = 0;

/// How a proxy treats a blocked (source, destination) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// New connections are closed at once and open ones are cut (both sockets closed): what a
    /// peer sees when a host reboots or a firewall sends resets.
    #[default]
    Reset,
    /// Nothing is forwarded and nothing is closed: new connections are accepted and held, open
    /// ones stall (bytes wait in the proxy and in socket buffers) until the block is lifted,
    /// like packets dropped by a partition that TCP later retransmits. Only timeouts notice.
    Blackhole,
}

/// Loopback TCP proxies, one per destination address, that can partition the cluster.
///
/// Every node-to-node and client-to-node connection of a proxied cluster goes through one of
/// these (the nodes' `advertised.listeners` and `controller.quorum.voters` name proxy ports).
/// A proxy identifies which node opened a connection by finding the connecting socket's inode
/// in `/proc/net/tcp` and the process holding it in `/proc/<pid>/fd` (Linux only), so one proxy
/// per destination can still cut some sources and not others. Blocked (source, destination)
/// pairs behave as the current [`Fault`] says.
pub struct Network {
    state: std::sync::Arc<std::sync::Mutex<NetState>>,
    changed: tokio::sync::watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct NetState {
    /// pid -> node id of the running node processes.
    pids: std::collections::BTreeMap<u32, i32>,
    /// Blocked (source, destination) node pairs ([`CLIENT`] as a source: the test's clients).
    blocked: std::collections::BTreeSet<(i32, i32)>,
    fault: Fault,
    /// Connections accepted from nodes and from clients, and connections refused or held by a
    /// block from nodes and from clients (for the report).
    accepted_from_nodes: u64,
    accepted_from_clients: u64,
    blocked_from_nodes: u64,
    blocked_from_clients: u64,
}

/// What a proxied connection of one (source, destination) pair may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Cut,
    Held,
}

/// One proxied connection's view of the network state.
#[derive(Clone)]
struct Link {
    state: std::sync::Arc<std::sync::Mutex<NetState>>,
    changed: tokio::sync::watch::Receiver<u64>,
    source: i32,
    dest: i32,
}

impl Link {
    fn gate(&self) -> Gate {
        let s = self.state.lock().unwrap();
        match (s.blocked.contains(&(self.source, self.dest)), s.fault) {
            (false, _) => Gate::Open,
            (true, Fault::Reset) => Gate::Cut,
            (true, Fault::Blackhole) => Gate::Held,
        }
    }

    /// Waits while the link is held; false if it is cut (or the network is gone).
    async fn wait_open(&mut self) -> bool {
        loop {
            match self.gate() {
                Gate::Open => return true,
                Gate::Cut => return false,
                Gate::Held => {
                    if self.changed.changed().await.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// Resolves when the link is cut.
    async fn cut(mut self) {
        while self.gate() != Gate::Cut {
            if self.changed.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Copies one direction, holding bytes while the link is held.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, mut link: Link) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !link.wait_open().await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Network {
    /// An empty network (no proxies yet).
    pub fn new() -> Network {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Network { state: Default::default(), changed: tokio::sync::watch::channel(0).0, runtime: Some(runtime) }
    }

    /// Starts a proxy on a free 127.0.0.1 port forwarding to `target` (a port of node `dest`);
    /// returns the proxy's port.
    pub fn proxy(&self, dest: i32, target: u16) -> u16 {
        let rt = self.runtime.as_ref().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = self.state.clone();
        let changed = self.changed.subscribe();
        rt.spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else { continue };
                let source = {
                    let pids = state.lock().unwrap().pids.clone();
                    source_node(peer.port(), port, &pids)
                };
                let mut link = Link { state: state.clone(), changed: changed.clone(), source, dest };
                let gate = link.gate();
                {
                    let mut s = state.lock().unwrap();
                    match (gate, source) {
                        (Gate::Open, CLIENT) => s.accepted_from_clients += 1,
                        (Gate::Open, _) => s.accepted_from_nodes += 1,
                        (_, CLIENT) => s.blocked_from_clients += 1,
                        _ => s.blocked_from_nodes += 1,
                    }
                }
                if gate == Gate::Cut {
                    continue; // dropping `inbound` closes it
                }
                tokio::spawn(async move {
                    // A held connection is accepted but not forwarded until the block lifts.
                    if !link.wait_open().await {
                        return;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let forward = pump(in_read, out_write, link.clone());
                    let backward = pump(out_read, in_write, link.clone());
                    tokio::select! {
                        biased;
                        _ = link.cut() => {} // both sockets close
                        _ = async { tokio::join!(forward, backward) } => {}
                    }
                });
            }
        });
        port
    }

    /// How blocked pairs behave from now on (applies to open connections too).
    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
        self.changed.send_modify(|g| *g += 1);
    }

    /// Records that node `id` now runs as process `pid` (after every start).
    pub fn set_pid(&self, id: i32, pid: u32) {
        let mut s = self.state.lock().unwrap();
        s.pids.retain(|_, n| *n != id);
        s.pids.insert(pid, id);
    }

    /// Blocks connections opened by `from` to `to` (both directions of their bytes).
    pub fn block(&self, from: i32, to: i32) {
        self.state.lock().unwrap().blocked.insert((from, to));
        self.changed.send_modify(|g| *g += 1);
    }

    /// Cuts `node` off from the other `nodes` in both directions; with `from_clients` also from
    /// the test's clients.
    pub fn isolate(&self, node: i32, nodes: &[i32], from_clients: bool) {
        for &n in nodes.iter().filter(|n| **n != node) {
            self.block(node, n);
            self.block(n, node);
        }
        if from_clients {
            self.block(CLIENT, node);
        }
    }

    /// Removes every block.
    pub fn heal(&self) {
        self.state.lock().unwrap().blocked.clear();
        self.changed.send_modify(|g| *g += 1);
    }

    /// Connections so far: (accepted from nodes, refused or held from nodes, accepted from
    /// clients, refused or held from clients).
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let s = self.state.lock().unwrap();
        (s.accepted_from_nodes, s.blocked_from_nodes, s.accepted_from_clients, s.blocked_from_clients)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The node whose process holds the socket 127.0.0.1:`peer_port` connected to 127.0.0.1:
/// `proxy_port`, or [`CLIENT`] if it is none of `pids`.
fn source_node(peer_port: u16, proxy_port: u16, pids: &std::collections::BTreeMap<u32, i32>) -> i32 {
    let want_local = format!("0100007F:{peer_port:04X}");
    let want_remote = format!("0100007F:{proxy_port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote).then(|| f[9].to_string())
    });
    let Some(inode) = inode else { return CLIENT };
    let link = format!("socket:[{inode}]");
    for (pid, node) in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                return *node;
            }
        }
    }
    CLIENT
}
