//! The data directory: what makes a folder a kernels data dir, who holds it,
//! and which storage format it is in.
//!
//! ```text
//! <data_dir>/KERNELS_FORMAT   "kernels data dir" + format version (written once, fsynced)
//! <data_dir>/LOCK             advisory lock held by the process using the dir (+ its pid)
//! <data_dir>/DURABLE_HEAD     a head known to be durable ("<len> <hash>"), refreshed
//!                             after commits; a store shorter than this lost entries
//! <data_dir>/ledger/          the sled database
//! ```
//!
//! Opening refuses, with a message that says why: a folder that has files but
//! no marker (not a kernels data dir), a format newer than this build, and a
//! dir another process holds. An older format is upgraded by the steps listed
//! in [`MIGRATIONS`] (documented one file per version in `migrations/`).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::StoreError;
use crate::STORAGE_FORMAT_VERSION;

const MARKER: &str = "KERNELS_FORMAT";
const LOCK: &str = "LOCK";
const DURABLE_HEAD: &str = "DURABLE_HEAD";
const MARKER_MAGIC: &str = "kernels data dir";
/// The sled database, inside the data dir.
const LEDGER: &str = "ledger";

/// One upgrade step: from format `from` to `from + 1`, applied to the dir.
pub type Migration = fn(&Path) -> Result<(), StoreError>;

/// Upgrade steps, indexed by the version they upgrade from; `migrations/`
/// documents each version.
pub const MIGRATIONS: &[(u32, Migration)] = &[(1, migrate_1_to_2), (2, migrate_2_to_3)];

/// Format 2 adds the write-ahead log beside the sled database
/// (`ledger.wal/`). A format 1 dir has none, and every commit of format 1
/// was already durable in sled: nothing to convert; the log is created on
/// open. The step only checks that no stray log is there.
fn migrate_1_to_2(path: &Path) -> Result<(), StoreError> {
    let wal = path.join("ledger.wal");
    if wal.exists() && fs::read_dir(&wal)?.next().is_some() {
        return Err(StoreError::DataDir(format!(
            "{} is a format 1 data dir but already has a write-ahead log; refusing to guess",
            path.display()
        )));
    }
    Ok(())
}

/// Format 3 replaces the one sled key per request id (`r <request_id>`)
/// by request records keyed by seq and an in-memory index of request-id
/// fingerprints, persisted in blocks (see `sled_store`). The step converts
/// every record, writes the fingerprint blocks and rewrites the database
/// compactly; an interrupted run is simply run again.
fn migrate_2_to_3(path: &Path) -> Result<(), StoreError> {
    super::sled_store::migrate_request_records(&path.join(LEDGER))
}

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
        let mut current = version;
        while current < STORAGE_FORMAT_VERSION {
            let step = MIGRATIONS
                .iter()
                .find(|(from, _)| *from == current)
                .ok_or_else(|| {
                    StoreError::DataDir(format!("no migration from storage format {current}"))
                })?;
            (step.1)(path)?;
            current += 1;
            write_marker(path, current)?;
        }
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
            opened_version: version,
            created,
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
        write_atomic(
            &self.path,
            DURABLE_HEAD,
            format!("{len} {hash}\n").as_bytes(),
        )
    }
}

fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = path.join(LOCK);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            let _ = writeln!(file, "{}", std::process::id());
            Ok(file)
        }
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                String::new()
            } else {
                format!(" (pid {holder})")
            };
            Err(StoreError::DataDir(format!(
                "data dir {} is in use by another kernels process{who}; stop it, or use its HTTP API (e.g. GET /v1/evidence)",
                path.display()
            )))
        }
        Err(fs::TryLockError::Error(e)) => Err(e.into()),
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
    write_atomic(
        path,
        MARKER,
        format!("{MARKER_MAGIC}\nformat_version={version}\n").as_bytes(),
    )
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)?;
    Ok(())
}

/// fsyncs a directory, so that new or renamed entries in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
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
        assert!(
            err.to_string()
                .contains("in use by another kernels process"),
            "{err}"
        );
        drop(dir);
        let again = DataDir::open(&path, false).unwrap();
        assert!(!again.created);
        assert_eq!(again.opened_version, STORAGE_FORMAT_VERSION);
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
        let tmp = tempfile::tempdir().unwrap();
        let name = tmp.path().file_name().unwrap().to_owned();
        let parent = tmp.path().parent().unwrap();
        // `DataDir::open("x")` relative to the current dir: emulate with a
        // path whose parent is the empty path.
        let rel = Path::new(&name).join("data-rel");
        let abs = parent.join(&rel);
        assert!(DataDir::open(&abs, true).is_ok());
        assert_eq!(Path::new("data").parent(), Some(Path::new("")));
    }

    #[test]
    fn durable_head_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path(), true).unwrap();
        assert_eq!(dir.durable_head().unwrap(), None);
        dir.set_durable_head(5, "abc").unwrap();
        assert_eq!(dir.durable_head().unwrap(), Some((5, "abc".to_owned())));
    }
}
