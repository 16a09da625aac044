//! The content-addressed blob store: inputs, outputs and plugins on disk,
//! named by their BLAKE3 content id.
//!
//! Writes are durable before they return (temporary file, `fsync`, rename,
//! `fsync` of the directory), so a blob the coordinator has acknowledged
//! survives a crash. Reads from disk verify the hash, so a damaged file is
//! reported, never served.
//!
//! Recently stored or read blobs also stay in memory, up to a byte budget
//! (least recently used out first): a job's inputs are usually fetched by
//! agents moments after the submit stored them, and serving them from
//! memory costs neither a disk read nor a second BLAKE3 pass. Bytes enter
//! the cache only after they were hashed to their id. A blob is kept in
//! the pieces it arrived in (an upload's chunks): hashing, writing and
//! serving go piece by piece, so a large photo is never copied into one
//! fresh buffer on its way through.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use lru::LruCache;
use pixmesh_protocol::ContentId;

/// Default memory budget of the cache of recent blobs (the daemon's
/// `--blob-cache-mb` sets it).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// A blob's bytes, in the pieces they arrived in, in order. Cloning
/// shares them.
#[derive(Debug, Clone, Default)]
pub struct Blob {
    pieces: Arc<[Bytes]>,
    len: usize,
}

impl Blob {
    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a blob of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// The bytes in one buffer (a copy when there are several pieces).
    pub fn to_bytes(&self) -> Bytes {
        match &self.pieces[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut joined = bytes::BytesMut::with_capacity(self.len);
                for piece in many {
                    joined.extend_from_slice(piece);
                }
                joined.freeze()
            }
        }
    }

    /// The content id of these bytes.
    pub fn id(&self) -> ContentId {
        let mut hasher = blake3::Hasher::new();
        for piece in self.pieces.iter() {
            hasher.update(piece);
        }
        ContentId::from(*hasher.finalize().as_bytes())
    }
}

impl From<Vec<Bytes>> for Blob {
    fn from(pieces: Vec<Bytes>) -> Blob {
        let len = pieces.iter().map(Bytes::len).sum();
        Blob {
            pieces: pieces.into(),
            len,
        }
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Blob {
        Blob::from(vec![bytes])
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Blob {
        Blob::from(Bytes::from(bytes))
    }
}

/// Blobs under one directory, sharded by the first two hex digits.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
    hot: Arc<Mutex<Hot>>,
}

/// Verified blobs in memory, least recently used first out.
#[derive(Debug)]
struct Hot {
    blobs: LruCache<ContentId, Blob>,
    bytes: usize,
    budget: usize,
}

impl Hot {
    fn get(&mut self, id: &ContentId) -> Option<Blob> {
        self.blobs.get(id).cloned()
    }

    fn insert(&mut self, id: ContentId, bytes: Blob) {
        if bytes.len() > self.budget / 4 {
            // One huge blob would push out everything else for one read.
            return;
        }
        if let Some(old) = self.blobs.put(id, bytes.clone()) {
            self.bytes -= old.len();
        }
        self.bytes += bytes.len();
        self.trim();
    }

    fn trim(&mut self) {
        while self.bytes > self.budget {
            match self.blobs.pop_lru() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }
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
        let hot = Hot {
            blobs: LruCache::unbounded(),
            bytes: 0,
            budget: DEFAULT_CACHE_BYTES,
        };
        Ok(BlobStore {
            dir,
            hot: Arc::new(Mutex::new(hot)),
        })
    }

    /// Set the memory budget of the cache of recent blobs (0 turns it off).
    pub fn set_cache_budget(&self, bytes: usize) {
        let mut hot = self.hot();
        hot.budget = bytes;
        hot.trim();
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, Hot> {
        self.hot.lock().unwrap_or_else(|p| p.into_inner())
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
    pub fn put(&self, bytes: impl Into<Blob>) -> Result<ContentId, BlobError> {
        let blob = bytes.into();
        let id = blob.id();
        self.put_verified(id, blob)?;
        Ok(id)
    }

    /// Store `bytes` that the caller has already checked hash to `id`
    /// (a blob stream does, on the way in).
    pub fn put_verified(&self, id: ContentId, bytes: impl Into<Blob>) -> Result<(), BlobError> {
        let blob = bytes.into();
        let path = self.path(&id);
        if !path.is_file() {
            self.write(&id, &path, &blob)?;
        }
        self.hot().insert(id, blob);
        Ok(())
    }

    fn write(&self, id: &ContentId, path: &Path, blob: &Blob) -> Result<(), BlobError> {
        let shard = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&shard).map_err(io_at(&shard))?;
        // Unique per writer: two threads may store the same bytes at once.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = shard.join(format!(".{id}.{}.{n}.tmp", std::process::id()));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            for piece in blob.pieces() {
                f.write_all(piece)?;
            }
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&shard)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(BlobError::Io {
                path: path.to_path_buf(),
                source: e,
            });
        }
        Ok(())
    }

    /// Read a blob: from the cache, or from disk, verifying its hash.
    pub fn get(&self, id: &ContentId) -> Result<Blob, BlobError> {
        if let Some(bytes) = self.hot().get(id) {
            return Ok(bytes);
        }
        let path = self.path(id);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobError::Missing(*id)),
            Err(e) => return Err(BlobError::Io { path, source: e }),
        };
        if !id.matches(&bytes) {
            return Err(BlobError::Damaged(*id));
        }
        let blob = Blob::from(bytes);
        self.hot().insert(*id, blob.clone());
        Ok(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_verify_and_detect_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let id = store.put(b"an image".to_vec()).expect("put");
        assert_eq!(id, ContentId::of(b"an image"));
        assert_eq!(
            store.put(b"an image".to_vec()).expect("again"),
            id,
            "idempotent"
        );
        assert_eq!(store.get(&id).expect("get").to_bytes(), &b"an image"[..]);
        // Reopening sees the same blob, read from disk this time.
        let reopened = BlobStore::open(dir.path()).expect("reopen");
        assert!(reopened.has(&id));
        assert_eq!(reopened.get(&id).expect("get").to_bytes(), &b"an image"[..]);
        std::fs::write(store.path(&id), b"tampered").expect("tamper");
        let cold = BlobStore::open(dir.path()).expect("reopen");
        assert!(matches!(cold.get(&id), Err(BlobError::Damaged(_))));
        let other = ContentId::of(b"never stored");
        assert!(matches!(store.get(&other), Err(BlobError::Missing(_))));
        // No temporary files are left behind.
        let shard = store.path(&id).parent().expect("shard").to_path_buf();
        assert_eq!(std::fs::read_dir(shard).expect("shard").count(), 1);
    }

    #[test]
    fn a_blob_in_pieces_is_the_same_blob_as_its_bytes_in_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        let whole: Vec<u8> = (0..200_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let pieces: Vec<Bytes> = [0..1, 1..70_000, 70_000..70_000, 70_000..200_000]
            .into_iter()
            .map(|r| Bytes::copy_from_slice(&whole[r]))
            .collect();
        let id = store.put(pieces).expect("put");
        assert_eq!(id, ContentId::of(&whole));
        assert_eq!(std::fs::read(store.path(&id)).expect("file"), whole);
        let cached = store.get(&id).expect("get");
        assert_eq!(cached.pieces().len(), 4, "kept as it arrived");
        assert_eq!(cached.len(), whole.len());
        assert_eq!(cached.to_bytes(), whole);
        let mut other = whole.clone();
        other[150_000] ^= 1;
        assert_ne!(cached.to_bytes(), other);
        assert_ne!(cached.to_bytes(), whole[..199_999]);
        // Read back from disk: one piece, same bytes.
        let cold = BlobStore::open(dir.path()).expect("reopen");
        assert_eq!(cold.get(&id).expect("get").to_bytes(), whole);
    }

    #[test]
    fn recent_blobs_are_served_from_memory_within_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path()).expect("open");
        store.set_cache_budget(4000);
        let (a, b) = (vec![1u8; 900], vec![2u8; 900]);
        let (ia, ib) = (store.put(a.clone()).expect("a"), store.put(b).expect("b"));
        // Served from memory: the file is gone, the bytes are still there.
        std::fs::remove_file(store.path(&ia)).expect("remove");
        assert_eq!(store.get(&ia).expect("cached").to_bytes(), a);
        // A blob over a quarter of the budget is stored but not cached.
        let big = store.put(vec![3u8; 1500]).expect("big");
        std::fs::remove_file(store.path(&big)).expect("remove");
        assert!(matches!(store.get(&big), Err(BlobError::Missing(_))));
        // Filling the budget pushes out the least recently used (b; a was
        // just read).
        for i in 0..3u8 {
            store.put(vec![10 + i; 900]).expect("fill");
        }
        std::fs::remove_file(store.path(&ib)).expect("remove");
        assert!(matches!(store.get(&ib), Err(BlobError::Missing(_))));
        assert_eq!(store.get(&ia).expect("still cached").to_bytes(), a);
        // A zero budget empties the cache.
        store.set_cache_budget(0);
        assert!(matches!(store.get(&ia), Err(BlobError::Missing(_))));
    }
}
