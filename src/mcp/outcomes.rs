//! Recording what forwarded calls did (`POST /v1/outcomes`) in the
//! background, so that no answer to the agent waits for it.
//!
//! A recording is retried with backoff while the kernel gives no answer or a
//! 5xx (the kernel takes the same outcome twice as one); a 4xx is logged and
//! dropped (an unknown request, or a different outcome already recorded). A
//! transport that ends waits a bounded time for the recordings in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::gate::Gate;
use super::intercept::Outcome;

/// How many times a recording is attempted.
const ATTEMPTS: u32 = 6;

/// Background recorder of outcomes.
#[derive(Debug)]
pub struct Outcomes<G> {
    gate: Arc<G>,
    tracker: TaskTracker,
}

impl<G: Gate> Outcomes<G> {
    /// A recorder sending to `gate`.
    pub fn new(gate: Arc<G>) -> Outcomes<G> {
        Outcomes {
            gate,
            tracker: TaskTracker::new(),
        }
    }

    /// Records `outcome` for `request_id` in the background.
    pub fn record(&self, request_id: String, outcome: Outcome) {
        let gate = self.gate.clone();
        self.tracker.spawn(async move {
            let body = outcome.body(&request_id);
            let mut delay = Duration::from_millis(100);
            for attempt in 1..=ATTEMPTS {
                match gate.outcome(body.clone()).await {
                    Ok((200..=299, _)) => return,
                    Ok((status @ 400..=499, answer)) => {
                        tracing::warn!(request_id, status, answer = %answer, "the kernel refused an outcome");
                        return;
                    }
                    Ok((status, answer)) if attempt == ATTEMPTS => {
                        tracing::error!(request_id, status, answer = %answer, "outcome not recorded");
                    }
                    Err(e) if attempt == ATTEMPTS => {
                        tracing::error!(request_id, error = %e, "outcome not recorded: no answer from the kernel");
                    }
                    _ => {}
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        });
    }

    /// Waits at most `limit` for the recordings in flight; answers how many
    /// were still unfinished.
    pub async fn drain(&self, limit: Duration) -> usize {
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
        self.tracker.len()
    }
}
