//! `/pixmesh/blob/1`: image and plugin bytes by content id.
//!
//! One stream per transfer. The opener writes a one-byte op and the 32-byte
//! BLAKE3 id, then:
//!
//! ```text
//! GET  'G' id                       ← status [u64 len, bytes | u16 len, message]
//! PUT  'P' id u64:len               ← status [u16 len, message when not ok]
//!      bytes                        ← status [u16 len, message when not ok]
//! ```
//!
//! A PUT waits for the go-ahead before sending its bytes, so a refusal
//! (too big, not allowed) costs one round trip instead of a blocked upload.
//!
//! Status 0 is success; anything else is a refusal whose message says why.
//! Lengths are big-endian. Both ends refuse a blob over their size limit
//! before reading it, and both check that the bytes hash to the id, so a
//! peer can neither flood nor poison the other.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use pixmesh_protocol::ContentId;
use pixmesh_protocol::wire::BLOB_PROTOCOL;
use tokio_io_timeout::TimeoutStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _, TokioAsyncReadCompatExt as _};

const OP_GET: u8 = b'G';
const OP_PUT: u8 = b'P';
const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;

/// Longest a single transfer may take before it is abandoned.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a transfer may go without moving a byte. A cut link otherwise
/// stalls a stream until the connection gives up, which for a connection
/// closing gracefully over a dead TCP path can take minutes.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A blob stream that fails when no byte moves for [`STALL_TIMEOUT`].
type Stream = Compat<Pin<Box<TimeoutStream<Compat<libp2p::Stream>>>>>;

fn watched(stream: libp2p::Stream) -> Stream {
    let mut guarded = TimeoutStream::new(stream.compat());
    guarded.set_read_timeout(Some(STALL_TIMEOUT));
    guarded.set_write_timeout(Some(STALL_TIMEOUT));
    Box::pin(guarded).compat()
}

/// The protocol name as libp2p wants it.
pub fn protocol() -> StreamProtocol {
    StreamProtocol::new(BLOB_PROTOCOL)
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The stream could not be opened (peer unreachable, no such protocol).
    #[error("cannot open a blob stream to {peer}: {reason}")]
    Open {
        /// The peer.
        peer: PeerId,
        /// libp2p's reason.
        reason: String,
    },
    /// The peer said no.
    #[error("{peer} refused blob {id}: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// The blob.
        id: ContentId,
        /// Its reason.
        reason: String,
    },
    /// The blob is bigger than we accept.
    #[error("blob {id} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The blob.
        id: ContentId,
        /// Its announced size.
        size: u64,
        /// Our limit.
        limit: u64,
    },
    /// The bytes do not hash to the id.
    #[error("blob {id} from {peer} is corrupt: its BLAKE3 hash does not match")]
    Corrupt {
        /// The peer.
        peer: PeerId,
        /// The blob.
        id: ContentId,
    },
    /// The stream broke or timed out.
    #[error("blob {id} transfer with {peer} failed: {source}")]
    Io {
        /// The peer.
        peer: PeerId,
        /// The blob.
        id: ContentId,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The serving side's storage: answers GETs and takes PUTs. Called on the
/// blocking pool, so implementations may do file I/O.
pub trait BlobService: Send + Sync + 'static {
    /// The bytes of `id` for `peer`, in one or more pieces (sent in
    /// order), or a reason to refuse.
    fn get(&self, peer: &PeerId, id: &ContentId) -> Result<Vec<bytes::Bytes>, String>;
    /// Store `bytes` (already verified to hash to `id`) from `peer`, or refuse.
    fn put(&self, peer: &PeerId, id: &ContentId, bytes: Vec<u8>) -> Result<(), String>;
    /// May `peer` upload a blob of `size` bytes? Asked before reading it.
    fn may_put(&self, peer: &PeerId, size: u64) -> Result<(), String>;
}

async fn with_timeout<T>(
    peer: PeerId,
    id: ContentId,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, BlobError> {
    match tokio::time::timeout(TRANSFER_TIMEOUT, f).await {
        Ok(r) => r.map_err(|source| BlobError::Io { peer, id, source }),
        Err(_) => Err(BlobError::Io {
            peer,
            id,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "transfer timed out"),
        }),
    }
}

async fn read_message(stream: &mut Stream) -> std::io::Result<String> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).await?;
    Ok(String::from_utf8_lossy(&msg).into_owned())
}

async fn write_refusal(stream: &mut Stream, reason: &str) -> std::io::Result<()> {
    let bytes = reason.as_bytes();
    let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
    stream.write_all(&[STATUS_REFUSED]).await?;
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await?;
    stream.write_all(bytes).await?;
    stream.close().await
}

/// Read a body of `size` bytes, hashing each chunk as it arrives and handing
/// it to `sink` (with the announced size), so the check costs no extra pass
/// after the last byte. Returns the id the bytes hash to.
async fn read_body(
    stream: &mut Stream,
    size: u64,
    sink: &mut (dyn FnMut(u64, &[u8]) + Send),
) -> std::io::Result<ContentId> {
    const CHUNK: usize = 256 << 10;
    let mut hasher = blake3::Hasher::new();
    let mut chunk = vec![0u8; CHUNK.min(size as usize).max(1)];
    let mut read = 0u64;
    while read < size {
        let want = chunk.len().min((size - read) as usize);
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("stream ended after {read} of {size} bytes"),
            ));
        }
        hasher.update(&chunk[..n]);
        sink(size, &chunk[..n]);
        read += n as u64;
    }
    Ok(ContentId::from(*hasher.finalize().as_bytes()))
}

async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Result<Stream, BlobError> {
    control
        .open_stream(peer, protocol())
        .await
        .map(watched)
        .map_err(|e| BlobError::Open {
            peer,
            reason: e.to_string(),
        })
}

/// Fetch blob `id` from `peer`, refusing anything over `limit` bytes and
/// anything that does not hash to `id`.
pub async fn fetch(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    id: ContentId,
    limit: u64,
) -> Result<Vec<u8>, BlobError> {
    let mut bytes = Vec::new();
    fetch_streaming(control, peer, id, limit, |size, chunk| {
        if bytes.is_empty() {
            bytes.reserve_exact(size as usize);
        }
        bytes.extend_from_slice(chunk);
    })
    .await?;
    Ok(bytes)
}

/// As [`fetch`], but hand each chunk to `sink` (with the blob's size) as
/// soon as it has arrived, so the receiver can start on the first bytes
/// while the rest are on the way. Returns the size once the last byte is in
/// and the whole hashes to `id`: whatever the receiver made of the chunks
/// must be thrown away unless this returns `Ok`.
pub async fn fetch_streaming(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    id: ContentId,
    limit: u64,
    mut sink: impl FnMut(u64, &[u8]) + Send,
) -> Result<u64, BlobError> {
    let mut stream = open(control, peer).await?;
    enum Got {
        Body(u64, ContentId),
        Refused(String),
        TooLarge(u64),
    }
    let got = with_timeout(peer, id, async {
        stream.write_all(&[OP_GET]).await?;
        stream.write_all(id.as_bytes()).await?;
        stream.flush().await?;
        let mut status = [0u8; 1];
        stream.read_exact(&mut status).await?;
        if status[0] != STATUS_OK {
            return Ok(Got::Refused(read_message(&mut stream).await?));
        }
        let mut len = [0u8; 8];
        stream.read_exact(&mut len).await?;
        let size = u64::from_be_bytes(len);
        if size > limit {
            return Ok(Got::TooLarge(size));
        }
        let got = read_body(&mut stream, size, &mut sink).await?;
        Ok(Got::Body(size, got))
    })
    .await?;
    let _ = stream.close().await;
    match got {
        Got::Body(size, got) if got == id => Ok(size),
        Got::Body(..) => Err(BlobError::Corrupt { peer, id }),
        Got::Refused(reason) => Err(BlobError::Refused { peer, id, reason }),
        Got::TooLarge(size) => Err(BlobError::TooLarge { id, size, limit }),
    }
}

/// Upload `bytes` to `peer`; returns the id it was stored under.
pub async fn push(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    bytes: &[u8],
) -> Result<ContentId, BlobError> {
    let id = ContentId::of(bytes);
    let mut stream = open(control, peer).await?;
    let answer = with_timeout(peer, id, async {
        stream.write_all(&[OP_PUT]).await?;
        stream.write_all(id.as_bytes()).await?;
        stream
            .write_all(&(bytes.len() as u64).to_be_bytes())
            .await?;
        stream.flush().await?;
        let mut status = [0u8; 1];
        stream.read_exact(&mut status).await?;
        if status[0] != STATUS_OK {
            return Ok(Some(read_message(&mut stream).await?));
        }
        stream.write_all(bytes).await?;
        stream.flush().await?;
        stream.read_exact(&mut status).await?;
        if status[0] == STATUS_OK {
            Ok(None)
        } else {
            Ok(Some(read_message(&mut stream).await?))
        }
    })
    .await?;
    let _ = stream.close().await;
    match answer {
        None => Ok(id),
        Some(reason) => Err(BlobError::Refused { peer, id, reason }),
    }
}

/// Serve blobs from `service` until the node stops: accepts every inbound
/// blob stream and handles each on its own task. PUTs over `limit` bytes
/// are refused before their bytes are read.
pub fn serve(
    control: &mut libp2p_stream::Control,
    service: Arc<dyn BlobService>,
    limit: u64,
) -> Result<tokio::task::JoinHandle<()>, libp2p_stream::AlreadyRegistered> {
    let mut incoming = control.accept(protocol())?;
    Ok(tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(peer, watched(stream), service, limit).await {
                    tracing::debug!(%peer, cause = %e, "blob stream failed");
                }
            });
        }
    }))
}

async fn handle(
    peer: PeerId,
    mut stream: Stream,
    service: Arc<dyn BlobService>,
    limit: u64,
) -> std::io::Result<()> {
    let work = async {
        let mut head = [0u8; 33];
        stream.read_exact(&mut head).await?;
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&head[1..]);
        let id = ContentId::from(raw);
        match head[0] {
            OP_GET => {
                let svc = service.clone();
                let got = tokio::task::spawn_blocking(move || svc.get(&peer, &id))
                    .await
                    .unwrap_or_else(|e| Err(format!("blob service failed: {e}")));
                match got {
                    Ok(pieces) => {
                        let len: usize = pieces.iter().map(bytes::Bytes::len).sum();
                        stream.write_all(&[STATUS_OK]).await?;
                        stream.write_all(&(len as u64).to_be_bytes()).await?;
                        for piece in &pieces {
                            stream.write_all(piece).await?;
                        }
                        stream.close().await
                    }
                    Err(reason) => write_refusal(&mut stream, &reason).await,
                }
            }
            OP_PUT => {
                let mut len = [0u8; 8];
                stream.read_exact(&mut len).await?;
                let size = u64::from_be_bytes(len);
                if size > limit {
                    let reason = format!("blob of {size} bytes is over the limit of {limit}");
                    return write_refusal(&mut stream, &reason).await;
                }
                if let Err(reason) = service.may_put(&peer, size) {
                    return write_refusal(&mut stream, &reason).await;
                }
                stream.write_all(&[STATUS_OK]).await?;
                stream.flush().await?;
                let mut bytes = Vec::with_capacity(size as usize);
                let got = read_body(&mut stream, size, &mut |_, chunk| {
                    bytes.extend_from_slice(chunk)
                })
                .await?;
                if got != id {
                    return write_refusal(&mut stream, "bytes do not hash to the id").await;
                }
                let svc = service.clone();
                let stored = tokio::task::spawn_blocking(move || svc.put(&peer, &id, bytes))
                    .await
                    .unwrap_or_else(|e| Err(format!("blob service failed: {e}")));
                match stored {
                    Ok(()) => {
                        stream.write_all(&[STATUS_OK]).await?;
                        stream.close().await
                    }
                    Err(reason) => write_refusal(&mut stream, &reason).await,
                }
            }
            other => write_refusal(&mut stream, &format!("unknown op {other:#04x}")).await,
        }
    };
    match tokio::time::timeout(TRANSFER_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "transfer timed out",
        )),
    }
}
