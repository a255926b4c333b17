//! One rotation of a large ledger to an S3-compatible store: time and memory.
//!
//! `cargo bench --bench rotation_scale [-- --entries 1000000 --dir DIR --runs 2 --verify-full]`
//!
//! * The ledger: `--dir DIR` (e.g. the one `ledger_scale --dir` built; it is
//!   copied, never changed) or, without it, a fresh one of `--entries`
//!   entries built through the real submit path.
//! * The store: the s3s-fs harness of `tests/support/s3.rs`, run in a child
//!   process (this binary with `--child-s3 ROOT`) so that the rotating
//!   process's memory is its own; the child's peak RSS is reported too.
//! * Each run (on a fresh copy of the ledger): open the ledger (verification
//!   from the checkpoint by default, so the open's own memory does not hide
//!   the rotation's; `--verify-full` for the service default), reset the peak
//!   RSS, run `kernels::rotator::run::rotate_once` once, and report its wall
//!   time, this process's peak RSS (VmHWM), and an RSS / progress profile
//!   (local segment file and uploaded bytes, sampled every 100 ms). Then
//!   `kernels::rotator::archive::verify` of the archive, timed, with its own
//!   peak RSS.
//!
//! Target: flat memory (peak RSS independent of the segment's size).

mod support;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use kernels::ledger::open::VerifyOnOpen;
use kernels::ledger::{Ledger, LedgerOptions, SystemClock};
use kernels::metrics::Metrics;
use kernels::rotator::objects::{Objects, S3Settings};
use kernels::rotator::run::{Outcome, Target, rotate_once};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use support::*;

const ACCESS_KEY: &str = "kernels-bench-access";
const SECRET_KEY: &str = "kernels-bench-secret-key";
const BUCKET: &str = "archive";
const PREFIX: &str = "kernels-archive";

/// Child: the s3s-fs server of tests/support/s3.rs over `root`, until stdin closes.
fn child_s3(root: &Path) {
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        println!("ADDR {addr}");
        std::io::stdout().flush().unwrap();
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let http = ConnBuilder::new(TokioExecutor::new());
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        std::thread::spawn(move || {
            // The parent closes our stdin to stop us.
            let mut line = String::new();
            while std::io::stdin().lock().read_line(&mut line).unwrap_or(0) > 0 {
                if line.trim() == "HWM" {
                    println!("HWM {}", hwm_mib("self"));
                    std::io::stdout().flush().unwrap();
                }
                line.clear();
            }
            let _ = stop_tx.send(true);
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((socket, _)) = accepted else { continue };
                    let conn = http.serve_connection(TokioIo::new(socket), service.clone()).into_owned();
                    tokio::spawn(async move { let _ = conn.await; });
                }
                _ = stop_rx.changed() => break,
            }
        }
    });
    println!("HWM {}", hwm_mib("self"));
}

struct S3Child {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    addr: String,
}

impl S3Child {
    fn start(root: &Path) -> S3Child {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--child-s3")
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let addr = first.strip_prefix("ADDR ").unwrap().to_owned();
        S3Child {
            child,
            lines: rx,
            addr,
        }
    }

    fn hwm(&mut self) -> f64 {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "HWM").unwrap();
        stdin.flush().unwrap();
        let line = self.lines.recv_timeout(Duration::from_secs(10)).unwrap();
        line.strip_prefix("HWM ").unwrap().parse().unwrap()
    }

    fn stop(mut self) -> f64 {
        drop(self.child.stdin.take());
        let mut hwm = f64::NAN;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            if let Some(v) = line.strip_prefix("HWM ") {
                hwm = v.parse().unwrap();
            }
        }
        let _ = self.child.wait();
        hwm
    }

    fn settings(&self) -> S3Settings {
        S3Settings {
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://{}", self.addr)),
            force_path_style: true,
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            object_lock: None,
        }
    }
}

/// Samples (t, RSS, local segment bytes, uploaded bytes) every 100 ms.
fn sampler(
    work: PathBuf,
    bucket: PathBuf,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> std::thread::JoinHandle<Vec<(f64, f64, u64, u64)>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            v.push((
                t0.elapsed().as_secs_f64(),
                rss_mib("self"),
                dir_bytes(&work),
                dir_bytes(&bucket),
            ));
            std::thread::sleep(Duration::from_millis(100));
        }
        v
    })
}

fn run(src: &Path, kernel_id: &str, verify: VerifyOnOpen, run: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t = Instant::now();
    support::fs::copy_dir(src, &data);
    let copy_s = t.elapsed().as_secs_f64();
    let work = tmp.path().join("work");
    let s3_root = tmp.path().join("s3");
    let mut s3 = S3Child::start(&s3_root);

    let hwm0 = hwm_mib("self");
    let t = Instant::now();
    let mut options =
        LedgerOptions::service(kernel_id, kernels::kernel::Variant::Strict, bench_policy());
    options.external_tools = TOOLS.iter().map(|t| t.to_string()).collect();
    options.verify = verify;
    let ledger = Ledger::open(
        &data,
        options,
        Arc::new(SystemClock),
        Arc::new(Metrics::new()),
    )
    .expect("open");
    let open_s = t.elapsed().as_secs_f64();
    let len = ledger.durable_len();
    let open_hwm = hwm_mib("self");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let objects = rt.block_on(Objects::s3(&s3.settings()));
    let target = Target {
        objects: objects.clone(),
        prefix: PREFIX.into(),
        work_dir: work.clone(),
    };
    let reset = reset_peak("self");
    let rss_before = rss_mib("self");
    let s3_hwm_before = s3.hwm();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let sampling = sampler(work.clone(), s3_root.join(BUCKET), stop.clone(), t0);
    let snap = cpu_snap();
    let cpu0 = proc_cpu("self");
    let outcome = rt
        .block_on(rotate_once(&ledger, &target, "bench"))
        .expect("rotation");
    let rotate_s = t0.elapsed().as_secs_f64();
    let cpu = proc_cpu("self") - cpu0;
    let busy = snap.busy_since();
    stop.store(true, Ordering::Relaxed);
    let samples = sampling.join().unwrap();
    let rotate_hwm = hwm_mib("self");
    let s3_hwm = s3.hwm();
    let Outcome::Archived { manifest, .. } = outcome else {
        panic!("nothing archived: {outcome:?}")
    };
    println!(
        "run {run}: copy {copy_s:.1}s; open ({verify:?}) {open_s:.2}s, len {len}, VmHWM before open {hwm0:.1} MiB, after open {open_hwm:.1} MiB"
    );
    println!(
        "run {run}: rotate_once {rotate_s:.2}s ({:.0} entries/s) for {} entries, segment {:.1} MiB; rotator process cpu {cpu:.1}s, s3 child + others {:.1} cpu-s",
        manifest.entry_count as f64 / rotate_s,
        manifest.entry_count,
        manifest.segment_bytes as f64 / 1048576.0,
        (busy - cpu).max(0.0)
    );
    println!(
        "run {run}: rotator VmHWM during rotation {rotate_hwm:.1} MiB (RSS before {rss_before:.1} MiB; peak reset: {reset}); s3 server VmHWM {s3_hwm_before:.1} -> {s3_hwm:.1} MiB"
    );
    let mut profile = String::new();
    let mut last_t = -1.0;
    for (t, rss, local, uploaded) in &samples {
        if *t - last_t >= 0.5 {
            profile.push_str(&format!(
                "\n    t={t:>5.1}s rss={rss:>6.1} MiB local_segment={:>6.1} MiB uploaded={:>6.1} MiB",
                *local as f64 / 1048576.0,
                *uploaded as f64 / 1048576.0
            ));
            last_t = *t;
        }
    }
    println!("run {run}: profile{profile}");

    // Verify the archive, with its own peak.
    let reset = reset_peak("self");
    let rss_before = rss_mib("self");
    let t = Instant::now();
    let report = rt
        .block_on(kernels::rotator::archive::verify(
            &objects, PREFIX, kernel_id,
        ))
        .expect("archive verify");
    let verify_s = t.elapsed().as_secs_f64();
    println!(
        "run {run}: archive::verify {verify_s:.2}s: valid={} manifests={} segments={} entries={} ({:.0} entries/s); VmHWM {:.1} MiB (RSS before {rss_before:.1}; reset {reset}); errors {:?}",
        report.valid,
        report.manifests,
        report.segments,
        report.entries_verified,
        report.entries_verified as f64 / verify_s,
        hwm_mib("self"),
        report.errors.first()
    );
    assert!(report.valid);
    ledger.close().unwrap();
    drop(rt);
    let s3_final = s3.stop();
    println!("run {run}: s3 server final VmHWM {s3_final:.1} MiB");
}

fn main() {
    // As the `kernels` binary does.
    kernels::allocator::tune();
    if let Some(root) = arg_str("--child-s3") {
        child_s3(Path::new(&root));
        return;
    }
    let runs = arg_u64("--runs", 2);
    let verify = if flag("--verify-full") {
        VerifyOnOpen::Full
    } else {
        VerifyOnOpen::FromCheckpoint
    };
    let kernel_id = arg_str("--kernel-id").unwrap_or_else(|| "bench-scale".into());
    let built = tempfile::tempdir().unwrap();
    let src = match arg_str("--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            let n = arg_u64("--entries", 1_000_000);
            let dir = built.path().join("data");
            let t = build_ledger(&dir, &kernel_id, n, 64);
            println!("built {n} entries in {:.1}s", t.as_secs_f64());
            dir
        }
    };
    println!(
        "rotation_scale: ledger {} ({:.0} MiB), kernel {kernel_id}",
        src.display(),
        dir_bytes(&src) as f64 / 1048576.0
    );
    for r in 1..=runs {
        run(&src, &kernel_id, verify, r);
    }
}
