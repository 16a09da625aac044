//! Two real nodes on loopback: control requests both ways, blob transfers,
//! and the limits and hash checks that protect the receiving side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::identity::Keypair;
use pixmesh_mesh::blob::{self, BlobError, BlobService};
use pixmesh_mesh::{Multiaddr, Node, NodeConfig, NodeEvent, PeerId};
use pixmesh_protocol::ContentId;
use pixmesh_protocol::wire::{Request, Response};

#[derive(Default)]
struct Shelf {
    blobs: Mutex<HashMap<ContentId, Vec<u8>>>,
}

impl BlobService for Shelf {
    fn get(&self, _peer: &PeerId, id: &ContentId) -> Result<Vec<bytes::Bytes>, String> {
        let blobs = self.blobs.lock().map_err(|e| e.to_string())?;
        // In uneven pieces, as a store that keeps an upload's chunks would
        // hand them out: the fetching side must see one blob.
        blobs
            .get(id)
            .map(|b| {
                b.chunks(65_537)
                    .map(bytes::Bytes::copy_from_slice)
                    .collect()
            })
            .ok_or_else(|| format!("no blob {id}"))
    }
    fn put(&self, _peer: &PeerId, id: &ContentId, bytes: Vec<u8>) -> Result<(), String> {
        let mut blobs = self.blobs.lock().map_err(|e| e.to_string())?;
        blobs.insert(*id, bytes);
        Ok(())
    }
    fn may_put(&self, _peer: &PeerId, _size: u64) -> Result<(), String> {
        Ok(())
    }
}

fn config(listen: &str, bootstrap: Vec<Multiaddr>) -> NodeConfig {
    let mut c = NodeConfig::new(Keypair::generate_ed25519(), "pixmesh-test/0");
    c.listen = vec![listen.parse().expect("addr")];
    c.bootstrap = bootstrap;
    c.mdns = false;
    c
}

async fn pair(transport: &str) -> (Node, Node, tokio::sync::mpsc::Receiver<NodeEvent>) {
    let (server, mut server_events) = Node::start(config(transport, vec![])).expect("server");
    let addrs = server.listen_addrs().await.expect("listening");
    let (client, _client_events) = Node::start(config(transport, addrs)).expect("client");
    // Answer every request with Ok, echoing nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(ev) = server_events.recv().await {
            match ev {
                NodeEvent::Request {
                    request, responder, ..
                } => {
                    responder.send(match request {
                        Request::Bye => Response::Refused {
                            reason: "not now".into(),
                        },
                        _ => Response::Ok,
                    });
                }
                other => {
                    let _ = tx.try_send(other);
                }
            }
        }
    });
    (server, client, rx)
}

async fn exercise(transport: &str) {
    let (server, client, mut server_events) = pair(transport).await;
    let answer = client
        .request(server.peer_id(), Request::Bye)
        .await
        .expect("answer");
    assert_eq!(
        answer,
        Response::Refused {
            reason: "not now".into()
        }
    );
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match server_events.recv().await {
                Some(NodeEvent::Connected { peer, .. }) => break peer,
                Some(_) => continue,
                None => panic!("server events ended"),
            }
        }
    })
    .await
    .expect("connected event");
    assert_eq!(connected, client.peer_id());

    let shelf = Arc::new(Shelf::default());
    let mut server_control = server.stream_control();
    blob::serve(&mut server_control, shelf.clone(), 1 << 20).expect("serve");
    let mut control = client.stream_control();

    // Upload, then fetch back; the bytes arrive intact and verified.
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = blob::push(&mut control, server.peer_id(), &payload)
        .await
        .expect("push");
    assert_eq!(id, ContentId::of(&payload));
    let back = blob::fetch(&mut control, server.peer_id(), id, 1 << 20)
        .await
        .expect("fetch");
    assert_eq!(back, payload);

    // Streamed: the chunks arrive in order, add up to the blob, and the
    // size comes back once the whole has been checked.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let size = blob::fetch_streaming(&mut control, server.peer_id(), id, 1 << 20, |total, c| {
        assert_eq!(total, 300_000);
        chunks.push(c.to_vec());
    })
    .await
    .expect("fetch streaming");
    assert_eq!(size, 300_000);
    assert!(chunks.len() > 1, "{} chunks", chunks.len());
    assert_eq!(chunks.concat(), payload);

    // A blob bigger than the fetcher's limit is refused before reading.
    let err = blob::fetch(&mut control, server.peer_id(), id, 1000)
        .await
        .expect_err("over the limit");
    assert!(
        matches!(err, BlobError::TooLarge { size: 300_000, .. }),
        "{err}"
    );

    // A PUT over the server's limit is refused with a reason.
    let big = vec![1u8; (1 << 20) + 1];
    let err = blob::push(&mut control, server.peer_id(), &big)
        .await
        .expect_err("too big to push");
    assert!(err.to_string().contains("over the limit"), "{err}");

    // A server answering with bytes that do not match the id is caught.
    let fake = ContentId::of(b"what the client asked for");
    shelf
        .blobs
        .lock()
        .expect("lock")
        .insert(fake, b"something else".to_vec());
    let err = blob::fetch(&mut control, server.peer_id(), fake, 1 << 20)
        .await
        .expect_err("corrupt");
    assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
    // Streamed, the bytes have been handed over by then: the error is what
    // tells the receiver to throw away what it made of them.
    let mut handed = Vec::new();
    let err = blob::fetch_streaming(&mut control, server.peer_id(), fake, 1 << 20, |_, c| {
        handed.extend_from_slice(c)
    })
    .await
    .expect_err("corrupt");
    assert!(matches!(err, BlobError::Corrupt { .. }), "{err}");
    assert_eq!(handed, b"something else");

    // Unknown blob: the server's reason reaches the client.
    let err = blob::fetch(
        &mut control,
        server.peer_id(),
        ContentId::of(b"nope"),
        1 << 20,
    )
    .await
    .expect_err("missing");
    assert!(err.to_string().contains("no blob"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_control_and_blobs() {
    exercise("/ip4/127.0.0.1/udp/0/quic-v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_fallback_control_and_blobs() {
    exercise("/ip4/127.0.0.1/tcp/0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_an_unreachable_peer_fails_with_a_reason() {
    let (node, _events) = Node::start(config("/ip4/127.0.0.1/tcp/0", vec![])).expect("node");
    let stranger = Keypair::generate_ed25519().public().to_peer_id();
    let err = node
        .request(stranger, Request::Bye)
        .await
        .expect_err("nobody there");
    assert!(err.to_string().contains(&stranger.to_string()), "{err}");
}

/// QUIC is protected with the TLS suite both ends put first. The patched
/// libp2p-tls in vendor/ offers AES-GCM first on CPUs with AES instructions
/// (upstream always offers ChaCha20 first, several times dearer there), and
/// still offers all three suites.
#[test]
fn tls_prefers_aes_gcm_where_the_cpu_has_aes() {
    let key = Keypair::generate_ed25519();
    let client = libp2p_tls::make_client_config(&key, None).expect("client config");
    let server = libp2p_tls::make_server_config(&key).expect("server config");
    for suites in [
        &client.crypto_provider().cipher_suites,
        &server.crypto_provider().cipher_suites,
    ] {
        let names: Vec<String> = suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        #[cfg(target_arch = "x86_64")]
        let aes = std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq");
        #[cfg(target_arch = "aarch64")]
        let aes = std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let aes = false;
        let first = if aes {
            "TLS13_AES_128_GCM_SHA256"
        } else {
            "TLS13_CHACHA20_POLY1305_SHA256"
        };
        assert_eq!(names[0], first, "{names:?}");
        assert!(names.iter().any(|n| n.contains("CHACHA20")), "{names:?}");
    }
}

/// Twenty streams opened at once while the reader takes none: all of them
/// must wait for it (libp2p-stream as released dropped all but one, and
/// each dropped stream reached its opener as a reset).
async fn burst(transport: &str) {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
    let (server, client, _events) = pair(transport).await;
    let protocol = libp2p::StreamProtocol::new("/pixmesh-test/burst/1");
    let mut incoming = server
        .stream_control()
        .accept(protocol.clone())
        .expect("accept");
    client
        .request(server.peer_id(), Request::Bye)
        .await
        .expect("connected");
    let mut opening = Vec::new();
    for i in 0..20u8 {
        let mut control = client.stream_control();
        let (peer, protocol) = (server.peer_id(), protocol.clone());
        opening.push(tokio::spawn(async move {
            let mut s = control.open_stream(peer, protocol).await.expect("open");
            s.write_all(&[i]).await.expect("write");
            s.flush().await.expect("flush");
            s
        }));
    }
    let mut open = Vec::new();
    for o in opening {
        open.push(o.await.expect("opened"));
    }
    // Let the server's connection handler hand them over before reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 20 {
        let next = tokio::time::timeout(Duration::from_secs(2), incoming.next()).await;
        let Ok(Some((_, mut s))) = next else { break };
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("read");
        seen.insert(b[0]);
    }
    assert_eq!(seen.len(), 20, "streams that reached the reader: {seen:?}");
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_inbound_streams_waits_for_the_reader() {
    burst("/ip4/127.0.0.1/tcp/0").await;
    burst("/ip4/127.0.0.1/udp/0/quic-v1").await;
}
