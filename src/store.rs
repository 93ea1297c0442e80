//! Durable per-tenant records under `state.dir` (SPEC section 2 "Durable").
//!
//! What the backend last acknowledged and what is still owed to it must survive a kill -9, a full
//! disk and a restart; and no write or fsync may ever hold up a gateway link or a decision
//! (SPEC section 6). So one thread owns the files ([`writer`]): everything else hands it records
//! through a channel and never waits.
//!
//! The files, all in the state directory (created 0700; no file is ever opened through a
//! symlink):
//!
//! - `state.json`: a snapshot of every record,
//!   `{"version":1,"generation":N,"tenants":{"<id>":<Record>,...}}`, replaced atomically (temp
//!   file, write, fsync, rename, fsync the dir), so it is always the old or the new one.
//! - `journal-<N>.jsonl`: one JSON line per changed record, `{"gen":N,"tenant":"<id>","record":{...}}`
//!   (or `"deleted":true` when a tenant is gone), appended in batches of one `write(2)`. A line
//!   is durable against a kill -9 once written (the page cache survives the process); fsyncs for
//!   a power loss run about once a second on a second thread, off the write path. A kill -9 leaves
//!   at worst one torn last line, which replay skips. (`journal.jsonl`, the single journal of
//!   earlier versions, is read at start like a journal of generation 0.)
//! - `lock`: `flock(LOCK_EX | LOCK_NB)` held for the life of the store, holding the owner's pid,
//!   so two sidecars never write to the same directory.
//!
//! Compaction never drops an append: the writer *cuts* (it starts `journal-<N+1>.jsonl` and copies
//! its in-memory records, in one step on its own thread, so every line before the cut is in the
//! copy and every line after it is in the new journal); the second thread writes the copy as
//! snapshot generation N+1 and only then deletes the journals before the cut. Replay reads the
//! snapshot, then every journal in generation order, skipping lines older than the snapshot.
//!
//! The state directory is not trusted blindly either: files over a size bound, symlinks and
//! unparseable snapshots are set aside (renamed `<name>.corrupt-<unix seconds>`), records whose
//! tenant id breaks the SPEC rules are dropped, and times, reasons and keys out of range are
//! repaired, so nothing in a state file can panic the process or forge a header.
//!
//! Degraded mode: when a write, an fsync or a compaction fails, [`Store::failure`] says why
//! (the sidecar is not ready) and the records live on in memory; the first compaction that
//! succeeds after the failure writes them all and heals it.

mod writer;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Notify;

use crate::debounce::Status;
use crate::TenantId;

pub use writer::Options;

/// Journal size that triggers a compaction: large enough that a busy fleet compacts rarely,
/// small enough that replaying it at startup takes milliseconds.
pub const DEFAULT_COMPACT_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;

/// The snapshot format this code writes and reads.
const SNAPSHOT_VERSION: u32 = 1;

const SNAPSHOT_FILE: &str = "state.json";
const SNAPSHOT_TMP_FILE: &str = "state.json.tmp";
/// The one journal of versions before the journal writer; replayed as generation 0.
const LEGACY_JOURNAL_FILE: &str = "journal.jsonl";
const JOURNAL_PREFIX: &str = "journal-";
const JOURNAL_SUFFIX: &str = ".jsonl";
const LOCK_FILE: &str = "lock";
/// How often a busy lock is tried again while waiting for it.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The largest state file read at start. 10,000 tenants take about 3 MiB; a file a hundred
/// times that is not ours, and reading it could exhaust memory.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The last instant a record may name (9999-12-31T23:59:59.999Z): later ones cannot be
/// formatted as RFC 3339 and are clamped.
pub const MAX_UNIX_MS: u64 = 253_402_300_799_999;

/// The longest text (reason) a record keeps, as the debouncer cuts gateway text.
const MAX_TEXT_CHARS: usize = 256;

/// The largest penalty a stored record may carry; far above any policy's cap.
const MAX_PENALTY: f64 = 1e12;

/// What the store keeps for one tenant: the delivery half (owned by the outbox) and the damping
/// half (owned by the registry), merged by the writer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
// Missing fields take their defaults, so a record written before a field was added still loads.
#[serde(default)]
pub struct Record {
    /// What the backend last acknowledged with a 2xx; None = never reported.
    pub reported: Option<Reported>,
    /// The transition still owed to the backend, if any.
    pub owed: Option<Owed>,
    /// Flap penalty at `penalty_at_ms`, stored so that it keeps decaying across restarts.
    // serde_json writes a non-finite f64 as `null`; reading that back as 0 keeps one bad value
    // from making the whole snapshot unreadable.
    #[serde(deserialize_with = "finite_or_zero")]
    pub penalty: f64,
    /// When `penalty` had its value (unix ms).
    pub penalty_at_ms: u64,
    /// Whether the tenant is being reported as flapping.
    pub flapping: bool,
    /// The state last decided (see [`Damping::stable`]); None in records written before it was.
    pub stable: Option<Status>,
}

/// A state the backend acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    pub status: Status,
    /// The reason sent with it (null for `connected`).
    pub reason: Option<String>,
    /// When the backend acknowledged it (unix ms).
    pub at_ms: u64,
}

/// A transition not yet acknowledged by the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owed {
    pub status: Status,
    /// The reason to send (null for `connected`).
    pub reason: Option<String>,
    /// When the episode began (unix ms): the `X-Status-Changed-At` header.
    pub changed_at_ms: u64,
    /// Sent as `Idempotency-Key`; stored so that retries after a restart reuse it.
    pub idempotency_key: String,
}

/// The delivery half of a record: the outbox's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delivery {
    pub reported: Option<Reported>,
    pub owed: Option<Owed>,
}

/// The damping half of a record: the registry's (the debouncer's flap penalty).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Damping {
    pub penalty: f64,
    pub penalty_at_ms: u64,
    pub flapping: bool,
    /// The state last decided, whether or not the backend took it (a 400 drops a delivery, not
    /// the decision): a restart with the session unchanged must not decide it again.
    pub stable: Option<Status>,
}

impl Record {
    pub fn delivery(&self) -> Delivery {
        Delivery {
            reported: self.reported.clone(),
            owed: self.owed.clone(),
        }
    }
}

/// A mass-outage hold as stored, so that it survives a restart (see `storm::Saved`): when the
/// storm began (wall clock), what its reason needs, and the tenants it holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredStorm {
    /// The storm's id in the process that stored it, which a later join names.
    pub id: u64,
    pub since_ms: u64,
    pub linked: usize,
    pub members: usize,
    pub window_ms: u64,
    pub last_reason: String,
    pub held: Vec<String>,
}

/// A tenant joining a stored hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredJoin {
    pub id: u64,
    pub tenant: String,
    pub last_reason: String,
}

impl StoredJoin {
    /// Applies the join to the stored holds.
    fn apply(self, storms: &mut [StoredStorm]) {
        if let Some(storm) = storms.iter_mut().find(|s| s.id == self.id) {
            if !storm.held.contains(&self.tenant) {
                storm.held.push(self.tenant);
            }
            storm.last_reason = self.last_reason;
        }
    }
}

/// What [`Store::open`] found on disk.
#[derive(Debug, Default)]
pub struct Restored {
    /// Every tenant's record: the snapshot with the journals applied over it, validated.
    pub records: HashMap<String, Record>,
    /// The mass-outage holds in force when the state was last written.
    pub storms: Vec<StoredStorm>,
    /// Journal lines applied over the snapshot.
    pub journal_lines: usize,
    /// Unparseable journal lines before a journal's last one (a real problem worth a warning).
    pub skipped_lines: usize,
    /// Journal lines older than the snapshot, left by a crash during compaction; ignored.
    pub stale_lines: usize,
    /// A journal's last line was torn or unparseable (expected after a kill -9 or power loss).
    pub torn_tail: bool,
    /// Files that were unusable (unparseable, too large, a symlink) and were moved aside, each
    /// with the reason.
    pub set_aside: Vec<(PathBuf, String)>,
    /// Records dropped because their tenant id breaks the SPEC rules (ids escaped for the log).
    pub rejected: Vec<String>,
    /// Records whose times, reasons, penalty or key were out of range and were repaired.
    pub repaired: usize,
    /// Records read with fields that did not parse, which took their defaults: each as
    /// `"<tenant>": <fields>`, the tenant escaped for the log.
    pub salvaged: Vec<String>,
    /// Things the operator should know about the directory (e.g. loose permissions).
    pub warnings: Vec<String>,
}

/// Why the store could not do what was asked. Each message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state dir {} is in use by another wa-status-sidecar process{}; stop it or give this \
         instance its own state.dir",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("cannot {op} {}: {source}; {}", path.display(), io_hint(source, path))]
    Io {
        /// What was being done, e.g. "write snapshot".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    }
}

/// The fix an operator should try for an I/O error on `path`.
fn io_hint(err: &io::Error, path: &Path) -> String {
    // The state dir is the parent of every file we touch, or the path itself.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(path);
    match err.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => format!(
            "check that the service user can write {} and that it is not on a read-only mount",
            dir.display()
        ),
        Some(libc::ENOSPC | libc::EDQUOT) => {
            format!("free disk space (or quota) for {}", dir.display())
        }
        Some(libc::ENOTDIR | libc::ENOENT) => {
            "check the state.dir setting: every parent must be an existing directory".to_string()
        }
        Some(libc::EIO) => format!("the disk holding {} reports I/O errors", dir.display()),
        // `create_dir_all` on a path that is a file.
        Some(libc::EEXIST) if !path.is_dir() => format!(
            "{} is not a directory; point state.dir at a directory, or move the file away",
            path.display()
        ),
        Some(libc::ELOOP) => format!(
            "{} is a symlink, and no file in the state dir is opened through one; remove it",
            path.display()
        ),
        _ => format!("check state.dir ({}) and its disk", dir.display()),
    }
}

/// The open state directory: a handle to the journal writer. Every method returns at once;
/// only [`Store::close`] (at shutdown) waits for the disk.
#[derive(Debug)]
pub struct Store {
    writer: writer::Handle,
}

impl Store {
    /// Opens (creating it if missing) the state directory, restores and validates every record,
    /// compacts, and starts the writer. `wake` is notified each time more of what was handed to
    /// the writer is written ([`Store::written`] advanced).
    ///
    /// Fails when the directory cannot be created, locked or read; a failed compaction at the end
    /// does not fail the open: the store comes back degraded and retries.
    pub fn open(dir: &Path, wake: Arc<Notify>) -> Result<(Store, Restored), StoreError> {
        Store::open_with(dir, wake, Options::from_env())
    }

    /// [`Store::open`] with explicit writer options (tests, the benchmark's slow disk).
    pub fn open_with(
        dir: &Path,
        wake: Arc<Notify>,
        options: Options,
    ) -> Result<(Store, Restored), StoreError> {
        let mut restored = Restored::default();
        prepare_dir(dir, &mut restored)?;
        let lock = lock_dir(dir, options.lock_wait)?;
        // A temp snapshot left by a crash mid-compaction is garbage; remove_file removes a
        // symlink itself, never its target.
        let _ = fs::remove_file(dir.join(SNAPSHOT_TMP_FILE));

        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let mut min_line_gen = 0;
        let mut generation = 0;
        match read_bounded(&snapshot_path) {
            Ok(None) => {}
            Ok(Some(data)) => match parse_snapshot(&data) {
                Ok(snap) => {
                    for (tenant, readable) in snap.tenants {
                        if let Some(record) = readable.take(&tenant, &mut restored) {
                            restored.records.insert(tenant, record);
                        }
                    }
                    restored.storms = snap.storms;
                    min_line_gen = snap.generation;
                    generation = snap.generation;
                }
                Err(reason) => set_aside(&snapshot_path, reason, &mut restored)?,
            },
            Err(Unusable::Io(e)) => return Err(StoreError::io("read snapshot", &snapshot_path)(e)),
            Err(Unusable::Bad(reason)) => set_aside(&snapshot_path, reason, &mut restored)?,
        }

        let journals = list_journals(dir)?;
        for (file_gen, path) in &journals {
            generation = generation.max(*file_gen);
            match read_bounded(path) {
                Ok(Some(data)) => {
                    let max = replay(&data, min_line_gen, &mut restored);
                    generation = generation.max(max);
                }
                Ok(None) => {}
                Err(Unusable::Io(e)) => return Err(StoreError::io("read journal", path)(e)),
                Err(Unusable::Bad(reason)) => set_aside(path, reason, &mut restored)?,
            }
        }
        validate(&mut restored);

        let records: HashMap<TenantId, Record> = restored
            .records
            .iter()
            .map(|(id, r)| (TenantId::from(id.as_str()), r.clone()))
            .collect();
        let obsolete = journals
            .into_iter()
            .map(|(_, path)| path)
            .filter(|path| path.exists() || path.is_symlink())
            .collect();
        let on_disk = writer::OnDisk {
            records,
            storms: restored.storms.clone(),
            gen: generation,
            obsolete,
        };
        let writer = writer::Handle::start(dir.to_path_buf(), lock, on_disk, wake, options)?;
        Ok((Store { writer }, restored))
    }

    /// Hands the delivery half of `tenant`'s record to the writer (None: the tenant is gone, its
    /// record deleted). `seq` is the outbox's sequence number, reported back by [`Store::written`].
    pub fn delivery(&self, seq: u64, tenant: &TenantId, delivery: Option<Delivery>) {
        self.writer
            .send(writer::Op::Delivery(seq, tenant.clone(), delivery));
    }

    /// Hands the mass-outage holds now in force to the writer (they replace the stored ones).
    pub fn storms(&self, storms: Vec<StoredStorm>) {
        self.writer.send(writer::Op::Storms(storms));
    }

    /// Adds a tenant to stored hold `id` (it joined the storm after it began) and records the
    /// storm's last close reason.
    pub fn storm_held(&self, id: u64, tenant: &TenantId, last_reason: &str) {
        self.writer.send(writer::Op::StormHeld(StoredJoin {
            id,
            tenant: tenant.to_string(),
            last_reason: last_reason.to_string(),
        }));
    }

    /// Hands the damping half of `tenant`'s record to the writer.
    pub fn damping(&self, tenant: &TenantId, damping: Damping) {
        self.writer
            .send(writer::Op::Damping(tenant.clone(), damping));
    }

    /// The highest delivery sequence number written (durable against a kill -9), or tried and
    /// failed (then [`Store::failure`] says so).
    pub fn written(&self) -> u64 {
        self.writer.written()
    }

    /// Blocks until [`Store::written`] reaches `seq`, at most `max`; returns it. The dispatcher
    /// waits in a blocking task, which also tells a paused test clock that work is under way.
    pub fn wait_written(&self, seq: u64, max: Duration) -> u64 {
        self.writer.wait_written(seq, max)
    }

    /// Failed writes, fsyncs and compactions since the store was opened.
    pub fn errors(&self) -> u64 {
        self.writer.errors()
    }

    /// Why the state is not durable right now; None while it is.
    pub fn failure(&self) -> Option<String> {
        self.writer.failure()
    }

    /// Writes everything handed over so far, compacts it into a fresh snapshot and stops the
    /// writer. Blocks on the disk: call it at shutdown, off the async workers.
    pub fn close(&self) {
        self.writer.close();
    }

    /// Retries a failed compaction at once (the operator may have just fixed the disk).
    pub fn retry(&self) {
        self.writer.send(writer::Op::Retry);
    }

    /// Blocks until everything handed over so far is written, and a compaction that started
    /// has finished: what is durable is then on disk and [`Store::failure`] is up to date.
    pub fn barrier(&self) {
        self.writer.barrier();
    }

    /// Stops the writer the way a kill -9 would: what was handed over but not yet written is
    /// lost, nothing is compacted. For tests of what survives a crash.
    #[cfg(any(test, feature = "testing"))]
    pub fn crash(&self) {
        self.writer.crash();
    }
}

/// Creates the directory 0700 (only the service user may read what it owes to whom), and warns
/// about an existing one that others can write.
fn prepare_dir(dir: &Path, restored: &mut Restored) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io("create state dir", dir))?;
    let meta = fs::metadata(dir).map_err(StoreError::io("read state dir", dir))?;
    if meta.permissions().mode() & 0o022 != 0 {
        restored.warnings.push(format!(
            "state dir {} can be written by other users (mode {:o}); make it 0700",
            dir.display(),
            meta.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// Why a state file could not be used.
enum Unusable {
    /// Reading failed for a reason the operator must fix (permissions, I/O): start-up stops.
    Io(io::Error),
    /// The file is not one of ours (a symlink, too large): set it aside.
    Bad(String),
}

/// Reads a state file without following a symlink and without reading more than
/// [`MAX_FILE_BYTES`]; None when it does not exist.
fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, Unusable> {
    // O_NONBLOCK: opening a FIFO (or a device) put in the directory must not wait for ever
    // for a writer; the type check below then refuses it. A regular file ignores the flag.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Unusable::Bad("it is a symlink".into()))
        }
        Err(e) => return Err(Unusable::Io(e)),
    };
    let meta = file.metadata().map_err(Unusable::Io)?;
    if !meta.is_file() {
        // Not ours to move: the operator should see what is there.
        return Err(Unusable::Io(io::Error::other(
            "it is not a regular file (move it out of the state directory)",
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Unusable::Bad(format!(
            "it is {} bytes, more than the {MAX_FILE_BYTES} a state file can be",
            meta.len()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(Unusable::Io)?;
    Ok(Some(data))
}

/// The journals in the directory, oldest generation first (the legacy `journal.jsonl` first).
fn list_journals(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut journals = Vec::new();
    let entries = fs::read_dir(dir).map_err(StoreError::io("list state dir", dir))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == LEGACY_JOURNAL_FILE {
            journals.push((0, entry.path()));
        } else if let Some(gen) = name
            .strip_prefix(JOURNAL_PREFIX)
            .and_then(|n| n.strip_suffix(JOURNAL_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            journals.push((gen, entry.path()));
        }
    }
    journals.sort();
    Ok(journals)
}

fn journal_path(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("{JOURNAL_PREFIX}{gen}{JOURNAL_SUFFIX}"))
}

/// One journal line as written: a tenant's whole record after a change, or its deletion; or the
/// mass-outage holds now in force.
#[derive(Serialize)]
struct JournalLineRef<'a> {
    gen: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a Record>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    storms: Option<&'a [StoredStorm]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storm_held: Option<&'a StoredJoin>,
}

/// One journal line as read.
#[derive(Deserialize)]
struct JournalLine {
    gen: u64,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    record: Option<Readable>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    storms: Option<Vec<StoredStorm>>,
    #[serde(default)]
    storm_held: Option<StoredJoin>,
}

#[derive(Deserialize)]
struct Snapshot {
    version: u32,
    /// Absent in a hand-written snapshot: then every journal line applies.
    #[serde(default)]
    generation: u64,
    tenants: HashMap<String, Readable>,
    #[serde(default, deserialize_with = "readable_storms")]
    storms: Vec<StoredStorm>,
}

/// A stored record as read. One field that does not parse (a wrong type, a negative time, an
/// unknown status) costs that field, which takes its default, and not the tenant's record, let
/// alone the whole snapshot with every other tenant's owed transition in it.
struct Readable {
    record: Option<Record>,
    /// The fields that took their defaults; empty when the record parsed whole.
    dropped: Vec<&'static str>,
}

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        if let Ok(record) = Record::deserialize(&value) {
            let dropped = Vec::new();
            return Ok(Readable {
                record: Some(record),
                dropped,
            });
        }
        let serde_json::Value::Object(fields) = value else {
            let (record, dropped) = (None, vec!["the whole record (not a JSON object)"]);
            return Ok(Readable { record, dropped });
        };
        let mut fields = Salvage(fields, Vec::new());
        let record = Record {
            reported: fields.take("reported"),
            owed: fields.take("owed"),
            penalty: fields
                .take("penalty")
                .filter(|p: &f64| p.is_finite())
                .unwrap_or(0.0),
            penalty_at_ms: fields.take("penalty_at_ms").unwrap_or(0),
            flapping: fields.take("flapping").unwrap_or(false),
            stable: fields.take("stable"),
        };
        Ok(Readable {
            record: Some(record),
            dropped: fields.1,
        })
    }
}

/// The fields of a record that did not parse whole, and the names of those dropped so far.
struct Salvage(
    serde_json::Map<String, serde_json::Value>,
    Vec<&'static str>,
);

impl Salvage {
    /// The field's value when it parses on its own; else None, its name noted as dropped. An
    /// absent or null field is None, not dropped.
    fn take<T: serde::de::DeserializeOwned>(&mut self, name: &'static str) -> Option<T> {
        let value = self.0.remove(name).unwrap_or_default();
        let parsed = serde_json::from_value::<Option<T>>(value);
        parsed.map_err(|_| self.1.push(name)).ok().flatten()
    }
}

impl Readable {
    /// The record, noting in `restored` what of it was lost.
    fn take(self, tenant: &str, restored: &mut Restored) -> Option<Record> {
        if !self.dropped.is_empty() {
            let tenant = truncate(tenant, 64);
            (restored.salvaged).push(format!("{tenant:?}: {}", self.dropped.join(", ")));
        }
        self.record
    }
}

/// The stored holds, each that does not parse left out (its tenants are then not held).
fn readable_storms<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<StoredStorm>, D::Error> {
    let storms = Vec::<serde_json::Value>::deserialize(d)?;
    let storms = storms.into_iter().map(StoredStorm::deserialize);
    Ok(storms.filter_map(Result::ok).collect())
}

fn parse_snapshot(data: &[u8]) -> Result<Snapshot, String> {
    match serde_json::from_slice::<Snapshot>(data) {
        Ok(snap) if snap.version == SNAPSHOT_VERSION => Ok(snap),
        Ok(snap) => Err(format!(
            "unsupported snapshot version {} (this build reads version {SNAPSHOT_VERSION})",
            snap.version
        )),
        Err(e) => Err(format!("unparseable snapshot: {e}")),
    }
}

/// Renames an unusable file to `<name>.corrupt-<unix seconds>` (plus a counter if that exists),
/// so it is kept for inspection and never read again. `rename` moves a symlink itself.
fn set_aside(path: &Path, reason: String, restored: &mut Restored) -> Result<(), StoreError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(SNAPSHOT_FILE);
    let base = format!("{name}.corrupt-{secs}");
    let mut aside = path.with_file_name(&base);
    let mut n = 1;
    // We hold the lock, so nobody else creates these names between the check and the rename.
    while aside.exists() || aside.is_symlink() {
        aside = path.with_file_name(format!("{base}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(StoreError::io("set aside unusable file", path))?;
    restored.set_aside.push((aside, reason));
    Ok(())
}

/// Applies the journal in `data` to `restored.records`, skipping lines older than `min_gen`.
/// Returns the highest generation seen.
fn replay(data: &[u8], min_gen: u64, restored: &mut Restored) -> u64 {
    // Blank lines, and the zero fill some filesystems leave after a power loss, carry nothing.
    let is_blank = |l: &[u8]| l.iter().all(|&b| b == 0 || b.is_ascii_whitespace());
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = lines.iter().rposition(|l| !is_blank(l));
    let mut max_gen = 0;
    for (i, line) in lines.iter().enumerate() {
        if is_blank(line) {
            continue;
        }
        match serde_json::from_slice::<JournalLine>(line) {
            Ok(entry) if entry.gen < min_gen => restored.stale_lines += 1,
            Ok(entry) => {
                max_gen = max_gen.max(entry.gen);
                match (entry.tenant, entry.deleted, entry.record, entry.storms) {
                    (Some(tenant), true, _, _) => {
                        restored.records.remove(&tenant);
                    }
                    (Some(tenant), false, Some(readable), _) => {
                        match readable.take(&tenant, restored) {
                            Some(record) => restored.records.insert(tenant, record),
                            None => restored.records.remove(&tenant),
                        };
                    }
                    (None, _, _, Some(storms)) => restored.storms = storms,
                    (None, _, _, None) if entry.storm_held.is_some() => {
                        if let Some(join) = entry.storm_held {
                            join.apply(&mut restored.storms);
                        }
                    }
                    _ => {
                        restored.skipped_lines += 1;
                        continue;
                    }
                }
                restored.journal_lines += 1;
            }
            // The last line is the one a kill -9 or power loss tears: expected, not counted.
            Err(_) if Some(i) == last => restored.torn_tail = true,
            Err(_) => restored.skipped_lines += 1,
        }
    }
    max_gen
}

/// Drops records whose tenant id breaks the SPEC rules and repairs what is out of range in the
/// rest, so that nothing read from the state dir can panic a view or forge a header.
fn validate(restored: &mut Restored) {
    let mut rejected = Vec::new();
    restored.records.retain(|id, _| {
        let ok = crate::validate_tenant_id(id).is_ok();
        if !ok {
            rejected.push(format!("{:?}", truncate(id, 64)));
        }
        ok
    });
    restored.rejected = rejected;
    for record in restored.records.values_mut() {
        if repair(record) {
            restored.repaired += 1;
        }
    }
    for storm in &mut restored.storms {
        storm.since_ms = storm.since_ms.min(MAX_UNIX_MS);
        storm.last_reason = clean_text(&storm.last_reason).unwrap_or_default();
        storm
            .held
            .retain(|id| crate::validate_tenant_id(id).is_ok());
    }
}

/// Brings a record's fields into range; returns whether anything changed.
fn repair(record: &mut Record) -> bool {
    let before = record.clone();
    record.penalty_at_ms = record.penalty_at_ms.min(MAX_UNIX_MS);
    if !(record.penalty >= 0.0 && record.penalty <= MAX_PENALTY) {
        record.penalty = record.penalty.clamp(0.0, MAX_PENALTY);
        if record.penalty.is_nan() {
            record.penalty = 0.0;
        }
    }
    if let Some(r) = &mut record.reported {
        r.at_ms = r.at_ms.min(MAX_UNIX_MS);
        r.reason = r.reason.as_deref().and_then(clean_text);
    }
    if let Some(o) = &mut record.owed {
        o.changed_at_ms = o.changed_at_ms.min(MAX_UNIX_MS);
        o.reason = o.reason.as_deref().and_then(clean_text);
        if !is_idempotency_key(&o.idempotency_key) {
            // Not something we wrote, and maybe not even a valid header: the transition still
            // goes, under a key of ours.
            o.idempotency_key = new_idempotency_key();
        }
    }
    *record != before
}

/// Whether `key` is one we could have written: 1 to 64 ASCII letters, digits, `-` or `_`.
fn is_idempotency_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Text fit for a reason: control characters become spaces, cut at 256 characters.
fn clean_text(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let cleaned: String = text
        .chars()
        .take(MAX_TEXT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some(cleaned)
}

fn truncate(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// The instant `ms` milliseconds after the Unix epoch, clamped to [`MAX_UNIX_MS`].
pub fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.min(MAX_UNIX_MS))
}

/// Takes the directory's lock file, waiting up to `wait` for it (a previous process may still be
/// exiting, or a process forking a child shares the descriptor until the child's exec), or says
/// who holds it.
fn lock_dir(dir: &Path, wait: Duration) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(StoreError::io("open lock file", &path))?;
    let mut waited = Duration::ZERO;
    let locked = loop {
        // SAFETY: flock on a valid, owned descriptor has no memory effects.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let result = if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        };
        let busy = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK));
        if !busy || waited >= wait {
            break result;
        }
        std::thread::sleep(LOCK_POLL);
        waited += LOCK_POLL;
    };
    if let Err(err) = locked {
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut text = String::new();
            let pid = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        return Err(StoreError::io("lock", &path)(err));
    }
    // The pid is only for the message above; failing to write it does not matter.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

fn finite_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?
        .filter(|v| v.is_finite())
        .unwrap_or(0.0))
}

/// A new idempotency key: 128 random bits as 32 lowercase hex chars.
///
/// Uniqueness is what matters, not secrecy, so it never blocks: if the kernel's pool is not yet
/// initialised (early boot) or getrandom(2) is unavailable, it mixes time, a counter and the pid.
pub fn new_idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    if !fill_random(&mut bytes) {
        bytes = fallback_random();
    }
    let mut key = String::with_capacity(32);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn fill_random(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable slice `rest`.
        let n =
            unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), libc::GRND_NONBLOCK) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        filled += n as usize;
    }
    true
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn fill_random(buf: &mut [u8]) -> bool {
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

/// 128 bits that differ between calls, processes and restarts, from time, a counter and the pid.
fn fallback_random() -> [u8; 16] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let pid = u64::from(std::process::id());
    let a = splitmix64(nanos ^ pid.rotate_left(32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let b = splitmix64(a ^ count ^ pid);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Milliseconds since the Unix epoch; 0 for a time before it.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    fn owed(n: u64) -> Owed {
        Owed {
            status: Status::Disconnected,
            reason: Some(format!("Stream Errored (conflict) (code 440) #{n}")),
            changed_at_ms: n + 1,
            idempotency_key: format!("{n:032x}"),
        }
    }

    fn delivery(n: u64) -> Delivery {
        Delivery {
            reported: Some(Reported {
                status: Status::Connected,
                reason: None,
                at_ms: n,
            }),
            owed: Some(owed(n)),
        }
    }

    fn damping(n: u64) -> Damping {
        Damping {
            penalty: 1000.5,
            penalty_at_ms: n,
            flapping: n.is_multiple_of(2),
            stable: Some(Status::Disconnected),
        }
    }

    /// The record the writer makes of `delivery(n)` and `damping(n)`.
    fn rec(n: u64) -> Record {
        let (d, p) = (delivery(n), damping(n));
        Record {
            reported: d.reported,
            owed: d.owed,
            penalty: p.penalty,
            penalty_at_ms: p.penalty_at_ms,
            flapping: p.flapping,
            stable: p.stable,
        }
    }

    fn open(dir: &Path) -> (Store, Restored) {
        Store::open_with(dir, Arc::new(Notify::new()), Options::default()).expect("open store")
    }

    fn open_with(dir: &Path, options: Options) -> (Store, Restored) {
        Store::open_with(dir, Arc::new(Notify::new()), options).expect("open store")
    }

    fn id(s: &str) -> TenantId {
        s.into()
    }

    /// Hands both halves of `rec(n)` for `tenant` to the writer.
    fn put(store: &Store, seq: &mut u64, tenant: &str, n: u64) {
        *seq += 1;
        store.delivery(*seq, &id(tenant), Some(delivery(n)));
        store.damping(&id(tenant), damping(n));
    }

    fn journals(dir: &Path) -> Vec<PathBuf> {
        list_journals(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (store, restored) = open(&dir);
        assert!(restored.records.is_empty());
        let mut seq = 0;
        put(&store, &mut seq, "business_1", 1);
        store.delivery(2, &id("business_2"), Some(Delivery::default()));
        store.damping(
            &id("odd\"id"),
            Damping {
                penalty: f64::NAN,
                ..damping(3)
            },
        );
        store.barrier();
        assert_eq!(store.written(), 2);
        store.close();

        let (store, restored) = open(&dir);
        assert_eq!(store.failure(), None);
        assert_eq!(restored.records["business_1"], rec(1));
        assert_eq!(restored.records["business_2"], Record::default());
        // A NaN penalty must not make the files unreadable; it comes back as 0.
        assert_eq!(restored.records["odd\"id"].penalty, 0.0);
        // Closed with a compaction: everything is in the snapshot, the journal is empty.
        assert_eq!(restored.journal_lines, 0);
        store.close();
        let (_store, again) = open(&dir);
        assert_eq!(again.records, restored.records);
    }

    #[test]
    fn the_state_dir_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/state");
        let (store, restored) = open(&dir);
        assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        store.close();
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{:?} is {mode:o}", entry.path());
        }
        // An existing directory others can write is named in a warning.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let (_store, restored) = open(&dir);
        assert!(
            restored.warnings.iter().any(|w| w.contains("0700")),
            "{:?}",
            restored.warnings
        );
    }

    #[test]
    fn journal_replays_over_snapshot_after_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        put(&store, &mut seq, "b", 2);
        store.close(); // a and b in the snapshot
        let (store, _) = open(tmp.path());
        put(&store, &mut seq, "a", 3);
        store.barrier();
        store.crash(); // a's new record only in the journal

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.journal_lines, 2);
        assert_eq!(restored.records.len(), 2);
        assert_eq!(restored.records["a"], rec(3));
        assert_eq!(restored.records["b"], rec(2));
    }

    #[test]
    fn a_deleted_tenant_stays_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        put(&store, &mut seq, "b", 2);
        store.delivery(9, &id("a"), None);
        store.barrier();
        store.crash();
        let (store, restored) = open(tmp.path());
        assert_eq!(restored.records.keys().collect::<Vec<_>>(), ["b"]);
        store.close();
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.records.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn torn_last_line_is_ignored_quietly() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        store.barrier();
        store.crash();
        let journal = journals(tmp.path()).pop().unwrap();
        append_raw(&journal, br#"{"gen":1,"tenant":"b","record":{"pen"#);

        let (_store, restored) = open(tmp.path());
        assert!(restored.torn_tail);
        assert_eq!(restored.skipped_lines, 0);
        assert_eq!(restored.records.len(), 1);
        assert_eq!(restored.records["a"], rec(1));
    }

    #[test]
    fn bad_middle_line_is_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        store.barrier();
        let journal = journals(tmp.path()).pop().unwrap();
        append_raw(&journal, b"this is not json\n");
        put(&store, &mut seq, "b", 2);
        store.barrier();
        store.crash();

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.skipped_lines, 1);
        assert!(!restored.torn_tail);
        assert_eq!(restored.records.len(), 2);
    }

    #[test]
    fn corrupt_snapshot_is_set_aside_and_journal_still_applies() {
        for bad in [
            &b"{\"version\":1,\"tenants\":{\"a\":"[..],
            b"{\"version\":2,\"tenants\":{}}",
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (store, _) = open(tmp.path());
            let mut seq = 0;
            put(&store, &mut seq, "a", 1);
            store.barrier();
            store.crash();
            fs::write(tmp.path().join(SNAPSHOT_FILE), bad).unwrap();

            let (store, restored) = open(tmp.path());
            assert_eq!(store.failure(), None);
            let (aside, reason) = restored.set_aside.first().expect("snapshot set aside");
            assert!(aside
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("state.json.corrupt-"));
            assert_eq!(fs::read(aside).unwrap(), bad);
            assert!(!reason.is_empty());
            assert_eq!(restored.records["a"], rec(1));
            // The fresh snapshot is readable again.
            store.close();
            let (_store, again) = open(tmp.path());
            assert!(again.set_aside.is_empty());
            assert_eq!(again.records["a"], rec(1));
        }
    }

    /// A field that does not parse costs that field, not the record, the snapshot or any
    /// other tenant's owed transition; the same for a journal line and a stored hold.
    #[test]
    fn a_bad_field_costs_that_field_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let good = serde_json::to_string(&rec(2)).unwrap();
        let mut negative: serde_json::Value = serde_json::to_value(rec(3)).unwrap();
        negative["penalty_at_ms"] = (-1).into();
        let mut bogus: serde_json::Value = serde_json::to_value(rec(4)).unwrap();
        bogus["owed"]["status"] = "bogus".into();
        let snapshot = format!(
            "{{\"version\":1,\"generation\":0,\"tenants\":{{\"good\":{good},\"negative\":{negative},\
             \"bogus\":{bogus},\"string\":\"x\"}},\"storms\":[{{\"id\":\"x\"}},{{\"id\":7,\"held\":[\"good\"]}}]}}"
        );
        fs::write(tmp.path().join(SNAPSHOT_FILE), snapshot).unwrap();
        let mut late: serde_json::Value = serde_json::to_value(rec(5)).unwrap();
        late["flapping"] = "yes".into();
        let line = serde_json::json!({"gen": 0, "tenant": "late", "record": late});
        fs::write(journal_path(tmp.path(), 0), format!("{line}\n")).unwrap();

        let (store, restored) = open(tmp.path());
        assert!(restored.set_aside.is_empty(), "{:?}", restored.set_aside);
        assert_eq!(restored.records["good"], rec(2));
        let negative = &restored.records["negative"];
        assert_eq!(
            (&negative.reported, &negative.owed),
            (&rec(3).reported, &rec(3).owed)
        );
        assert_eq!(negative.penalty_at_ms, 0);
        assert_eq!(restored.records["bogus"].owed, None);
        assert_eq!(restored.records["bogus"].reported, rec(4).reported);
        assert!(!restored.records.contains_key("string"));
        assert_eq!(restored.records["late"].owed, rec(5).owed);
        assert_eq!(restored.journal_lines, 1);
        assert_eq!(restored.storms.len(), 1);
        assert_eq!(restored.storms[0].id, 7);
        let mut salvaged = restored.salvaged.clone();
        salvaged.sort();
        assert_eq!(
            salvaged,
            [
                "\"bogus\": owed",
                "\"late\": flapping",
                "\"negative\": penalty_at_ms",
                "\"string\": the whole record (not a JSON object)",
            ]
        );

        // What was kept is written back whole: the next start reads it as it was kept.
        store.close();
        let (_store, again) = open(tmp.path());
        assert!(again.salvaged.is_empty(), "{:?}", again.salvaged);
        assert_eq!(again.records, restored.records);
        assert_eq!(again.storms, restored.storms);
    }

    /// A FIFO (or any file that is not a regular one) where a state file belongs is refused
    /// at once, naming the fix; opening it must not wait for a writer that never comes.
    #[test]
    fn a_fifo_in_place_of_a_state_file_is_refused_without_waiting() {
        for name in [SNAPSHOT_FILE, "journal-7.jsonl"] {
            let tmp = tempfile::tempdir().unwrap();
            let fifo = std::ffi::CString::new(tmp.path().join(name).to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path; mkfifo has no memory effects.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
            let (tx, rx) = std::sync::mpsc::channel();
            let dir = tmp.path().to_path_buf();
            std::thread::spawn(move || {
                let result = Store::open_with(&dir, Arc::new(Notify::new()), Options::default());
                let _ = tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
            });
            let result = rx.recv_timeout(Duration::from_secs(10));
            let error = result
                .expect("open returns")
                .expect_err("a FIFO is refused");
            assert!(
                error.contains(name) && error.contains("not a regular file"),
                "{error}"
            );
        }
    }

    #[test]
    fn symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(SNAPSHOT_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LEGACY_JOURNAL_FILE)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(SNAPSHOT_TMP_FILE)).unwrap();

        let (store, restored) = open(&dir);
        assert_eq!(restored.set_aside.len(), 2, "{:?}", restored.set_aside);
        assert!(restored
            .set_aside
            .iter()
            .all(|(_, reason)| reason.contains("symlink")));
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        store.close();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let (_store, restored) = open(&dir);
        assert_eq!(restored.records["a"], rec(1));
        assert!(!dir.join(SNAPSHOT_FILE).is_symlink());
    }

    /// A state dir that is a file, or a `lock` that is a symlink, stops the start with the fix
    /// named, not "check state.dir and its disk".
    #[test]
    fn a_state_dir_that_is_a_file_or_a_symlinked_lock_names_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        fs::write(&file, b"").unwrap();
        let open = |dir: &Path| Store::open_with(dir, Arc::new(Notify::new()), Options::default());
        let error = open(&file).expect_err("a file is no state dir").to_string();
        let fix = format!(
            "{} is not a directory; point state.dir at a directory",
            file.display()
        );
        assert!(error.contains(&fix), "{error}");

        let dir = tmp.path().join("dir");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join(LOCK_FILE)).unwrap();
        let error = open(&dir)
            .expect_err("a symlinked lock is refused")
            .to_string();
        assert!(
            error.contains("lock is a symlink") && error.contains("remove it"),
            "{error}"
        );
        assert!(!tmp.path().join("elsewhere").exists());
    }

    #[test]
    fn a_file_too_large_to_be_ours_is_set_aside_unread() {
        let tmp = tempfile::tempdir().unwrap();
        let big = tmp.path().join(LEGACY_JOURNAL_FILE);
        let file = File::create(&big).unwrap();
        // Sparse: the size says 300 MiB, the disk holds nothing.
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.set_aside.len(), 1);
        assert!(
            restored.set_aside[0].1.contains("bytes"),
            "{:?}",
            restored.set_aside
        );
    }

    #[test]
    fn hostile_records_are_validated_on_load() {
        let tmp = tempfile::tempdir().unwrap();
        let far = 400_000_000_000_000u64;
        let long = "x".repeat(10_000);
        let snapshot = serde_json::json!({
            "version": 1,
            "generation": 1,
            "tenants": {
                "..": {},
                "a/b": {},
                "": {},
                "line\nbreak": {},
                "ok": {
                    "reported": {"status": "connected", "reason": null, "at_ms": far},
                    "owed": {
                        "status": "disconnected",
                        "reason": format!("evil\r\ninjected {long}"),
                        "changed_at_ms": far,
                        "idempotency_key": "bad key\r\nX-Injected: 1"
                    },
                    "penalty": 1e300,
                    "penalty_at_ms": far,
                    "flapping": true
                }
            }
        });
        fs::write(tmp.path().join(SNAPSHOT_FILE), snapshot.to_string()).unwrap();
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.records.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(restored.rejected.len(), 4, "{:?}", restored.rejected);
        assert!(restored.rejected.iter().all(|r| !r.contains('\n')));
        assert_eq!(restored.repaired, 1);
        let ok = &restored.records["ok"];
        assert_eq!(ok.penalty_at_ms, MAX_UNIX_MS);
        assert!(ok.penalty <= MAX_PENALTY);
        let owed = ok.owed.as_ref().unwrap();
        assert_eq!(owed.changed_at_ms, MAX_UNIX_MS);
        assert!(is_idempotency_key(&owed.idempotency_key));
        let reason = owed.reason.as_deref().unwrap();
        assert!(reason.chars().count() <= MAX_TEXT_CHARS, "{}", reason.len());
        assert!(!reason.contains('\n') && !reason.contains('\r'));
        assert_eq!(ok.reported.as_ref().unwrap().at_ms, MAX_UNIX_MS);
    }

    #[test]
    fn second_open_is_locked_until_the_first_is_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let at_once = Options {
            lock_wait: Duration::ZERO,
            ..Options::default()
        };
        match Store::open_with(tmp.path(), Arc::new(Notify::new()), at_once) {
            Err(err @ StoreError::Locked { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                let msg = err.to_string();
                assert!(msg.contains(&tmp.path().display().to_string()), "{msg}");
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        store.close();
        // Opening waits briefly for a lock still held: another test of this binary may fork a
        // child (`survives_kill_9`) at the instant the lock file closes, and the child holds a
        // copy of the descriptor, and with it the lock, until its exec closes it.
        open(tmp.path());
    }

    #[test]
    fn compaction_starts_a_new_journal_and_deletes_the_old_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            compact_threshold: 64 * 1024,
            ..Options::default()
        };
        let (store, _) = open_with(tmp.path(), options.clone());
        let first = journals(tmp.path());
        assert_eq!(first.len(), 1);
        let mut seq = 0;
        let mut expected = HashMap::new();
        // Well past the threshold, in batches so the writer sees the journal grow.
        for i in 0..2000 {
            put(&store, &mut seq, &format!("t{}", i % 100), i);
            expected.insert(format!("t{}", i % 100), rec(i));
            if i % 100 == 99 {
                store.barrier();
            }
        }
        store.barrier();
        let now = journals(tmp.path());
        assert!(
            !now.contains(&first[0]),
            "the first journal was compacted away: {now:?}"
        );
        assert!(now.len() <= 2, "{now:?}");
        store.crash();
        let (_store, restored) = open_with(tmp.path(), options);
        assert_eq!(restored.records.len(), 100);
        for (k, v) in &expected {
            assert_eq!(&restored.records[k], v, "{k}");
        }
    }

    #[test]
    fn ten_thousand_records_compact_and_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut seq = 0;
        for i in 0..10_000 {
            put(&store, &mut seq, &format!("business_{i}"), i);
        }
        store.close();
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.records.len(), 10_000);
        for i in (0..10_000).step_by(997) {
            assert_eq!(restored.records[&format!("business_{i}")], rec(i));
        }
    }

    #[test]
    fn journal_lines_older_than_the_snapshot_are_ignored() {
        // A crash after the snapshot rename but before the old journal was deleted.
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        store.barrier();
        let old = journals(tmp.path()).pop().unwrap();
        let old_lines = fs::read(&old).unwrap();
        put(&store, &mut seq, "a", 2);
        store.close();
        fs::write(&old, old_lines).unwrap();

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.stale_lines, 2);
        assert_eq!(restored.journal_lines, 0);
        assert_eq!(restored.records["a"], rec(2));
    }

    #[test]
    fn a_legacy_journal_is_replayed_and_then_compacted_away() {
        let tmp = tempfile::tempdir().unwrap();
        let line = serde_json::json!({"gen": 0, "tenant": "a", "record": rec(1)});
        fs::write(tmp.path().join(LEGACY_JOURNAL_FILE), format!("{line}\n")).unwrap();
        let (store, restored) = open(tmp.path());
        assert_eq!(restored.records["a"], rec(1));
        assert!(!tmp.path().join(LEGACY_JOURNAL_FILE).exists());
        store.close();
        assert_eq!(open(tmp.path()).1.records["a"], rec(1));
    }

    #[test]
    fn unusable_dir_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let dir = file.join("state");
        let err = Store::open_with(&dir, Arc::new(Notify::new()), Options::default()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Io { .. }), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(msg.contains("state.dir"), "{msg}");
    }

    #[test]
    fn a_blocked_snapshot_path_degrades_until_a_compaction_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Root ignores permissions: a non-empty directory where the temp snapshot goes makes
        // every snapshot write fail, as a read-only or full disk would.
        let blocker = dir.join(SNAPSHOT_TMP_FILE);
        fs::create_dir_all(blocker.join("blocked")).unwrap();
        let (store, _) = open(dir);
        let failure = store.failure().expect("the first compaction failed");
        assert!(failure.contains("state.json.tmp"), "{failure}");
        assert!(store.errors() >= 1);
        let mut seq = 0;
        put(&store, &mut seq, "a", 1);
        store.barrier();
        assert!(store.failure().is_some());

        fs::remove_dir_all(&blocker).unwrap();
        store.retry();
        store.barrier();
        assert_eq!(store.failure(), None);
        store.crash();
        assert_eq!(open(dir).1.records["a"], rec(1));
    }

    #[test]
    fn idempotency_keys_are_128_bit_hex_and_distinct() {
        let keys: std::collections::HashSet<String> =
            (0..1000).map(|_| new_idempotency_key()).collect();
        assert_eq!(keys.len(), 1000);
        for k in &keys {
            assert_eq!(k.len(), 32);
            assert!(k
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(is_idempotency_key(k));
        }
        let fallback: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| fallback_random()).collect();
        assert_eq!(fallback.len(), 1000);
    }

    #[test]
    fn unix_ms_converts_and_clamps() {
        assert_eq!(
            unix_ms(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            1_700_000_000_123
        );
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(system_time(u64::MAX), system_time(MAX_UNIX_MS));
    }

    const CHILD_ENV: &str = "WA_SIDECAR_STORE_KILL9_DIR";
    const TENANTS: u64 = 97;

    /// Not a test on its own: the body of the child process for `survives_kill_9`. It hands
    /// records to the writer for ever (a small threshold makes it compact often) and prints the
    /// index of every record once the writer says it is written.
    #[test]
    fn kill9_child_helper() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let options = Options {
            compact_threshold: 32 * 1024,
            ..Options::default()
        };
        let (store, _) = open_with(Path::new(&dir), options);
        let mut out = io::stdout().lock();
        for i in 1..10_000_000u64 {
            let tenant = id(&format!("t{}", i % TENANTS));
            store.delivery(i, &tenant, Some(delivery(i)));
            if i % 7 == 0 {
                store.wait_written(i, Duration::from_secs(5));
                writeln!(out, "acked {i}").unwrap();
                out.flush().unwrap();
            }
        }
    }

    #[test]
    fn survives_kill_9() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["kill9_child_helper", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = 0;
        let mut killed = false;
        for line in lines.by_ref() {
            if let Some(i) = line.unwrap().strip_prefix("acked ") {
                acked = i.parse::<u64>().unwrap();
            }
            if acked >= 20_000 && !killed {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "child exited early: {status:?}");

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.skipped_lines, 0);
        for t in 0..TENANTS {
            // The last record of the tenant the writer had confirmed before the kill.
            let latest = (acked - TENANTS..=acked)
                .rev()
                .find(|i| i % TENANTS == t)
                .unwrap();
            let r = &restored.records[&format!("t{t}")];
            let got = r.reported.as_ref().unwrap().at_ms;
            assert!(got >= latest, "t{t}: {got} < {latest}");
            assert_eq!(got % TENANTS, t);
        }
    }
}
