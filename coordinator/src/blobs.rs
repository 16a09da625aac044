//! The content-addressed blob store: inputs, outputs and plugins on disk,
//! named by their BLAKE3 content id.
//!
//! Writes are durable before they return (temporary file, `fsync`, rename,
//! `fsync` of the directory), so a blob the coordinator has acknowledged
//! survives a crash. Reads verify the hash, so a damaged file is reported,
//! never served.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use pixmesh_protocol::ContentId;

/// Blobs under one directory, sharded by the first two hex digits.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

/// A blob that is missing or damaged.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob with that id.
    #[error("blob {0} is not in the store")]
    Missing(ContentId),
    /// The file's bytes do not hash to its name.
    #[error("blob {0} is damaged on disk (its hash does not match)")]
    Damaged(ContentId),
    /// The file system failed.
    #[error("blob store I/O at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BlobStore {
    /// Open (and create) the store at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(BlobStore { dir })
    }

    /// Where the blob `id` lives.
    pub fn path(&self, id: &ContentId) -> PathBuf {
        let hex = id.to_string();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// True when the blob is stored.
    pub fn has(&self, id: &ContentId) -> bool {
        self.path(id).is_file()
    }

    /// Store `bytes` durably; returns their id. Storing the same bytes
    /// twice is cheap and harmless.
    pub fn put(&self, bytes: &[u8]) -> Result<ContentId, BlobError> {
        let id = ContentId::of(bytes);
        let path = self.path(&id);
        if path.is_file() {
            return Ok(id);
        }
        let shard = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&shard).map_err(io_at(&shard))?;
        let tmp = shard.join(format!(".{id}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&shard)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(BlobError::Io { path, source: e });
        }
        Ok(id)
    }

    /// Read a blob, verifying its hash.
    pub fn get(&self, id: &ContentId) -> Result<Vec<u8>, BlobError> {
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::Missing(*id)),
            Err(e) => return Err(BlobError::Io { path, source: e }),
        };
        if !id.matches(&bytes) {
            return Err(BlobError::Damaged(*id));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_verify_and_detect_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let id = store.put(b"an image").expect("put");
        assert_eq!(id, ContentId::of(b"an image"));
        assert_eq!(store.put(b"an image").expect("again"), id, "idempotent");
        assert_eq!(store.get(&id).expect("get"), b"an image");
        // Reopening sees the same blob.
        assert!(BlobStore::open(dir.path()).expect("reopen").has(&id));
        std::fs::write(store.path(&id), b"tampered").expect("tamper");
        assert!(matches!(store.get(&id), Err(BlobError::Damaged(_))));
        let other = ContentId::of(b"never stored");
        assert!(matches!(store.get(&other), Err(BlobError::Missing(_))));
        // No temporary files are left behind.
        let shard = store.path(&id).parent().expect("shard").to_path_buf();
        assert_eq!(std::fs::read_dir(shard).expect("shard").count(), 1);
    }
}
