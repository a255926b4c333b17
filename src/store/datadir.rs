//! The data directory: what makes a folder a kernels data dir, who holds it,
//! and which storage format it is in.
//!
//! ```text
//! <data_dir>/KERNELS_FORMAT   "kernels data dir" + format version (written once, fsynced)
//! <data_dir>/LOCK             advisory lock held by the process using the dir (+ its pid)
//! <data_dir>/DURABLE_HEAD     a head known to be durable ("<len> <hash>"), fsynced,
//!                             refreshed every checkpoint interval and on a clean stop
//! <data_dir>/LAST_COMMIT      the head of the last commit ("<len> <hash> <crc>"),
//!                             rewritten in place after every commit, not fsynced
//! <data_dir>/SIGNED_HEAD      the largest signed tree head ("<size> <root> <crc>" and
//!                             the verifier key), rewritten in place once it is
//!                             durable in the store, not fsynced
//! <data_dir>/signing.key      the checkpoint signing key, when none is configured
//! <data_dir>/ledger/          the sled database
//! ```
//!
//! The two head files are traces of how long the ledger was: a store that
//! comes back shorter than either has lost committed entries (the ledger
//! refuses to open it). `DURABLE_HEAD` survives a power loss; `LAST_COMMIT`
//! costs one `pwrite` per commit and survives a crash of the process (the
//! page cache keeps it). It is written after the commit's `fdatasync`, so it
//! never claims more than the store has, and before the commit's waiters are
//! acknowledged, so it covers every acknowledged entry.
//!
//! Opening refuses, with a message that says why: a folder that has files but
//! no marker (not a kernels data dir), a format newer than this build, and a
//! dir another process holds. An older format is upgraded by the steps of
//! [`super::migrate`] (documented one file per version in `migrations/`).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::StoreError;
use super::fs::{sync_dir, write_atomic};
use crate::STORAGE_FORMAT_VERSION;

const MARKER: &str = "KERNELS_FORMAT";
const LOCK: &str = "LOCK";
const DURABLE_HEAD: &str = "DURABLE_HEAD";
const LAST_COMMIT: &str = "LAST_COMMIT";
const SIGNED_HEAD: &str = "SIGNED_HEAD";
const MARKER_MAGIC: &str = "kernels data dir";
/// The sled database, inside the data dir.
const LEDGER: &str = "ledger";

/// An open, locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    /// The format version the dir was in before opening (after migration it
    /// is [`STORAGE_FORMAT_VERSION`]).
    pub opened_version: u32,
    /// Whether the dir was created by this open.
    pub created: bool,
    /// `LAST_COMMIT`, opened at the first commit noted.
    last_commit: OnceLock<File>,
    /// `SIGNED_HEAD`, opened at the first signed head noted.
    signed_head: OnceLock<File>,
}

impl DataDir {
    /// Opens (and with `create`, creates) the data dir at `path`.
    pub fn open(path: &Path, create: bool) -> Result<DataDir, StoreError> {
        match fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::DataDir(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !create {
                    return Err(StoreError::DataDir(format!(
                        "no data dir at {}",
                        path.display()
                    )));
                }
                fs::create_dir_all(path)?;
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                sync_dir(parent)?;
            }
            Err(e) => return Err(e.into()),
        }
        let lock = lock(path)?;
        let marker = path.join(MARKER);
        let (version, created) = match fs::read_to_string(&marker) {
            Ok(text) => (parse_marker(&text, path)?, false),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let stray = fs::read_dir(path)?
                    .filter_map(Result::ok)
                    .any(|f| f.file_name() != LOCK);
                if stray {
                    return Err(StoreError::DataDir(format!(
                        "{} is not a kernels data dir (it has files but no {MARKER}); refusing to use it",
                        path.display()
                    )));
                }
                if !create {
                    return Err(StoreError::DataDir(format!(
                        "no data dir at {}",
                        path.display()
                    )));
                }
                write_marker(path, STORAGE_FORMAT_VERSION)?;
                (STORAGE_FORMAT_VERSION, true)
            }
            Err(e) => return Err(e.into()),
        };
        if version > STORAGE_FORMAT_VERSION {
            return Err(StoreError::DataDir(format!(
                "{} uses storage format {version}, written by a newer kernels; this build reads formats up to {STORAGE_FORMAT_VERSION}",
                path.display()
            )));
        }
        super::migrate::upgrade(path, version, |done| write_marker(path, done))?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
            opened_version: version,
            created,
            last_commit: OnceLock::new(),
            signed_head: OnceLock::new(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the sled database lives.
    pub fn ledger_path(&self) -> PathBuf {
        self.path.join(LEDGER)
    }

    /// The durable head recorded last, if any: `(len, hash)`.
    pub fn durable_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        match fs::read_to_string(self.path.join(DURABLE_HEAD)) {
            Ok(text) => {
                let mut parts = text.split_whitespace();
                let len = parts.next().and_then(|n| n.parse().ok());
                let hash = parts.next().map(str::to_owned);
                match (len, hash) {
                    (Some(len), Some(hash)) => Ok(Some((len, hash))),
                    _ => Err(StoreError::DataDir(format!("{DURABLE_HEAD} is unreadable"))),
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a head that is durable in the store (atomically: write, fsync, rename).
    pub fn set_durable_head(&self, len: u64, hash: &str) -> Result<(), StoreError> {
        Ok(write_atomic(
            &self.path,
            DURABLE_HEAD,
            format!("{len} {hash}\n").as_bytes(),
        )?)
    }

    /// Notes the head of a commit that just became durable in the store: one
    /// `pwrite` of a fixed-size line, not fsynced (see the module doc).
    pub fn note_commit(&self, len: u64, hash: &str) -> Result<(), StoreError> {
        self.note(&self.last_commit, LAST_COMMIT, &head_line(len, hash, None))
    }

    /// The head of the last commit noted, if `LAST_COMMIT` is there and
    /// whole (a line torn by a power loss is ignored, with a warning).
    pub fn last_commit(&self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .read_note(LAST_COMMIT)?
            .map(|(len, hash, _)| (len, hash)))
    }

    /// Notes the largest signed tree head once it is durable in the store
    /// (`size`, `root` in hex, the signer's verifier key): like
    /// [`DataDir::note_commit`], one `pwrite`, not fsynced.
    pub fn note_signed_head(&self, size: u64, root: &str, key: &str) -> Result<(), StoreError> {
        self.note(
            &self.signed_head,
            SIGNED_HEAD,
            &head_line(size, root, Some(key)),
        )
    }

    /// The signed tree head noted, if `SIGNED_HEAD` is there and whole:
    /// `(size, root hex, verifier key)`.
    pub fn signed_head(&self) -> Result<Option<(u64, String, String)>, StoreError> {
        self.read_note(SIGNED_HEAD)
    }

    /// Overwrites note file `name` (kept open in `slot`) with `line`.
    fn note(&self, slot: &OnceLock<File>, name: &str, line: &str) -> Result<(), StoreError> {
        let file = match slot.get() {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(self.path.join(name))?;
                sync_dir(&self.path)?;
                slot.get_or_init(|| file)
            }
        };
        file.write_all_at(line.as_bytes(), 0)?;
        Ok(())
    }

    /// Reads note file `name`: `(len, hash, rest)`, or None when it is
    /// missing or torn (a torn note is ignored, with a warning).
    fn read_note(&self, name: &str) -> Result<Option<(u64, String, String)>, StoreError> {
        let text = match fs::read_to_string(self.path.join(name)) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let parsed = text.lines().next().and_then(|line| {
            let (body, crc) = line.rsplit_once(' ')?;
            if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
                return None;
            }
            let mut parts = body.splitn(3, ' ');
            let (len, hash) = (parts.next()?, parts.next()?);
            let rest = parts.next().unwrap_or_default().to_owned();
            Some((len.parse().ok()?, hash.to_owned(), rest))
        });
        if parsed.is_none() {
            tracing::warn!(
                file = %self.path.join(name).display(),
                "a note beside the store is unreadable (torn by a power loss?); ignoring it"
            );
        }
        Ok(parsed)
    }
}

/// A note's line: `<len:020> <hash>[ <extra>] <crc32>`; for one kind of
/// note always the same length, so an overwrite in place leaves no tail of
/// an older line.
fn head_line(len: u64, hash: &str, extra: Option<&str>) -> String {
    let mut body = format!("{len:020} {hash}");
    if let Some(extra) = extra {
        body.push(' ');
        body.push_str(extra);
    }
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body} {crc:08x}\n")
}

/// How long an open waits for a lock that our own process holds. A child
/// this process is starting (`kernels verify` in a child, an MCP server, a
/// test's subprocess) holds a copy of every descriptor from its fork until
/// its `exec`, and the lock goes with the copy: a reopen right after a close
/// can find the lock still held for that moment.
const OWN_LOCK_WAIT: Duration = Duration::from_secs(2);

fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = path.join(LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                let _ = writeln!(file, "{}", std::process::id());
                return Ok(file);
            }
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                let holder = holder.trim();
                if holder == std::process::id().to_string() && started.elapsed() < OWN_LOCK_WAIT {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let who = if holder.is_empty() {
                    "another kernels process".to_owned()
                } else if holder == std::process::id().to_string() {
                    format!("this process (pid {holder}), which has it open already")
                } else {
                    format!("another kernels process (pid {holder})")
                };
                return Err(StoreError::DataDir(format!(
                    "data dir {} is in use by {who}; stop it, or use its HTTP API (e.g. GET /v1/evidence)",
                    path.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

fn parse_marker(text: &str, path: &Path) -> Result<u32, StoreError> {
    let mut lines = text.lines();
    let magic_ok = lines.next() == Some(MARKER_MAGIC);
    let version = lines
        .find_map(|l| l.strip_prefix("format_version="))
        .and_then(|v| v.trim().parse().ok());
    match (magic_ok, version) {
        (true, Some(v)) => Ok(v),
        _ => Err(StoreError::DataDir(format!(
            "{} is not a kernels data dir ({MARKER} is unreadable)",
            path.display()
        ))),
    }
}

fn write_marker(path: &Path, version: u32) -> Result<(), StoreError> {
    Ok(write_atomic(
        path,
        MARKER,
        format!("{MARKER_MAGIC}\nformat_version={version}\n").as_bytes(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_gets_a_marker_and_a_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let dir = DataDir::open(&path, true).unwrap();
        assert!(dir.created);
        assert!(path.join(MARKER).exists());
        let err = DataDir::open(&path, true).unwrap_err();
        assert!(err.to_string().contains("in use by this process"), "{err}");
        drop(dir);
        let again = DataDir::open(&path, false).unwrap();
        assert!(!again.created);
        assert_eq!(again.opened_version, STORAGE_FORMAT_VERSION);
    }

    #[test]
    fn a_lock_our_process_still_holds_for_a_moment_is_waited_for() {
        // As when a child being started holds a copy of the descriptor
        // until it execs: the holder is this process, and it lets go soon.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data");
        let dir = DataDir::open(&path, true).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(dir);
        });
        let started = Instant::now();
        let again = DataDir::open(&path, false).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(!again.created);
        holder.join().unwrap();
    }

    #[test]
    fn foreign_and_newer_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
        let err = DataDir::open(tmp.path(), true).unwrap_err();
        assert!(
            err.to_string().contains("is not a kernels data dir"),
            "{err}"
        );

        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join(MARKER),
            "kernels data dir\nformat_version=99\n",
        )
        .unwrap();
        let err = DataDir::open(tmp.path(), true).unwrap_err();
        assert!(err.to_string().contains("newer kernels"), "{err}");

        let tmp = tempfile::tempdir().unwrap();
        let err = DataDir::open(&tmp.path().join("missing"), false).unwrap_err();
        assert!(err.to_string().contains("no data dir"), "{err}");
    }

    #[test]
    fn a_relative_single_component_path_works() {
        // `DataDir::open("data-rel")`, relative to the current directory:
        // its parent is the empty path, which must be taken for ".". Run as
        // a child process (the test binary itself, this test only) so that
        // changing the current directory does not disturb other tests.
        const CHILD: &str = "KERNELS_TEST_RELATIVE_DATA_DIR";
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(Path::new("data-rel").parent(), Some(Path::new("")));
            let dir = DataDir::open(Path::new("data-rel"), true).unwrap();
            assert!(dir.created);
            assert!(Path::new("data-rel").join(MARKER).exists());
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::datadir::tests::a_relative_single_component_path_works",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(tmp.path().join("data-rel").join(MARKER).exists());
    }

    #[test]
    fn durable_head_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), true).unwrap();
        assert_eq!(dir.durable_head().unwrap(), None);
        dir.set_durable_head(5, "abc").unwrap();
        assert_eq!(dir.durable_head().unwrap(), Some((5, "abc".to_owned())));
    }

    #[test]
    fn the_last_commit_is_noted_in_place_and_a_torn_note_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), true).unwrap();
        assert_eq!(dir.last_commit().unwrap(), None);
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        dir.note_commit(9_999, &a).unwrap();
        dir.note_commit(10_000, &b).unwrap();
        assert_eq!(dir.last_commit().unwrap(), Some((10_000, b.clone())));
        dir.note_commit(7, &a).unwrap();
        assert_eq!(dir.last_commit().unwrap(), Some((7, a)));
        let path = tmp.path().join(LAST_COMMIT);
        let mut bytes = fs::read(&path).unwrap();
        bytes[30] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert_eq!(dir.last_commit().unwrap(), None);
    }
}
