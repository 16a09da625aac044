//! The node: one libp2p swarm owned by one event loop, driven through a
//! cloneable [`Node`] handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::metrics::{Metrics, Recorder as _};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, mdns, noise, ping, tcp, yamux};
use pixmesh_protocol::wire::{self, Request, Response};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

/// Largest QUIC datagram path MTU discovery may try, and the largest we
/// accept.
const MTU_UPPER_BOUND: u16 = 16_384;

/// Receive buffer asked for the QUIC socket: a blob transfer arrives in
/// bursts that overflow Linux's default (about 200 KB) with datagrams this
/// large, and each datagram dropped there is a loss QUIC must recover from.
/// The kernel caps the request (net.core.rmem_max).
const QUIC_RECEIVE_BUFFER: usize = 4 << 20;

/// What can go wrong talking to a peer.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The request did not get an answer.
    #[error("no answer from {peer}: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// libp2p's reason (dial failure, timeout, connection closed).
        reason: String,
    },
    /// The node's event loop has stopped.
    #[error("the libp2p node has stopped")]
    Stopped,
    /// A listen address or dial was refused.
    #[error("{0}")]
    Transport(String),
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's key (its peer id).
    pub keypair: Keypair,
    /// Addresses to listen on (`/ip4/0.0.0.0/udp/0/quic-v1`, `/ip4/.../tcp/N`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and to seed Kademlia with (`.../p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Sent in identify, e.g. `pixmesh-agent/0.1.0`.
    pub agent_version: String,
    /// Close connections idle for this long. Agents heartbeat every second,
    /// so a live agent's connection is never idle; the margin covers pauses.
    pub idle_timeout: Duration,
    /// How long a control request may wait for its answer.
    pub request_timeout: Duration,
    /// Where to register libp2p's metrics (bandwidth per protocol,
    /// connections, identify, ping, Kademlia) and connected peers, under
    /// the `libp2p_` and `pixmesh_` prefixes. None: not exported.
    pub metrics: Option<Arc<Mutex<Registry>>>,
}

impl NodeConfig {
    /// Defaults for `keypair`: QUIC and TCP on all interfaces at ports
    /// chosen by the OS, mDNS on, 60 s idle timeout, 15 s request timeout.
    pub fn new(keypair: Keypair, agent_version: impl Into<String>) -> NodeConfig {
        NodeConfig {
            keypair,
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("literal multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("literal multiaddr"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            agent_version: agent_version.into(),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            metrics: None,
        }
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<MemoryStore>,
    control: request_response::json::Behaviour<Request, Response>,
    stream: libp2p_stream::Behaviour,
}

/// Something the application must know about.
#[derive(Debug)]
pub enum NodeEvent {
    /// A control request from a peer; answer it through the responder.
    Request {
        /// Who sent it (authenticated by the transport).
        peer: PeerId,
        /// The message.
        request: Request,
        /// Where the answer goes.
        responder: Responder,
    },
    /// The first connection to a peer was established.
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address on this connection.
        address: Multiaddr,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A ping round trip.
    Rtt {
        /// The peer.
        peer: PeerId,
        /// The round-trip time.
        rtt: Duration,
    },
    /// A peer identified itself as a pixmesh node.
    Identified {
        /// The peer.
        peer: PeerId,
        /// Its agent version string.
        agent_version: String,
    },
}

/// The answer slot of an inbound request; drop it to let the request fail.
#[derive(Debug)]
pub struct Responder {
    channel: ResponseChannel<Response>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Responder {
    /// Send the answer.
    pub fn send(self, response: Response) {
        let _ = self.commands.send(Command::Respond {
            channel: self.channel,
            response,
        });
    }
}

#[derive(Debug)]
enum Command {
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, MeshError>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
    },
    Dial {
        address: Multiaddr,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Disconnect {
        peer: PeerId,
    },
    DisconnectAll,
}

/// A handle on a running node. Clone it freely.
#[derive(Clone)]
pub struct Node {
    peer_id: PeerId,
    commands: mpsc::UnboundedSender<Command>,
    control: libp2p_stream::Control,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Node {
    /// Build the swarm, start listening and dialing, and spawn the event
    /// loop on the current tokio runtime. Events arrive on the receiver;
    /// the loop stops when every handle is dropped.
    pub fn start(config: NodeConfig) -> Result<(Node, mpsc::Receiver<NodeEvent>), MeshError> {
        // Without a registry to export to, metrics go to one of our own.
        let registry = config
            .metrics
            .clone()
            .unwrap_or_else(|| Arc::new(Mutex::new(Registry::default())));
        let mut guard = registry
            .lock()
            .map_err(|_| MeshError::Transport("the metrics registry is poisoned".into()))?;
        let connected = Gauge::default();
        guard.register(
            "pixmesh_connected_peers",
            "Peers with at least one open connection",
            connected.clone(),
        );
        // libp2p-metrics names its own metrics `libp2p_*`.
        let mut swarm = build_swarm(&config, &mut guard)?;
        let metrics = Metrics::new(&mut guard);
        drop(guard);
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| MeshError::Transport(format!("cannot listen on {addr}: {e}")))?;
        }
        for addr in &config.bootstrap {
            if let Some(peer) = crate::peer_of(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, cause = %e, "cannot dial bootstrap peer");
            }
        }
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::channel(4096);
        let event_loop = EventLoop {
            swarm,
            commands: command_rx,
            command_tx: commands.downgrade(),
            events: event_tx,
            pending: HashMap::new(),
            listen_addrs: Vec::new(),
            metrics,
            connected,
        };
        tokio::spawn(event_loop.run());
        Ok((
            Node {
                peer_id,
                commands,
                control,
            },
            events,
        ))
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A control for opening and accepting blob streams.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Send a control request and wait for the answer. libp2p dials the
    /// peer if it is not connected and its address is known.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, MeshError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Request {
                peer,
                request,
                reply,
            })
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    /// Dial an address (a peer found out of band).
    pub fn dial(&self, address: Multiaddr) -> Result<(), MeshError> {
        self.commands
            .send(Command::Dial { address })
            .map_err(|_| MeshError::Stopped)
    }

    /// Close every connection to a peer.
    pub fn disconnect(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Disconnect { peer });
    }

    /// Close every connection, telling each peer, before the process exits:
    /// peers notice at once instead of after their timeouts. Gives the
    /// close messages a moment to leave.
    pub async fn close_all(&self) {
        if self.commands.send(Command::DisconnectAll).is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The addresses the node listens on, each ending in `/p2p/<peer id>`.
    /// Waits until at least one listener is up.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, MeshError> {
        for _ in 0..200 {
            let (reply, rx) = oneshot::channel();
            self.commands
                .send(Command::ListenAddrs { reply })
                .map_err(|_| MeshError::Stopped)?;
            let addrs = rx.await.map_err(|_| MeshError::Stopped)?;
            if !addrs.is_empty() {
                return Ok(addrs);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(MeshError::Transport(
            "no listener came up within 2 s".into(),
        ))
    }
}

fn build_swarm(
    config: &NodeConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, MeshError> {
    let transport_err = |e: &dyn std::fmt::Display| MeshError::Transport(e.to_string());
    let mdns_on = config.mdns;
    let agent_version = config.agent_version.clone();
    let request_timeout = config.request_timeout;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::new().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport_err(&e))?
        // Path MTU discovery may grow datagrams past Ethernet's 1500 bytes
        // where the path allows (loopback, jumbo-frame LANs): image bytes
        // then cost far fewer packets. Probes carry DF, so on a normal link
        // they fail harmlessly and the MTU stays where it was. Both ends
        // must accept such datagrams: a peer never probes past the
        // max_udp_payload_size we advertise (quinn's default is 1472; set
        // through the patched libp2p-quic in vendor/).
        .with_quic_config(|c| {
            c.mtu_upper_bound(MTU_UPPER_BOUND)
                .max_udp_payload_size(MTU_UPPER_BOUND)
                .socket_receive_buffer(QUIC_RECEIVE_BUFFER)
        })
        .with_dns()
        .map_err(|e| transport_err(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(move |key| {
            let peer = key.public().to_peer_id();
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
            } else {
                None
            };
            let mut kad_config = kad::Config::new(StreamProtocol::new(wire::KAD_PROTOCOL));
            kad_config.set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(peer, MemoryStore::new(peer), kad_config);
            // Every pixmesh node is reachable by its peers: serve the DHT
            // rather than waiting for an external address to be confirmed.
            kad.set_mode(Some(kad::Mode::Server));
            Ok(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(wire::IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(agent_version),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(1))
                        .with_timeout(Duration::from_secs(5)),
                ),
                mdns: Toggle::from(mdns),
                kad,
                control: request_response::json::Behaviour::new(
                    [(
                        StreamProtocol::new(wire::CONTROL_PROTOCOL),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(request_timeout)
                        .with_max_concurrent_streams(4096),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// For responders; weak so the loop ends when every handle is gone.
    command_tx: mpsc::WeakUnboundedSender<Command>,
    events: mpsc::Sender<NodeEvent>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, MeshError>>>,
    listen_addrs: Vec<Multiaddr>,
    metrics: Metrics,
    connected: Gauge,
}

impl EventLoop {
    async fn run(mut self) {
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.swarm_event(event).await,
            }
        }
        tracing::debug!("libp2p node stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("answer dropped: the peer's request is gone");
                }
            }
            Command::Dial { address } => {
                if let Err(e) = self.swarm.dial(address.clone()) {
                    tracing::warn!(%address, cause = %e, "dial failed");
                }
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.clone());
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::DisconnectAll => {
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in peers {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    async fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.record(&event);
        if matches!(
            event,
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. }
        ) {
            self.connected
                .set(self.swarm.connected_peers().count() as i64);
        }
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address
                    .with_p2p(*self.swarm.local_peer_id())
                    .unwrap_or_else(|a| a);
                tracing::info!(address = %full, "listening");
                self.listen_addrs.push(full);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs
                    .retain(|a| !a.iter().zip(address.iter()).all(|(x, y)| x == y));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } if num_established.get() == 1 => {
                let address = endpoint.get_remote_address().clone();
                emit(
                    &self.events,
                    NodeEvent::Connected {
                        peer: peer_id,
                        address,
                    },
                )
                .await;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, cause = ?cause, "disconnected");
                emit(&self.events, NodeEvent::Disconnected { peer: peer_id }).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, cause = %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(event) => self.behaviour_event(event).await,
            _ => {}
        }
    }

    async fn behaviour_event(&mut self, event: BehaviourEvent) {
        match &event {
            BehaviourEvent::Identify(e) => self.metrics.record(e),
            BehaviourEvent::Ping(e) => self.metrics.record(e),
            BehaviourEvent::Kad(e) => self.metrics.record(e),
            _ => {}
        }
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != wire::IDENTIFY_PROTOCOL {
                    tracing::debug!(peer = %peer_id, protocol = %info.protocol_version, "not a pixmesh peer");
                    return;
                }
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                emit(
                    &self.events,
                    NodeEvent::Identified {
                        peer: peer_id,
                        agent_version: info.agent_version,
                    },
                )
                .await;
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    tracing::debug!(%peer, %addr, "found on the LAN");
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, cause = %e, "not dialing LAN peer");
                    }
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                emit(&self.events, NodeEvent::Rtt { peer, rtt }).await;
            }
            BehaviourEvent::Control(event) => self.control_event(event).await,
            _ => {}
        }
    }

    async fn control_event(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let Some(commands) = self.command_tx.upgrade() else {
                        return;
                    };
                    emit(
                        &self.events,
                        NodeEvent::Request {
                            peer,
                            request,
                            responder: Responder { channel, commands },
                        },
                    )
                    .await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(MeshError::Unreachable {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, cause = %error, "inbound control request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Back-pressure: a slow application slows the swarm rather than growing a
/// queue without bound.
async fn emit(events: &mpsc::Sender<NodeEvent>, event: NodeEvent) {
    let _ = events.send(event).await;
}
