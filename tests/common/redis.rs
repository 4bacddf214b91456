//! A real `redis-server` (Debian's package, installed by
//! `.ci/install-redis`) on an ephemeral port with a directory of its own,
//! stopped with the test.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Instant,
};

use super::PATIENCE;

pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts redis-server, keeping nothing on disk; answers once it
    /// answers `PING`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory for redis");
        // redis-server has no "any free port": take one the kernel gave.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (.ci/install-redis installs it)");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        while !server.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server answers PING");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        server
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
