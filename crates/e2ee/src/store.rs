//! The thin file layer for identities and known peers. Everything else in this crate is
//! sans-IO; this module is the one place that touches the file system.
//!
//! Files are written atomically (a private temporary file, then a rename) with mode 0600,
//! and a secret file that other users can read is refused on load, as ssh does.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::identity::{IdentityKey, KnownPeers};

/// First line of an identity file.
const IDENTITY_HEADER: &str = "aparte-identity v1";
/// Files larger than this are refused before they are read into memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Loads the identity at `path`, or creates one with `rng` if the file does not exist.
/// Returns the key and whether it was created.
pub fn load_or_create_identity(
    path: &Path,
    rng: &mut impl CryptoRngCore,
) -> Result<(IdentityKey, bool), StoreError> {
    match load_identity(path) {
        Ok(key) => Ok((key, false)),
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = IdentityKey::generate(rng);
            save_identity(path, &key)?;
            Ok((key, true))
        }
        Err(e) => Err(e),
    }
}

/// Loads an identity file, refusing one that group or others can access.
pub fn load_identity(path: &Path) -> Result<IdentityKey, StoreError> {
    check_private(path)?;
    let text = Zeroizing::new(read_bounded(path)?);
    let err = |line, reason| StoreError::Parse {
        what: "identity",
        line,
        reason,
    };
    let mut lines = text.lines();
    if lines.next() != Some(IDENTITY_HEADER) {
        return Err(err(1, "missing 'aparte-identity v1' header"));
    }
    let hex_line = lines.next().ok_or(err(2, "missing key line"))?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_line.trim_end(), bytes.as_mut())
        .map_err(|_| err(2, "key must be 64 hex digits"))?;
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(err(3, "unexpected content after the key"));
    }
    Ok(IdentityKey::from_bytes(*bytes))
}

/// Writes an identity file with mode 0600.
pub fn save_identity(path: &Path, key: &IdentityKey) -> Result<(), StoreError> {
    let mut text = Zeroizing::new(String::from(IDENTITY_HEADER));
    text.push('\n');
    text.push_str(&Zeroizing::new(hex::encode(key.to_bytes().as_ref())));
    text.push('\n');
    write_private(path, text.as_bytes())
}

/// Loads the known-peers file; a missing file is an empty store.
pub fn load_known_peers(path: &Path) -> Result<KnownPeers, StoreError> {
    match read_bounded(path) {
        Ok(text) => KnownPeers::parse(&text),
        Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(KnownPeers::new())
        }
        Err(e) => Err(e),
    }
}

/// Writes the known-peers file atomically with mode 0600.
pub fn save_known_peers(path: &Path, peers: &KnownPeers) -> Result<(), StoreError> {
    write_private(path, peers.encode().as_bytes())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_bounded(path: &Path) -> Result<String, StoreError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(StoreError::Parse {
            what: "file",
            line: 0,
            reason: "file larger than 16 MiB",
        });
    }
    fs::read_to_string(path).map_err(io_err(path))
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)
        .map_err(io_err(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "aparte".into());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerName;
    use rand_core::OsRng;

    #[test]
    fn identity_is_created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/identity");
        let (a, created) = load_or_create_identity(&path, &mut OsRng).unwrap();
        assert!(created);
        let (b, created) = load_or_create_identity(&path, &mut OsRng).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_identity_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        save_identity(&path, &IdentityKey::generate(&mut OsRng)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_identity(&path),
            Err(StoreError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn a_corrupt_identity_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity");
        write_private(&path, b"aparte-identity v1\nzz\n").unwrap();
        assert!(matches!(
            load_or_create_identity(&path, &mut OsRng),
            Err(StoreError::Parse { line: 2, .. })
        ));
    }

    #[test]
    fn known_peers_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_peers");
        assert!(load_known_peers(&path).unwrap().is_empty());
        let mut peers = KnownPeers::new();
        let id = IdentityKey::generate(&mut OsRng).public();
        peers
            .mark_verified(&PeerName::new("bob").unwrap(), &id, 1)
            .unwrap();
        save_known_peers(&path, &peers).unwrap();
        assert_eq!(load_known_peers(&path).unwrap(), peers);
    }
}
