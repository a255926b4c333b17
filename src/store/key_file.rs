//! The checkpoint signing key on disk: reading a key file, writing a new
//! one (mode 0600, never over an existing file, fsynced), and the key a
//! service creates in its data dir at first start when none is configured.
//!
//! A key file holds one C2SP private key line (`PRIVATE+KEY+<name>+<key
//! id>+<base64>`, [`crate::note::SignerKey`]); the key's name is the log's
//! origin, so a key whose name is not the configured origin is refused
//! (a verifier would refuse every checkpoint it signs).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::note::{KeyError, KeyKind, SignerKey};

/// The key file a service creates in its data dir when none is configured.
pub const DATA_DIR_KEY: &str = "signing.key";

/// Why a key file could not be used (the service refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("signing key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A new key file would replace an existing one.
    #[error("{} exists: refusing to overwrite a key file", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file does not hold an Ed25519 private key.
    #[error("signing key file {}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why the key was refused.
        source: KeyError,
    },
    /// The key is named for another log.
    #[error(
        "signing key file {}: the key is named {name:?}, but the log's origin is {origin:?} (a key signs for the origin it is named after: `kernels keygen --kernel-id …` or set signing.origin)",
        path.display()
    )]
    WrongOrigin {
        /// The file.
        path: PathBuf,
        /// The key's name.
        name: String,
        /// The configured origin.
        origin: String,
    },
}

/// Reads the signing key in `path`, which must be named `origin`.
pub fn read_key(path: &Path, origin: &str) -> Result<SignerKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let key = SignerKey::parse(text.trim()).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    if key.kind() != KeyKind::Ed25519 {
        return Err(KeyFileError::Invalid {
            path: path.to_owned(),
            source: KeyError::UnsupportedType(key.kind().type_byte()),
        });
    }
    if key.name() != origin {
        return Err(KeyFileError::WrongOrigin {
            path: path.to_owned(),
            name: key.name().to_owned(),
            origin: origin.to_owned(),
        });
    }
    Ok(key)
}

/// Writes `key` to a new file `path` (mode 0600; an existing file is never
/// replaced), durably: the file and its directory are fsynced.
pub fn write_key(path: &Path, key: &SignerKey) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                path: path.to_owned(),
            },
            _ => io(e),
        })?;
    file.write_all(format!("{}\n", key.to_private_key_text()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// The key in `<dir>/signing.key`, created (a new random key named
/// `origin`) when the file does not exist. Returns the key and whether it
/// was created.
pub fn data_dir_key(dir: &Path, origin: &str) -> Result<(SignerKey, bool), KeyFileError> {
    let path = dir.join(DATA_DIR_KEY);
    if path.exists() {
        return Ok((read_key(&path, origin)?, false));
    }
    let key =
        SignerKey::generate(origin, KeyKind::Ed25519).map_err(|source| KeyFileError::Invalid {
            path: path.clone(),
            source,
        })?;
    write_key(&path, &key)?;
    Ok((key, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_data_dir_key_is_created_once_private_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let (key, created) = data_dir_key(tmp.path(), "kernels/k1").unwrap();
        assert!(created);
        let mode = std::fs::metadata(tmp.path().join(DATA_DIR_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = data_dir_key(tmp.path(), "kernels/k1").unwrap();
        assert!(!created);
        assert_eq!(again.verifier(), key.verifier());
    }

    #[test]
    fn a_key_of_another_origin_or_no_key_is_refused_and_nothing_is_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("k");
        let key = SignerKey::generate("kernels/a", KeyKind::Ed25519).unwrap();
        write_key(&path, &key).unwrap();
        let err = read_key(&path, "kernels/b").unwrap_err();
        assert!(matches!(err, KeyFileError::WrongOrigin { .. }), "{err}");
        let other = SignerKey::generate("kernels/a", KeyKind::Ed25519).unwrap();
        assert!(matches!(
            write_key(&path, &other).unwrap_err(),
            KeyFileError::Exists { .. }
        ));
        assert_eq!(
            read_key(&path, "kernels/a").unwrap().verifier(),
            key.verifier()
        );
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(
            read_key(&path, "kernels/a").unwrap_err(),
            KeyFileError::Invalid { .. }
        ));
        let missing = read_key(&tmp.path().join("missing"), "kernels/a").unwrap_err();
        assert!(matches!(missing, KeyFileError::Io { .. }), "{missing}");
    }
}
