//! The pixmesh libp2p node, shared by agents and the coordinator.
//!
//! A [`Node`] is a cloneable handle; one event loop task owns the
//! [`libp2p::Swarm`] and talks to handles over channels (the actor shape of
//! the rust-libp2p file-sharing example). The swarm speaks:
//!
//! - QUIC (`/udp/N/quic-v1`) first, TCP + noise + yamux as the fallback;
//! - identify (protocol `/pixmesh/1`: peers speaking anything else are
//!   ignored) and ping (every second: the RTT in the coordinator's node
//!   table, and liveness);
//! - mDNS on a LAN, and Kademlia with the private protocol `/pixmesh/kad/1`
//!   in server mode, fed with the addresses identify and mDNS report and
//!   bootstrapped from the configured peers;
//! - `/pixmesh/ctl/1`, request-response with JSON messages
//!   ([`pixmesh_protocol::wire`]), for task control;
//! - `/pixmesh/blob/1`, a libp2p-stream protocol for image and plugin bytes
//!   ([`blob`]), with size limits and BLAKE3 verification of every blob.
//!
//! # Layout
//! - [`identity`]: the persistent ed25519 key of a node.
//! - [`node`]: the behaviour, the handle and the event loop.
//! - [`blob`]: the blob protocol, both ends.

pub mod blob;
pub mod identity;
pub mod node;

pub use libp2p::{Multiaddr, PeerId};
pub use node::{MeshError, Node, NodeConfig, NodeEvent, Responder};

/// The peer id at the end of a multiaddr (`.../p2p/<id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
