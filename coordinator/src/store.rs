//! The coordinator's durable state: jobs, tasks, nodes and plugin names in
//! SQLite (WAL mode, `synchronous = FULL`, schema migrations).
//!
//! The contract with the rest of the coordinator: a job is written with
//! [`Store::open_job`] while its images arrive, each batch of tasks is
//! committed by [`Store::add_tasks`] (their blobs went to the
//! [`BlobStore`](crate::blobs::BlobStore) first), and [`Store::seal_job`]
//! commits that every image is in — only then is the submit acknowledged,
//! so an acknowledged job survives a crash, and a job still receiving when
//! the coordinator stops is dropped by [`Store::drop_unsealed_jobs`]. After a restart,
//! [`Store::unfinished_tasks`] gives back every task still to do, with its
//! attempt counter, so fencing keeps working across restarts.
//! [`Store::record_done`] is itself fenced (it only completes the current
//! attempt of a running task), a second line of defence behind the scheduler.

use std::path::Path;

use pixmesh_protocol::{ContentId, JobSpec};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::scheduler::{JobId, TaskId};

/// Store failures, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("database: {context}: {source}")]
    Sql {
        /// What we were doing.
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A stored value does not parse (the file was edited or damaged).
    #[error("database holds a bad value: {0}")]
    Corrupt(String),
}

trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sql { context, source })
    }
}

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE jobs (
            id         INTEGER PRIMARY KEY,
            spec       TEXT    NOT NULL,
            cancelled  INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL
        );
        CREATE TABLE tasks (
            id      INTEGER PRIMARY KEY,
            job     INTEGER NOT NULL REFERENCES jobs(id),
            name    TEXT    NOT NULL,
            input   TEXT    NOT NULL,
            state   TEXT    NOT NULL
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            attempt INTEGER NOT NULL DEFAULT 0,
            node    TEXT,
            output  TEXT,
            error   TEXT,
            UNIQUE (job, name)
        );
        CREATE INDEX tasks_by_job ON tasks(job);
        CREATE INDEX tasks_unfinished ON tasks(state) WHERE state IN ('queued', 'running');
        CREATE TABLE nodes (
            peer          TEXT PRIMARY KEY,
            status        TEXT NOT NULL CHECK (status IN ('enrolled', 'pending', 'refused')),
            first_seen_ms INTEGER NOT NULL,
            last_seen_ms  INTEGER,
            version       TEXT
        );
        CREATE TABLE plugins (
            name TEXT PRIMARY KEY,
            hash TEXT NOT NULL
        );",
        ),
        M::up(
            "ALTER TABLE tasks ADD COLUMN assigned_ms REAL;
        ALTER TABLE tasks ADD COLUMN finished_ms REAL;
        ALTER TABLE nodes ADD COLUMN reason TEXT;
        CREATE TABLE join_tokens (
            id         TEXT    PRIMARY KEY,
            hash       TEXT    NOT NULL UNIQUE,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER,
            revoked    INTEGER NOT NULL DEFAULT 0,
            used       INTEGER NOT NULL DEFAULT 0
        );",
        ),
        M::up("ALTER TABLE tasks ADD COLUMN fenced INTEGER NOT NULL DEFAULT 0;"),
        // A job whose upload is still arriving: its tasks may already run,
        // but it is not acknowledged, and a restart drops it.
        M::up("ALTER TABLE jobs ADD COLUMN receiving INTEGER NOT NULL DEFAULT 0;"),
    ])
}

/// True while `job` exists and its images are still arriving.
fn receiving(conn: &Connection, job: JobId) -> Result<bool, StoreError> {
    let r: Option<i64> = conn
        .query_row(
            "SELECT receiving FROM jobs WHERE id = ?1",
            [job as i64],
            |r| r.get(0),
        )
        .optional()
        .ctx("reading a job")?;
    Ok(r == Some(1))
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    /// Peer id.
    pub peer: String,
    /// `enrolled`, `pending` or `refused`.
    pub status: String,
    /// First seen, Unix ms.
    pub first_seen_ms: i64,
    /// Last seen, Unix ms.
    pub last_seen_ms: Option<i64>,
    /// Agent version.
    pub version: Option<String>,
    /// Why it was refused.
    pub reason: Option<String>,
}

/// A join token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    /// Short id, for revoking.
    pub id: String,
    /// Created, Unix ms.
    pub created_ms: i64,
    /// Expiry, Unix ms; None for never.
    pub expires_ms: Option<i64>,
    /// Revoked.
    pub revoked: bool,
    /// Agents enrolled with it.
    pub used: u64,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task id.
    pub id: TaskId,
    /// Its job.
    pub job: JobId,
    /// The input's file name (results keep it).
    pub name: String,
    /// Input content id.
    pub input: ContentId,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Attempts made so far (the fencing token of the latest).
    pub attempt: u32,
    /// Agent of the latest attempt.
    pub node: Option<String>,
    /// Output content id, when done.
    pub output: Option<ContentId>,
    /// Failure reason, when failed.
    pub error: Option<String>,
    /// When the latest attempt was assigned, Unix ms.
    pub assigned_ms: Option<f64>,
    /// When it finished, Unix ms.
    pub finished_ms: Option<f64>,
    /// Late results from superseded attempts that fencing refused.
    pub fenced: u32,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

fn parse_id(s: String) -> Result<ContentId, StoreError> {
    s.parse().map_err(StoreError::Corrupt)
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path).ctx("opening the database")?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .ctx("enabling WAL")?;
        // FULL: a commit is on disk before it returns, so an acknowledged
        // job survives power loss, not only a process crash.
        conn.pragma_update(None, "synchronous", "FULL")
            .ctx("setting synchronous")?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .ctx("enabling foreign keys")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .ctx("setting busy timeout")?;
        migrations().to_latest(&mut conn)?;
        Ok(Store { conn })
    }

    /// The journal mode in force (for tests and diagnostics).
    pub fn journal_mode(&self) -> Result<String, StoreError> {
        self.conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .ctx("reading journal mode")
    }

    /// Start a job whose images are still arriving ([`Store::add_tasks`],
    /// then [`Store::seal_job`] once all are in).
    pub fn open_job(&mut self, spec: &JobSpec, now_ms: u64) -> Result<JobId, StoreError> {
        self.conn
            .execute(
                "INSERT INTO jobs (spec, created_ms, receiving) VALUES (?1, ?2, 1)",
                params![spec.to_json(), now_ms as i64],
            )
            .ctx("inserting the job")?;
        Ok(self.conn.last_insert_rowid() as JobId)
    }

    /// Add tasks to a job that is still receiving; None if it is not (it
    /// was dropped, or sealed).
    pub fn add_tasks(
        &mut self,
        job: JobId,
        inputs: &[(String, ContentId)],
    ) -> Result<Option<Vec<TaskId>>, StoreError> {
        let tx = self.conn.transaction().ctx("starting to add tasks")?;
        if !receiving(&tx, job)? {
            return Ok(None);
        }
        let mut tasks = Vec::with_capacity(inputs.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO tasks (job, name, input, state) VALUES (?1, ?2, ?3, 'queued')",
                )
                .ctx("preparing task insert")?;
            for (name, input) in inputs {
                insert
                    .execute(params![job as i64, name, input.to_string()])
                    .ctx("inserting a task")?;
                tasks.push(tx.last_insert_rowid() as TaskId);
            }
        }
        tx.commit().ctx("committing tasks")?;
        Ok(Some(tasks))
    }

    /// Every image of a job has arrived: it is acknowledged from now on.
    pub fn seal_job(&mut self, job: JobId) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE jobs SET receiving = 0 WHERE id = ?1", [job as i64])
            .ctx("sealing a job")?;
        Ok(())
    }

    /// Remove a job and its tasks (an upload that never completed).
    pub fn drop_job(&mut self, job: JobId) -> Result<(), StoreError> {
        let tx = self.conn.transaction().ctx("starting to drop a job")?;
        tx.execute("DELETE FROM tasks WHERE job = ?1", [job as i64])
            .ctx("dropping tasks")?;
        tx.execute("DELETE FROM jobs WHERE id = ?1", [job as i64])
            .ctx("dropping a job")?;
        tx.commit().ctx("committing the drop")?;
        Ok(())
    }

    /// Drop every job whose upload never completed (after a crash); how many.
    pub fn drop_unsealed_jobs(&mut self) -> Result<usize, StoreError> {
        let tx = self.conn.transaction().ctx("starting to drop jobs")?;
        tx.execute(
            "DELETE FROM tasks WHERE job IN (SELECT id FROM jobs WHERE receiving = 1)",
            [],
        )
        .ctx("dropping tasks")?;
        let n = tx
            .execute("DELETE FROM jobs WHERE receiving = 1", [])
            .ctx("dropping jobs")?;
        tx.commit().ctx("committing the drop")?;
        Ok(n)
    }

    /// True while a job's images are still arriving.
    pub fn job_receiving(&self, job: JobId) -> Result<bool, StoreError> {
        receiving(&self.conn, job)
    }

    /// A job's spec, if the job exists.
    pub fn job_spec(&self, job: JobId) -> Result<Option<JobSpec>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT spec FROM jobs WHERE id = ?1", [job as i64], |r| {
                r.get(0)
            })
            .optional()
            .ctx("reading a job")?;
        text.map(|t| JobSpec::from_json(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    fn tasks_where(&self, clause: &str, arg: Option<i64>) -> Result<Vec<TaskRow>, StoreError> {
        let sql = format!(
            "SELECT id, job, name, input, state, attempt, node, output, error, assigned_ms, finished_ms, fenced FROM tasks {clause} ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql).ctx("preparing a task query")?;
        let rows = match arg {
            Some(a) => stmt.query_map([a], raw_task),
            None => stmt.query_map([], raw_task),
        }
        .ctx("querying tasks")?;
        let mut out = Vec::new();
        for row in rows {
            let (
                (id, job, name, input, state, attempt, node, output, error),
                (assigned_ms, finished_ms, fenced),
            ) = row.ctx("reading a task")?;
            out.push(TaskRow {
                id: id as TaskId,
                job: job as JobId,
                name,
                input: parse_id(input)?,
                state,
                attempt: attempt as u32,
                node,
                output: output.map(parse_id).transpose()?,
                error,
                assigned_ms,
                finished_ms,
                fenced,
            });
        }
        Ok(out)
    }

    /// Tasks finished (done) per `bucket_ms` since `since_ms` (Unix ms):
    /// (bucket start, count), oldest first, empty buckets left out.
    pub fn finished_per_bucket(
        &self,
        since_ms: f64,
        bucket_ms: u64,
    ) -> Result<Vec<(f64, u64)>, StoreError> {
        let bucket = bucket_ms.max(1) as f64;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT CAST(finished_ms / ?2 AS INTEGER) AS b, COUNT(*) FROM tasks
                 WHERE state = 'done' AND finished_ms >= ?1 GROUP BY b ORDER BY b",
            )
            .ctx("preparing the throughput query")?;
        let rows = stmt
            .query_map(params![since_ms, bucket], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .ctx("querying throughput")?;
        rows.map(|r| {
            r.map(|(b, n)| (b as f64 * bucket, n as u64))
                .ctx("reading throughput")
        })
        .collect()
    }

    /// Tasks per state.
    pub fn task_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .ctx("preparing task counts")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .ctx("counting tasks")?;
        rows.map(|r| r.map(|(s, n)| (s, n as u64)).ctx("reading task counts"))
            .collect()
    }

    /// Every job id, oldest first.
    pub fn job_ids(&self) -> Result<Vec<JobId>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM jobs ORDER BY id")
            .ctx("preparing job list")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, i64>(0))
            .ctx("listing jobs")?;
        ids.map(|r| r.map(|id| id as JobId).ctx("reading a job id"))
            .collect()
    }

    /// Every task of a job, in submission order.
    pub fn job_tasks(&self, job: JobId) -> Result<Vec<TaskRow>, StoreError> {
        self.tasks_where("WHERE job = ?1", Some(job as i64))
    }

    /// Every task still to do (queued or running), for recovery after a restart.
    pub fn unfinished_tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        self.tasks_where("WHERE state IN ('queued', 'running')", None)
    }

    /// The scheduler leased `task` to `node` as `attempt`.
    pub fn record_assigned(
        &mut self,
        task: TaskId,
        attempt: u32,
        node: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE tasks SET state = 'running', attempt = ?2, node = ?3, assigned_ms = ?4
                 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![task as i64, attempt, node, unix_ms()],
            )
            .ctx("recording an assignment")?;
        Ok(())
    }

    /// The task went back to the queue.
    pub fn record_requeued(&mut self, task: TaskId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE tasks SET state = 'queued' WHERE id = ?1 AND state = 'running'",
                [task as i64],
            )
            .ctx("recording a requeue")?;
        Ok(())
    }

    /// Count a late result of `task` that fencing refused.
    pub fn record_fenced(&mut self, task: TaskId) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE tasks SET fenced = fenced + 1 WHERE id = ?1",
                [task as i64],
            )
            .ctx("counting a fenced result")?;
        Ok(())
    }

    /// Complete `task` with `output` if `attempt` is its running attempt.
    /// Returns false (and changes nothing) for a stale or repeated result.
    pub fn record_done(
        &mut self,
        task: TaskId,
        attempt: u32,
        output: &ContentId,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE tasks SET state = 'done', output = ?3, finished_ms = ?4
                 WHERE id = ?1 AND attempt = ?2 AND state = 'running'",
                params![task as i64, attempt, output.to_string(), unix_ms()],
            )
            .ctx("recording a result")?;
        Ok(n == 1)
    }

    /// The task failed for good.
    pub fn record_failed(&mut self, task: TaskId, reason: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE tasks SET state = 'failed', error = ?2, finished_ms = ?3 WHERE id = ?1 AND state IN ('queued', 'running')",
                params![task as i64, reason, unix_ms()],
            )
            .ctx("recording a failure")?;
        Ok(())
    }

    /// Cancel a job: its unfinished tasks become cancelled. Returns how many.
    pub fn cancel_job(&mut self, job: JobId) -> Result<usize, StoreError> {
        let tx = self.conn.transaction().ctx("starting cancel")?;
        tx.execute("UPDATE jobs SET cancelled = 1 WHERE id = ?1", [job as i64])
            .ctx("cancelling a job")?;
        let n = tx
            .execute(
                "UPDATE tasks SET state = 'cancelled' WHERE job = ?1 AND state IN ('queued', 'running')",
                [job as i64],
            )
            .ctx("cancelling tasks")?;
        tx.commit().ctx("committing cancel")?;
        Ok(n)
    }
}

impl Store {
    /// One task.
    pub fn task(&self, task: TaskId) -> Result<Option<TaskRow>, StoreError> {
        Ok(self
            .tasks_where("WHERE id = ?1", Some(task as i64))?
            .into_iter()
            .next())
    }

    /// A node's stored status, if it has been seen.
    pub fn node_status(&self, peer: &str) -> Result<Option<String>, StoreError> {
        self.conn
            .query_row("SELECT status FROM nodes WHERE peer = ?1", [peer], |r| {
                r.get(0)
            })
            .optional()
            .ctx("reading a node")
    }

    /// Record a node's status (and version, reason), keeping first-seen.
    pub fn set_node(
        &mut self,
        peer: &str,
        status: &str,
        version: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = unix_ms() as i64;
        self.conn
            .execute(
                "INSERT INTO nodes (peer, status, first_seen_ms, last_seen_ms, version, reason)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5)
                 ON CONFLICT (peer) DO UPDATE SET status = ?2, last_seen_ms = ?3,
                   version = coalesce(?4, version), reason = ?5",
                params![peer, status, now, version, reason],
            )
            .ctx("recording a node")?;
        Ok(())
    }

    /// Every node ever seen.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT peer, status, first_seen_ms, last_seen_ms, version, reason FROM nodes ORDER BY first_seen_ms, peer",
            )
            .ctx("preparing node list")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeRow {
                    peer: r.get(0)?,
                    status: r.get(1)?,
                    first_seen_ms: r.get(2)?,
                    last_seen_ms: r.get(3)?,
                    version: r.get(4)?,
                    reason: r.get(5)?,
                })
            })
            .ctx("listing nodes")?;
        rows.map(|r| r.ctx("reading a node")).collect()
    }

    /// Store a new join token (by its hash); returns its short id.
    pub fn create_token(
        &mut self,
        hash: &str,
        expires_ms: Option<i64>,
    ) -> Result<String, StoreError> {
        let id = hash[..12.min(hash.len())].to_owned();
        self.conn
            .execute(
                "INSERT INTO join_tokens (id, hash, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, hash, unix_ms() as i64, expires_ms],
            )
            .ctx("storing a join token")?;
        Ok(id)
    }

    /// Check a join token by its hash and count a use. Err is the reason it
    /// is not good.
    pub fn use_token(&mut self, hash: &str) -> Result<Result<(), String>, StoreError> {
        let row: Option<(String, Option<i64>, bool)> = self
            .conn
            .query_row(
                "SELECT id, expires_ms, revoked FROM join_tokens WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ctx("reading a join token")?;
        let Some((id, expires, revoked)) = row else {
            return Ok(Err("unknown join token".into()));
        };
        if revoked {
            return Ok(Err(format!("join token {id} was revoked")));
        }
        if expires.is_some_and(|e| (e as f64) < unix_ms()) {
            return Ok(Err(format!("join token {id} has expired")));
        }
        self.conn
            .execute(
                "UPDATE join_tokens SET used = used + 1 WHERE id = ?1",
                [&id],
            )
            .ctx("counting a token use")?;
        Ok(Ok(()))
    }

    /// Revoke a join token by id; false if there is none.
    pub fn revoke_token(&mut self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute("UPDATE join_tokens SET revoked = 1 WHERE id = ?1", [id])
            .ctx("revoking a join token")?;
        Ok(n == 1)
    }

    /// Every join token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, created_ms, expires_ms, revoked, used FROM join_tokens ORDER BY created_ms")
            .ctx("preparing token list")?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    created_ms: r.get(1)?,
                    expires_ms: r.get(2)?,
                    revoked: r.get(3)?,
                    used: r.get::<_, i64>(4)? as u64,
                })
            })
            .ctx("listing tokens")?;
        rows.map(|r| r.ctx("reading a token")).collect()
    }

    /// Point a plugin name at a hash.
    pub fn set_plugin(&mut self, name: &str, hash: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO plugins (name, hash) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET hash = ?2",
                params![name, hash],
            )
            .ctx("naming a plugin")?;
        Ok(())
    }

    /// Every plugin name and its hash, by name.
    pub fn plugins(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, hash FROM plugins ORDER BY name")
            .ctx("preparing plugin list")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ctx("listing plugins")?;
        rows.map(|r| r.ctx("reading a plugin")).collect()
    }
}

type RawTask = (
    i64,
    i64,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Assignment and finish times.
type Times = (Option<f64>, Option<f64>, u32);

fn raw_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<(RawTask, Times)> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ),
        (r.get(9)?, r.get(10)?, r.get(11)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec::from_compact("orient | resize 256 | webp q=80").expect("spec")
    }

    /// Write a whole job at once, as a submit does image by image.
    fn insert(store: &mut Store, inputs: &[(String, ContentId)]) -> (JobId, Vec<TaskId>) {
        let job = store.open_job(&spec(), 1).expect("open job");
        let tasks = store
            .add_tasks(job, inputs)
            .expect("add")
            .expect("receiving");
        store.seal_job(job).expect("seal");
        (job, tasks)
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().expect("valid migrations");
    }

    #[test]
    fn a_committed_job_is_there_after_reopening_with_its_attempts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pixmesh.db");
        let inputs = vec![
            ("a.jpg".to_owned(), ContentId::of(b"a")),
            ("b.jpg".to_owned(), ContentId::of(b"b")),
            ("c.jpg".to_owned(), ContentId::of(b"c")),
        ];
        let (job, tasks) = {
            let mut store = Store::open(&path).expect("open");
            assert_eq!(store.journal_mode().expect("mode"), "wal");
            let (job, tasks) = insert(&mut store, &inputs);
            store
                .record_assigned(tasks[0], 1, "agent-a")
                .expect("assign");
            store
                .record_assigned(tasks[1], 1, "agent-b")
                .expect("assign");
            assert!(
                store
                    .record_done(tasks[1], 1, &ContentId::of(b"out"))
                    .expect("done")
            );
            (job, tasks)
            // Dropped without any shutdown step, as a crash would leave it.
        };
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.job_spec(job).expect("spec"), Some(spec()));
        let unfinished = store.unfinished_tasks().expect("unfinished");
        assert_eq!(
            unfinished.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![tasks[0], tasks[2]]
        );
        assert_eq!(
            (unfinished[0].state.as_str(), unfinished[0].attempt),
            ("running", 1)
        );
        assert_eq!(unfinished[0].node.as_deref(), Some("agent-a"));
        let all = store.job_tasks(job).expect("tasks");
        assert_eq!(all[1].output, Some(ContentId::of(b"out")));
        assert_eq!(
            all.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            vec!["a.jpg", "b.jpg", "c.jpg"]
        );
    }

    #[test]
    fn results_are_fenced_in_the_database_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("db")).expect("open");
        let (_, tasks) = insert(&mut store, &[("x.jpg".into(), ContentId::of(b"x"))]);
        let t = tasks[0];
        store.record_assigned(t, 1, "a").expect("assign");
        store.record_requeued(t).expect("requeue");
        store.record_assigned(t, 2, "b").expect("reassign");
        assert!(
            !store
                .record_done(t, 1, &ContentId::of(b"late"))
                .expect("stale"),
            "stale attempt refused"
        );
        assert!(
            store
                .record_done(t, 2, &ContentId::of(b"ok"))
                .expect("current")
        );
        assert!(
            !store
                .record_done(t, 2, &ContentId::of(b"ok"))
                .expect("repeat"),
            "accepted once"
        );
        assert_eq!(
            store.job_tasks(1).expect("tasks")[0].output,
            Some(ContentId::of(b"ok"))
        );
    }

    #[test]
    fn cancel_and_failure_are_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("db")).expect("open");
        let inputs: Vec<_> = ["1", "2", "3"]
            .iter()
            .map(|n| (n.to_string(), ContentId::of(n.as_bytes())))
            .collect();
        let (job, tasks) = insert(&mut store, &inputs);
        store
            .record_failed(tasks[0], "corrupt jpeg: Premature end of JPEG file")
            .expect("fail");
        store.record_assigned(tasks[1], 1, "a").expect("assign");
        assert_eq!(store.cancel_job(job).expect("cancel"), 2);
        let rows = store.job_tasks(job).expect("tasks");
        assert_eq!(
            rows.iter().map(|t| t.state.as_str()).collect::<Vec<_>>(),
            vec!["failed", "cancelled", "cancelled"]
        );
        assert_eq!(
            rows[0].error.as_deref(),
            Some("corrupt jpeg: Premature end of JPEG file")
        );
        assert!(store.unfinished_tasks().expect("unfinished").is_empty());
    }

    #[test]
    fn duplicate_names_in_one_job_are_refused_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("db")).expect("open");
        let dup = vec![
            ("x.jpg".into(), ContentId::of(b"1")),
            ("x.jpg".into(), ContentId::of(b"2")),
        ];
        let job = store.open_job(&spec(), 0).expect("open job");
        assert!(store.add_tasks(job, &dup).is_err());
        assert!(
            store.unfinished_tasks().expect("unfinished").is_empty(),
            "nothing half-written"
        );
    }

    #[test]
    fn a_job_still_receiving_is_dropped_after_a_restart_and_takes_no_tasks_once_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let one = |n: &str| vec![(n.to_owned(), ContentId::of(n.as_bytes()))];
        let (sealed, open) = {
            let mut store = Store::open(&path).expect("open");
            let (sealed, _) = insert(&mut store, &one("a.jpg"));
            let open = store.open_job(&spec(), 0).expect("open job");
            let tasks = store.add_tasks(open, &one("b.jpg")).expect("add");
            assert_eq!(tasks.map(|t| t.len()), Some(1));
            assert!(store.job_receiving(open).expect("receiving"));
            assert!(!store.job_receiving(sealed).expect("receiving"));
            (sealed, open)
        };
        // The coordinator died before the second job's upload completed.
        let mut store = Store::open(&path).expect("reopen");
        assert_eq!(store.drop_unsealed_jobs().expect("drop"), 1);
        assert!(store.job_spec(sealed).expect("query").is_some());
        assert_eq!(store.job_spec(open).expect("query"), None);
        let left = store.unfinished_tasks().expect("unfinished");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].name, "a.jpg");
        // A dropped or sealed job takes no more tasks.
        assert_eq!(store.add_tasks(open, &one("c.jpg")).expect("add"), None);
        assert_eq!(store.add_tasks(sealed, &one("c.jpg")).expect("add"), None);
        let again = store.open_job(&spec(), 0).expect("open job");
        store.drop_job(again).expect("drop");
        assert_eq!(store.job_spec(again).expect("query"), None);
    }

    #[test]
    fn join_tokens_expire_are_revoked_and_are_stored_only_as_hashes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("db")).expect("open");
        let good = store
            .create_token("aaaaaaaaaaaaaaaa", None)
            .expect("create");
        let old = store
            .create_token("bbbbbbbbbbbbbbbb", Some(unix_ms() as i64 - 1000))
            .expect("create");
        assert_eq!(store.use_token("aaaaaaaaaaaaaaaa").expect("use"), Ok(()));
        assert_eq!(store.use_token("aaaaaaaaaaaaaaaa").expect("use"), Ok(()));
        let expired = store.use_token("bbbbbbbbbbbbbbbb").expect("use");
        assert!(expired.is_err_and(|e| e.contains("expired") && e.contains(&old)));
        assert!(
            store
                .use_token("cccc")
                .expect("use")
                .is_err_and(|e| e.contains("unknown"))
        );
        assert!(store.revoke_token(&good).expect("revoke"));
        assert!(!store.revoke_token("nope").expect("revoke"));
        let revoked = store.use_token("aaaaaaaaaaaaaaaa").expect("use");
        assert!(revoked.is_err_and(|e| e.contains("revoked")));
        let listed = store.tokens().expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].used, 2);
        assert!(listed[0].revoked);
    }

    #[test]
    fn nodes_keep_their_first_sighting_and_latest_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("db")).expect("open");
        store.set_node("p1", "pending", None, None).expect("set");
        let first = store.nodes().expect("nodes")[0].first_seen_ms;
        store
            .set_node(
                "p1",
                "refused",
                Some("pixmesh-agent/9"),
                Some("unknown join token"),
            )
            .expect("set");
        let n = &store.nodes().expect("nodes")[0];
        assert_eq!((n.status.as_str(), n.first_seen_ms), ("refused", first));
        assert_eq!(n.reason.as_deref(), Some("unknown join token"));
        store.set_node("p1", "enrolled", None, None).expect("set");
        let n = &store.nodes().expect("nodes")[0];
        assert_eq!(n.status, "enrolled");
        assert_eq!(n.version.as_deref(), Some("pixmesh-agent/9"), "kept");
        assert_eq!(n.reason, None, "cleared");
    }
}
