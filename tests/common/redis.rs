//! A real `redis-server` (Debian's package, installed by
//! `.ci/install-redis`) on an ephemeral port with a directory of its own,
//! stopped with the test; it can be killed and started again on the same
//! port, with or without what it held.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Instant,
};

use super::PATIENCE;

pub struct RedisServer {
    /// `None` while stopped.
    child: Option<Child>,
    pub port: u16,
    /// Whether it writes what it holds to disk (an append-only file synced
    /// on every write), so a restart keeps it.
    durable: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server, keeping nothing on disk; answers once it
    /// answers `PING`.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start), keeping every write on disk.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        // redis-server has no "any free port": take one the kernel gave.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = Self {
            child: None,
            port,
            durable,
            dir: tempfile::tempdir().expect("a directory for redis"),
        };
        server.start_again();
        server
    }

    /// SIGKILL: gone at once, as a crashed or unplugged Redis.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port: with what it held if durable,
    /// empty otherwise.
    pub fn start_again(&mut self) {
        let appendonly = if self.durable { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", appendonly])
            .args(["--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (.ci/install-redis installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server answers PING");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut socket) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0; 7];
        socket.write_all(b"PING\r\n").is_ok()
            && socket.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
