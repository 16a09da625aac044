//! The scheduler: which agent runs which task, with leases and fencing.
//!
//! Pure logic in the style of `quinn-proto`: no sockets, no clocks, no
//! database. Time comes in as `now` (milliseconds on any monotonic clock),
//! events come in through [`Scheduler::handle`], and decisions come out as
//! [`Action`]s for the event loop to carry out (send a message, write a row).
//! That makes every rule below testable without a network or a sleep.
//!
//! The rules (DESIGN.md, "Reliability rules"):
//!
//! - **Placement**: a task goes to an alive agent with a free slot;
//!   agents that already hold the task's plugins or input are preferred,
//!   then the least loaded (in flight + reported queue depth, per slot).
//! - **Leases**: every assignment is a lease until `now + lease`; progress
//!   reports renew it. On expiry, or when the agent is declared dead (no
//!   heartbeat for `dead_after`), the task goes back to the queue with
//!   `attempt + 1` after a backoff, up to `max_attempts`.
//! - **Fencing**: a result is accepted once, only from the agent holding the
//!   current attempt. A late result from a cut-off agent is refused and
//!   counted, so it can never create a duplicate.
//! - **Cancel** reaches the agents holding the job's tasks.
//! - **No agent available** is a state, not a failure: the job waits and
//!   [`Scheduler::job_status`] says why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// A task: one image of one job.
pub type TaskId = u64;
/// A job.
pub type JobId = u64;
/// An agent, by its peer id.
pub type NodeId = String;

/// Timing and retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How long an assignment holds without progress.
    pub lease_ms: Millis,
    /// Attempts per task before it fails for good.
    pub max_attempts: u32,
    /// Backoff before retry `n` (n >= 2) is `backoff_base_ms * 2^(n-2)`, capped.
    pub backoff_base_ms: Millis,
    /// Cap on the backoff.
    pub backoff_max_ms: Millis,
    /// Silence after which an agent is suspect: it gets no new work.
    pub suspect_after_ms: Millis,
    /// Silence after which an agent is dead: its tasks are reassigned.
    pub dead_after_ms: Millis,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_ms: 10_000,
            max_attempts: 4,
            backoff_base_ms: 500,
            backoff_max_ms: 10_000,
            suspect_after_ms: 2_000,
            dead_after_ms: 4_000,
        }
    }
}

/// What a task needs, for placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// The task.
    pub id: TaskId,
    /// Its job.
    pub job: JobId,
    /// Content id of the input image.
    pub input: String,
    /// Content ids of the plugins its pipeline runs.
    pub plugins: Vec<String>,
    /// Attempts already made: 0 for a new task; the stored count for one
    /// restored after a coordinator restart, so the next attempt gets a
    /// higher fencing token than any agent may still be working on.
    pub attempt: u32,
}

/// An agent's report of itself (heartbeat / capacity advert).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeReport {
    /// Task slots (its concurrency).
    pub slots: u32,
    /// Work queued locally that is not ours to see (for fairness).
    pub queue_depth: u32,
    /// Plugins it has cached, by content id.
    pub plugins: BTreeSet<String>,
    /// Inputs it holds, by content id.
    pub inputs: BTreeSet<String>,
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A heartbeat or advert from an (enrolled) agent.
    NodeSeen {
        /// The agent.
        node: NodeId,
        /// What it reported.
        report: NodeReport,
    },
    /// The agent said goodbye (graceful shutdown) or its connection closed for good.
    NodeLeft {
        /// The agent.
        node: NodeId,
    },
    /// A new task to run (or a stored one, after a coordinator restart).
    Submitted(TaskSpec),
    /// The agent is still working on the task: renew the lease.
    Progress {
        /// Task.
        task: TaskId,
        /// Attempt the agent is working on.
        attempt: u32,
        /// Agent.
        node: NodeId,
    },
    /// The agent finished the task.
    Completed {
        /// Task.
        task: TaskId,
        /// Attempt that produced it.
        attempt: u32,
        /// Agent.
        node: NodeId,
        /// Content id of the output.
        output: String,
    },
    /// The agent could not finish the task.
    Failed {
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: u32,
        /// Agent.
        node: NodeId,
        /// Why.
        reason: String,
        /// True when another attempt may succeed (the agent is shutting
        /// down, ran out of resources); false for bad input, which fails
        /// the same everywhere.
        retryable: bool,
    },
    /// The user cancelled a job.
    CancelJob(JobId),
}

/// A decision for the event loop to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the task to the agent.
    Assign {
        /// Task.
        task: TaskId,
        /// Attempt number (1-based): the fencing token.
        attempt: u32,
        /// Agent.
        node: NodeId,
        /// Lease end.
        lease_until: Millis,
    },
    /// Tell an agent to stop working on a task (cancelled or reassigned).
    Revoke {
        /// Task.
        task: TaskId,
        /// The attempt being revoked.
        attempt: u32,
        /// Agent.
        node: NodeId,
    },
    /// Record the result: the task is done.
    Accept {
        /// Task.
        task: TaskId,
        /// Attempt.
        attempt: u32,
        /// Output content id.
        output: String,
    },
    /// A result that must not be used (stale attempt or already done).
    Fenced {
        /// Task.
        task: TaskId,
        /// The stale attempt.
        attempt: u32,
        /// Agent that sent it.
        node: NodeId,
    },
    /// The task went back to the queue for another attempt (retryable
    /// failure, lease expiry, or its agent died or left).
    Requeued {
        /// Task.
        task: TaskId,
        /// The attempt that did not finish.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// The task failed for good.
    GiveUp {
        /// Task.
        task: TaskId,
        /// Why.
        reason: String,
    },
    /// An agent's health changed.
    NodeHealth {
        /// Agent.
        node: NodeId,
        /// New state.
        health: Health,
    },
}

/// An agent's health as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heard from recently.
    Alive,
    /// Quiet for a while: no new work.
    Suspect,
    /// Gone: its tasks were reassigned.
    Dead,
}

/// Where a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for an agent, not before `ready_at`.
    Queued {
        /// Earliest time it may be assigned (backoff).
        ready_at: Millis,
    },
    /// Leased to an agent.
    Running {
        /// Agent.
        node: NodeId,
        /// Lease end.
        lease_until: Millis,
    },
    /// Finished.
    Done {
        /// Output content id.
        output: String,
    },
    /// Failed for good.
    Failed {
        /// Why.
        reason: String,
    },
    /// Cancelled by the user.
    Cancelled,
}

#[derive(Debug, Clone)]
struct Task {
    spec: TaskSpec,
    /// The current attempt (0 before the first assignment).
    attempt: u32,
    state: TaskState,
}

#[derive(Debug, Clone)]
struct Node {
    report: NodeReport,
    last_seen: Millis,
    health: Health,
    running: BTreeSet<TaskId>,
}

/// A job's progress, with an explanation when it is waiting.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct JobStatus {
    /// Tasks queued.
    pub queued: usize,
    /// Tasks running.
    pub running: usize,
    /// Tasks done.
    pub done: usize,
    /// Tasks failed.
    pub failed: usize,
    /// Tasks cancelled.
    pub cancelled: usize,
    /// Why queued tasks are not running, when that is the case.
    pub waiting: Option<String>,
}

/// Counters worth exporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Tasks put back in the queue after a lease expiry or a dead agent.
    pub reassigned: u64,
    /// Results refused by fencing.
    pub fenced: u64,
}

/// The scheduler state.
#[derive(Debug, Default)]
pub struct Scheduler {
    config: SchedulerConfig,
    tasks: BTreeMap<TaskId, Task>,
    nodes: BTreeMap<NodeId, Node>,
    /// Queued tasks in submission order.
    queue: VecDeque<TaskId>,
    counters: Counters,
}

impl Scheduler {
    /// A scheduler with this policy.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            config,
            ..Scheduler::default()
        }
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A task's state and current attempt.
    pub fn task(&self, id: TaskId) -> Option<(&TaskState, u32)> {
        self.tasks.get(&id).map(|t| (&t.state, t.attempt))
    }

    /// An agent's health.
    pub fn health(&self, node: &str) -> Option<Health> {
        self.nodes.get(node).map(|n| n.health)
    }

    /// Apply one event at `now`, then assign what can be assigned.
    pub fn handle(&mut self, now: Millis, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::NodeSeen { node, report } => {
                let entry = self.nodes.entry(node.clone()).or_insert_with(|| Node {
                    report: NodeReport::default(),
                    last_seen: now,
                    health: Health::Dead,
                    running: BTreeSet::new(),
                });
                entry.report = report;
                entry.last_seen = now;
                if entry.health != Health::Alive {
                    entry.health = Health::Alive;
                    actions.push(Action::NodeHealth {
                        node,
                        health: Health::Alive,
                    });
                }
            }
            Event::NodeLeft { node } => self.node_gone(now, &node, "agent left", &mut actions),
            Event::Submitted(spec) => {
                let id = spec.id;
                // A task submitted twice (say, replayed after a restart) is kept once.
                if let std::collections::btree_map::Entry::Vacant(slot) = self.tasks.entry(id) {
                    slot.insert(Task {
                        attempt: spec.attempt,
                        spec,
                        state: TaskState::Queued { ready_at: now },
                    });
                    self.queue.push_back(id);
                }
            }
            Event::Progress {
                task,
                attempt,
                node,
            } => {
                let lease = self.config.lease_ms;
                if let Some(t) = self.current(task, attempt, &node) {
                    t.state = TaskState::Running {
                        node,
                        lease_until: now + lease,
                    };
                }
            }
            Event::Completed {
                task,
                attempt,
                node,
                output,
            } => {
                if self.current(task, attempt, &node).is_some() {
                    self.release(task, &node);
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.state = TaskState::Done {
                            output: output.clone(),
                        };
                    }
                    actions.push(Action::Accept {
                        task,
                        attempt,
                        output,
                    });
                } else {
                    actions.push(self.fence(task, attempt, node));
                }
            }
            Event::Failed {
                task,
                attempt,
                node,
                reason,
                retryable,
            } => {
                if self.current(task, attempt, &node).is_some() {
                    self.release(task, &node);
                    if retryable {
                        self.retry(now, task, reason, true, &mut actions);
                    } else if let Some(t) = self.tasks.get_mut(&task) {
                        t.state = TaskState::Failed {
                            reason: reason.clone(),
                        };
                        actions.push(Action::GiveUp { task, reason });
                    }
                } else {
                    actions.push(self.fence(task, attempt, node));
                }
            }
            Event::CancelJob(job) => {
                let ids: Vec<TaskId> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.spec.job == job)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    let Some(t) = self.tasks.get_mut(&id) else {
                        continue;
                    };
                    match std::mem::replace(&mut t.state, TaskState::Cancelled) {
                        TaskState::Running { node, .. } => {
                            let attempt = t.attempt;
                            self.release(id, &node);
                            actions.push(Action::Revoke {
                                task: id,
                                attempt,
                                node,
                            });
                        }
                        TaskState::Queued { .. } => {}
                        finished => t.state = finished,
                    }
                }
                self.queue.retain(|id| {
                    matches!(
                        self.tasks.get(id).map(|t| &t.state),
                        Some(TaskState::Queued { .. })
                    )
                });
            }
        }
        self.expire(now, &mut actions);
        self.assign(now, &mut actions);
        actions
    }

    /// Advance time with no event: health, lease expiry, backoff, assignment.
    pub fn tick(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.expire(now, &mut actions);
        self.assign(now, &mut actions);
        actions
    }

    /// The running task `task` at `attempt` on `node`, if that is what it is.
    fn current(&mut self, task: TaskId, attempt: u32, node: &str) -> Option<&mut Task> {
        self.tasks.get_mut(&task).filter(|t| {
            t.attempt == attempt
                && matches!(&t.state, TaskState::Running { node: n, .. } if n == node)
        })
    }

    /// Refuse a result that is not for the current attempt, and count it.
    fn fence(&mut self, task: TaskId, attempt: u32, node: NodeId) -> Action {
        self.counters.fenced += 1;
        Action::Fenced {
            task,
            attempt,
            node,
        }
    }

    fn release(&mut self, task: TaskId, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.running.remove(&task);
        }
    }

    /// Put a task back in the queue for another attempt, or give up.
    /// Queue a task again with its next attempt, after a backoff when
    /// `back_off` (its own failure or a silent lease), or at once (its
    /// agent died or left).
    fn retry(
        &mut self,
        now: Millis,
        task: TaskId,
        reason: String,
        back_off: bool,
        actions: &mut Vec<Action>,
    ) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.attempt >= self.config.max_attempts {
            let reason = format!("gave up after {} attempts; last: {reason}", t.attempt);
            t.state = TaskState::Failed {
                reason: reason.clone(),
            };
            actions.push(Action::GiveUp { task, reason });
            return;
        }
        let exp = t.attempt.saturating_sub(1).min(20);
        let backoff = if back_off {
            (self.config.backoff_base_ms << exp).min(self.config.backoff_max_ms)
        } else {
            0
        };
        t.state = TaskState::Queued {
            ready_at: now + backoff,
        };
        tracing::debug!(task, attempt = t.attempt, cause = %reason, "task requeued");
        self.counters.reassigned += 1;
        self.queue.push_back(task);
        actions.push(Action::Requeued {
            task,
            attempt: t.attempt,
            reason,
        });
    }

    fn node_gone(&mut self, now: Millis, node: &str, why: &str, actions: &mut Vec<Action>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.health != Health::Dead {
            n.health = Health::Dead;
            actions.push(Action::NodeHealth {
                node: node.to_owned(),
                health: Health::Dead,
            });
        }
        // No revoke: a dead agent cannot hear it, one that left has already
        // dropped its tasks, and one that was only cut off may come back
        // with a result, which fencing then refuses and counts.
        let tasks = std::mem::take(&mut n.running);
        for task in tasks {
            // The task is not at fault: hand it on at once.
            self.retry(now, task, format!("{why} ({node})"), false, actions);
        }
    }

    /// Health transitions and lease expiry.
    fn expire(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let (suspect, dead) = (self.config.suspect_after_ms, self.config.dead_after_ms);
        let mut gone = Vec::new();
        for (id, n) in self.nodes.iter_mut() {
            let quiet = now.saturating_sub(n.last_seen);
            if n.health != Health::Dead && quiet >= dead {
                gone.push(id.clone());
            } else if n.health == Health::Alive && quiet >= suspect {
                n.health = Health::Suspect;
                actions.push(Action::NodeHealth {
                    node: id.clone(),
                    health: Health::Suspect,
                });
            }
        }
        for id in gone {
            self.node_gone(now, &id, "agent stopped responding", actions);
        }
        let expired: Vec<(TaskId, NodeId, u32)> = self
            .tasks
            .iter()
            .filter_map(|(id, t)| match &t.state {
                TaskState::Running { node, lease_until } if *lease_until <= now => {
                    Some((*id, node.clone(), t.attempt))
                }
                _ => None,
            })
            .collect();
        for (task, node, attempt) in expired {
            self.release(task, &node);
            actions.push(Action::Revoke {
                task,
                attempt,
                node: node.clone(),
            });
            self.retry(now, task, format!("lease expired on {node}"), true, actions);
        }
    }

    fn free_slots(n: &Node) -> u32 {
        n.report.slots.saturating_sub(n.running.len() as u32)
    }

    /// Assign ready tasks, in queue order, to the best alive agent with room.
    fn assign(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let mut still_queued = VecDeque::new();
        while let Some(id) = self.queue.pop_front() {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            let TaskState::Queued { ready_at } = task.state else {
                continue;
            };
            if ready_at > now {
                still_queued.push_back(id);
                continue;
            }
            let best = self
                .nodes
                .iter()
                .filter(|(_, n)| n.health == Health::Alive && Self::free_slots(n) > 0)
                .map(|(node_id, n)| {
                    let has_plugins = task
                        .spec
                        .plugins
                        .iter()
                        .all(|p| n.report.plugins.contains(p));
                    let has_input = n.report.inputs.contains(&task.spec.input);
                    let locality = u32::from(has_plugins) * 2 + u32::from(has_input);
                    // Load per slot, in thousandths, lower is better.
                    let load = (n.running.len() as u64 + u64::from(n.report.queue_depth)) * 1000
                        / u64::from(n.report.slots.max(1));
                    (std::cmp::Reverse(locality), load, node_id.clone())
                })
                .min();
            match best {
                Some((_, _, node)) => {
                    let lease_until = now + self.config.lease_ms;
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.running.insert(id);
                    }
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.attempt += 1;
                        t.state = TaskState::Running {
                            node: node.clone(),
                            lease_until,
                        };
                        actions.push(Action::Assign {
                            task: id,
                            attempt: t.attempt,
                            node,
                            lease_until,
                        });
                    }
                }
                None => still_queued.push_back(id),
            }
        }
        self.queue = still_queued;
    }

    /// A job's progress, and why it waits when it does.
    pub fn job_status(&self, job: JobId, now: Millis) -> JobStatus {
        let mut s = JobStatus::default();
        let mut backoff_until = None;
        for t in self.tasks.values().filter(|t| t.spec.job == job) {
            match &t.state {
                TaskState::Queued { ready_at } => {
                    s.queued += 1;
                    if *ready_at > now {
                        backoff_until =
                            Some(backoff_until.map_or(*ready_at, |b: Millis| b.min(*ready_at)));
                    }
                }
                TaskState::Running { .. } => s.running += 1,
                TaskState::Done { .. } => s.done += 1,
                TaskState::Failed { .. } => s.failed += 1,
                TaskState::Cancelled => s.cancelled += 1,
            }
        }
        if s.queued > 0 {
            let alive: Vec<&Node> = self
                .nodes
                .values()
                .filter(|n| n.health == Health::Alive)
                .collect();
            s.waiting = Some(if alive.is_empty() {
                let known = self.nodes.len();
                if known == 0 {
                    "waiting: no agents have joined; start one with `pixmesh-agent run`".to_owned()
                } else {
                    format!("waiting: none of the {known} known agents is reachable")
                }
            } else if alive.iter().all(|n| Self::free_slots(n) == 0) {
                format!("waiting: all {} agents are busy", alive.len())
            } else if let Some(until) = backoff_until {
                format!("waiting: retrying in {} ms", until.saturating_sub(now))
            } else {
                "queued".to_owned()
            });
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(slots: u32) -> NodeReport {
        NodeReport {
            slots,
            ..NodeReport::default()
        }
    }

    fn seen(node: &str, slots: u32) -> Event {
        Event::NodeSeen {
            node: node.into(),
            report: report(slots),
        }
    }

    fn task(id: TaskId) -> Event {
        Event::Submitted(TaskSpec {
            id,
            job: 1,
            input: format!("in{id}"),
            plugins: vec![],
            attempt: 0,
        })
    }

    fn assigned(actions: &[Action]) -> Vec<(TaskId, u32, NodeId)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Assign {
                    task,
                    attempt,
                    node,
                    ..
                } => Some((*task, *attempt, node.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tasks_spread_over_free_slots_least_loaded_first() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.handle(0, seen("a", 2));
        s.handle(0, seen("b", 2));
        let mut got = Vec::new();
        for id in 1..=5 {
            got.extend(assigned(&s.handle(0, task(id))));
        }
        assert_eq!(got.len(), 4, "four slots, five tasks: {got:?}");
        let on_a = got.iter().filter(|(_, _, n)| n == "a").count();
        assert_eq!(on_a, 2, "balanced: {got:?}");
        assert_eq!(s.job_status(1, 0).queued, 1);
        assert_eq!(
            s.job_status(1, 0).waiting.as_deref(),
            Some("waiting: all 2 agents are busy")
        );
        // A slot frees up: the queued task goes there.
        let done = s.handle(
            1,
            Event::Completed {
                task: 1,
                attempt: 1,
                node: got[0].2.clone(),
                output: "o1".into(),
            },
        );
        assert!(done.contains(&Action::Accept {
            task: 1,
            attempt: 1,
            output: "o1".into()
        }));
        assert_eq!(assigned(&done), vec![(5, 1, got[0].2.clone())]);
    }

    #[test]
    fn queue_depth_and_locality_steer_placement() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.handle(
            0,
            Event::NodeSeen {
                node: "busy".into(),
                report: NodeReport {
                    slots: 4,
                    queue_depth: 20,
                    ..report(4)
                },
            },
        );
        s.handle(0, seen("idle", 4));
        assert_eq!(
            assigned(&s.handle(0, task(1)))[0].2,
            "idle",
            "queue depth counts"
        );
        let mut cached = report(4);
        cached.plugins.insert("sepia".into());
        s.handle(
            0,
            Event::NodeSeen {
                node: "busy".into(),
                report: NodeReport {
                    queue_depth: 20,
                    ..cached
                },
            },
        );
        let a = s.handle(
            0,
            Event::Submitted(TaskSpec {
                id: 2,
                job: 1,
                input: "x".into(),
                plugins: vec!["sepia".into()],
                attempt: 0,
            }),
        );
        assert_eq!(
            assigned(&a)[0].2,
            "busy",
            "an agent holding the plugin is preferred"
        );
    }

    #[test]
    fn lease_expiry_reassigns_with_a_new_attempt_and_fences_the_old_one() {
        let cfg = SchedulerConfig::default();
        let mut s = Scheduler::new(cfg.clone());
        let beat = |s: &mut Scheduler, t: Millis| {
            let mut a = s.handle(t, seen("a", 1));
            a.extend(s.handle(t, seen("b", 1)));
            a
        };
        beat(&mut s, 0);
        let holder = assigned(&s.handle(0, task(7)))[0].2.clone();
        // Both agents stay alive; the holder reports progress once at 5 s
        // (lease now ends at 15 s) and then goes quiet about the task.
        let mut log = Vec::new();
        for t in (1_000..=14_000).step_by(1_000) {
            log.extend(beat(&mut s, t));
            if t == 5_000 {
                log.extend(s.handle(
                    t,
                    Event::Progress {
                        task: 7,
                        attempt: 1,
                        node: holder.clone(),
                    },
                ));
            }
        }
        assert!(
            log.is_empty(),
            "nothing happens while the lease holds: {log:?}"
        );
        let acts = s.tick(15_000);
        assert!(
            acts.contains(&Action::Revoke {
                task: 7,
                attempt: 1,
                node: holder.clone()
            }),
            "{acts:?}"
        );
        assert!(assigned(&acts).is_empty(), "backoff first");
        let again = assigned(&beat(&mut s, 15_000 + cfg.backoff_base_ms));
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!((again[0].0, again[0].1), (7, 2));
        // The late result of attempt 1 is refused; attempt 2's is accepted, once.
        let late = s.handle(
            15_600,
            Event::Completed {
                task: 7,
                attempt: 1,
                node: holder.clone(),
                output: "late".into(),
            },
        );
        assert_eq!(
            late,
            vec![Action::Fenced {
                task: 7,
                attempt: 1,
                node: holder
            }]
        );
        let node2 = again[0].2.clone();
        let ok = s.handle(
            15_700,
            Event::Completed {
                task: 7,
                attempt: 2,
                node: node2.clone(),
                output: "o".into(),
            },
        );
        assert_eq!(
            ok[0],
            Action::Accept {
                task: 7,
                attempt: 2,
                output: "o".into()
            }
        );
        let dup = s.handle(
            15_800,
            Event::Completed {
                task: 7,
                attempt: 2,
                node: node2,
                output: "o".into(),
            },
        );
        assert!(matches!(dup[0], Action::Fenced { .. }), "accepted once");
        assert_eq!(
            s.counters(),
            Counters {
                reassigned: 1,
                fenced: 2
            }
        );
    }

    #[test]
    fn a_dead_agent_loses_its_tasks_within_the_dead_threshold() {
        let cfg = SchedulerConfig::default();
        let mut s = Scheduler::new(cfg.clone());
        s.handle(0, seen("doomed", 2));
        assert_eq!(assigned(&s.handle(0, task(1)))[0].2, "doomed");
        s.handle(0, task(2));
        // The survivor heartbeats every 250 ms; the doomed agent never speaks again.
        let (mut t, mut health, mut moved) = (0, Vec::new(), Vec::new());
        while t < 10_000 && moved.len() < 2 {
            t += 250;
            let mut acts = s.handle(t, seen("survivor", 2));
            acts.extend(s.tick(t));
            health.extend(acts.iter().filter_map(|a| match a {
                Action::NodeHealth { node, health } if node == "doomed" => Some(*health),
                _ => None,
            }));
            moved.extend(
                assigned(&acts)
                    .into_iter()
                    .filter(|(_, _, n)| n == "survivor"),
            );
        }
        assert_eq!(health, vec![Health::Suspect, Health::Dead]);
        assert_eq!(
            moved
                .iter()
                .map(|(id, attempt, _)| (*id, *attempt))
                .collect::<Vec<_>>(),
            vec![(1, 2), (2, 2)]
        );
        // Killed at 0: dead after the threshold and handed on at once (no
        // backoff: the task did nothing wrong).
        assert!(t <= cfg.dead_after_ms + 250, "reassigned at {t} ms");
    }

    #[test]
    fn retries_back_off_and_give_up_after_max_attempts() {
        let cfg = SchedulerConfig {
            max_attempts: 3,
            ..SchedulerConfig::default()
        };
        let mut s = Scheduler::new(cfg.clone());
        s.handle(0, seen("a", 1));
        let mut acts = s.handle(0, task(1));
        let (mut now, mut attempts, mut gaps) = (0, Vec::new(), Vec::new());
        loop {
            let (id, attempt, node) = assigned(&acts).pop().expect("assigned");
            attempts.push(attempt);
            let failed_at = now;
            let fail = Event::Failed {
                task: id,
                attempt,
                node,
                reason: "agent shutting down".into(),
                retryable: true,
            };
            if s.handle(now, fail)
                .iter()
                .any(|a| matches!(a, Action::GiveUp { .. }))
            {
                break;
            }
            // Heartbeat every 100 ms until the retry is assigned.
            acts = Vec::new();
            while assigned(&acts).is_empty() {
                now += 100;
                acts = s.handle(now, seen("a", 1));
            }
            gaps.push(now - failed_at);
        }
        assert_eq!(attempts, vec![1, 2, 3]);
        assert_eq!(
            gaps,
            vec![cfg.backoff_base_ms, cfg.backoff_base_ms * 2],
            "exponential backoff"
        );
        match s.task(1) {
            Some((TaskState::Failed { reason }, 3)) => {
                assert!(
                    reason.starts_with("gave up after 3 attempts; last: agent shutting down"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_input_fails_once_without_retry() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.handle(0, seen("a", 1));
        s.handle(0, task(1));
        let acts = s.handle(
            1,
            Event::Failed {
                task: 1,
                attempt: 1,
                node: "a".into(),
                reason: "corrupt jpeg".into(),
                retryable: false,
            },
        );
        assert_eq!(
            acts,
            vec![Action::GiveUp {
                task: 1,
                reason: "corrupt jpeg".into()
            }]
        );
        assert_eq!(s.job_status(1, 1).failed, 1);
    }

    #[test]
    fn cancel_revokes_running_tasks_and_drops_queued_ones() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.handle(0, seen("a", 1));
        s.handle(0, task(1));
        s.handle(0, task(2));
        let acts = s.handle(1, Event::CancelJob(1));
        assert_eq!(
            acts,
            vec![Action::Revoke {
                task: 1,
                attempt: 1,
                node: "a".into()
            }]
        );
        let st = s.job_status(1, 1);
        assert_eq!((st.cancelled, st.queued, st.running), (2, 0, 0));
        let late = s.handle(
            2,
            Event::Completed {
                task: 1,
                attempt: 1,
                node: "a".into(),
                output: "o".into(),
            },
        );
        assert!(matches!(late[0], Action::Fenced { .. }));
        // The freed slot takes nothing from the cancelled job.
        assert!(assigned(&s.tick(3)).is_empty());
    }

    #[test]
    fn with_no_agents_the_job_waits_and_says_why_then_runs_when_one_joins() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        assert!(assigned(&s.handle(0, task(1))).is_empty());
        let st = s.job_status(1, 0);
        assert_eq!(st.queued, 1);
        assert!(
            st.waiting
                .as_deref()
                .is_some_and(|w| w.contains("no agents have joined")),
            "{st:?}"
        );
        let acts = s.handle(60_000, seen("late-joiner", 1));
        assert_eq!(assigned(&acts), vec![(1, 1, "late-joiner".into())]);
        assert_eq!(s.job_status(1, 60_000).waiting, None);
    }

    #[test]
    fn a_graceful_leave_hands_tasks_back_at_once() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.handle(0, seen("leaving", 1));
        s.handle(0, seen("staying", 0));
        s.handle(0, task(1));
        let acts = s.handle(
            10,
            Event::NodeLeft {
                node: "leaving".into(),
            },
        );
        assert!(
            acts.contains(&Action::Requeued {
                task: 1,
                attempt: 1,
                reason: "agent left (leaving)".into()
            }),
            "{acts:?}"
        );
        // No backoff: the next free slot takes it.
        let acts = s.handle(20, seen("staying", 1));
        assert_eq!(assigned(&acts), vec![(1, 2, "staying".into())]);
    }

    #[test]
    fn a_task_restored_after_restart_continues_its_attempt_numbers() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.handle(0, seen("a", 1));
        // Stored as running attempt 2 on some agent when the coordinator died.
        let restored = TaskSpec {
            id: 9,
            job: 1,
            input: "i".into(),
            plugins: vec![],
            attempt: 2,
        };
        let acts = s.handle(0, Event::Submitted(restored));
        assert_eq!(assigned(&acts), vec![(9, 3, "a".into())]);
        // The agent that held attempt 2 before the restart is fenced.
        let late = s.handle(
            1,
            Event::Completed {
                task: 9,
                attempt: 2,
                node: "old".into(),
                output: "o".into(),
            },
        );
        assert!(matches!(late[0], Action::Fenced { attempt: 2, .. }));
    }
}
