//! `kernels archive verify` and `kernels archive replay`: forensics from the
//! archive alone (an S3 bucket, or a directory of downloaded objects), with
//! no service and no data dir.
//!
//! `verify` can also check that the archive reaches the last seq the ledger
//! recorded as archived: given with `--expect-seq`, or asked of a running
//! service (`--service URL`, or the `listen` address of `--config`; the token
//! comes from `KERNELS_TOKEN`). With `--key`, every manifest's signed
//! checkpoint is checked against the archived entries; `--expect-checkpoint`
//! names a checkpoint the archive must reach.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CliError, CliResult, EXIT_NEGATIVE, EXIT_OK};
use crate::rotator::archive;
use crate::rotator::objects::{Objects, S3Settings};

/// Where the archive is.
#[derive(Debug, Clone, Args)]
pub struct ArchiveLocation {
    /// Read bucket, prefix, region, endpoint and kernel id from this config
    /// file (default: config/kernels.yaml when it exists).
    #[arg(long, env = "KERNELS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Bucket.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Key prefix (default kernels-archive).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Kernel id.
    #[arg(long)]
    pub kernel_id: Option<String>,
    /// Endpoint of an S3-compatible store.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Region (default us-east-1).
    #[arg(long)]
    pub region: Option<String>,
    /// Path-style addressing.
    #[arg(long)]
    pub force_path_style: bool,
    /// A local directory holding downloaded objects (the bucket's key
    /// layout), instead of S3.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

struct Resolved {
    objects: Objects,
    prefix: String,
    kernel_id: String,
}

impl ArchiveLocation {
    async fn resolve(&self) -> Result<Resolved, CliError> {
        let env = |k: &str| std::env::var(k).ok();
        let (raw, _) = crate::config::read_raw(self.config.as_deref(), &env)
            .map_err(|e| CliError::unusable(e.to_string()))?;
        let rot = raw.rotation.unwrap_or_default();
        let kernel_id = self
            .kernel_id
            .clone()
            .or_else(|| env("KERNELS_KERNEL_ID"))
            .or(raw.kernel.and_then(|k| k.id))
            .ok_or_else(|| CliError::unusable("give --kernel-id (or a config with kernel.id)"))?;
        let prefix = self
            .prefix
            .clone()
            .or_else(|| env("KERNELS_ROTATION_PREFIX"))
            .or(rot.prefix)
            .unwrap_or_else(|| "kernels-archive".into())
            .trim_matches('/')
            .to_owned();
        let objects = match &self.dir {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(CliError::unusable(format!(
                        "{} is not a directory",
                        dir.display()
                    )));
                }
                Objects::Dir(dir.clone())
            }
            None => {
                let bucket = self
                    .bucket
                    .clone()
                    .or_else(|| env("KERNELS_ROTATION_BUCKET"))
                    .or(rot.bucket)
                    .ok_or_else(|| {
                        CliError::unusable(
                            "give --bucket or --dir (or a config with rotation.bucket)",
                        )
                    })?;
                Objects::s3(&S3Settings {
                    bucket,
                    region: self
                        .region
                        .clone()
                        .or_else(|| env("KERNELS_ROTATION_REGION"))
                        .or(rot.region)
                        .unwrap_or_else(|| "us-east-1".into()),
                    endpoint: self
                        .endpoint
                        .clone()
                        .or_else(|| env("KERNELS_ROTATION_ENDPOINT"))
                        .or(rot.endpoint),
                    force_path_style: self.force_path_style
                        || rot.force_path_style.unwrap_or(false),
                    credentials: None,
                    object_lock: None,
                })
                .await
            }
        };
        Ok(Resolved {
            objects,
            prefix,
            kernel_id,
        })
    }
}

/// `kernels archive …`.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Verify every manifest and segment of a kernel's archive (exit 0 valid, 1 invalid, 2 unusable).
    Verify {
        /// Where.
        #[command(flatten)]
        location: ArchiveLocation,
        /// The archive must reach at least this seq (the ledger's last
        /// archived seq: `last_rotation.to_seq` in the status); an archive
        /// that ends earlier is INVALID.
        #[arg(long)]
        expect_seq: Option<u64>,
        /// Ask this running service for the last archived seq (token from
        /// KERNELS_TOKEN). Default with --config: the config's listen address,
        /// when the service answers there.
        #[arg(long, conflicts_with = "expect_seq")]
        service: Option<String>,
        /// The log's verifier key (or @FILE): every manifest's signed
        /// checkpoint is checked against the archived entries, and
        /// consecutive checkpoints for consistency.
        #[arg(long, value_name = "VKEY")]
        key: Option<String>,
        /// A signed checkpoint the archive must reach (e.g. the newest
        /// rotation's): an archive whose entries do not cover it, or give
        /// another root, is INVALID. Needs --key.
        #[arg(long, value_name = "FILE", requires = "key")]
        expect_checkpoint: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the kernel state from the archive alone.
    Replay {
        /// Where.
        #[command(flatten)]
        location: ArchiveLocation,
        /// Replay up to and including this seq.
        #[arg(long, conflicts_with = "at_ms")]
        until_seq: Option<u64>,
        /// Replay the entries made at or before this time (ms).
        #[arg(long)]
        at_ms: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The last archived seq according to a running service: `--service URL`,
/// else the `listen` address of an explicit `--config` (a service that
/// cannot be reached there is a warning, not an error).
async fn expected_from_service(
    location: &ArchiveLocation,
    service: Option<String>,
) -> Result<(Option<u64>, Option<String>), CliError> {
    let (url, explicit) = match service {
        Some(url) => (url, true),
        None => {
            let Some(path) = &location.config else {
                return Ok((None, None));
            };
            let env = |k: &str| std::env::var(k).ok();
            let (raw, _) = crate::config::read_raw(Some(path), &env)
                .map_err(|e| CliError::unusable(e.to_string()))?;
            let listen = raw.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
            (format!("http://{listen}"), false)
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| CliError::unusable(format!("cannot build an HTTP client: {e}")))?;
    let mut req = client.get(format!("{}/v1/status", url.trim_end_matches('/')));
    if let Ok(token) = std::env::var("KERNELS_TOKEN") {
        req = req.bearer_auth(token);
    }
    let asked = match req.send().await {
        Ok(resp) if resp.status().is_success() => resp
            .json::<serde_json::Value>()
            .await
            .map_err(|e| format!("{url}: the status is not JSON: {e}")),
        Ok(resp) => Err(format!(
            "{url} answered {} (set KERNELS_TOKEN)",
            resp.status()
        )),
        Err(e) => Err(format!("cannot reach {url}: {e}")),
    };
    match asked {
        Ok(status) => Ok((status["last_rotation"]["to_seq"].as_u64(), None)),
        Err(e) if explicit => Err(CliError::unusable(format!(
            "asking the service for the last archived seq: {e}"
        ))),
        Err(e) => Ok((
            None,
            Some(format!(
                "the archive's end was not checked against the ledger ({e}); give --expect-seq or --service"
            )),
        )),
    }
}

/// The checkpoint checks of `archive verify`, parsed at the edge.
fn tree_checks(
    key: Option<&str>,
    expected: Option<&std::path::Path>,
) -> Result<archive::TreeChecks, CliError> {
    let key = key
        .map(|k| super::proofs::load_key(k, "--key"))
        .transpose()?;
    let expected = match expected {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::unusable(format!("--expect-checkpoint {}: {e}", path.display()))
            })?;
            Some(
                crate::checkpoint::SignedCheckpoint::parse(&text).map_err(|e| {
                    CliError::unusable(format!("--expect-checkpoint {}: {e}", path.display()))
                })?,
            )
        }
        None => None,
    };
    Ok(archive::TreeChecks { key, expected })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::unusable(format!("cannot start the runtime: {e}")))
}

/// `kernels archive`.
pub(super) fn archive(cmd: ArchiveCommand) -> CliResult {
    runtime()?.block_on(async move {
        match cmd {
            ArchiveCommand::Verify {
                location,
                expect_seq,
                service,
                key,
                expect_checkpoint,
                json,
            } => {
                let checks = tree_checks(key.as_deref(), expect_checkpoint.as_deref())?;
                let r = location.resolve().await?;
                let (expected, note) = match expect_seq {
                    Some(seq) => (Some(seq), None),
                    None => expected_from_service(&location, service).await?,
                };
                let verified =
                    archive::verify_with(&r.objects, &r.prefix, &r.kernel_id, &checks).await;
                let mut report = match verified {
                    Ok(report) => report,
                    // Nothing archived at all, while the ledger says otherwise.
                    Err(archive::ArchiveError::Empty(_))
                        if expected.is_some() || checks.expected.is_some() =>
                    {
                        let mut report = archive::ArchiveReport::empty();
                        if let Some(cp) = &checks.expected {
                            report.errors.push(archive::ArchiveProblem {
                                object: None,
                                seq: Some(0),
                                message: format!(
                                    "the archive is empty, but the expected checkpoint covers {} entries",
                                    cp.checkpoint.size
                                ),
                            });
                            report.valid = false;
                        }
                        report
                    }
                    Err(e) => return Err(CliError::unusable(e.to_string())),
                };
                if let Some(seq) = expected {
                    archive::expect_end(&mut report, seq);
                }
                report.warnings.extend(note);
                if json {
                    println!("{}", serde_json::to_string(&report).unwrap_or_default());
                } else {
                    println!(
                        "{}: {} manifests, {} segments, {} entries verified, last seq {}, root {}",
                        if report.valid { "VALID" } else { "INVALID" },
                        report.manifests,
                        report.segments,
                        report.entries_verified,
                        report.last_seq.map_or("-".to_owned(), |s| s.to_string()),
                        report.root_hash
                    );
                    for e in report.errors.iter().take(super::LISTED_PROBLEMS) {
                        let seq = e.seq.map(|s| format!(" (entry {s})")).unwrap_or_default();
                        println!(
                            "  error: {}{seq}: {}",
                            e.object.as_deref().unwrap_or("archive"),
                            e.message
                        );
                    }
                    if let Some(more) = super::more_problems(report.errors.len()) {
                        println!("{more}");
                    }
                    for w in &report.warnings {
                        println!("  warning: {w}");
                    }
                }
                Ok(if report.valid { EXIT_OK } else { EXIT_NEGATIVE })
            }
            ArchiveCommand::Replay {
                location,
                until_seq,
                at_ms,
                json,
            } => {
                let r = location.resolve().await?;
                let state = archive::replay(&r.objects, &r.prefix, &r.kernel_id, until_seq, at_ms)
                    .await
                    .map_err(|e| CliError::unusable(e.to_string()))?;
                super::datadir::print_state(&state, json);
                Ok(EXIT_OK)
            }
        }
    })
}
