//! How sled's failures become [`StoreError`]s: a corrupt database is a
//! clear error that says what to do (never a panic backtrace), anything
//! else an engine error.
//!
//! sled 0.34.7 reports most on-disk damage as `Error::Corruption` (or, for
//! a damaged config file, `Unsupported`), but can also panic on it; both
//! become [`StoreError::DataDir`] naming the database and the way out.

use std::path::Path;

use super::StoreError;

/// A sled error met while using the database: corruption gets the clear
/// message (the CLI names the data dir in front of it), the rest is an
/// engine error.
pub(super) fn engine(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Corruption { .. } => StoreError::DataDir(format!(
            "the sled database is corrupt ({e}); restore the data dir from a backup or rebuild it from the archive (`kernels verify --data-dir` gives details)"
        )),
        other => StoreError::Engine(other.to_string()),
    }
}

thread_local! {
    /// Set while this thread runs sled code whose panics are contained.
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(its message)`, without the panic
/// being printed: sled 0.34 can panic on a corrupt file instead of
/// returning an error, and a corrupt data dir must get a clear error, not
/// a backtrace. (A process-wide hook is installed once; it stays silent
/// only for the thread inside `contain`, and defers to the previous hook
/// for every other panic.)
pub(super) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned())
    })
}

/// The error for a sled database that cannot be read: what is wrong, where,
/// and what to do.
pub(super) fn corrupt_database(path: &Path, what: &str) -> StoreError {
    let data_dir = path.parent().unwrap_or(path);
    StoreError::DataDir(format!(
        "the sled database {} is corrupt or unreadable ({what}); restore the data dir {} from a backup or rebuild it from the archive (`kernels verify --data-dir {}` gives details)",
        path.display(),
        data_dir.display(),
        data_dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error_with_its_message() {
        assert_eq!(contain(|| 7), Ok(7));
        let caught: Result<(), String> = contain(|| panic!("page {} is garbage", 12));
        assert_eq!(caught, Err("page 12 is garbage".to_owned()));
        let caught: Result<(), String> = contain(|| panic!("static text"));
        assert_eq!(caught, Err("static text".to_owned()));
        let err = corrupt_database(Path::new("/d/ledger"), "it panicked");
        let text = err.to_string();
        assert!(
            text.contains("/d/ledger")
                && text.contains("the data dir /d ")
                && text.contains("backup"),
            "{text}"
        );
    }
}
