//! The coordinator's side of the mesh: the libp2p node, the blob server
//! for enrolled agents, the control-request handler and the dispatcher that
//! sends the scheduler's assignments and revocations.
//!
//! Requests are handled on the blocking pool (they write to SQLite with
//! `synchronous = FULL`), so a slow disk never stalls the swarm.

use std::sync::Arc;

use anyhow::{Context, Result};
use pixmesh_mesh::blob::{self, BlobService};
use pixmesh_mesh::{Multiaddr, Node, NodeConfig, NodeEvent, PeerId};
use pixmesh_protocol::ContentId;
use pixmesh_protocol::wire::{Request, Response};
use tokio::sync::mpsc;

use crate::service::{Coordinator, Outbound};

/// Largest blob an agent may upload (an output image).
pub const MAX_UPLOAD_BYTES: u64 = 512 << 20;

/// The coordinator's version, in identify.
pub const VERSION: &str = concat!("pixmesh-coordinator/", env!("CARGO_PKG_VERSION"));

struct Blobs(Arc<Coordinator>);

impl BlobService for Blobs {
    fn get(&self, peer: &PeerId, id: &ContentId) -> Result<Vec<bytes::Bytes>, String> {
        if !self.0.is_enrolled(&peer.to_string()) {
            return Err("not enrolled".into());
        }
        let blob = self.0.blob(id).map_err(|e| format!("{e:#}"))?;
        self.0.metrics().blob("out", blob.len());
        Ok(blob.pieces().to_vec())
    }

    fn put(&self, peer: &PeerId, id: &ContentId, bytes: Vec<u8>) -> Result<(), String> {
        if !self.0.is_enrolled(&peer.to_string()) {
            return Err("not enrolled".into());
        }
        self.0.metrics().blob("in", bytes.len());
        self.0.put_blob(*id, bytes).map_err(|e| format!("{e:#}"))
    }

    fn may_put(&self, peer: &PeerId, _size: u64) -> Result<(), String> {
        if self.0.is_enrolled(&peer.to_string()) {
            Ok(())
        } else {
            Err("not enrolled".into())
        }
    }
}

/// Start the node and the tasks around it; returns the node and the
/// addresses agents can bootstrap from.
pub async fn start(
    coordinator: Arc<Coordinator>,
    keypair: pixmesh_mesh::identity::Keypair,
    listen: Vec<Multiaddr>,
    mdns: bool,
) -> Result<(Node, Vec<Multiaddr>)> {
    let mut config = NodeConfig::new(keypair, VERSION);
    config.listen = listen;
    config.mdns = mdns;
    config.metrics = Some(coordinator.metrics().registry());
    let (node, events) = Node::start(config).context("cannot start the libp2p node")?;
    let mut control = node.stream_control();
    blob::serve(
        &mut control,
        Arc::new(Blobs(coordinator.clone())),
        MAX_UPLOAD_BYTES,
    )
    .map_err(|e| anyhow::anyhow!("cannot serve blobs: {e}"))?;
    let (outbox, outgoing) = mpsc::unbounded_channel();
    coordinator.set_outbox(outbox);
    tokio::spawn(dispatch(node.clone(), coordinator.clone(), outgoing));
    tokio::spawn(handle_events(coordinator, events));
    let addrs = node.listen_addrs().await?;
    Ok((node, addrs))
}

async fn handle_events(coordinator: Arc<Coordinator>, mut events: mpsc::Receiver<NodeEvent>) {
    while let Some(event) = events.recv().await {
        match event {
            NodeEvent::Request {
                peer,
                request,
                responder,
            } => {
                let c = coordinator.clone();
                let span = tracing::debug_span!("request", %peer, kind = request.kind());
                tokio::spawn(async move {
                    let peer = peer.to_string();
                    let answer = tokio::task::spawn_blocking(move || {
                        let _span = span.entered();
                        c.on_request(&peer, request)
                    })
                    .await;
                    match answer {
                        Ok(Ok(response)) => responder.send(response),
                        Ok(Err(e)) => {
                            tracing::error!(cause = %format!("{e:#}"), "control request failed");
                            responder.send(Response::Refused {
                                reason: format!("coordinator error: {e:#}"),
                            });
                        }
                        Err(e) => tracing::error!(cause = %e, "control handler panicked"),
                    }
                });
            }
            NodeEvent::Connected { peer, address } => {
                let c = coordinator.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = c.peer_connected(&peer.to_string(), &address.to_string()) {
                        tracing::error!(cause = %format!("{e:#}"), "cannot record a peer");
                    }
                });
            }
            NodeEvent::Disconnected { peer } => coordinator.peer_disconnected(&peer.to_string()),
            NodeEvent::Rtt { peer, rtt } => {
                coordinator.peer_rtt(&peer.to_string(), rtt.as_secs_f64() * 1e3)
            }
            NodeEvent::Identified { .. } => {}
        }
    }
}

async fn dispatch(
    node: Node,
    coordinator: Arc<Coordinator>,
    mut outgoing: mpsc::UnboundedReceiver<Outbound>,
) {
    while let Some(message) = outgoing.recv().await {
        let node = node.clone();
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            match message {
                Outbound::Assign { peer, assignment } => {
                    let (task, attempt) = (assignment.task, assignment.attempt);
                    let failure = match peer.parse::<PeerId>() {
                        Err(e) => Some(format!("bad peer id {peer}: {e}")),
                        Ok(id) => match node.request(id, Request::Assign(assignment)).await {
                            Ok(Response::Ok) => None,
                            Ok(Response::Busy) => Some(format!("agent {peer} was busy")),
                            Ok(Response::Refused { reason }) => {
                                Some(format!("agent {peer} refused the task: {reason}"))
                            }
                            Ok(other) => Some(format!("agent {peer} answered {other:?}")),
                            Err(e) => Some(e.to_string()),
                        },
                    };
                    if let Some(reason) = failure {
                        tracing::warn!(task, attempt, %peer, %reason, "assignment not delivered");
                        let _ = tokio::task::spawn_blocking(move || {
                            coordinator.assign_failed(task, attempt, &peer, reason)
                        })
                        .await;
                    }
                }
                Outbound::Revoke {
                    peer,
                    task,
                    attempt,
                } => {
                    if let Ok(id) = peer.parse::<PeerId>()
                        && let Err(e) = node.request(id, Request::Revoke { task, attempt }).await
                    {
                        tracing::debug!(task, %peer, cause = %e, "revoke not delivered");
                    }
                }
            }
        });
    }
}
