//! File-system steps that make things durable: fsync of a directory (so
//! that a created, renamed or deleted name survives a power loss), an
//! atomic whole-file replace, and an fsync of every file of a tree.
//!
//! A leaf: the data dir, the write-ahead log, the sled store and the
//! migrations all use it, and it uses none of them.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// fsyncs a directory, so that new, renamed or deleted entries in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `dir/name` with `bytes` atomically: write a temporary file,
/// fsync it, rename it over the old one, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// fsyncs every file below `dir`, then the directories themselves.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for item in fs::read_dir(dir)? {
        let item = item?;
        if item.file_type()?.is_dir() {
            sync_tree(&item.path())?;
        } else {
            File::open(item.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}
