//! Messages between agents and the coordinator over libp2p.
//!
//! Task control is request-response (`/pixmesh/ctl/1`, JSON): every message
//! is a [`Request`] answered by a [`Response`]. Image and plugin bytes never
//! travel in these messages; they move on the blob stream protocol
//! (`/pixmesh/blob/1`) by [`ContentId`](crate::ContentId), and every blob
//! received is checked against its id.
//!
//! Fencing: every task message carries the attempt number it is about. The
//! coordinator accepts a result only for the current attempt of a task, so a
//! late answer from an agent that lost its lease can never count twice.

use serde::{Deserialize, Serialize};

use crate::{ContentId, JobSpec};

/// The task-control protocol name.
pub const CONTROL_PROTOCOL: &str = "/pixmesh/ctl/1";
/// The blob stream protocol name.
pub const BLOB_PROTOCOL: &str = "/pixmesh/blob/1";
/// The Kademlia protocol name (a private DHT, not the public IPFS one).
pub const KAD_PROTOCOL: &str = "/pixmesh/kad/1";
/// The identify protocol version string; peers with another one are ignored.
pub const IDENTIFY_PROTOCOL: &str = "/pixmesh/1";

/// A task id (one image of one job).
pub type TaskId = u64;
/// A job id.
pub type JobId = u64;

/// An agent's health and capacity advert, sent about once a second.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Advert {
    /// The agent's version.
    pub version: String,
    /// Task slots (its concurrency).
    pub slots: u32,
    /// Tasks it is running now.
    pub running: u32,
    /// Tasks accepted and waiting for a slot.
    pub queue_depth: u32,
    /// Plugins it has on disk, by content id.
    pub plugins: Vec<String>,
    /// Resident memory, in bytes, when known.
    pub rss_bytes: Option<u64>,
}

/// One task handed to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub task: TaskId,
    /// The attempt: the fencing token to quote in every answer.
    pub attempt: u32,
    /// Its job.
    pub job: JobId,
    /// The input's name (for logs and errors).
    pub name: String,
    /// The pipeline, with every plugin step naming its plugin by content id.
    pub spec: JobSpec,
    /// The input image.
    pub input: ContentId,
    /// The lease, in milliseconds: report progress well within it.
    pub lease_ms: u64,
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Agent → coordinator, on connecting: who I am, and a join token when
    /// not yet enrolled.
    Hello {
        /// The agent's version.
        version: String,
        /// A join token from `pixmesh token create`, presented once.
        join_token: Option<String>,
    },
    /// Agent → coordinator: heartbeat with capacity.
    Heartbeat(Advert),
    /// Coordinator → agent: run this task.
    Assign(Assignment),
    /// Coordinator → agent: stop working on this attempt (cancelled or
    /// reassigned).
    Revoke {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Agent → coordinator: still working; renew the lease.
    Progress {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
    /// Agent → coordinator: done; the output has been uploaded.
    Completed {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// The output blob, already pushed to the coordinator.
        output: ContentId,
        /// Milliseconds spent fetching inputs and plugins.
        fetch_ms: f64,
        /// Milliseconds spent in the pipeline.
        process_ms: f64,
        /// Milliseconds spent uploading the output (absent from older agents).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload_ms: Option<f64>,
    },
    /// Agent → coordinator: could not finish.
    Failed {
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
        /// Why, for the user.
        reason: String,
        /// True when another agent (or a later attempt) may succeed.
        retryable: bool,
    },
    /// Agent → coordinator: shutting down. The coordinator requeues every
    /// task the agent holds at once and gives it no more.
    Bye,
}

impl Request {
    /// The message's name, as in its `type` tag (for logs and spans).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Heartbeat(_) => "heartbeat",
            Request::Assign(_) => "assign",
            Request::Revoke { .. } => "revoke",
            Request::Progress { .. } => "progress",
            Request::Completed { .. } => "completed",
            Request::Failed { .. } => "failed",
            Request::Bye => "bye",
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Done as asked.
    Ok,
    /// To `Hello`: the agent is enrolled and will get work.
    Welcome,
    /// The peer may not do this (not enrolled, bad token, not a
    /// coordinator, shutting down), with the reason.
    Refused {
        /// Why.
        reason: String,
    },
    /// To `Assign`: no free slot; try another agent.
    Busy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json_with_a_type_tag() {
        let spec = JobSpec::from_compact("resize 8x8 | png").expect("spec");
        let req = Request::Assign(Assignment {
            task: 7,
            attempt: 2,
            job: 1,
            name: "a.jpg".into(),
            spec,
            input: ContentId::of(b"x"),
            lease_ms: 10_000,
        });
        let text = serde_json::to_string(&req).expect("encode");
        assert!(text.starts_with(r#"{"type":"assign""#), "{text}");
        let back: Request = serde_json::from_str(&text).expect("decode");
        assert_eq!(back, req);
        let refused: Response =
            serde_json::from_str(r#"{"type":"refused","reason":"no"}"#).expect("decode");
        assert_eq!(
            refused,
            Response::Refused {
                reason: "no".into()
            }
        );
    }
}
