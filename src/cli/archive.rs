//! `kernels archive verify` and `kernels archive replay`: forensics from the
//! archive alone (an S3 bucket, or a directory of downloaded objects), with
//! no service and no data dir.

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
            ArchiveCommand::Verify { location, json } => {
                let r = location.resolve().await?;
                let report = archive::verify(&r.objects, &r.prefix, &r.kernel_id)
                    .await
                    .map_err(|e| CliError::unusable(e.to_string()))?;
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
                    for e in &report.errors {
                        let seq = e.seq.map(|s| format!(" (entry {s})")).unwrap_or_default();
                        println!(
                            "  error: {}{seq}: {}",
                            e.object.as_deref().unwrap_or("archive"),
                            e.message
                        );
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
