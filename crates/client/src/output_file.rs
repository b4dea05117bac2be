//! Output files that appear whole, or not at all.
//!
//! A call's recording (`--output FILE.wav`) and captions (`--captions FILE.vtt`) are written to a
//! temporary file beside the target and renamed over it only when the call ends having produced
//! something. So an existing file is never truncated by a call that fails to connect, a failed
//! join leaves no empty WAV or VTT behind, and a reader never sees a half-written header. The
//! rename is atomic on one file system, which "beside the target" guarantees.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// A file being written under a temporary name, to be renamed to its target by
/// [`PendingFile::commit`]. Dropped without a commit, the temporary file is removed and the
/// target is left as it was.
#[derive(Debug)]
pub struct PendingFile {
    temp: tempfile::TempPath,
    target: PathBuf,
}

impl PendingFile {
    /// Creates an empty temporary file in `target`'s folder (which must exist). Nothing
    /// happens to `target` itself yet.
    pub fn create(target: &Path) -> std::io::Result<Self> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
            })?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)?
            .into_temp_path();
        Ok(Self {
            temp,
            target: target.to_owned(),
        })
    }

    /// Where to write meanwhile.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// The file this becomes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Renames the temporary file over the target (atomically replacing an existing one).
    pub fn commit(self) -> std::io::Result<()> {
        self.temp.persist(&self.target).map_err(|e| e.error)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_uncommitted_file_leaves_the_target_untouched_and_no_litter() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("heard.wav");
        std::fs::write(&target, b"earlier recording").unwrap();
        let pending = PendingFile::create(&target).unwrap();
        std::fs::write(pending.path(), b"half").unwrap();
        drop(pending);
        assert_eq!(std::fs::read(&target).unwrap(), b"earlier recording");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_committed_file_replaces_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("heard.wav");
        std::fs::write(&target, b"earlier recording").unwrap();
        let pending = PendingFile::create(&target).unwrap();
        assert!(pending
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".heard.wav."));
        std::fs::write(pending.path(), b"new").unwrap();
        pending.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_folder_is_an_error_at_create() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PendingFile::create(&dir.path().join("no/such/dir/x.wav")).is_err());
    }
}
