//! A TCP gate on 127.0.0.1:0 in front of a server: it forwards connections,
//! or holds them open without ever answering (a hung store, the failure an
//! SDK timeout is slowest to notice). Switching to forwarding drops the held
//! connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A running gate.
pub struct Gate {
    /// Where clients connect.
    pub addr: SocketAddr,
    hang: Arc<AtomicBool>,
    held: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A gate in front of `target`, hanging connections when `hang`.
    pub async fn start(target: SocketAddr, hang: bool) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hang = Arc::new(AtomicBool::new(hang));
        let held = Arc::new(tokio::sync::Notify::new());
        let (flag, release) = (hang.clone(), held.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    continue;
                };
                if flag.load(Ordering::Acquire) {
                    let release = release.clone();
                    tokio::spawn(async move {
                        let mut sink = [0u8; 4096];
                        let drain = async {
                            while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                            std::future::pending::<()>().await
                        };
                        tokio::select! {
                            _ = drain => {},
                            _ = release.notified() => {},
                        }
                    });
                } else {
                    tokio::spawn(async move {
                        if let Ok(mut upstream) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
                        }
                    });
                }
            }
        });
        Gate {
            addr,
            hang,
            held,
            task,
        }
    }

    /// `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, forward new connections; the held ones are dropped.
    pub fn open(&self) {
        self.hang.store(false, Ordering::Release);
        self.held.notify_waiters();
    }

    /// From now on, hold new connections without answering.
    pub fn hang(&self) {
        self.hang.store(true, Ordering::Release);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
        self.held.notify_waiters();
    }
}
