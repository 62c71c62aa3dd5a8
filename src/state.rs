//! The embedded state store: what the connector has seen, submitted and done, in one SQLite file.
//!
//! It is what makes write-backs happen exactly once across cycles, restarts and crashes:
//! - a checkpoint per data source, moved only after a cycle has recorded its work;
//! - one row per hash with its state machine (`submitting` -> `submitted` -> `finished` or
//!   `failed`), the submission id and the evidence still waiting for a verdict;
//! - the alerts and quarantine records already acted on, with the verdict they got;
//! - the action journal: every action is written as `planned` before its call and `done` after
//!   it, under a key that names what it changes (`alert:<id>:<sha256>:<verdict>`, ...).
//!
//! Every change is one transaction in WAL mode, so `kill -9` at any instant leaves either the old
//! or the new state. Calls are short and synchronous; async callers hold the lock for
//! microseconds, never across an await.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::Sha256;

/// The schema version this build writes. Older files are migrated on open.
const SCHEMA_VERSION: i64 = 4;

/// The attempts count of a journal entry given up on: never offered again, never planned again.
const ABANDONED: i64 = 1_000_000;

/// Failed attempts after which version 3 gave an action up; such entries stay given up.
const VERSION_3_MAX_ATTEMPTS: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot open the state store {path}: {message}; check general.state_file and its folder's permissions"
    )]
    Open { path: PathBuf, message: String },
    #[error(
        "the state store {path} was written by a newer connector (schema {found}, this build knows {SCHEMA_VERSION}); upgrade the connector"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("state store query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("state store holds a value this build cannot read: {0}")]
    Corrupt(String),
}

/// Where a hash stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleState {
    /// About to be uploaded: if the process died here, VMRay may or may not have the file.
    Submitting,
    /// VMRay accepted it; the submission id is known.
    Submitted,
    /// Analysed and acted on.
    Finished,
    /// Could not be downloaded, submitted or analysed this time.
    Failed,
}

impl SampleState {
    fn parse(raw: &str) -> Result<Self, StateError> {
        Ok(match raw {
            "submitting" => SampleState::Submitting,
            "submitted" => SampleState::Submitted,
            "finished" => SampleState::Finished,
            "failed" => SampleState::Failed,
            other => return Err(StateError::Corrupt(format!("sample state `{other}`"))),
        })
    }
}

/// One hash's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRecord {
    pub sha256: Sha256,
    pub state: SampleState,
    pub submission_id: Option<u64>,
    pub sample_id: Option<u64>,
    pub submitted_at: Option<OffsetDateTime>,
    pub verdict: Option<String>,
    /// The evidence waiting for this sample's verdict, as the pipeline serialised it.
    pub evidence_json: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// While `submitting` a resubmission: the newest submission VMRay had before the upload.
    pub baseline_submission: Option<u64>,
    /// Since when the sample has been failing for reasons of its own (outages do not count);
    /// `None` while it is not. `give_up_after` counts from here.
    pub failing_since: Option<OffsetDateTime>,
}

/// A journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub key: String,
    pub sha256: String,
    pub state: JournalState,
    /// The action as the pipeline serialised it, so a restart can perform it.
    pub payload: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    Planned,
    Done,
    /// Postponed by a per-cycle cap (containment); performed in a later cycle.
    Deferred,
    Failed,
}

impl JournalState {
    fn as_str(self) -> &'static str {
        match self {
            JournalState::Planned => "planned",
            JournalState::Done => "done",
            JournalState::Deferred => "deferred",
            JournalState::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> Result<Self, StateError> {
        Ok(match raw {
            "planned" => JournalState::Planned,
            "done" => JournalState::Done,
            "deferred" => JournalState::Deferred,
            "failed" => JournalState::Failed,
            other => return Err(StateError::Corrupt(format!("journal state `{other}`"))),
        })
    }
}

/// The store. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct StateStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl StateStore {
    /// Opens (creating folder, file and schema as needed) and migrates the store.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let fail = |message: String| StateError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::private::create_dir(parent).map_err(|e| fail(e.to_string()))?;
        }
        // The store holds alert and host data: owner-only. SQLite gives its -wal and -shm
        // companions the database file's mode, so creating the file 0600 first (and taking
        // group and other access from one an older version made) covers all three.
        drop(crate::private::open_file(path).map_err(|e| fail(e.to_string()))?);
        for companion in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(companion);
            crate::private::tighten(Path::new(&file)).map_err(|e| fail(e.to_string()))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| fail(e.to_string()))?;
        // FULL, not WAL's usual NORMAL: a "done" mark lost to a power cut would repeat a
        // comment or a containment; one fsync per commit is nothing at this write rate.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| fail(e.to_string()))?;
        // 256 KiB of page cache instead of SQLite's 2 MiB: the daemon reads a few rows per
        // hash and idles for hours, and the default cache stays resident as it fills.
        conn.pragma_update(None, "cache_size", -256)
            .map_err(|e| fail(e.to_string()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| fail(e.to_string()))?;
        migrate(&conn, path)?;
        Ok(StateStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each change is a
        // transaction), so a poisoned lock is still safe to use.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn checkpoint(&self, source: &str) -> Result<Option<OffsetDateTime>, StateError> {
        let raw: Option<String> = self
            .lock()
            .query_row(
                "SELECT since FROM checkpoints WHERE source = ?1",
                [source],
                |row| row.get(0),
            )
            .optional()?;
        raw.map(|s| parse_time(&s)).transpose()
    }

    pub fn set_checkpoint(&self, source: &str, since: OffsetDateTime) -> Result<(), StateError> {
        self.lock().execute(
            "INSERT INTO checkpoints (source, since) VALUES (?1, ?2)
             ON CONFLICT(source) DO UPDATE SET since = excluded.since",
            params![source, format_time(since)],
        )?;
        Ok(())
    }

    pub fn sample(&self, sha256: &Sha256) -> Result<Option<SampleRecord>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!("{SAMPLE_COLUMNS} WHERE sha256 = ?1"))?;
        let row = stmt
            .query_row([sha256.as_str()], read_sample_row)
            .optional()?;
        row.map(into_record).transpose()
    }

    /// Samples left `submitting` or `submitted` by an earlier run.
    pub fn in_flight(&self) -> Result<Vec<SampleRecord>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{SAMPLE_COLUMNS} WHERE state IN ('submitting', 'submitted') ORDER BY sha256"
        ))?;
        let rows = stmt.query_map([], read_sample_row)?;
        rows.map(|r| into_record(r?)).collect()
    }

    /// The submissions in flight as the waiting clock schedules them: each hash with the time
    /// its analysis counts from (`None` for a row of an older build that never recorded it).
    /// Without their evidence, so a thousand of them cost a few kilobytes per poll.
    pub fn in_flight_since(&self) -> Result<Vec<(Sha256, Option<OffsetDateTime>)>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT sha256, submitted_at FROM samples
             WHERE state IN ('submitting', 'submitted') ORDER BY sha256",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
        })?;
        rows.map(|row| {
            let (sha256, at) = row?;
            let sha256 = sha256
                .parse()
                .map_err(|e: crate::model::InvalidSha256| StateError::Corrupt(e.to_string()))?;
            Ok((sha256, at.as_deref().map(parse_time).transpose()?))
        })
        .collect()
    }

    /// Write-ahead: recorded before the upload starts, with the time the analysis deadline
    /// counts from and, for a resubmission, the newest submission VMRay already had (a crash
    /// recovery must not mistake it for the new one).
    ///
    /// A transition of a sample's life: called only by `pipeline::life` (and by tests that
    /// stage a crash during an upload).
    pub fn record_submitting(
        &self,
        sha256: &Sha256,
        evidence_json: &str,
        baseline_submission: Option<u64>,
        at: OffsetDateTime,
    ) -> Result<(), StateError> {
        self.lock().execute(
            "INSERT INTO samples (sha256, state, evidence, attempts, baseline_submission,
               submitted_at, updated_at)
             VALUES (?1, 'submitting', ?2, 1, ?3, ?4, ?5)
             ON CONFLICT(sha256) DO UPDATE SET state = 'submitting', evidence = excluded.evidence,
               submission_id = NULL, sample_id = NULL, submitted_at = excluded.submitted_at,
               baseline_submission = excluded.baseline_submission,
               attempts = attempts + 1, updated_at = excluded.updated_at",
            params![
                sha256.as_str(),
                evidence_json,
                baseline_submission.map(|id| id as i64),
                format_time(at),
                now_text()
            ],
        )?;
        Ok(())
    }

    /// VMRay accepted the upload: the submission is waited for, never uploaded again.
    ///
    /// A transition of a sample's life: called only by `pipeline::life`.
    pub(crate) fn record_submitted(
        &self,
        sha256: &Sha256,
        submission_id: u64,
        sample_id: u64,
        submitted_at: OffsetDateTime,
    ) -> Result<(), StateError> {
        self.lock().execute(
            "UPDATE samples SET state = 'submitted', submission_id = ?2, sample_id = ?3,
               submitted_at = ?4, last_error = NULL, failures = 0, failing_since = NULL,
               updated_at = ?5
             WHERE sha256 = ?1",
            params![
                sha256.as_str(),
                submission_id as i64,
                sample_id as i64,
                format_time(submitted_at),
                now_text()
            ],
        )?;
        Ok(())
    }

    /// A submission whose analysis outlasted this cycle's wait stays `submitted`, with the
    /// evidence gathered so far (this cycle may have added alerts the next ones no longer see).
    ///
    /// A transition of a sample's life: called only by `pipeline::life`.
    pub(crate) fn keep_waiting(
        &self,
        sha256: &Sha256,
        evidence_json: &str,
    ) -> Result<(), StateError> {
        self.lock().execute(
            "UPDATE samples SET evidence = ?2, updated_at = ?3
             WHERE sha256 = ?1 AND state = 'submitted'",
            params![sha256.as_str(), evidence_json, now_text()],
        )?;
        Ok(())
    }

    /// Analysed and acted on: the evidence and any failure are cleared.
    ///
    /// A transition of a sample's life: called only by `pipeline::life`.
    pub(crate) fn record_finished(&self, sha256: &Sha256, verdict: &str) -> Result<(), StateError> {
        self.lock().execute(
            "INSERT INTO samples (sha256, state, verdict, updated_at) VALUES (?1, 'finished', ?2, ?3)
             ON CONFLICT(sha256) DO UPDATE SET state = 'finished', verdict = excluded.verdict,
               evidence = NULL, last_error = NULL, failures = 0, failing_since = NULL,
               updated_at = excluded.updated_at",
            params![sha256.as_str(), verdict, now_text()],
        )?;
        Ok(())
    }

    /// Records a failure. With `retry_evidence`, the sample is tried again by the next cycles
    /// (see [`Self::retry_pending`]) even if Falcon shows nothing new about it: an outage must
    /// not lose the alerts it happened to. `verdict` is VMRay's, when the failure came after it.
    /// `own`: the failure is the sample's own, and starts its clock if it is not running. A
    /// service's failure (an outage) moves a running clock forward by the time since the row
    /// was last written, so the outage does not count towards `give_up_after`. Returns since
    /// when the sample has been failing for reasons of its own, if it has.
    ///
    /// A transition of a sample's life: called only by `pipeline::life`.
    pub(crate) fn record_failed(
        &self,
        sha256: &Sha256,
        reason: &str,
        retry_evidence: Option<&str>,
        verdict: Option<&str>,
        own: bool,
    ) -> Result<Option<OffsetDateTime>, StateError> {
        let now = OffsetDateTime::now_utc();
        let now_text = format_time(now);
        let since = own.then_some(now_text.as_str());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let shifted = if own {
            None
        } else {
            let clock: Option<(Option<String>, String)> = tx
                .query_row(
                    "SELECT failing_since, updated_at FROM samples WHERE sha256 = ?1",
                    params![sha256.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            match clock {
                Some((Some(since), updated)) => {
                    Some(format_time(paused(parse_time(&since)?, &updated, now)?))
                }
                _ => None,
            }
        };
        let failing_since: Option<String> = tx.query_row(
            "INSERT INTO samples (sha256, state, last_error, evidence, verdict, failures,
               failing_since, updated_at)
             VALUES (?1, 'failed', ?2, ?3, ?4, 1, ?5, ?6)
             ON CONFLICT(sha256) DO UPDATE SET state = 'failed', evidence = excluded.evidence,
               verdict = COALESCE(excluded.verdict, verdict),
               last_error = excluded.last_error, failures = failures + 1,
               failing_since = COALESCE(?7, failing_since, excluded.failing_since),
               updated_at = excluded.updated_at
             RETURNING failing_since",
            params![
                sha256.as_str(),
                reason,
                retry_evidence,
                verdict,
                since,
                now_text,
                shifted
            ],
            |row| row.get(0),
        )?;
        tx.commit()?;
        failing_since.map(|s| parse_time(&s)).transpose()
    }

    /// Gives the sample up: its evidence is dropped, so no later cycle tries it again (new
    /// evidence about the hash starts over).
    ///
    /// A transition of a sample's life: called only by `pipeline::life`.
    pub(crate) fn give_up(&self, sha256: &Sha256, reason: &str) -> Result<(), StateError> {
        self.lock().execute(
            "UPDATE samples SET state = 'failed', evidence = NULL, last_error = ?2,
               updated_at = ?3 WHERE sha256 = ?1",
            params![sha256.as_str(), reason, now_text()],
        )?;
        Ok(())
    }

    /// Failed samples kept for another try (not given up).
    pub fn retry_pending(&self) -> Result<Vec<SampleRecord>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{SAMPLE_COLUMNS} WHERE state = 'failed' AND evidence IS NOT NULL ORDER BY sha256"
        ))?;
        let rows = stmt.query_map([], read_sample_row)?;
        rows.map(|r| into_record(r?)).collect()
    }

    /// Which of these journal keys are settled: done, or given up on (never to be planned
    /// again, like a scan that may have started).
    pub fn done_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashSet<String>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT 1 FROM journal WHERE key = ?1 AND (state = 'done' OR attempts >= ?2)",
        )?;
        let mut done = HashSet::new();
        for key in keys {
            if stmt.exists(params![key, ABANDONED])? {
                done.insert(key.to_string());
            }
        }
        Ok(done)
    }

    /// Records that these alerts or quarantine records were acted on for `verdict`.
    ///
    /// A transition of a sample's life: called only by `pipeline::life`.
    pub(crate) fn record_handled(
        &self,
        sha256: &Sha256,
        verdict: &str,
        evidence_ids: &[String],
    ) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO handled (evidence_id, sha256, verdict, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(evidence_id, sha256) DO UPDATE SET verdict = excluded.verdict,
                   updated_at = excluded.updated_at",
            )?;
            let now = now_text();
            for id in evidence_ids {
                stmt.execute(params![id, sha256.as_str(), verdict, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// True when every one of these evidence ids was already acted on for `verdict`.
    pub fn all_handled(
        &self,
        sha256: &Sha256,
        verdict: &str,
        evidence_ids: &[String],
    ) -> Result<bool, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT 1 FROM handled WHERE evidence_id = ?1 AND sha256 = ?2 AND verdict = ?3",
        )?;
        for id in evidence_ids {
            if !stmt.exists(params![id, sha256.as_str(), verdict])? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every settled journal key of this hash (see [`Self::done_keys`]).
    pub fn done_keys_for(&self, sha256: &Sha256) -> Result<HashSet<String>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT key FROM journal WHERE sha256 = ?1 AND (state = 'done' OR attempts >= ?2)",
        )?;
        let rows = stmt.query_map(params![sha256.as_str(), ABANDONED], |row| {
            row.get::<_, String>(0)
        })?;
        rows.map(|r| r.map_err(StateError::from)).collect()
    }

    /// Records entries in one transaction (new ones inserted, existing ones moved to `state`;
    /// their first planning time and attempts are kept).
    pub fn journal(&self, entries: &[JournalEntry]) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO journal (key, sha256, state, payload, updated_at, planned_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT(key) DO UPDATE SET state = excluded.state, payload = excluded.payload,
                   updated_at = excluded.updated_at",
            )?;
            let now = now_text();
            for entry in entries {
                stmt.execute(params![
                    entry.key,
                    entry.sha256,
                    entry.state.as_str(),
                    entry.payload,
                    now
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves these keys to `state`, recording `error` for failures. A failure counts as one
    /// attempt (the next try reads back first); it starts no clock: see [`Self::fail`].
    pub fn mark(
        &self,
        keys: &[String],
        state: JournalState,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE journal SET state = ?2, error = ?3, updated_at = ?4,
                   attempts = attempts + (?2 = 'failed') WHERE key = ?1",
            )?;
            let now = now_text();
            for key in keys {
                stmt.execute(params![key, state.as_str(), error, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a failed attempt of these actions, like [`Self::mark`] with `Failed`. `own`: the
    /// failure is the action's own (Falcon refused that entity), and starts its clock if it is
    /// not running; a service's failure (an outage, a refused token, rate limits) moves a
    /// running clock forward by the time since the entry was last written, so the outage does
    /// not count towards `give_up_after`. Returns, per key whose clock runs, since when it has been failing for
    /// reasons of its own: `give_up_after` counts from there.
    pub fn fail(
        &self,
        keys: &[String],
        error: &str,
        own: bool,
    ) -> Result<std::collections::HashMap<String, OffsetDateTime>, StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut since = std::collections::HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE journal SET state = 'failed', error = ?2, updated_at = ?3,
                   attempts = attempts + 1,
                   failing_since = CASE WHEN ?4 THEN COALESCE(failing_since, ?3)
                                        ELSE COALESCE(?5, failing_since) END
                 WHERE key = ?1 RETURNING failing_since",
            )?;
            let mut clock =
                tx.prepare_cached("SELECT failing_since, updated_at FROM journal WHERE key = ?1")?;
            let at_now = OffsetDateTime::now_utc();
            let now = format_time(at_now);
            for key in keys {
                // A service's failure moves a running clock past the outage (see `paused`).
                let shifted = if own {
                    None
                } else {
                    let row: Option<(Option<String>, String)> = clock
                        .query_row(params![key], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()?;
                    match row {
                        Some((Some(since), updated)) => {
                            Some(format_time(paused(parse_time(&since)?, &updated, at_now)?))
                        }
                        _ => None,
                    }
                };
                let at: Option<Option<String>> = stmt
                    .query_row(params![key, error, now, own, shifted], |row| row.get(0))
                    .optional()?;
                if let Some(Some(at)) = at {
                    since.insert(key.clone(), parse_time(&at)?);
                }
            }
        }
        tx.commit()?;
        Ok(since)
    }

    /// Actions not done yet, oldest first: planned (an earlier run died during them), deferred
    /// (a cap postponed them) and failed, however often, unless given up.
    pub fn unfinished_actions(&self) -> Result<Vec<JournalEntry>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT key, sha256, state, payload FROM journal
             WHERE state IN ('planned', 'deferred') OR (state = 'failed' AND attempts < ?1)
             ORDER BY rowid",
        )?;
        let rows = stmt.query_map([ABANDONED], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (key, sha256, state, payload) = r?;
            Ok(JournalEntry {
                key,
                sha256,
                state: JournalState::parse(&state)?,
                payload,
            })
        })
        .collect()
    }

    /// Which of these keys were tried before and failed: the call may have landed, so it is
    /// read back before it is sent again.
    pub fn attempted(&self, keys: &[String]) -> Result<HashSet<String>, StateError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT 1 FROM journal WHERE key = ?1 AND attempts > 0")?;
        let mut found = HashSet::new();
        for key in keys {
            if stmt.exists([key])? {
                found.insert(key.clone());
            }
        }
        Ok(found)
    }

    /// Gives up on this hash's unfinished actions for any verdict but `verdict`: they describe
    /// an analysis VMRay has since replaced (a close for a clean verdict that is now malicious).
    /// Returns how many there were.
    pub fn abandon_superseded(&self, sha256: &Sha256, verdict: &str) -> Result<usize, StateError> {
        Ok(self.lock().execute(
            "UPDATE journal SET state = 'failed', error = 'superseded by a newer verdict',
               attempts = max(attempts, ?3), updated_at = ?4
             WHERE sha256 = ?1 AND state IN ('planned', 'deferred', 'failed') AND attempts < ?3
               AND (key LIKE 'alert:%' OR key LIKE 'quarantine:%' OR key LIKE 'iocs:%'
                    OR key LIKE 'case:%')
               AND key NOT LIKE '%:' || ?2",
            params![sha256.as_str(), verdict, ABANDONED, now_text()],
        )?)
    }

    /// Gives up on these actions: they are failed and never offered again.
    pub fn abandon(&self, keys: &[String], reason: &str) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE journal SET state = 'failed', error = ?2, updated_at = ?3,
                   attempts = max(attempts, ?4) WHERE key = ?1",
            )?;
            let now = now_text();
            for key in keys {
                stmt.execute(params![key, reason, now, ABANDONED])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// When these keys were first planned (keys never journaled are absent).
    pub fn planned_at(
        &self,
        keys: &[String],
    ) -> Result<std::collections::HashMap<String, OffsetDateTime>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT planned_at FROM journal WHERE key = ?1")?;
        let mut found = std::collections::HashMap::new();
        for key in keys {
            let at: Option<Option<String>> = stmt.query_row([key], |row| row.get(0)).optional()?;
            if let Some(Some(at)) = at {
                found.insert(key.clone(), parse_time(&at)?);
            }
        }
        Ok(found)
    }

    /// Deletes what no cycle will look at again: journal entries done or given up on, evidence
    /// marked handled, and finished or abandoned samples, all last touched before `cutoff`.
    /// Returns the number of rows deleted. An alert that comes back after its row is gone is
    /// recognised by the tag the connector left on it.
    pub fn prune(&self, cutoff: OffsetDateTime) -> Result<usize, StateError> {
        let cutoff = format_time(cutoff);
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut deleted = tx.execute(
            "DELETE FROM journal WHERE updated_at < ?1 AND state IN ('done', 'failed')",
            [&cutoff],
        )?;
        deleted += tx.execute("DELETE FROM handled WHERE updated_at < ?1", [&cutoff])?;
        deleted += tx.execute(
            "DELETE FROM samples WHERE updated_at < ?1 AND (state = 'finished'
               OR (state = 'failed' AND evidence IS NULL))",
            params![cutoff],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Counts per journal state, for reports and tests.
    pub fn journal_counts(&self) -> Result<Vec<(String, u64)>, StateError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT state, COUNT(*) FROM journal GROUP BY state ORDER BY state")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        rows.map(|r| r.map_err(StateError::from)).collect()
    }
}

const SAMPLE_COLUMNS: &str =
    "SELECT sha256, state, submission_id, sample_id, submitted_at, verdict,
    evidence, attempts, last_error, baseline_submission, failing_since FROM samples";

type SampleRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn read_sample_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SampleRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
    ))
}

fn into_record(row: SampleRow) -> Result<SampleRecord, StateError> {
    let (
        sha,
        state,
        submission_id,
        sample_id,
        submitted_at,
        verdict,
        evidence,
        attempts,
        error,
        baseline,
        failing_since,
    ) = row;
    Ok(SampleRecord {
        sha256: sha
            .parse()
            .map_err(|e: crate::model::InvalidSha256| StateError::Corrupt(e.to_string()))?,
        state: SampleState::parse(&state)?,
        submission_id: submission_id.map(|v| v as u64),
        sample_id: sample_id.map(|v| v as u64),
        submitted_at: submitted_at.map(|s| parse_time(&s)).transpose()?,
        verdict,
        evidence_json: evidence,
        attempts: attempts as u32,
        last_error: error,
        baseline_submission: baseline.map(|v| v as u64),
        failing_since: failing_since.map(|s| parse_time(&s)).transpose()?,
    })
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StateError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StateError::TooNew {
            path: path.to_path_buf(),
            found: version,
        });
    }
    if version < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE checkpoints (
                 source TEXT PRIMARY KEY,
                 since  TEXT NOT NULL
             );
             CREATE TABLE samples (
                 sha256        TEXT PRIMARY KEY,
                 state         TEXT NOT NULL,
                 submission_id INTEGER,
                 sample_id     INTEGER,
                 submitted_at  TEXT,
                 verdict       TEXT,
                 evidence      TEXT,
                 attempts      INTEGER NOT NULL DEFAULT 0,
                 failures      INTEGER NOT NULL DEFAULT 0,
                 last_error    TEXT,
                 updated_at    TEXT NOT NULL
             );
             CREATE INDEX samples_by_state ON samples (state);
             CREATE TABLE journal (
                 key        TEXT PRIMARY KEY,
                 sha256     TEXT NOT NULL,
                 state      TEXT NOT NULL,
                 payload    TEXT NOT NULL,
                 error      TEXT,
                 updated_at TEXT NOT NULL
             );
             CREATE INDEX journal_by_state ON journal (state);
             CREATE INDEX journal_by_sample ON journal (sha256);
             CREATE TABLE handled (
                 evidence_id TEXT NOT NULL,
                 sha256      TEXT NOT NULL,
                 verdict     TEXT NOT NULL,
                 updated_at  TEXT NOT NULL,
                 PRIMARY KEY (evidence_id, sha256)
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if version < 2 {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE samples ADD COLUMN baseline_submission INTEGER;
             ALTER TABLE journal ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE journal ADD COLUMN planned_at TEXT;
             UPDATE journal SET planned_at = updated_at;
             -- Version 1 never tried a failed action again: those failures stay final.
             UPDATE journal SET attempts = 1000000 WHERE state = 'failed';
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    }
    if version < 3 {
        // Version 2 gave a sample up after 10 failed cycles, keeping its evidence: those stay
        // given up (their error case, when configured, was opened). A sample still being
        // retried starts its `give_up_after` clock at its last failure: when it began failing
        // was never recorded, and the later start only gives it longer.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE samples ADD COLUMN failing_since TEXT;
             UPDATE samples SET evidence = NULL WHERE state = 'failed' AND failures >= 10;
             UPDATE samples SET failing_since = updated_at
               WHERE state = 'failed' AND evidence IS NOT NULL;
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if version < 4 {
        // Version 3 gave an action up after 10 failed attempts: those stay given up. One still
        // being tried starts its `give_up_after` clock at its last failure (when it began
        // failing, and whether for reasons of its own, was never recorded; the later start
        // only gives it longer).
        conn.execute_batch(&format!(
            "BEGIN;
             ALTER TABLE journal ADD COLUMN failing_since TEXT;
             UPDATE journal SET attempts = {ABANDONED}
               WHERE state = 'failed' AND attempts >= {VERSION_3_MAX_ATTEMPTS};
             UPDATE journal SET failing_since = updated_at
               WHERE state = 'failed' AND attempts < {ABANDONED};
             PRAGMA user_version = 4;
             COMMIT;"
        ))?;
    }
    Ok(())
}

fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("a UTC timestamp formats as RFC 3339")
}

fn parse_time(raw: &str) -> Result<OffsetDateTime, StateError> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|e| StateError::Corrupt(format!("timestamp `{raw}`: {e}")))
}

/// A clock of failures `since` moved forward by the time from the row's last write
/// (`updated`) to `now`: that time went to a service's failure (an outage, a refused key, rate
/// limits), and `give_up_after` counts only time spent failing for reasons of one's own. Never
/// later than `now`.
fn paused(
    since: OffsetDateTime,
    updated: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, StateError> {
    let outage = (now - parse_time(updated)?).max(time::Duration::ZERO);
    Ok((since + outage).min(now))
}

fn now_text() -> String {
    format_time(OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> Sha256 {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("nested/state.db")).unwrap();
        (dir, store)
    }

    #[cfg(unix)]
    #[test]
    fn the_store_and_its_wal_companions_are_private_even_when_created_readable() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/state/connector.db");
        let store = StateStore::open(&path).unwrap();
        store
            .set_checkpoint("detect", OffsetDateTime::now_utc())
            .unwrap();
        for file in ["connector.db", "connector.db-wal", "connector.db-shm"] {
            let file = dir.path().join("new/state").join(file);
            assert!(file.exists(), "{}", file.display());
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        assert_eq!(mode(&dir.path().join("new/state")), 0o700);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        drop(store);
        // A store an older version left readable by all is tightened at the next open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = StateStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(store.checkpoint("detect").unwrap().is_some());
    }

    #[test]
    fn checkpoints_survive_reopening() {
        let (dir, store) = store();
        assert_eq!(store.checkpoint("detect").unwrap(), None);
        let at = time::macros::datetime!(2026-11-28 05:00:00 UTC);
        store.set_checkpoint("detect", at).unwrap();
        drop(store);
        let reopened = StateStore::open(&dir.path().join("nested/state.db")).unwrap();
        assert_eq!(reopened.checkpoint("detect").unwrap(), Some(at));
    }

    #[test]
    fn a_sample_moves_through_its_states() {
        let (_dir, store) = store();
        let a = sha('a');
        store
            .record_submitting(&a, "{}", Some(3), OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(store.in_flight().unwrap()[0].baseline_submission, Some(3));
        assert_eq!(store.in_flight().unwrap()[0].state, SampleState::Submitting);
        store
            .record_submitted(&a, 7, 9, OffsetDateTime::now_utc())
            .unwrap();
        let record = store.sample(&a).unwrap().unwrap();
        assert_eq!(
            (record.state, record.submission_id, record.sample_id),
            (SampleState::Submitted, Some(7), Some(9))
        );
        assert_eq!(record.evidence_json.as_deref(), Some("{}"));
        store.record_finished(&a, "malicious").unwrap();
        assert!(store.in_flight().unwrap().is_empty());
        assert!(store.retry_pending().unwrap().is_empty());
        let record = store.sample(&a).unwrap().unwrap();
        assert_eq!(record.verdict.as_deref(), Some("malicious"));
        assert_eq!(record.evidence_json, None);
    }

    #[test]
    fn failures_kept_for_retry_are_offered_until_given_up_however_often_they_failed() {
        let (_dir, store) = store();
        let (a, b) = (sha('a'), sha('b'));
        for _ in 0..50 {
            let since = store
                .record_failed(&a, "VMRay rejected the API key", Some("{}"), None, false)
                .unwrap();
            assert_eq!(since, None, "an outage does not start the clock");
        }
        store
            .record_failed(&b, "analysis failed", None, None, true)
            .unwrap();
        let pending: Vec<_> = store
            .retry_pending()
            .unwrap()
            .into_iter()
            .map(|r| r.sha256)
            .collect();
        assert_eq!(pending, vec![a.clone()], "50 failed cycles give nothing up");
        let first = store
            .record_failed(
                &a,
                "not in the sample store",
                Some("{}"),
                Some("malicious"),
                true,
            )
            .unwrap()
            .expect("its own failure starts the clock");
        // Failing on its own since 900 s ago, last written 600 s ago; VMRay has been down since.
        let ago = |s: i64| format_time(first - time::Duration::seconds(s));
        store
            .lock()
            .execute(
                "UPDATE samples SET failing_since = ?2, updated_at = ?3 WHERE sha256 = ?1",
                params![a.as_str(), ago(900), ago(600)],
            )
            .unwrap();
        let before = OffsetDateTime::now_utc();
        let again = store
            .record_failed(&a, "VMRay down", Some("{}"), None, false)
            .unwrap()
            .expect("an outage does not stop the clock");
        let after = OffsetDateTime::now_utc();
        let counted = time::Duration::seconds(300);
        assert!(
            again >= before - counted && again <= after - counted,
            "only the 300 s before the outage count: {again}, now {after}"
        );
        assert_eq!(
            store.sample(&a).unwrap().unwrap().failing_since,
            Some(again)
        );
        store.give_up(&a, "given up").unwrap();
        assert!(store.retry_pending().unwrap().is_empty());
        assert_eq!(
            store.sample(&a).unwrap().unwrap().verdict.as_deref(),
            Some("malicious")
        );
    }

    #[test]
    fn a_success_stops_the_clock() {
        let (_dir, store) = store();
        let a = sha('a');
        store
            .record_failed(&a, "not in the sample store", Some("{}"), None, true)
            .unwrap();
        store
            .record_submitting(&a, "{}", None, OffsetDateTime::now_utc())
            .unwrap();
        store
            .record_submitted(&a, 1, 2, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(store.sample(&a).unwrap().unwrap().failing_since, None);
        store
            .record_failed(&a, "results", Some("{}"), None, true)
            .unwrap();
        store.record_finished(&a, "clean").unwrap();
        assert_eq!(store.sample(&a).unwrap().unwrap().failing_since, None);
    }

    #[test]
    fn a_version_2_store_is_migrated_keeping_retries_and_old_give_ups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE checkpoints (source TEXT PRIMARY KEY, since TEXT NOT NULL);
                 CREATE TABLE samples (sha256 TEXT PRIMARY KEY, state TEXT NOT NULL,
                   submission_id INTEGER, sample_id INTEGER, submitted_at TEXT, verdict TEXT,
                   evidence TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                   failures INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_at TEXT NOT NULL,
                   baseline_submission INTEGER);
                 CREATE TABLE journal (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
                   state TEXT NOT NULL, payload TEXT NOT NULL, error TEXT, updated_at TEXT NOT NULL,
                   attempts INTEGER NOT NULL DEFAULT 0, planned_at TEXT);
                 CREATE TABLE handled (evidence_id TEXT NOT NULL, sha256 TEXT NOT NULL,
                   verdict TEXT NOT NULL, updated_at TEXT NOT NULL,
                   PRIMARY KEY (evidence_id, sha256));",
            )
            .unwrap();
            for (c, failures) in [('a', 3), ('b', 10)] {
                conn.execute(
                    "INSERT INTO samples (sha256, state, evidence, failures, last_error, updated_at)
                     VALUES (?1, 'failed', '{}', ?2, 'VMRay down', '2026-11-30T10:00:00Z')",
                    params![c.to_string().repeat(64), failures],
                )
                .unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let pending = store.retry_pending().unwrap();
        assert_eq!(
            pending.len(),
            1,
            "the one given up after 10 cycles stays given up"
        );
        assert_eq!(pending[0].sha256, sha('a'));
        assert_eq!(
            pending[0].failing_since,
            Some(time::macros::datetime!(2026-11-30 10:00:00 UTC)),
            "its clock starts at its last failure"
        );
    }

    #[test]
    fn failed_actions_are_offered_again_however_often_until_given_up() {
        let (_dir, store) = store();
        let entry = JournalEntry {
            key: "case:x".into(),
            sha256: "x".into(),
            state: JournalState::Planned,
            payload: "{}".into(),
        };
        store.journal(std::slice::from_ref(&entry)).unwrap();
        let keys = vec!["case:x".to_string()];
        let planned_at = store.planned_at(&keys).unwrap()["case:x"];
        assert!(store.attempted(&keys).unwrap().is_empty());
        // An outage of 50 cycles: offered every time, and no clock started.
        for attempt in 1..=50 {
            let since = store.fail(&keys, "Falcon answered 503", false).unwrap();
            assert!(since.is_empty(), "an outage starts no clock ({attempt})");
            assert_eq!(store.unfinished_actions().unwrap().len(), 1, "{attempt}");
            // Planning it again keeps the first planning time and the attempts.
            store.journal(std::slice::from_ref(&entry)).unwrap();
            assert_eq!(store.planned_at(&keys).unwrap()["case:x"], planned_at);
            assert_eq!(store.attempted(&keys).unwrap().len(), 1);
        }
        // Its own failure starts the clock; a later outage moves it past the outage's time, and
        // a later failure of its own keeps its start.
        let first = store.fail(&keys, "Falcon answered 409", true).unwrap()["case:x"];
        let ago = |s: i64| format_time(first - time::Duration::seconds(s));
        store
            .lock()
            .execute(
                "UPDATE journal SET failing_since = ?1, updated_at = ?2 WHERE key = 'case:x'",
                params![ago(900), ago(600)],
            )
            .unwrap();
        let before = OffsetDateTime::now_utc();
        let shifted = store.fail(&keys, "Falcon answered 503", false).unwrap()["case:x"];
        let after = OffsetDateTime::now_utc();
        let counted = time::Duration::seconds(300);
        assert!(
            shifted >= before - counted && shifted <= after - counted,
            "only the 300 s before the outage count: {shifted}, now {after}"
        );
        let again = store.fail(&keys, "Falcon answered 409", true).unwrap();
        assert_eq!(
            again["case:x"], shifted,
            "its own failure keeps the clock's start"
        );
        assert_eq!(store.unfinished_actions().unwrap().len(), 1);
        assert!(store.done_keys(["case:x"]).unwrap().is_empty());
        store.abandon(&["case:x".into()], "given up").unwrap();
        assert!(store.unfinished_actions().unwrap().is_empty());
        assert_eq!(
            store.done_keys(["case:x"]).unwrap().len(),
            1,
            "given up is never planned again"
        );
    }

    #[test]
    fn a_version_3_store_is_migrated_keeping_retries_and_old_give_ups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE checkpoints (source TEXT PRIMARY KEY, since TEXT NOT NULL);
                 CREATE TABLE samples (sha256 TEXT PRIMARY KEY, state TEXT NOT NULL,
                   submission_id INTEGER, sample_id INTEGER, submitted_at TEXT, verdict TEXT,
                   evidence TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                   failures INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_at TEXT NOT NULL,
                   baseline_submission INTEGER, failing_since TEXT);
                 CREATE TABLE journal (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
                   state TEXT NOT NULL, payload TEXT NOT NULL, error TEXT, updated_at TEXT NOT NULL,
                   attempts INTEGER NOT NULL DEFAULT 0, planned_at TEXT);
                 CREATE TABLE handled (evidence_id TEXT NOT NULL, sha256 TEXT NOT NULL,
                   verdict TEXT NOT NULL, updated_at TEXT NOT NULL,
                   PRIMARY KEY (evidence_id, sha256));
                 INSERT INTO journal VALUES ('tried', 'x', 'failed', '{}', '503',
                   '2026-11-30T10:00:00Z', 3, '2026-11-30T09:00:00Z');
                 INSERT INTO journal VALUES ('dropped', 'x', 'failed', '{}', '503',
                   '2026-11-30T10:00:00Z', 10, '2026-11-30T09:00:00Z');
                 INSERT INTO journal VALUES ('planned', 'x', 'planned', '{}', NULL,
                   '2026-11-30T10:00:00Z', 0, '2026-11-30T10:00:00Z');
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let keys: Vec<_> = store
            .unfinished_actions()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            vec!["tried", "planned"],
            "the one given up after 10 attempts stays given up"
        );
        assert_eq!(store.done_keys(["dropped"]).unwrap().len(), 1);
        let since = store.fail(&["tried".into()], "409", true).unwrap();
        assert_eq!(
            since["tried"],
            time::macros::datetime!(2026-11-30 10:00:00 UTC),
            "its clock starts at its last failure"
        );
        let since = store.fail(&["planned".into()], "503", false).unwrap();
        assert!(since.is_empty(), "a planned action had no clock");
    }

    #[test]
    fn actions_for_a_replaced_verdict_are_given_up() {
        let (_dir, store) = store();
        let a = sha('a');
        let entry = |key: String| JournalEntry {
            key,
            sha256: a.to_string(),
            state: JournalState::Planned,
            payload: "{}".into(),
        };
        store
            .journal(&[
                entry(format!("alert:1:{a}:clean")),
                entry(format!("alert:1:{a}:malicious")),
                entry(format!("contain:d1:{a}")),
                entry(format!("case-error:{a}")),
            ])
            .unwrap();
        assert_eq!(store.abandon_superseded(&a, "malicious").unwrap(), 1);
        let left: Vec<_> = store
            .unfinished_actions()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            left,
            vec![
                format!("alert:1:{a}:malicious"),
                format!("contain:d1:{a}"),
                format!("case-error:{a}")
            ]
        );
    }

    #[test]
    fn pruning_deletes_only_old_finished_rows() {
        let (_dir, store) = store();
        let (a, b) = (sha('a'), sha('b'));
        store.record_finished(&a, "clean").unwrap();
        store
            .record_handled(&a, "clean", &["alert-1".into()])
            .unwrap();
        store
            .record_failed(&b, "VMRay down", Some("{}"), None, true)
            .unwrap();
        let entry = |key: &str| JournalEntry {
            key: key.into(),
            sha256: "x".into(),
            state: JournalState::Planned,
            payload: "{}".into(),
        };
        store.journal(&[entry("done"), entry("pending")]).unwrap();
        store
            .mark(&["done".into()], JournalState::Done, None)
            .unwrap();

        let past = OffsetDateTime::now_utc() - time::Duration::days(1);
        assert_eq!(store.prune(past).unwrap(), 0, "nothing is old yet");
        let future = OffsetDateTime::now_utc() + time::Duration::days(1);
        assert_eq!(store.prune(future).unwrap(), 3);
        assert!(store.sample(&a).unwrap().is_none());
        assert_eq!(store.retry_pending().unwrap().len(), 1, "a retry is kept");
        let left: Vec<_> = store
            .unfinished_actions()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(left, vec!["pending"], "an unfinished action is kept");
    }

    #[test]
    fn a_version_1_store_is_migrated_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE checkpoints (source TEXT PRIMARY KEY, since TEXT NOT NULL);
                 CREATE TABLE samples (sha256 TEXT PRIMARY KEY, state TEXT NOT NULL,
                   submission_id INTEGER, sample_id INTEGER, submitted_at TEXT, verdict TEXT,
                   evidence TEXT, attempts INTEGER NOT NULL DEFAULT 0,
                   failures INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_at TEXT NOT NULL);
                 CREATE TABLE journal (key TEXT PRIMARY KEY, sha256 TEXT NOT NULL,
                   state TEXT NOT NULL, payload TEXT NOT NULL, error TEXT, updated_at TEXT NOT NULL);
                 CREATE TABLE handled (evidence_id TEXT NOT NULL, sha256 TEXT NOT NULL,
                   verdict TEXT NOT NULL, updated_at TEXT NOT NULL,
                   PRIMARY KEY (evidence_id, sha256));
                 INSERT INTO journal VALUES ('k', 'x', 'planned', '{}', NULL, '2026-11-01T00:00:00Z');
                 INSERT INTO journal VALUES ('f', 'x', 'failed', '{}', '503', '2026-10-01T00:00:00Z');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = StateStore::open(&path).unwrap();
        let entries = store.unfinished_actions().unwrap();
        let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["k"], "a version 1 failure stays final");
        assert_eq!(
            store.planned_at(&["k".into()]).unwrap()["k"],
            time::macros::datetime!(2026-11-01 00:00:00 UTC)
        );
    }

    #[test]
    fn journal_tracks_planned_done_and_deferred() {
        let (_dir, store) = store();
        let entry = |key: &str, state| JournalEntry {
            key: key.into(),
            sha256: "x".into(),
            state,
            payload: "{}".into(),
        };
        store
            .journal(&[
                entry("a", JournalState::Planned),
                entry("b", JournalState::Planned),
                entry("c", JournalState::Deferred),
            ])
            .unwrap();
        store.mark(&["a".into()], JournalState::Done, None).unwrap();
        let done = store.done_keys(["a", "b", "c"]).unwrap();
        assert_eq!(done, HashSet::from(["a".to_string()]));
        let unfinished: Vec<_> = store
            .unfinished_actions()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(unfinished, vec!["b", "c"]);
    }

    #[test]
    fn a_newer_schema_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let message = StateStore::open(&path).unwrap_err().to_string();
        assert!(message.contains("upgrade"), "{message}");
    }
}
