//! `kernels investigate`: the anomaly investigation of the playbook (play
//! 3.2) over a time range — from a data dir no service holds, or from a
//! running service (`--server`, through `GET /v1/entries`).
//!
//! It lists the entries of the range (a table, or JSON lines), then the
//! play's analysis: how many entries by actor, by tool (`none` when an
//! entry names none; a denied request names the tool it asked for), by
//! decision, and every entry that carries an error. `--analysis` prints only
//! the analysis, as the play's JSON object.
//!
//! A decision and its outcome (the `kernel.outcome` entry that shares its
//! request id: what an externally run tool did) are listed together: the
//! outcome right after its decision, in the table and in the JSON lines,
//! when both are in the range. The outcomes of the range are read first
//! (a first pass over the data dir; `GET /v1/entries?tool=kernel.outcome`
//! from a service), so that the listing itself stays one pass in seq order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::client::{Client, ServerArgs, expect_ok, runtime};
use super::datadir::{data_dir_of, open_read_only};
use super::{CliError, CliResult, EXIT_OK};
use crate::entry::{Entry, EntryFilter};
use crate::kernel::KernelState;
use crate::kernel::state::event;
use crate::ledger::open::VerifyOnOpen;

/// Errors listed in the text analysis (all are counted; `--analysis` lists all).
const ERRORS_SHOWN: usize = 20;

/// Arguments of `kernels investigate`.
#[derive(Debug, Args)]
pub struct InvestigateArgs {
    /// Data directory (default ./data, or KERNELS_DATA_DIR).
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Investigate a running service at this URL instead (an auditor or
    /// operator token in KERNELS_TOKEN).
    #[arg(long)]
    pub server: Option<String>,
    /// Start of the time range (ms, inclusive).
    #[arg(long)]
    pub from_ms: u64,
    /// End of the time range (ms, inclusive).
    #[arg(long)]
    pub to_ms: u64,
    /// Only entries of this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries naming this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// Only entries with this decision (ALLOW, DENY, HALT).
    #[arg(long)]
    pub decision: Option<String>,
    /// Print the entries as JSON lines instead of a table.
    #[arg(long, conflicts_with = "analysis")]
    pub json: bool,
    /// Print only the play's analysis, as one JSON object.
    #[arg(long)]
    pub analysis: bool,
}

impl InvestigateArgs {
    /// Whether outcomes can be listed at all (they are ALLOW entries).
    fn wants_outcomes(&self) -> bool {
        self.decision.as_deref().is_none_or(|d| d == "ALLOW")
    }

    fn selects(&self, entry: &Entry) -> bool {
        EntryFilter {
            actor: self.actor.as_deref(),
            tool: self.tool.as_deref(),
            decision: self.decision.as_deref(),
            request_id: None,
        }
        .matches(entry)
    }
}

/// An entry with an error, as the play lists it.
#[derive(Debug, Serialize)]
struct ErrorItem {
    request_id: Value,
    error: String,
    ts_ms: u64,
}

/// The play's analysis of a time range.
#[derive(Debug, Serialize)]
struct Analysis {
    time_range: BTreeMap<&'static str, u64>,
    entry_count: u64,
    by_actor: BTreeMap<String, u64>,
    by_tool: BTreeMap<String, u64>,
    by_decision: BTreeMap<String, u64>,
    errors: Vec<ErrorItem>,
}

impl Analysis {
    fn new(from_ms: u64, to_ms: u64) -> Analysis {
        Analysis {
            time_range: [("start", from_ms), ("end", to_ms)].into(),
            entry_count: 0,
            by_actor: BTreeMap::new(),
            by_tool: BTreeMap::new(),
            by_decision: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    fn add(&mut self, entry: &Entry) {
        self.entry_count += 1;
        let actor = match entry.actor.value() {
            Value::String(s) => s.clone(),
            _ => "unknown".into(),
        };
        *self.by_actor.entry(actor).or_default() += 1;
        let tool = entry.tool_name.clone().unwrap_or_else(|| "none".into());
        *self.by_tool.entry(tool).or_default() += 1;
        *self.by_decision.entry(entry.decision.clone()).or_default() += 1;
        if let Some(error) = entry.error.as_ref().filter(|e| !e.is_empty()) {
            self.errors.push(ErrorItem {
                request_id: entry.request_id.value().clone(),
                error: error.clone(),
                ts_ms: entry.ts_ms,
            });
        }
    }

    fn print_text(&self, out: &mut impl Write) {
        let counts = |map: &BTreeMap<String, u64>| -> String {
            if map.is_empty() {
                return "-".into();
            }
            let mut items: Vec<(&String, &u64)> = map.iter().collect();
            items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            items
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(out, "by actor: {}", counts(&self.by_actor));
        let _ = writeln!(out, "by tool: {}", counts(&self.by_tool));
        let _ = writeln!(out, "by decision: {}", counts(&self.by_decision));
        let _ = writeln!(out, "errors: {}", self.errors.len());
        for e in self.errors.iter().take(ERRORS_SHOWN) {
            let id = e
                .request_id
                .as_str()
                .map_or_else(|| e.request_id.to_string(), str::to_owned);
            let _ = writeln!(out, "  {} {id}: {}", e.ts_ms, e.error);
        }
        if self.errors.len() > ERRORS_SHOWN {
            let _ = writeln!(
                out,
                "  … and {} more (--analysis lists them all)",
                self.errors.len() - ERRORS_SHOWN
            );
        }
    }
}

/// Whether `entry` is an outcome (`kernel.outcome`).
fn is_outcome(entry: &Entry) -> bool {
    event::of(entry) == Some(event::OUTCOME)
}

/// What is printed as the entries of the range come in.
struct Report<'a, W: Write> {
    args: &'a InvestigateArgs,
    out: W,
    analysis: Analysis,
    allow: u64,
    deny: u64,
    halts: u64,
    outcomes: u64,
    events: u64,
    /// The outcomes of the range not listed yet, by the request id they
    /// report on (read before the listing).
    pending: HashMap<String, Entry>,
    /// Seqs of outcomes already listed with their decision.
    listed: HashSet<u64>,
}

impl<W: Write> Report<'_, W> {
    /// Keeps an outcome of the range, to list it with its decision.
    fn outcome_ahead(&mut self, entry: Entry) {
        // An outcome names its decision's actor.
        let actor = self.args.actor.as_deref();
        if is_outcome(&entry) && actor.is_none_or(|a| entry.actor.as_str() == a) {
            self.pending
                .insert(entry.request_id.as_str().to_owned(), entry);
        }
    }

    fn entry(&mut self, entry: &Entry) {
        if is_outcome(entry) && self.listed.remove(&entry.ledger_seq) {
            return;
        }
        if !self.args.selects(entry) {
            return;
        }
        self.show(entry, false);
        if entry.decision == "ALLOW"
            && event::of(entry).is_none()
            && let Some(outcome) = self.pending.remove(entry.request_id.as_str())
            && outcome.ledger_seq > entry.ledger_seq
        {
            self.listed.insert(outcome.ledger_seq);
            self.show(&outcome, true);
        }
    }

    /// Counts and prints one entry (`paired`: an outcome under its decision).
    fn show(&mut self, entry: &Entry, paired: bool) {
        self.analysis.add(entry);
        match entry.decision.as_str() {
            _ if is_outcome(entry) => self.outcomes += 1,
            _ if event::of(entry).is_some() => self.events += 1,
            "ALLOW" => self.allow += 1,
            "DENY" => self.deny += 1,
            _ => self.halts += 1,
        }
        if self.args.analysis {
            return;
        }
        if self.args.json {
            let _ = writeln!(
                self.out,
                "{}",
                serde_json::to_string(entry).unwrap_or_default()
            );
            return;
        }
        let seq = if paired {
            format!("\u{21b3} {}", entry.ledger_seq)
        } else {
            entry.ledger_seq.to_string()
        };
        let text = if paired {
            outcome_text(entry)
        } else {
            entry
                .error
                .clone()
                .unwrap_or_else(|| entry.intent.to_string())
        };
        let _ = writeln!(
            self.out,
            "{:>8} {:>14} {:<5} {:<16} {:<18} {}",
            seq,
            entry.ts_ms,
            entry.decision,
            entry.actor.to_string(),
            entry.tool_name.as_deref().unwrap_or("-"),
            text
        );
    }

    fn finish(mut self) {
        if self.args.analysis {
            let _ = writeln!(
                self.out,
                "{}",
                serde_json::to_string(&self.analysis).unwrap_or_default()
            );
        } else if !self.args.json {
            let _ = writeln!(
                self.out,
                "{} entries in range: {} ALLOW, {} DENY, {} HALT, {} outcomes, {} operational events",
                self.analysis.entry_count,
                self.allow,
                self.deny,
                self.halts,
                self.outcomes,
                self.events
            );
            self.analysis.print_text(&mut self.out);
        }
    }
}

/// `kernels investigate`.
pub(super) fn investigate(args: InvestigateArgs) -> CliResult {
    if args.from_ms > args.to_ms {
        return Err(CliError::unusable("--from-ms is after --to-ms"));
    }
    let mut report = Report {
        args: &args,
        out: std::io::stdout().lock(),
        analysis: Analysis::new(args.from_ms, args.to_ms),
        allow: 0,
        deny: 0,
        halts: 0,
        outcomes: 0,
        events: 0,
        pending: HashMap::new(),
        listed: HashSet::new(),
    };
    match &args.server {
        Some(server) => from_service(server, &args, &mut report)?,
        None => from_data_dir(&args, &mut report)?,
    }
    report.finish();
    Ok(EXIT_OK)
}

/// The entries of the range from a data dir, with the state before it.
fn from_data_dir<W: Write>(
    args: &InvestigateArgs,
    report: &mut Report<'_, W>,
) -> Result<(), CliError> {
    let dir = data_dir_of(&args.data_dir);
    let ledger = open_read_only(&dir, VerifyOnOpen::Full)?;
    let len = ledger.durable_len();
    if args.wants_outcomes() {
        for entry in ledger.entries(0, len) {
            let entry = entry.map_err(|e| CliError::unusable(e.to_string()))?;
            if entry.ts_ms > args.to_ms {
                break;
            }
            if entry.ts_ms >= args.from_ms {
                report.outcome_ahead(entry);
            }
        }
    }
    let mut state = KernelState::default();
    let mut printed_state = false;
    for entry in ledger.entries(0, len) {
        let entry = entry.map_err(|e| CliError::unusable(e.to_string()))?;
        if entry.ts_ms > args.to_ms {
            break;
        }
        if entry.ts_ms >= args.from_ms {
            if !printed_state && !args.json && !args.analysis {
                let _ = writeln!(
                    report.out,
                    "state at {} ms: {} (policy version {}, {} entries before the range)",
                    args.from_ms, state.state, state.policy_version, state.head.len
                );
                printed_state = true;
            }
            report.entry(&entry);
        }
        let seq = entry.ledger_seq;
        state
            .apply(&entry)
            .map_err(|e| CliError::unusable(format!("entry {seq}: {e}")))?;
    }
    Ok(())
}

/// The entries of the range from a running service, page by page.
fn from_service<W: Write>(
    server: &str,
    args: &InvestigateArgs,
    report: &mut Report<'_, W>,
) -> Result<(), CliError> {
    let client = Client::new(&ServerArgs {
        server: server.to_owned(),
        json: false,
    })?;
    runtime()?.block_on(async {
        if args.wants_outcomes() {
            let outcomes = [
                ("tool", Some(event::OUTCOME.to_owned())),
                ("actor", args.actor.clone()),
            ];
            read_pages(&client, args, &outcomes, |entry| {
                report.outcome_ahead(entry)
            })
            .await?;
        }
        let filters = [
            ("actor", args.actor.clone()),
            ("tool", args.tool.clone()),
            ("decision", args.decision.clone()),
        ];
        read_pages(&client, args, &filters, |entry| report.entry(&entry)).await
    })
}

/// Every entry of the range that `filters` select, page by page.
async fn read_pages(
    client: &Client,
    args: &InvestigateArgs,
    filters: &[(&'static str, Option<String>)],
    mut each: impl FnMut(Entry),
) -> Result<(), CliError> {
    let mut from_seq = 0u64;
    loop {
        let mut query: Vec<(&str, String)> = vec![
            ("from_seq", from_seq.to_string()),
            ("from_ms", args.from_ms.to_string()),
            ("to_ms", args.to_ms.to_string()),
            ("limit", "1000".into()),
        ];
        query.extend(
            filters
                .iter()
                .filter_map(|(key, value)| Some((*key, value.clone()?))),
        );
        let (code, page) = client.get_query("/v1/entries", &query).await?;
        let page = expect_ok(code, page)?;
        for value in page["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let entry: Entry = serde_json::from_value(value.clone()).map_err(|e| {
                CliError::unusable(format!("the service sent an entry we cannot read: {e}"))
            })?;
            each(entry);
        }
        match page["next_seq"].as_u64() {
            Some(next) if next > from_seq => from_seq = next,
            _ => return Ok(()),
        }
    }
}

/// An outcome as listed under its decision: ok with its result's hash, or
/// failed with its error.
fn outcome_text(outcome: &Entry) -> String {
    let payload = outcome.payload.as_ref();
    let field = |k: &str| payload.and_then(|p| p.get(k)).and_then(Value::as_str);
    let ok = payload
        .and_then(|p| p.get("ok"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match (ok, field("result_sha256"), field("error")) {
        (true, Some(hash), _) => format!("outcome: ok, result sha256 {hash}"),
        (true, None, _) => "outcome: ok".into(),
        (false, _, Some(error)) => format!("outcome: failed: {error}"),
        (false, _, None) => "outcome: failed".into(),
    }
}
