//! What the server keeps across restarts: the TURN secret it generates when none is configured.
//!
//! TURN REST credentials are an HMAC of the secret, handed to clients at join time and reused
//! for ICE restarts. A secret that changed with every start would make every credential handed
//! out before a restart useless after it, and relayed calls would die with the restart. So the
//! secret is generated once and kept in the state directory:
//!
//! - the directory is created 0700 when missing; the file `turn-secret` is written 0600;
//! - it is written to a temporary file first and then linked into place, so a crash never
//!   leaves half a secret, and two servers starting at once end up with the same one;
//! - read back strictly (one line of 44 base64 characters, a 32-byte secret): a damaged file is
//!   an error to fix, never silently replaced, since replacing it would break live calls.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::config::Secret;

/// The secret's file name in the state directory.
pub(crate) const TURN_SECRET_FILE: &str = "turn-secret";
/// Random bytes in a generated secret.
const SECRET_BYTES: usize = 32;
/// Its base64 length (with padding).
const SECRET_B64_LEN: usize = 44;

/// The default state directory, from the environment `env` gives: `$STATE_DIRECTORY` (set by
/// systemd's `StateDirectory=`; the first of its colon-separated entries), else
/// `$XDG_STATE_HOME/aparte`, else `$HOME/.local/state/aparte`. Relative values are ignored, as
/// the XDG specification asks.
pub(crate) fn default_dir(env: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(dirs) = env("STATE_DIRECTORY") {
        let first = dirs
            .to_str()
            .map(|s| s.split(':').next().unwrap_or("").to_owned());
        if let Some(p) = first.map(OsString::from).and_then(absolute) {
            return Some(p);
        }
    }
    if let Some(p) = env("XDG_STATE_HOME").and_then(absolute) {
        return Some(p.join("aparte"));
    }
    env("HOME")
        .and_then(absolute)
        .map(|h| h.join(".local/state/aparte"))
}

/// How the TURN secret was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Obtained {
    /// Read from this existing file.
    Loaded(PathBuf),
    /// Generated now and saved in this file.
    Generated(PathBuf),
}

impl std::fmt::Display for Obtained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Obtained::Loaded(p) => write!(f, "loaded from {}", p.display()),
            Obtained::Generated(p) => write!(f, "generated and saved in {}", p.display()),
        }
    }
}

/// The state directory cannot give a usable TURN secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error(
        "the embedded TURN relay needs a TURN secret and there is no state directory to keep a \
         generated one in (no HOME): set --state-dir, APARTE_STATE_DIR or --turn-secret"
    )]
    NoDir,
    #[error(
        "cannot use the state directory {dir}: {source}; set --state-dir (APARTE_STATE_DIR) to \
         a directory this user can write, or set --turn-secret"
    )]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the TURN secret file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot save the TURN secret in {file}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the TURN secret file {file} is damaged: {why}. It must hold one line of 44 base64 \
         characters (a 32-byte secret). Restore it from a backup, or delete it to generate a new \
         one (TURN credentials already handed out then stop working)"
    )]
    Damaged { file: PathBuf, why: &'static str },
}

/// The TURN secret kept in `dir`: read when the file exists, generated and saved when not.
/// Also says whether the file can be read by other users (a warning for the caller to log).
pub(crate) fn turn_secret(dir: Option<&Path>) -> Result<(Secret, Obtained, bool), StateError> {
    let dir = dir.ok_or(StateError::NoDir)?;
    let file = dir.join(TURN_SECRET_FILE);
    match read_secret(&file) {
        Ok((s, open)) => return Ok((s, Obtained::Loaded(file), open)),
        Err(StateError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir_err = |source| StateError::Dir {
        dir: dir.to_owned(),
        source,
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
    }
    let mut raw = [0u8; SECRET_BYTES];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut raw);
    let text = base64::engine::general_purpose::STANDARD.encode(raw);
    let tmp = dir.join(format!(".{TURN_SECRET_FILE}.{}.tmp", std::process::id()));
    let write_err = |source| StateError::Write {
        file: file.clone(),
        source,
    };
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{text}\n").as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    // A hard link never replaces an existing file: if another server got there first, both
    // use its secret.
    let linked = std::fs::hard_link(&tmp, &file);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let (s, open) = read_secret(&file)?;
            return Ok((s, Obtained::Loaded(file), open));
        }
        Err(e) => return Err(write_err(e)),
    }
    // Make the new directory entry itself durable.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((
        Secret::new(text.into_bytes()),
        Obtained::Generated(file),
        false,
    ))
}

/// Reads and strictly checks a secret file; also says whether group or others can read it.
fn read_secret(file: &Path) -> Result<(Secret, bool), StateError> {
    let read_err = |source| StateError::Read {
        file: file.to_owned(),
        source,
    };
    let damaged = |why| StateError::Damaged {
        file: file.to_owned(),
        why,
    };
    let f = std::fs::File::open(file).map_err(read_err)?;
    let meta = f.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(damaged("it is not a regular file"));
    }
    let mut buf = Vec::with_capacity(SECRET_B64_LEN + 1);
    // Read at most a little more than a valid file, so a huge file costs nothing.
    f.take(256).read_to_end(&mut buf).map_err(read_err)?;
    let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
    if text.len() != SECRET_B64_LEN {
        return Err(damaged("it has the wrong length"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| damaged("it is not base64"))?;
    if decoded.len() != SECRET_BYTES {
        return Err(damaged("it does not hold 32 bytes"));
    }
    let open = meta.permissions().mode() & 0o077 != 0;
    Ok((Secret::new(text.to_vec()), open))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn default_dir_order() {
        let all = [
            ("STATE_DIRECTORY", "/var/lib/aparte:/var/lib/other"),
            ("XDG_STATE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_dir(env(&all)),
            Some(PathBuf::from("/var/lib/aparte"))
        );
        assert_eq!(
            default_dir(env(&all[1..])),
            Some(PathBuf::from("/x/aparte"))
        );
        assert_eq!(
            default_dir(env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/home/u")])),
            Some(PathBuf::from("/home/u/.local/state/aparte"))
        );
        assert_eq!(default_dir(env(&[])), None);
    }

    #[test]
    fn generated_once_then_loaded_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let (s1, how, _) = turn_secret(Some(&dir)).unwrap();
        assert_eq!(how, Obtained::Generated(dir.join(TURN_SECRET_FILE)));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(TURN_SECRET_FILE)), 0o600);
        let (s2, how, open) = turn_secret(Some(&dir)).unwrap();
        assert_eq!(how, Obtained::Loaded(dir.join(TURN_SECRET_FILE)));
        assert!(!open);
        assert_eq!(s1.expose(), s2.expose());
        assert_eq!(s1.expose().len(), SECRET_B64_LEN);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn damaged_files_are_errors_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(TURN_SECRET_FILE);
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        for bad in [
            String::new(),
            "short\n".to_owned(),
            format!("{good}\n\n"),
            format!(" {good}"),
            format!("{}!\n", &good[..43]),
            base64::engine::general_purpose::STANDARD.encode([7u8; 33]),
            "A".repeat(100_000),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let err = turn_secret(Some(tmp.path())).unwrap_err();
            assert!(matches!(err, StateError::Damaged { .. }), "{bad:?}: {err}");
            assert_eq!(std::fs::read_to_string(&file).unwrap(), bad);
        }
        std::fs::write(&file, format!("{good}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (s, _, open) = turn_secret(Some(tmp.path())).unwrap();
        assert_eq!(s.expose(), good.as_bytes());
        assert!(open);
        assert!(matches!(turn_secret(None), Err(StateError::NoDir)));
    }
}
