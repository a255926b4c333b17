//! Serving connections: the accept loop, with a header-read timeout and a
//! connection cap, so that idle connections cannot lock real clients out.
//!
//! Each connection is served by hyper's HTTP/1 server with
//! `limits.header_timeout`: a connection that does not finish its request
//! headers in time (or stays idle that long between requests) is closed.
//! The number of open connections is capped below the process's open-file
//! limit ([`RESERVED_FDS`] stay for the ledger's own files), so `accept`
//! never starves the store of descriptors. At the cap the loop still
//! accepts: it closes the oldest connection that has not yet sent a request
//! (an idle or slow one) to make room, so a flood of idle connections never
//! keeps a real client out for longer than it takes to send its headers.
//! Only when every connection is busy with a request is a new one closed at
//! once. If `accept` still fails for want of descriptors (the limit was
//! lowered under a running service), the cap drops below the connections
//! then open, idle connections are closed down to it, and accept is retried
//! shortly.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

/// Descriptors kept for the service itself (sled's files, the write-ahead
/// log, the data dir, the rotator's uploads, the verification child, logs)
/// when the connection cap is derived from the open-file limit.
pub const RESERVED_FDS: usize = 128;

/// The cap when the open-file limit is unlimited and none is configured.
const UNLIMITED_CAP: usize = 65_536;

/// How long accept waits after it failed for want of descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// When accept runs out of descriptors, the cap drops to this many below
/// the connections then open (room for the store's files and new accepts).
const ACCEPT_MARGIN: usize = 32;

/// Connection limits of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to send a request's headers (and the idle limit between requests).
    pub header_timeout: Duration,
    /// Most connections open at once (`None`: the open-file limit less
    /// [`RESERVED_FDS`]); never more than that limit allows.
    pub max_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: None,
        }
    }
}

/// The connection cap for `configured` under the current open-file limit.
pub fn connection_cap(configured: Option<usize>) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let room = limit.map(|n| {
        usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_sub(RESERVED_FDS)
            .max(1)
    });
    match (configured, room) {
        (Some(c), Some(room)) if c > room => {
            tracing::warn!(
                configured = c,
                open_file_limit = limit.unwrap_or(0),
                cap = room,
                "limits.max_connections is above what the open-file limit allows (less {RESERVED_FDS} for the service); raise LimitNOFILE"
            );
            room
        }
        (Some(c), _) => c,
        (None, Some(room)) => room,
        (None, None) => UNLIMITED_CAP,
    }
}

/// One connection as the accept loop sees it.
struct Slot {
    /// The client has sent something (a real client sends its request at
    /// once): the connection is never evicted, only timed out.
    started: AtomicBool,
    /// The connection is closed.
    done: AtomicBool,
    /// Asks the connection to close (it is idle and room is needed).
    evict: Notify,
}

/// The open connections.
#[derive(Default)]
struct Tracker {
    open: AtomicUsize,
    /// Connections in accept order that may not have sent a request yet.
    fresh: Mutex<VecDeque<Arc<Slot>>>,
}

impl Tracker {
    fn fresh(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Slot>>> {
        self.fresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            started: AtomicBool::new(false),
            done: AtomicBool::new(false),
            evict: Notify::new(),
        });
        let mut fresh = self.fresh();
        while fresh.front().is_some_and(|s| !s.evictable()) {
            fresh.pop_front();
        }
        fresh.push_back(slot.clone());
        drop(fresh);
        self.open.fetch_add(1, Ordering::AcqRel);
        slot
    }

    /// Asks the oldest connection that has sent no request to close;
    /// answers whether there was one.
    fn evict_oldest_idle(&self) -> bool {
        let mut fresh = self.fresh();
        while let Some(slot) = fresh.pop_front() {
            if slot.evictable() {
                slot.evict.notify_one();
                return true;
            }
        }
        false
    }
}

impl Slot {
    fn evictable(&self) -> bool {
        !self.started.load(Ordering::Acquire) && !self.done.load(Ordering::Acquire)
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` with `limits` until `shutdown` completes;
/// then stops accepting, lets in-flight requests finish and returns.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let mut cap = connection_cap(limits.max_connections);
    tracing::info!(
        max_connections = cap,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        "accepting connections"
    );
    let tracker = Arc::new(Tracker::default());
    // Dropping `stop_rx` tells the loop and every connection to finish.
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    // Every connection holds a receiver; all gone = all finished.
    let (closed_tx, closed_rx) = watch::channel(());
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop_tx.closed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors (the limit was lowered under us, or
                // something else holds them): serve fewer connections from
                // now on, close idle ones to make room, and retry.
                let open = tracker.open.load(Ordering::Acquire);
                let lowered = open.saturating_sub(ACCEPT_MARGIN).max(1);
                if lowered < cap {
                    tracing::warn!(error = %e, from = cap, to = lowered, "accept failed: lowering the connection cap");
                    cap = lowered;
                } else if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(error = %e, open, "accept failed; retrying");
                    last_warning = Some(Instant::now());
                }
                let mut evicted = 0;
                while tracker.open.load(Ordering::Acquire).saturating_sub(evicted) > cap
                    && tracker.evict_oldest_idle()
                {
                    evicted += 1;
                }
                if evicted == 0 {
                    tracker.evict_oldest_idle();
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        if tracker.open.load(Ordering::Acquire) >= cap && !tracker.evict_oldest_idle() {
            // Every connection is in a request: this one must wait its turn.
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                tracing::warn!(
                    max_connections = cap,
                    "connection cap reached with every connection busy; closing a new one"
                );
                last_warning = Some(Instant::now());
            }
            drop(stream);
            continue;
        }
        let slot = tracker.register();
        let tracker = tracker.clone();
        let app = app.clone();
        let stop = stop_tx.clone();
        let closed = closed_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, &slot, stop, limits.header_timeout).await;
            slot.done.store(true, Ordering::Release);
            tracker.open.fetch_sub(1, Ordering::AcqRel);
            drop(closed);
        });
        // Under a flood accept is always ready: let the connections' tasks
        // (a real client's request among them) run between accepts.
        tokio::task::yield_now().await;
    }
    drop(closed_rx);
    drop(listener);
    closed_tx.closed().await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    slot: &Arc<Slot>,
    stop: watch::Sender<()>,
    header_timeout: Duration,
) {
    let service =
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| app.clone().oneshot(req));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let stream = Heard {
        stream,
        slot: slot.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.closed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = slot.evict.notified() => {
                // Room is needed; a request that began meanwhile is served.
                if !slot.started.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    }
}

/// A connection's stream that marks its slot when the first bytes arrive.
struct Heard {
    stream: tokio::net::TcpStream,
    slot: Arc<Slot>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before && !self.slot.started.load(Ordering::Relaxed) {
            self.slot.started.store(true, Ordering::Release);
        }
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_evicted_first_and_busy_ones_never() {
        let t = Tracker::default();
        let a = t.register();
        let b = t.register();
        let c = t.register();
        a.started.store(true, Ordering::Release);
        assert!(t.evict_oldest_idle());
        // b was asked (a is busy): its permit is stored.
        assert!(futures::FutureExt::now_or_never(b.evict.notified()).is_some());
        assert!(futures::FutureExt::now_or_never(c.evict.notified()).is_none());
        c.done.store(true, Ordering::Release);
        assert!(!t.evict_oldest_idle(), "a is busy, b asked, c closed");
        assert_eq!(t.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map(|n| n as usize);
        let cap = connection_cap(None);
        if let Some(limit) = limit {
            assert!(
                cap + RESERVED_FDS <= limit.max(RESERVED_FDS + 1),
                "{cap} vs {limit}"
            );
            assert_eq!(connection_cap(Some(usize::MAX)), cap);
        }
        assert_eq!(connection_cap(Some(1)), 1);
    }
}
