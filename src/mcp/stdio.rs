//! The stdio transport of `kernels mcp-proxy`: the MCP server runs as a
//! child process; newline-delimited JSON-RPC frames are relayed between the
//! proxy's own stdin/stdout (the agent's MCP client) and the child's.
//!
//! Every frame goes through as the bytes received, except:
//! * a `tools/call` request is held until the kernel decides it; only an
//!   ALLOW forwards it, anything else is answered here ([`Session::decide_call`]);
//! * a `tools/list` request is forwarded once the allowed tools are known,
//!   and its response keeps only those;
//! * the response to a forwarded call is passed on unchanged, and its
//!   outcome recorded;
//! * a frame that is not JSON-RPC is answered with a JSON-RPC error, and a
//!   request reusing the id of a call in flight is refused (either could
//!   slip a call or a list past the interception).
//!
//! Notifications (progress, cancellation, …), server-to-client requests and
//! their responses pass untouched. When the child exits, the proxy exits
//! with its status; when the client closes stdin, the child's stdin is closed
//! (and the child killed if it has not exited 10 s later).

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::gate::Gate;
use super::intercept::{self, Allowed, Outcome};
use super::message::{self, INVALID_REQUEST, Kind, Message};
use super::session::{CallDecision, Session};

/// How long a child may take to exit after its stdin was closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long the proxy waits for outcome recordings before it exits.
const OUTCOME_GRACE: Duration = Duration::from_secs(5);

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The MCP server could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The command.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// Waiting for the MCP server failed.
    #[error("waiting for the MCP server: {0}")]
    Wait(std::io::Error),
}

/// An intercepted request whose response is awaited (by JSON-RPC id).
#[derive(Debug)]
enum Pending {
    /// Waiting for the kernel; `cancelled` when the client cancelled it meanwhile.
    Deciding { cancelled: bool },
    /// A forwarded `tools/list`: filter its result with `allowed`.
    List(Allowed),
    /// A forwarded `tools/call`: record the outcome of its response.
    Call { request_id: String, cancelled: bool },
}

type PendingMap = Arc<Mutex<HashMap<String, Pending>>>;

fn lock(p: &PendingMap) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `program args` as the MCP server and relays stdin/stdout until it
/// exits; answers its exit status.
pub async fn run<G: Gate>(
    session: Arc<Session<G>>,
    program: OsString,
    args: Vec<OsString>,
) -> Result<ExitStatus, StdioError> {
    run_with(
        session,
        program,
        args,
        tokio::io::stdin(),
        tokio::io::stdout(),
    )
    .await
}

/// [`run`] with the client's streams given (tests).
pub async fn run_with<G: Gate>(
    session: Arc<Session<G>>,
    program: OsString,
    args: Vec<OsString>,
    client_in: impl AsyncRead + Unpin + Send + 'static,
    client_out: impl AsyncWrite + Unpin + Send + 'static,
) -> Result<ExitStatus, StdioError> {
    let mut child = tokio::process::Command::new(&program)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| StdioError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })?;
    let child_in = child.stdin.take().expect("piped stdin");
    let child_out = child.stdout.take().expect("piped stdout");

    let (to_child, to_child_rx) = mpsc::channel::<Vec<u8>>(256);
    let (to_client, to_client_rx) = mpsc::channel::<Vec<u8>>(256);
    // Ends (closing the child's stdin) once the client is gone and every
    // decision in flight has forwarded or answered its call.
    let mut child_writer = tokio::spawn(write_frames(child_in, to_child_rx));
    let client_writer = tokio::spawn(write_frames(client_out, to_client_rx));
    let pending: PendingMap = Arc::default();

    tokio::spawn(client_loop(
        session.clone(),
        pending.clone(),
        client_in,
        to_child,
        to_client.clone(),
    ));

    // The child is waited for (and killed when asked) by its own task.
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let mut waiter = tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => status,
            _ = kill_rx => {
                let _ = child.start_kill();
                child.wait().await
            }
        }
    });

    let server = server_loop(
        session.clone(),
        pending.clone(),
        child_out,
        to_client.clone(),
    );
    tokio::pin!(server);
    let mut kill_tx = Some(kill_tx);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut status = None;
    loop {
        tokio::select! {
            _ = &mut server => break,
            _ = &mut child_writer, if kill_at.is_none() => {
                kill_at = Some(tokio::time::Instant::now() + EXIT_GRACE);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() && kill_tx.is_some() => {
                tracing::warn!("the MCP server did not exit after its input closed; killing it");
                let _ = kill_tx.take().map(|tx| tx.send(()));
            }
            s = &mut waiter, if status.is_none() => {
                // Exited: what it wrote before exiting is still relayed.
                status = Some(s);
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
                break;
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => waiter.await,
    };
    let status = status
        .map_err(|e| StdioError::Wait(std::io::Error::other(e)))?
        .map_err(StdioError::Wait)?;

    // Calls that never got an answer.
    let unanswered: Vec<(String, bool)> = lock(&pending)
        .drain()
        .filter_map(|(_, p)| match p {
            Pending::Call {
                request_id,
                cancelled,
            } => Some((request_id, cancelled)),
            _ => None,
        })
        .collect();
    for (request_id, cancelled) in unanswered {
        let reason = if cancelled {
            "cancelled by the client; the MCP server did not answer"
        } else {
            "no answer: the MCP server exited"
        };
        session.record(request_id, Outcome::failed(reason));
    }
    let unfinished = session.drain(OUTCOME_GRACE).await;
    if unfinished > 0 {
        tracing::error!(unfinished, "exiting with outcomes not recorded");
    }
    // An empty frame tells the writer to stop after what is queued.
    let _ = to_client.send(Vec::new()).await;
    let _ = client_writer.await;
    Ok(status)
}

/// Writes frames (one per line) until the channel closes or an empty frame.
async fn write_frames(mut out: impl AsyncWrite + Unpin, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(frame) = rx.recv().await {
        if frame.is_empty() {
            break;
        }
        let mut buf = frame;
        buf.push(b'\n');
        // Batch what is already queued into one write.
        while let Ok(more) = rx.try_recv() {
            if more.is_empty() {
                let _ = out.write_all(&buf).await;
                let _ = out.flush().await;
                return;
            }
            buf.extend_from_slice(&more);
            buf.push(b'\n');
        }
        if out.write_all(&buf).await.is_err() || out.flush().await.is_err() {
            tracing::warn!("cannot write a frame: the reader is gone");
            break;
        }
    }
    let _ = out.shutdown().await;
}

/// Reads frames until EOF; `Ok(None)` at the end. Strips the newline and
/// a carriage return.
async fn next_frame(
    reader: &mut (impl tokio::io::AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
) -> Option<Vec<u8>> {
    loop {
        line.clear();
        match reader.read_until(b'\n', line).await {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "read failed");
                return None;
            }
        }
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        if line[..end].iter().any(|b| !b.is_ascii_whitespace()) {
            return Some(line[..end].to_vec());
        }
    }
}

/// Frames from the client to the server.
async fn client_loop<G: Gate>(
    session: Arc<Session<G>>,
    pending: PendingMap,
    client_in: impl AsyncRead + Unpin,
    to_child: mpsc::Sender<Vec<u8>>,
    to_client: mpsc::Sender<Vec<u8>>,
) {
    let mut reader = BufReader::new(client_in);
    let mut line = Vec::new();
    while let Some(frame) = next_frame(&mut reader, &mut line).await {
        let msg = match Message::parse(&frame) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "refused a frame from the client");
                let _ = to_client
                    .send(message::error_response(
                        e.id.as_ref(),
                        e.code,
                        &e.message,
                        None,
                    ))
                    .await;
                continue;
            }
        };
        match &msg.kind {
            Kind::Request { id, method } if method == "tools/call" || method == "tools/list" => {
                let key = message::id_key(id);
                let in_use = {
                    let mut p = lock(&pending);
                    let in_use = p.contains_key(&key);
                    if !in_use {
                        p.insert(key.clone(), Pending::Deciding { cancelled: false });
                    }
                    in_use
                };
                if in_use {
                    let answer = message::error_response(
                        Some(id),
                        INVALID_REQUEST,
                        "Invalid Request: this id is already used by a request in flight",
                        None,
                    );
                    let _ = to_client.send(answer).await;
                    continue;
                }
                let task = Intercepted {
                    session: session.clone(),
                    pending: pending.clone(),
                    to_child: to_child.clone(),
                    to_client: to_client.clone(),
                    key,
                    id: id.clone(),
                    frame,
                };
                if method == "tools/call" {
                    tokio::spawn(task.call(msg));
                } else {
                    tokio::spawn(task.list());
                }
            }
            Kind::Notification { method } if method == "tools/call" => {
                // A call without an id could run unanswered: never forwarded.
                tracing::warn!("dropped a tools/call sent as a notification (no id)");
            }
            Kind::Notification { method } if method == "notifications/cancelled" => {
                if let Some(id) = msg.params().and_then(|p| p.get("requestId")) {
                    mark_cancelled(&pending, &message::id_key(id));
                }
                if to_child.send(frame).await.is_err() {
                    break;
                }
            }
            _ => {
                if to_child.send(frame).await.is_err() {
                    break;
                }
            }
        }
    }
}

fn mark_cancelled(pending: &PendingMap, key: &str) {
    match lock(pending).get_mut(key) {
        Some(Pending::Deciding { cancelled }) | Some(Pending::Call { cancelled, .. }) => {
            *cancelled = true
        }
        _ => {}
    }
}

/// A `tools/call` or `tools/list` on its way through the kernel.
struct Intercepted<G> {
    session: Arc<Session<G>>,
    pending: PendingMap,
    to_child: mpsc::Sender<Vec<u8>>,
    to_client: mpsc::Sender<Vec<u8>>,
    key: String,
    id: Value,
    frame: Vec<u8>,
}

impl<G: Gate> Intercepted<G> {
    fn cancelled(&self) -> bool {
        matches!(
            lock(&self.pending).get(&self.key),
            Some(Pending::Deciding { cancelled: true })
        )
    }

    async fn call(self, msg: Message) {
        let decision = self.session.decide_call(&self.id, msg.params()).await;
        match decision {
            CallDecision::Forward { request_id } => {
                if self.cancelled() {
                    lock(&self.pending).remove(&self.key);
                    self.session.record(
                        request_id,
                        Outcome::failed("not forwarded: the client cancelled the call"),
                    );
                    return;
                }
                lock(&self.pending).insert(
                    self.key.clone(),
                    Pending::Call {
                        request_id: request_id.clone(),
                        cancelled: false,
                    },
                );
                if self.to_child.send(self.frame).await.is_err() {
                    lock(&self.pending).remove(&self.key);
                    self.session.record(
                        request_id,
                        Outcome::failed("not forwarded: the MCP server's input is closed"),
                    );
                }
            }
            CallDecision::Answer(answer) => {
                let cancelled = self.cancelled();
                lock(&self.pending).remove(&self.key);
                if !cancelled {
                    let _ = self.to_client.send(answer).await;
                }
            }
        }
    }

    async fn list(self) {
        match self.session.allowed().await {
            Ok(allowed) => {
                if self.cancelled() {
                    lock(&self.pending).remove(&self.key);
                    return;
                }
                lock(&self.pending).insert(self.key.clone(), Pending::List(allowed));
                if self.to_child.send(self.frame).await.is_err() {
                    lock(&self.pending).remove(&self.key);
                }
            }
            Err(r) => {
                let cancelled = self.cancelled();
                lock(&self.pending).remove(&self.key);
                if !cancelled {
                    let answer =
                        message::error_response(Some(&self.id), r.code, &r.message, Some(r.data));
                    let _ = self.to_client.send(answer).await;
                }
            }
        }
    }
}

/// Frames from the server to the client, until the server closes its stdout.
async fn server_loop<G: Gate>(
    session: Arc<Session<G>>,
    pending: PendingMap,
    child_out: impl AsyncRead + Unpin,
    to_client: mpsc::Sender<Vec<u8>>,
) {
    let mut reader = BufReader::new(child_out);
    let mut line = Vec::new();
    while let Some(frame) = next_frame(&mut reader, &mut line).await {
        let out = match Message::parse(&frame) {
            Ok(Message {
                mut object,
                kind: Kind::Response { id },
            }) => {
                let key = message::id_key(&id);
                let entry = {
                    let mut p = lock(&pending);
                    match p.get(&key) {
                        Some(Pending::List(_) | Pending::Call { .. }) => p.remove(&key),
                        Some(Pending::Deciding { .. }) => {
                            // Not forwarded yet: the server cannot be answering it.
                            tracing::warn!(id = %id, "dropped a response to a call the kernel is still deciding");
                            continue;
                        }
                        None => None,
                    }
                };
                match entry {
                    Some(Pending::List(allowed)) => {
                        if let Some(result) = object.get_mut("result") {
                            intercept::filter_tools(result, &allowed, session.tool_prefix());
                        }
                        serde_json::to_vec(&Value::Object(object)).expect("a JSON value serializes")
                    }
                    Some(Pending::Call { request_id, .. }) => {
                        session.record(request_id, Outcome::of_response(&object));
                        frame
                    }
                    _ => frame,
                }
            }
            Ok(_) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "the MCP server wrote a frame that is not JSON-RPC; relayed as is");
                frame
            }
        };
        if to_client.send(out).await.is_err() {
            break;
        }
    }
}
