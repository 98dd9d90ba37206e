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

/// A fresh temporary directory, removed on drop.
pub fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("runnel-{name}-")).tempdir().unwrap()
}

/// A current-thread tokio runtime for driving the client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}
