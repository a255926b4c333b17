//! Reading the chain over HTTP: `/v1/evidence` (a bundle, streamed) and
//! `/v1/entries` (pages of entries, filtered for an investigation).

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::api::READERS;
use super::auth::Principal;
use super::error::ApiError;

/// Query of `GET /v1/evidence`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EvidenceQuery {
    /// First seq (inclusive).
    pub from_seq: Option<u64>,
    /// Last seq (inclusive).
    pub to_seq: Option<u64>,
}

/// `GET /v1/evidence`: the evidence bundle, streamed.
#[utoipa::path(get, path = "/v1/evidence", params(EvidenceQuery), responses((status = 200, description = "An evidence bundle (streamed)")), security(("bearer" = [])))]
pub async fn evidence(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<EvidenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    principal.require(READERS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let ledger = state.ledger().clone();
    let len = ledger.durable_len();
    let from = q.from_seq.unwrap_or(0);
    let to = q
        .to_seq
        .map(|t| t.saturating_add(1))
        .unwrap_or(len)
        .min(len);
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("from_seq {from} is after the range end"),
        ));
    }
    // Both ends must be readable before the answer starts (afterwards a
    // failure can only cut the stream).
    if ledger.entry_hash_at(from).is_none() || ledger.entry_hash_at(to).is_none() {
        return Err(ApiError::internal(format!(
            "cannot read the ends of the range {from}..{to}"
        )));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let sink = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(64 * 1024),
        };
        // The bundle's end flushes the last chunk down the channel.
        if let Err(e) = crate::evidence::export(&ledger, from, to, sink) {
            tracing::error!(error = %e, "evidence export failed mid-stream");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Buffers writes into ~64 KiB chunks sent down a channel.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(64 * 1024),
            ));
            self.tx.blocking_send(Ok(chunk)).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
            })?;
        }
        Ok(())
    }
}

/// Query of `GET /v1/entries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EntriesQuery {
    /// First seq (default 0).
    pub from_seq: Option<u64>,
    /// Most entries to return (default 100, at most 1000).
    pub limit: Option<u64>,
    /// Only entries at or after this time (ms).
    pub from_ms: Option<u64>,
    /// Only entries at or before this time (ms).
    pub to_ms: Option<u64>,
    /// Only entries of this actor.
    pub actor: Option<String>,
    /// Only entries naming this tool (`tool_name`; denied requests name the
    /// tool they asked for, events their `kernel.*` name).
    pub tool: Option<String>,
    /// Only entries with this decision (`ALLOW`, `DENY` or `HALT`).
    pub decision: Option<String>,
    /// Only entries with this request id.
    pub request_id: Option<String>,
}

/// Entries one call examines at most; a filtered page that needs more
/// answers what it found and the `next_seq` to continue from.
pub const MAX_SCANNED: u64 = 100_000;

impl EntriesQuery {
    fn filter(&self) -> crate::entry::EntryFilter<'_> {
        crate::entry::EntryFilter {
            actor: self.actor.as_deref(),
            tool: self.tool.as_deref(),
            decision: self.decision.as_deref(),
            request_id: self.request_id.as_deref(),
        }
    }
}

/// `GET /v1/entries`: entries by seq range, optionally only those of a
/// time range, actor, tool, decision or request id (play 3.2).
#[utoipa::path(get, path = "/v1/entries", params(EntriesQuery), responses((status = 200, description = "{entries, next_seq, ledger_length}: next_seq is where to continue (null at the end)")), security(("bearer" = [])))]
pub async fn entries(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    principal.require(READERS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    if let Some(d) = q.decision.as_deref()
        && !["ALLOW", "DENY", "HALT"].contains(&d)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("decision '{d}' is not ALLOW, DENY or HALT"),
        ));
    }
    let ledger = state.ledger().clone();
    let from = q.from_seq.unwrap_or(0);
    let (from_ms, to_ms) = (q.from_ms.unwrap_or(0), q.to_ms.unwrap_or(u64::MAX));
    let result = tokio::task::spawn_blocking(move || -> Result<Value, ApiError> {
        let len = ledger.durable_len();
        let mut out = Vec::new();
        let mut next = from;
        for entry in ledger.entries(from, len) {
            let entry = entry.map_err(ApiError::internal)?;
            next = entry.ledger_seq + 1;
            // Entry times never go backwards: past `to_ms` is the end.
            if entry.ts_ms > to_ms {
                next = len;
                break;
            }
            if entry.ts_ms >= from_ms && q.filter().matches(&entry) {
                out.push(entry);
                if out.len() as u64 >= limit {
                    break;
                }
            }
            if next - from >= MAX_SCANNED {
                break;
            }
        }
        Ok(json!({"entries": out, "next_seq": (next < len).then_some(next), "ledger_length": len}))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(result))
}
