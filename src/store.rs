//! Durable per-tenant records under `state.dir` (SPEC section 2 "Durable").
//!
//! What the backend last acknowledged and what is still owed to it must survive a kill -9, a full
//! disk and a restart. The store keeps three files in the state directory:
//!
//! - `state.json`: a snapshot of every record,
//!   `{"version":1,"generation":N,"tenants":{"<id>":<Record>,...}}`, replaced atomically (temp file
//!   in the same dir, write, fsync, rename, fsync the dir), so it is always either the old or the
//!   new snapshot, never a mix.
//! - `journal.jsonl`: one JSON line per changed record, `{"gen":N,"tenant":"<id>","record":{...}}`,
//!   appended with a single `write(2)`. There is no fsync per append: the page cache survives a
//!   kill -9, and the caller calls [`Store::sync`] about once a second while the store is dirty to
//!   bound what a power loss can take. A kill -9 leaves at worst one torn last line.
//! - `lock`: held with `flock(LOCK_EX | LOCK_NB)` for the life of the [`Store`] and holding the
//!   owner's pid, so two sidecars never interleave writes to the same directory.
//!
//! [`Store::open`] takes the lock, reads the snapshot, replays the journal over it (later lines
//! win) and compacts. A snapshot that cannot be parsed is renamed aside to
//! `state.json.corrupt-<unix seconds>` and the journal alone is replayed, so a bad file is kept
//! for inspection and never causes a crash loop.
//!
//! Generations: compaction writes the snapshot and then truncates the journal; a crash between
//! the two steps leaves journal lines that are older than the new snapshot. Replaying them would
//! turn a record back to an older value (after a failed append the journal may hold an older
//! value than the snapshot), so every snapshot carries a generation, every journal line the
//! generation it was written under, and replay skips lines older than the snapshot.
//!
//! Degraded mode: when an append, a sync or a compaction fails, the error is returned, the store
//! remembers that the journal may be incomplete ([`Store::is_healthy`] is false,
//! [`Store::last_error`] says why) and [`Store::needs_compaction`] becomes true, so the caller's
//! next compaction rewrites everything from memory. The first compaction that succeeds makes the
//! store healthy again.
//!
//! All I/O here is blocking `std::fs`; the caller runs it from a dedicated task or
//! `spawn_blocking`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize};

use crate::debounce::Status;

/// Journal size that triggers a compaction: large enough that a busy fleet compacts rarely,
/// small enough that replaying it at startup takes milliseconds.
pub const DEFAULT_COMPACT_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;

/// The snapshot format this code writes and reads.
const SNAPSHOT_VERSION: u32 = 1;

const SNAPSHOT_FILE: &str = "state.json";
const SNAPSHOT_TMP_FILE: &str = "state.json.tmp";
const JOURNAL_FILE: &str = "journal.jsonl";
const LOCK_FILE: &str = "lock";

/// Buffer for writing the snapshot: 10,000 records (~2 MiB) go out in a few dozen syscalls.
const SNAPSHOT_BUF_BYTES: usize = 64 * 1024;

/// What the store keeps for one tenant.
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

/// What [`Store::open`] found on disk.
#[derive(Debug, Default)]
pub struct Restored {
    /// Every tenant's record: the snapshot with the journal applied over it.
    pub records: HashMap<String, Record>,
    /// Journal lines applied over the snapshot.
    pub journal_lines: usize,
    /// Unparseable journal lines before the last one (a real problem worth a warning).
    pub skipped_lines: usize,
    /// Journal lines older than the snapshot, left by a crash during compaction; ignored.
    pub stale_lines: usize,
    /// The last journal line was torn or unparseable (expected after a kill -9 or power loss).
    pub torn_tail: bool,
    /// Where an unreadable snapshot was moved to.
    pub set_aside: Option<PathBuf>,
    /// Why the snapshot was set aside.
    pub set_aside_reason: Option<String>,
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
        _ => format!("check state.dir ({}) and its disk", dir.display()),
    }
}

/// An open state directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Held only for its flock, which the kernel releases when the file closes (also on kill -9).
    _lock: File,
    /// Opened with O_APPEND so every write lands at the end, also after a truncation.
    journal: File,
    /// Bytes in the journal, to decide when to compact.
    journal_len: u64,
    /// The journal ends at a line boundary. False after a torn tail or a failed append; the next
    /// append then starts with a newline so its line does not fuse with the broken one.
    tail_clean: bool,
    /// Appended since the last fsync.
    dirty: bool,
    /// Generation of the newest snapshot; written into every journal line.
    generation: u64,
    /// Set while the journal may be missing a record (a write, sync or compaction failed).
    failure: Option<String>,
    compact_threshold: u64,
    /// Reused for every journal line so an append allocates nothing in the steady state.
    line: Vec<u8>,
}

impl Store {
    /// Opens (creating it if missing) the state directory, restores every record and compacts.
    ///
    /// Fails when the directory cannot be created, locked or read; the caller may then run from
    /// memory. A failed compaction at the end does not fail the open: the store comes back
    /// unhealthy and the caller's next compaction retries.
    pub fn open(dir: &Path) -> Result<(Store, Restored), StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(StoreError::io("create state dir", dir))?;
        let lock = lock_dir(dir)?;

        // A temp snapshot left by a crash mid-compaction is garbage; compaction would overwrite
        // it anyway, so a failure to remove it changes nothing.
        let _ = fs::remove_file(dir.join(SNAPSHOT_TMP_FILE));

        let mut restored = Restored::default();
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        // Journal lines older than this generation are already in the snapshot.
        let mut min_line_gen = 0;
        let mut generation = 0;
        match read_snapshot(&snapshot_path)? {
            SnapshotRead::Missing => {}
            SnapshotRead::Ok(snap) => {
                restored.records = snap.tenants;
                min_line_gen = snap.generation;
                generation = snap.generation;
            }
            SnapshotRead::Corrupt(reason) => {
                let aside = set_aside(&snapshot_path)?;
                restored.set_aside = Some(aside);
                restored.set_aside_reason = Some(reason);
            }
        }

        let journal_path = dir.join(JOURNAL_FILE);
        let mut journal = open_journal(&journal_path, false)?;
        let mut data = Vec::new();
        journal
            .read_to_end(&mut data)
            .map_err(StoreError::io("read journal", &journal_path))?;
        let max_gen = replay(&data, min_line_gen, &mut restored);
        generation = generation.max(max_gen);

        let mut store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            journal,
            journal_len: data.len() as u64,
            tail_clean: data.last().is_none_or(|&b| b == b'\n'),
            dirty: false,
            generation,
            failure: None,
            compact_threshold: DEFAULT_COMPACT_JOURNAL_BYTES,
            line: Vec::with_capacity(512),
        };
        // The error is kept in `store.failure`, which the caller sees through is_healthy().
        let _ = store.compact(restored.records.iter().map(|(k, v)| (k.as_str(), v)));
        Ok((store, restored))
    }

    /// Appends one record to the journal with a single write. Not yet fsynced: see [`Store::sync`].
    pub fn append(&mut self, tenant: &str, record: &Record) -> Result<(), StoreError> {
        self.line.clear();
        if !self.tail_clean {
            self.line.push(b'\n');
        }
        let entry = JournalLineRef {
            gen: self.generation,
            tenant,
            record,
        };
        // Serializing into a Vec fails only for non-string map keys, which these types do not have.
        serde_json::to_writer(&mut self.line, &entry).expect("journal line serializes");
        self.line.push(b'\n');

        self.dirty = true;
        match self.journal.write_all(&self.line) {
            Ok(()) => {
                self.journal_len += self.line.len() as u64;
                self.tail_clean = true;
                Ok(())
            }
            Err(source) => {
                // Part of the line may be on disk; the caller's next compaction rewrites it all.
                self.tail_clean = false;
                Err(self.fail(StoreError::Io {
                    op: "append to journal",
                    path: self.dir.join(JOURNAL_FILE),
                    source,
                }))
            }
        }
    }

    /// Flushes appended lines to the disk, so that they survive a power loss as well.
    /// Does nothing when nothing was appended since the last sync.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if !self.dirty {
            return Ok(());
        }
        match self.journal.sync_data() {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            // After a failed fsync Linux may drop the dirty pages, so what was appended can be
            // gone: only a full rewrite from memory restores the guarantee.
            Err(source) => Err(self.fail(StoreError::Io {
                op: "fsync journal",
                path: self.dir.join(JOURNAL_FILE),
                source,
            })),
        }
    }

    /// Whether lines were appended since the last [`Store::sync`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// True when the journal is large or may be incomplete; the caller should then call
    /// [`Store::compact`] with every current record.
    pub fn needs_compaction(&self) -> bool {
        self.failure.is_some() || self.journal_len > self.compact_threshold
    }

    /// Writes `records` (every tenant's current record) as the new snapshot and empties the
    /// journal. On success the store is healthy again.
    pub fn compact<'a>(
        &mut self,
        records: impl IntoIterator<Item = (&'a str, &'a Record)>,
    ) -> Result<(), StoreError> {
        let next_gen = self.generation + 1;
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        let snapshot = self.dir.join(SNAPSHOT_FILE);
        if let Err(source) = write_snapshot(&tmp, next_gen, records) {
            let _ = fs::remove_file(&tmp);
            return Err(self.fail(StoreError::Io {
                op: "write snapshot",
                path: tmp,
                source,
            }));
        }
        if let Err(source) = fs::rename(&tmp, &snapshot) {
            let _ = fs::remove_file(&tmp);
            return Err(self.fail(StoreError::Io {
                op: "replace snapshot",
                path: snapshot,
                source,
            }));
        }
        // From here the snapshot on disk (at least in the page cache) is the new generation, so
        // appends must carry it, or a restart would skip them as older than the snapshot. Should
        // the rename not reach the disk, the old snapshot is older still and the lines apply.
        self.generation = next_gen;
        if let Err(source) = sync_dir(&self.dir) {
            // The old journal must stay until the rename is known to be durable.
            return Err(self.fail(StoreError::Io {
                op: "fsync state dir",
                path: self.dir.clone(),
                source,
            }));
        }
        // Truncating through a fresh handle also replaces a journal handle that went bad. No fsync
        // is needed: lines that reappear after a power loss are older than the snapshot and skipped.
        let journal_path = self.dir.join(JOURNAL_FILE);
        match open_journal(&journal_path, true) {
            Ok(journal) => {
                self.journal = journal;
                self.journal_len = 0;
                self.tail_clean = true;
                self.dirty = false;
                self.failure = None;
                Ok(())
            }
            Err(err) => Err(self.fail(err)),
        }
    }

    /// False while the journal may be missing a record (an append, sync or compaction failed and
    /// no compaction has succeeded since): not ready, and not durable.
    pub fn is_healthy(&self) -> bool {
        self.failure.is_none()
    }

    /// The error that made the store unhealthy; None while healthy.
    pub fn last_error(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current journal size in bytes.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_len
    }

    fn fail(&mut self, err: StoreError) -> StoreError {
        self.failure = Some(err.to_string());
        err
    }
}

/// One journal line as written.
#[derive(Serialize)]
struct JournalLineRef<'a> {
    gen: u64,
    tenant: &'a str,
    record: &'a Record,
}

/// One journal line as read.
#[derive(Deserialize)]
struct JournalLine {
    gen: u64,
    tenant: String,
    record: Record,
}

#[derive(Deserialize)]
struct Snapshot {
    version: u32,
    /// Absent in a hand-written snapshot: then every journal line applies.
    #[serde(default)]
    generation: u64,
    tenants: HashMap<String, Record>,
}

enum SnapshotRead {
    Missing,
    Ok(Snapshot),
    /// Present but unusable, with the reason.
    Corrupt(String),
}

fn read_snapshot(path: &Path) -> Result<SnapshotRead, StoreError> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SnapshotRead::Missing),
        Err(e) => return Err(StoreError::io("read snapshot", path)(e)),
    };
    Ok(match serde_json::from_slice::<Snapshot>(&data) {
        Ok(snap) if snap.version == SNAPSHOT_VERSION => SnapshotRead::Ok(snap),
        Ok(snap) => SnapshotRead::Corrupt(format!(
            "unsupported snapshot version {} (this build reads version {SNAPSHOT_VERSION})",
            snap.version
        )),
        Err(e) => SnapshotRead::Corrupt(format!("unparseable snapshot: {e}")),
    })
}

/// Renames an unusable snapshot to `state.json.corrupt-<unix seconds>` (plus a counter if that
/// exists), so it is kept for inspection and the next compaction does not overwrite it.
fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{SNAPSHOT_FILE}.corrupt-{secs}");
    let mut aside = path.with_file_name(&base);
    let mut n = 1;
    // We hold the lock, so nobody else creates these names between the check and the rename.
    while aside.exists() {
        aside = path.with_file_name(format!("{base}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(StoreError::io("set aside corrupt snapshot", path))?;
    Ok(aside)
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
                restored.records.insert(entry.tenant, entry.record);
                restored.journal_lines += 1;
            }
            // The last line is the one a kill -9 or power loss tears: expected, not counted.
            Err(_) if Some(i) == last => restored.torn_tail = true,
            Err(_) => restored.skipped_lines += 1,
        }
    }
    max_gen
}

fn open_journal(path: &Path, truncate: bool) -> Result<File, StoreError> {
    // O_APPEND by hand: std refuses `append(true)` together with `truncate(true)`.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_APPEND)
        .create(true)
        .truncate(truncate)
        .mode(0o640)
        .open(path)
        .map_err(StoreError::io("open journal", path))
}

fn write_snapshot<'a>(
    tmp: &Path,
    generation: u64,
    records: impl IntoIterator<Item = (&'a str, &'a Record)>,
) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(tmp)?;
    let mut w = BufWriter::with_capacity(SNAPSHOT_BUF_BYTES, file);
    // Streamed by hand so the caller's records are not copied into a map first.
    write!(
        w,
        "{{\"version\":{SNAPSHOT_VERSION},\"generation\":{generation},\"tenants\":{{"
    )?;
    for (i, (tenant, record)) in records.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut w, tenant)?;
        w.write_all(b":")?;
        serde_json::to_writer(&mut w, record)?;
    }
    w.write_all(b"}}\n")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the directory's lock file, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&path)
        .map_err(StoreError::io("open lock file", &path))?;
    // SAFETY: flock on a valid, owned descriptor has no memory effects.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
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

    fn rec(n: u64) -> Record {
        Record {
            reported: Some(Reported {
                status: Status::Connected,
                reason: None,
                at_ms: n,
            }),
            owed: Some(Owed {
                status: Status::Disconnected,
                reason: Some(format!("Stream Errored (conflict) (code 440) #{n}")),
                changed_at_ms: n + 1,
                idempotency_key: format!("{n:032x}"),
            }),
            penalty: 1000.5,
            penalty_at_ms: n,
            flapping: n % 2 == 0,
        }
    }

    fn open(dir: &Path) -> (Store, Restored) {
        Store::open(dir).expect("open store")
    }

    fn journal_len(dir: &Path) -> u64 {
        fs::metadata(dir.join(JOURNAL_FILE)).unwrap().len()
    }

    fn append_raw(dir: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(JOURNAL_FILE))
            .unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let (mut store, restored) = open(&dir);
        assert!(restored.records.is_empty());
        let mut nan = rec(3);
        nan.penalty = f64::NAN;
        store.append("business_1", &rec(1)).unwrap();
        store.append("business_2", &Record::default()).unwrap();
        store.append("odd \"id\"\n", &nan).unwrap();
        store.sync().unwrap();
        drop(store);

        let (store, restored) = open(&dir);
        assert!(store.is_healthy(), "{:?}", store.last_error());
        assert_eq!(restored.journal_lines, 3);
        assert_eq!(restored.records["business_1"], rec(1));
        assert_eq!(restored.records["business_2"], Record::default());
        // A NaN penalty must not make the files unreadable; it comes back as 0.
        assert_eq!(restored.records["odd \"id\"\n"].penalty, 0.0);
        // Open compacted: everything is now in the snapshot.
        assert_eq!(journal_len(&dir), 0);
        drop(store);
        let (_store, again) = open(&dir);
        assert_eq!(again.records, restored.records);
        assert_eq!(again.journal_lines, 0);
    }

    #[test]
    fn journal_replays_over_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        let (a1, b1, a2) = (rec(1), rec(2), rec(3));
        store.compact([("a", &a1), ("b", &b1)]).unwrap();
        store.append("a", &a2).unwrap();
        drop(store);

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.journal_lines, 1);
        assert_eq!(restored.records.len(), 2);
        assert_eq!(restored.records["a"], a2);
        assert_eq!(restored.records["b"], b1);
    }

    #[test]
    fn torn_last_line_is_ignored_quietly() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        let a = rec(1);
        store.append("a", &a).unwrap();
        drop(store);
        append_raw(tmp.path(), br#"{"gen":1,"tenant":"b","record":{"pen"#);

        let (_store, restored) = open(tmp.path());
        assert!(restored.torn_tail);
        assert_eq!(restored.skipped_lines, 0);
        assert_eq!(restored.journal_lines, 1);
        assert_eq!(restored.records.len(), 1);
        assert_eq!(restored.records["a"], a);
    }

    #[test]
    fn bad_middle_line_is_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        store.append("a", &rec(1)).unwrap();
        append_raw(tmp.path(), b"this is not json\n");
        store.append("b", &rec(2)).unwrap();
        drop(store);

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.skipped_lines, 1);
        assert!(!restored.torn_tail);
        assert_eq!(restored.journal_lines, 2);
        assert_eq!(restored.records.len(), 2);
    }

    #[test]
    fn append_after_torn_tail_starts_a_new_line() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        // As after a failed append, or a failed compaction at open over a torn journal.
        append_raw(tmp.path(), br#"{"gen":1,"ten"#);
        store.tail_clean = false;
        store.append("a", &rec(1)).unwrap();
        drop(store);

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.records["a"], rec(1));
        assert_eq!(restored.skipped_lines, 1);
    }

    #[test]
    fn corrupt_snapshot_is_set_aside_and_journal_still_applies() {
        for bad in [
            &b"{\"version\":1,\"tenants\":{\"a\":"[..],
            b"{\"version\":2,\"tenants\":{}}",
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (mut store, _) = open(tmp.path());
            let a = rec(1);
            store.append("a", &a).unwrap();
            drop(store);
            fs::write(tmp.path().join(SNAPSHOT_FILE), bad).unwrap();

            let (store, restored) = open(tmp.path());
            assert!(store.is_healthy());
            let aside = restored.set_aside.expect("snapshot set aside");
            assert!(aside
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("state.json.corrupt-"));
            assert_eq!(fs::read(&aside).unwrap(), bad);
            assert!(restored.set_aside_reason.is_some());
            assert_eq!(restored.records.len(), 1);
            assert_eq!(restored.records["a"], a);
            // The fresh snapshot is readable again.
            drop(store);
            let (_store, again) = open(tmp.path());
            assert!(again.set_aside.is_none());
            assert_eq!(again.records["a"], a);
        }
    }

    #[test]
    fn second_open_is_locked_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        match Store::open(tmp.path()) {
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
        drop(store);
        open(tmp.path());
    }

    #[test]
    fn compaction_truncates_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        let mut records = HashMap::new();
        let mut i = 0;
        while !store.needs_compaction() {
            let r = rec(i);
            store.append(&format!("t{}", i % 100), &r).unwrap();
            records.insert(format!("t{}", i % 100), r);
            i += 1;
        }
        assert!(store.journal_bytes() > DEFAULT_COMPACT_JOURNAL_BYTES);
        assert_eq!(journal_len(tmp.path()), store.journal_bytes());
        store
            .compact(records.iter().map(|(k, v)| (k.as_str(), v)))
            .unwrap();
        assert!(!store.needs_compaction());
        assert_eq!(journal_len(tmp.path()), 0);
        // Appends after the truncation land at the start of the file, not past a hole.
        store.append("t0", &rec(0)).unwrap();
        assert_eq!(journal_len(tmp.path()), store.journal_bytes());
        records.insert("t0".into(), rec(0));
        drop(store);
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.journal_lines, 1);
        assert_eq!(restored.records.len(), 100);
        for (k, v) in &records {
            assert_eq!(&restored.records[k], v, "{k}");
        }
    }

    #[test]
    fn ten_thousand_records_compact_and_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        let records: HashMap<String, Record> = (0..10_000)
            .map(|i| (format!("business_{i}"), rec(i)))
            .collect();
        store
            .compact(records.iter().map(|(k, v)| (k.as_str(), v)))
            .unwrap();
        drop(store);
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.records, records);
    }

    #[test]
    fn journal_lines_older_than_the_snapshot_are_ignored() {
        // A crash after the snapshot rename but before the journal truncation reached the disk.
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        let (old, new) = (rec(1), rec(2));
        store.append("a", &old).unwrap();
        let old_journal = fs::read(tmp.path().join(JOURNAL_FILE)).unwrap();
        // The append of `new` failed (e.g. disk full), so only the compaction carries it.
        store.compact([("a", &new)]).unwrap();
        drop(store);
        fs::write(tmp.path().join(JOURNAL_FILE), old_journal).unwrap();

        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.stale_lines, 1);
        assert_eq!(restored.journal_lines, 0);
        assert_eq!(restored.records["a"], new);
    }

    #[test]
    fn unusable_dir_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let dir = file.join("state");
        let err = Store::open(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Io { .. }), "{msg}");
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(msg.contains("state.dir"), "{msg}");
    }

    /// Makes the journal handle fail every write with ENOSPC, like a full disk.
    fn fill_disk(store: &mut Store) {
        store.journal = OpenOptions::new().write(true).open("/dev/full").unwrap();
    }

    #[test]
    fn disk_full_degrades_until_a_compaction_succeeds() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        let (a, b) = (rec(1), rec(2));
        store.append("a", &a).unwrap();
        fill_disk(&mut store);

        let err = store.append("b", &b).unwrap_err();
        assert!(err.to_string().contains("free disk space"), "{err}");
        assert!(!store.is_healthy());
        assert!(store.last_error().unwrap().contains("append to journal"));
        assert!(store.needs_compaction());

        store.compact([("a", &a), ("b", &b)]).unwrap();
        assert!(store.is_healthy());
        assert_eq!(store.last_error(), None);
        assert!(!store.needs_compaction());
        let c = rec(3);
        store.append("c", &c).unwrap();
        drop(store);
        let (_store, restored) = open(tmp.path());
        assert_eq!(restored.records.len(), 3);
        assert_eq!(restored.records["b"], b);
        assert_eq!(restored.records["c"], c);
    }

    #[test]
    fn read_only_dir_degrades_until_a_compaction_succeeds() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut store, _) = open(dir);
        let a = rec(1);
        store.append("a", &a).unwrap();

        fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
        // Root (CAP_DAC_OVERRIDE) writes through a 0555 dir; simulate the failure there instead.
        let enforced = File::create(dir.join("probe")).is_err();
        if enforced {
            let err = store.compact([("a", &a)]).unwrap_err();
            assert!(err
                .to_string()
                .contains("check that the service user can write"));
        } else {
            let _ = fs::remove_file(dir.join("probe"));
            fill_disk(&mut store);
            store.append("a", &a).unwrap_err();
        }
        assert!(!store.is_healthy());
        assert!(store.needs_compaction());

        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        store.compact([("a", &a)]).unwrap();
        assert!(store.is_healthy());
        drop(store);
        assert_eq!(open(dir).1.records["a"], a);
    }

    #[test]
    fn sync_is_cheap_when_clean() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut store, _) = open(tmp.path());
        assert!(!store.is_dirty());
        store.append("a", &rec(1)).unwrap();
        assert!(store.is_dirty());
        store.sync().unwrap();
        assert!(!store.is_dirty());
        store.sync().unwrap();
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
        }
        let fallback: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| fallback_random()).collect();
        assert_eq!(fallback.len(), 1000);
    }

    #[test]
    fn unix_ms_converts_and_clamps() {
        use std::time::Duration;
        assert_eq!(
            unix_ms(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)),
            1_700_000_000_123
        );
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    const CHILD_ENV: &str = "WA_SIDECAR_STORE_KILL9_DIR";
    const TENANTS: u64 = 97;

    /// Not a test on its own: the body of the child process for `survives_kill_9`. It appends
    /// forever (compacting now and then) and prints the index of every acknowledged append.
    #[test]
    fn kill9_child_helper() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let (mut store, _) = Store::open(Path::new(&dir)).unwrap();
        let mut mem = HashMap::new();
        let mut out = io::stdout().lock();
        for i in 0..10_000_000u64 {
            let tenant = format!("t{}", i % TENANTS);
            let r = Record {
                penalty_at_ms: i,
                ..rec(i)
            };
            store.append(&tenant, &r).unwrap();
            mem.insert(tenant, r);
            writeln!(out, "acked {i}").unwrap();
            out.flush().unwrap();
            if i % 500 == 499 {
                store
                    .compact(mem.iter().map(|(k, v)| (k.as_str(), v)))
                    .unwrap();
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
        let mut acked = Vec::new();
        let mut killed = false;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("acked ") {
                acked.push(i.parse::<u64>().unwrap());
            }
            if acked.len() == 3_000 && !killed {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        // Everything printed before the kill landed was acknowledged, so it must survive too.
        let status = child.wait().unwrap();
        assert!(killed, "child exited early: {status:?}");
        assert!(acked.len() >= 3_000);

        let (_store, restored) = open(tmp.path());
        let last = *acked.last().unwrap();
        for t in 0..TENANTS {
            let Some(latest_acked) = acked.iter().rev().find(|&&i| i % TENANTS == t) else {
                continue;
            };
            let r = &restored.records[&format!("t{t}")];
            // The record is the last acked append for the tenant, or one appended just after it
            // whose acknowledgement the kill cut off.
            assert!(
                r.penalty_at_ms >= *latest_acked,
                "t{t}: {r:?} < {latest_acked}"
            );
            assert_eq!(r.penalty_at_ms % TENANTS, t);
            assert!(r.penalty_at_ms <= last + 1, "t{t}: {r:?}");
        }
        assert_eq!(restored.skipped_lines, 0);
    }
}
