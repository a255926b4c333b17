//! The real `kernels serve` under connection abuse: a flood of idle
//! connections past its open-file limit (lowered on the running process, so
//! the test needs only a few hundred sockets), half-sent headers, and a body
//! that declares more than the limit.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::process::{AGENT, ServeConfig, Server};

/// The open-file limit the server is squeezed to.
const NOFILE: u64 = 192;
/// Idle connections the flood keeps open (well past `NOFILE`).
const FLOOD: usize = 500;

fn start(tmp: &std::path::Path, limits: &str) -> Server {
    std::fs::create_dir_all(tmp.join("config")).unwrap();
    // `kernels serve` reads ./config/kernels.yaml from its working dir.
    std::fs::write(
        tmp.join("config/kernels.yaml"),
        format!("limits: {limits}\n"),
    )
    .unwrap();
    let policy = tmp.join("policy.yaml");
    std::fs::write(
        &policy,
        "allowed_actors: [agent-001]\nallowed_tools: [echo]\n",
    )
    .unwrap();
    Server::start(&ServeConfig {
        cwd: tmp.to_owned(),
        data_dir: tmp.join("data"),
        policy,
        kernel_id: "conn-kernel".into(),
    })
}

fn squeeze_open_files(pid: u32) {
    use rustix::process::{Pid, Resource, Rlimit, prlimit};
    let pid = Pid::from_raw(pid as i32).expect("a child pid");
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(NOFILE),
            maximum: Some(NOFILE),
        },
    )
    .expect("prlimit on our own child");
}

/// Sends one raw HTTP/1.1 request on a fresh connection; answers the status
/// and how long it took, or `None` if no answer came within `limit`.
fn exchange(addr: SocketAddr, request: &str, limit: Duration) -> Option<(u16, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        if stream.read(&mut byte).ok()? == 0 || started.elapsed() > limit {
            return None;
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, started.elapsed()))
}

fn health(addr: SocketAddr) -> String {
    format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
}

fn submit(addr: SocketAddr, id: &str) -> String {
    let body = format!(
        r#"{{"request_id": "{id}", "actor": "agent-001", "intent": "echo", "tool_call": {{"name": "echo", "params": {{"text": "x"}}}}}}"#
    );
    format!(
        "POST /v1/requests HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {AGENT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Keeps about `FLOOD` idle connections open (replacing the oldest) until
/// told to stop: an attacker that never sends a byte.
fn flood(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut held = std::collections::VecDeque::new();
        let mut opened = 0;
        while !stop.load(Ordering::Relaxed) {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => {
                    opened += 1;
                    held.push_back(s);
                    if held.len() > FLOOD {
                        held.pop_front();
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        opened
    })
}

/// One flood at a time: two floods of 500 connections at once on a 2-core
/// machine measure the machine (each starves the other's server), not
/// whether a server lets real clients through.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// While the flood is held, /health and real decisions keep being answered,
/// each within the header timeout (1 s) plus a margin.
fn real_clients_get_through(addr: SocketAddr, with_decisions: bool) {
    let _one = ONE_FLOOD.lock().unwrap_or_else(|p| p.into_inner());
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(addr, stop.clone());
    // Let the flood pass the open-file limit first.
    std::thread::sleep(Duration::from_millis(1500));
    let limit = Duration::from_secs(4);
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (status, took) = exchange(addr, &health(addr), limit).unwrap_or_else(|| {
            panic!("/health #{i} got no answer within {limit:?} during the flood")
        });
        assert_eq!(status, 200);
        slowest = slowest.max(took);
        if with_decisions {
            let (status, took) = exchange(addr, &submit(addr, &format!("flood-{i}")), limit)
                .unwrap_or_else(|| {
                    panic!("decision #{i} got no answer within {limit:?} during the flood")
                });
            assert_eq!(status, 200, "decision #{i}");
            slowest = slowest.max(took);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let opened = flooder.join().unwrap();
    assert!(
        opened > NOFILE as usize * 2,
        "the flood must go well past the server's open-file limit ({opened} connections)"
    );
    eprintln!("flood of {opened} idle connections: slowest real answer {slowest:?}");
}

#[test]
fn an_idle_flood_past_the_open_file_limit_does_not_lock_real_clients_out() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "{header_timeout: 1s, max_connections: 100}");
    squeeze_open_files(server.pid());
    real_clients_get_through(server.addr, true);
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_limit_lowered_below_the_cap_is_survived_by_closing_idle_connections() {
    // The cap was derived from the limit at start; the limit then drops far
    // below it, so accept itself runs out of descriptors.
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "{header_timeout: 1s}");
    squeeze_open_files(server.pid());
    real_clients_get_through(server.addr, false);
    let (code, stderr) = server.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn headers_that_never_finish_are_cut_off_at_the_header_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let server = start(tmp.path(), "{header_timeout: 1s}");
    let started = Instant::now();
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (with or without a 408 first).
    let _ = slow.read_to_end(&mut buf);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // An idle keep-alive connection is closed the same way.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let _ = idle.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(5));
    server.terminate();
}

#[test]
fn a_declared_body_over_the_limit_is_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    // A long request timeout: the answer must not wait for it.
    let server = start(tmp.path(), "{request_timeout: 60s}");
    let addr = server.addr;
    let request = format!(
        "POST /v1/requests HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {AGENT}\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{{\"a\": 1}}  "
    );
    let (status, took) = exchange(addr, &request, Duration::from_secs(20))
        .expect("an answer before the request timeout");
    assert_eq!(status, 413);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    server.terminate();
}
