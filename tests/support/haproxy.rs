//! HAProxy (the Debian package `haproxy`, 2.6) as a child process in the
//! foreground, with a configuration a test wrote; killed when the handle
//! is dropped. Missing HAProxy fails the test with what to install: it
//! never skips.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary: `KERNELS_TEST_HAPROXY`, else `haproxy` on PATH, else the
/// Debian location.
pub fn binary() -> String {
    if let Ok(b) = std::env::var("KERNELS_TEST_HAPROXY") {
        return b;
    }
    for candidate in ["haproxy", "/usr/sbin/haproxy"] {
        if Command::new(candidate)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return candidate.to_owned();
        }
    }
    panic!(
        "haproxy is not installed: `apt-get install -y haproxy` (.ci/run does it), or set KERNELS_TEST_HAPROXY"
    );
}

/// A running HAProxy.
pub struct Haproxy {
    child: Child,
    /// Where its frontend listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Haproxy {
    /// Checks `config` (`haproxy -c`), then runs it in the foreground and
    /// waits until `addr` (its `bind`) accepts connections.
    pub fn start(dir: &Path, config: &str, addr: SocketAddr) -> Haproxy {
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let bin = binary();
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&file)
            .output()
            .expect("haproxy -c runs");
        assert!(
            check.status.success(),
            "haproxy -c refuses the configuration:\n{}\n{}\n{config}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("haproxy starts");
        let log = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut all = sink.lock().unwrap();
                    if all.len() < 256 * 1024 {
                        all.push_str(&line);
                        all.push('\n');
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("haproxy exited with {status}: {}", log.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy { child, addr, log }
    }

    /// `http://addr` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends one line to the runtime API at `socket`; answers HAProxy's reply.
    pub fn runtime(socket: &Path, line: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("runtime API {}: {e}", socket.display()));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(line.trim_end().as_bytes()).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    }

    /// The `status` column of `show stat` for `backend/server` (`UP`,
    /// `DOWN`, `MAINT`, …), `None` when there is no such server.
    pub fn server_status(socket: &Path, backend: &str, server: &str) -> Option<String> {
        let stat = Self::runtime(socket, "show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = header.iter().position(|h| *h == "status")?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&backend) && row.get(1) == Some(&server))
            .and_then(|row| row.get(col).map(|s| s.to_string()))
    }

    /// What HAProxy logged so far (requests and health-check changes).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released: for processes that
/// must listen on a known port across a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
