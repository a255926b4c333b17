//! File helpers shared by the integration tests, the benches (through
//! `benches/support`) and the storage migration's unit test (`src/store/migrate.rs`),
//! each of which includes this one file.

use std::path::Path;

/// Copies the directory `from` to `to`, recursively, leaving out sled's
/// `LOCK` file (so the copy opens while the original is open).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let dest = to.join(item.file_name());
        if item.file_type().unwrap().is_dir() {
            copy_dir(&item.path(), &dest);
        } else if item.file_name() != "LOCK" {
            std::fs::copy(item.path(), dest).unwrap();
        }
    }
}
