//! The journal writer: the one thread that writes the state directory, and the one beside it
//! that waits for the disk.
//!
//! - The **writer thread** takes records from a channel, batches whatever has queued up, appends
//!   the batch with one `write(2)` (durable against a kill -9 from then on), publishes the highest
//!   delivery sequence written, and decides when to compact. It never calls fsync, so a slow disk
//!   never delays an append, and nothing that sends to it ever waits.
//! - The **disk thread** runs the slow work the writer hands it, in order: an fsync of the
//!   journal about once a second while there is something to sync (group commit: one fsync
//!   covers every append before it), and compactions (write the snapshot, fsync, rename, fsync
//!   the directory, delete the journals the snapshot covers).
//!
//! [`Writer`] holds the files and the in-memory copy of every record; its methods are plain
//! synchronous calls, so the tests drive it without threads.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    journal_path, Damping, Delivery, JournalLineRef, Record, StoreError, StoredStorm,
    DEFAULT_COMPACT_JOURNAL_BYTES, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE, SNAPSHOT_VERSION,
};
use crate::TenantId;

/// How often the journal is fsynced while appends arrive, bounding what a power loss can take.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// A failed or pending compaction is retried at most this often.
const COMPACT_RETRY: Duration = Duration::from_secs(1);
/// Most records taken from the channel for one batch (one `write(2)`).
const MAX_BATCH: usize = 4096;
/// Buffer for writing the snapshot: 10,000 records (~2 MiB) go out in a few dozen syscalls.
const SNAPSHOT_BUF_BYTES: usize = 64 * 1024;

/// How the writer behaves; the defaults are production's.
#[derive(Debug, Clone)]
pub struct Options {
    /// Journal size that triggers a compaction.
    pub compact_threshold: u64,
    /// Added before every fsync: an injected slow disk for the benchmark and the tests.
    pub fsync_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compact_threshold: DEFAULT_COMPACT_JOURNAL_BYTES,
            fsync_delay: Duration::ZERO,
        }
    }
}

impl Options {
    /// The defaults; in a build with the `fault-injection` feature, `WA_SIDECAR_FSYNC_DELAY_MS`
    /// sets [`Options::fsync_delay`] (the fleet benchmark's slow disk).
    pub fn from_env() -> Self {
        #[allow(unused_mut)]
        let mut options = Options::default();
        #[cfg(feature = "fault-injection")]
        if let Some(ms) = std::env::var("WA_SIDECAR_FSYNC_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            options.fsync_delay = Duration::from_millis(ms);
        }
        options
    }
}

/// What the writer is handed.
pub(super) enum Op {
    /// The outbox's half of a record (None: delete the record), with its sequence number.
    Delivery(u64, TenantId, Option<Delivery>),
    /// The registry's half of a record.
    Damping(TenantId, Damping),
    /// The mass-outage holds in force.
    Storms(Vec<StoredStorm>),
    /// A tenant joined the newest hold.
    StormHeld(TenantId),
    /// Write what is queued, compact, stop; then answer.
    Close(mpsc::SyncSender<()>),
    /// Retry a failed compaction now rather than at the next retry tick (after a reload: the
    /// operator may just have fixed the disk).
    Retry,
    /// Answer once everything before it is written and any compaction it started has finished.
    Barrier(mpsc::SyncSender<()>),
    /// Stop at once, writing nothing more (a simulated kill -9).
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    Crash,
}

/// A failure of the disk, and the journal generation it happened in: a snapshot of a later
/// generation holds everything the failure may have lost.
#[derive(Debug, Clone)]
struct Failure {
    gen: u64,
    message: String,
}

/// What the writer thread, the disk thread and the handle share.
#[derive(Debug)]
struct Shared {
    written: AtomicU64,
    /// Signalled whenever `written` advances, for [`Handle::wait_written`].
    written_signal: (Mutex<()>, std::sync::Condvar),
    /// Failed writes, fsyncs and compactions so far.
    errors: AtomicU64,
    failure: Mutex<Option<Failure>>,
    /// A compaction has been handed to the disk thread and has not finished.
    compacting: AtomicBool,
    /// An fsync has been handed to the disk thread and has not finished.
    syncing: AtomicBool,
    wake: Arc<Notify>,
    fsync_delay: Duration,
}

impl Shared {
    fn fail(&self, gen: u64, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut failure = self.failure.lock().unwrap();
        if failure.is_none() {
            tracing::error!(error = %message, "cannot write the state directory; running from memory until it is writable again (fix the disk or permissions; nothing owed is dropped)");
        }
        // Keep the newest generation: only a snapshot after it heals everything.
        let gen = failure.as_ref().map_or(gen, |f| f.gen.max(gen));
        *failure = Some(Failure { gen, message });
    }

    /// A snapshot of generation `gen` was written: failures before it are healed.
    fn compacted(&self, gen: u64) {
        let mut failure = self.failure.lock().unwrap();
        if failure.as_ref().is_some_and(|f| f.gen < gen) {
            *failure = None;
            tracing::info!("the state directory is writable again; state is durable");
        }
    }

    fn sleep_before_fsync(&self) {
        if !self.fsync_delay.is_zero() {
            std::thread::sleep(self.fsync_delay);
        }
    }
}

/// Work for the disk thread.
enum DiskJob {
    /// fsync this journal (a duplicate handle) of this generation.
    Sync(File, u64),
    Compact(Compaction),
    Stop,
}

/// A snapshot to write: every record as of a cut, and the journals it makes obsolete.
struct Compaction {
    gen: u64,
    records: HashMap<TenantId, Record>,
    storms: Vec<StoredStorm>,
    obsolete: Vec<PathBuf>,
}

/// What the writer starts from: the records and holds restored, the generation to continue
/// from, and the journals on disk that the first snapshot will make obsolete.
pub(super) struct OnDisk {
    pub records: HashMap<TenantId, Record>,
    pub storms: Vec<StoredStorm>,
    pub gen: u64,
    pub obsolete: Vec<PathBuf>,
}

/// The files and the in-memory records, owned by the writer thread.
pub(super) struct Writer {
    dir: PathBuf,
    records: HashMap<TenantId, Record>,
    storms: Vec<StoredStorm>,
    /// The journal appends go to (None when it could not be created: degraded).
    journal: Option<File>,
    /// Its generation, written into every line.
    gen: u64,
    journal_bytes: u64,
    /// The journal ends at a line boundary; after a failed append the next batch starts with a
    /// newline so its first line does not fuse with a torn one.
    tail_clean: bool,
    /// Journals before the current one, to delete once a snapshot covers them.
    obsolete: Vec<PathBuf>,
    /// Appended since the last fsync was handed over.
    dirty: bool,
    batch: Vec<u8>,
    written: u64,
    last_sync: Option<Instant>,
    last_compaction: Option<Instant>,
    options: Options,
    shared: Arc<Shared>,
}

impl Writer {
    fn new(dir: PathBuf, on_disk: OnDisk, options: Options, shared: Arc<Shared>) -> Writer {
        let OnDisk {
            records,
            storms,
            gen,
            obsolete,
        } = on_disk;
        Writer {
            dir,
            records,
            storms,
            journal: None,
            gen,
            journal_bytes: 0,
            tail_clean: true,
            obsolete,
            dirty: false,
            batch: Vec::with_capacity(4096),
            written: 0,
            last_sync: None,
            last_compaction: None,
            options,
            shared,
        }
    }

    /// Applies one record change and encodes its journal line into the batch.
    fn apply(&mut self, op: Op) {
        if self.batch.is_empty() && !self.tail_clean {
            self.batch.push(b'\n');
        }
        let mut line = JournalLineRef {
            gen: self.gen,
            tenant: None,
            record: None,
            deleted: false,
            storms: None,
            storm_held: None,
        };
        match &op {
            Op::Storms(storms) => {
                self.storms = storms.clone();
                line.storms = Some(&self.storms);
            }
            Op::StormHeld(tenant) => {
                let Some(storm) = self.storms.last_mut() else {
                    return;
                };
                if storm.held.iter().any(|t| **t == **tenant) {
                    return;
                }
                storm.held.push(tenant.to_string());
                line.storm_held = Some(tenant);
            }
            _ => {}
        }
        if line.storms.is_some() || line.storm_held.is_some() {
            serde_json::to_writer(&mut self.batch, &line).expect("a journal line serializes");
            self.batch.push(b'\n');
            return;
        }
        let (tenant, record) = match op {
            Op::Delivery(seq, tenant, Some(delivery)) => {
                self.written = self.written.max(seq);
                let record = self.records.entry(tenant.clone()).or_default();
                record.reported = delivery.reported;
                record.owed = delivery.owed;
                (tenant, true)
            }
            Op::Delivery(seq, tenant, None) => {
                self.written = self.written.max(seq);
                self.records.remove(&tenant);
                (tenant, false)
            }
            Op::Damping(tenant, damping) => {
                let record = self.records.entry(tenant.clone()).or_default();
                record.penalty = damping.penalty;
                record.penalty_at_ms = damping.penalty_at_ms;
                record.flapping = damping.flapping;
                record.stable = damping.stable;
                (tenant, true)
            }
            Op::Close(_) | Op::Crash | Op::Barrier(_) | Op::Storms(_) | Op::StormHeld(_) => return,
            Op::Retry => {
                self.last_compaction = None;
                return;
            }
        };
        let line = JournalLineRef {
            gen: self.gen,
            tenant: Some(&tenant),
            record: if record {
                self.records.get(&tenant)
            } else {
                None
            },
            deleted: !record,
            storms: None,
            storm_held: None,
        };
        // Serializing into a Vec fails only for non-string map keys, which these types do not have.
        serde_json::to_writer(&mut self.batch, &line).expect("a journal line serializes");
        self.batch.push(b'\n');
    }

    /// Appends the batch with one write, then publishes what was written (also after a failed
    /// write: the records live on in memory and the failure makes the store degraded).
    fn write_batch(&mut self) {
        if !self.batch.is_empty() {
            let result = match &mut self.journal {
                Some(journal) => journal.write_all(&self.batch),
                None => Err(io::Error::other("no journal file could be created")),
            };
            match result {
                Ok(()) => {
                    self.journal_bytes += self.batch.len() as u64;
                    self.tail_clean = true;
                    self.dirty = true;
                }
                Err(source) => {
                    // Part of the batch may be on disk; the next compaction rewrites it all.
                    self.tail_clean = false;
                    let error = StoreError::Io {
                        op: "append to journal",
                        path: journal_path(&self.dir, self.gen),
                        source,
                    };
                    self.shared.fail(self.gen, error.to_string());
                }
            }
            self.batch.clear();
        }
        if self.shared.written.load(Ordering::Acquire) < self.written {
            {
                let _guard = self.shared.written_signal.0.lock().unwrap();
                self.shared.written.store(self.written, Ordering::Release);
            }
            self.shared.written_signal.1.notify_all();
            self.shared.wake.notify_one();
        }
    }

    /// The fsync due now, if any: at most one in progress, about once a second.
    fn sync_due(&mut self, now: Instant) -> Option<DiskJob> {
        if !self.dirty
            || self.shared.syncing.load(Ordering::Acquire)
            || self.last_sync.is_some_and(|at| now < at + SYNC_INTERVAL)
        {
            return None;
        }
        let file = self.journal.as_ref()?.try_clone().ok()?;
        self.dirty = false;
        self.last_sync = Some(now);
        self.shared.syncing.store(true, Ordering::Release);
        Some(DiskJob::Sync(file, self.gen))
    }

    /// The compaction due now, if any: the journal has grown, or a failure wants healing.
    fn compaction_due(&mut self, now: Instant) -> Option<Compaction> {
        let wanted = self.journal_bytes > self.options.compact_threshold
            || self.shared.failure.lock().unwrap().is_some();
        if !wanted
            || self.shared.compacting.load(Ordering::Acquire)
            || self
                .last_compaction
                .is_some_and(|at| now < at + COMPACT_RETRY)
        {
            return None;
        }
        self.last_compaction = Some(now);
        self.cut()
    }

    /// Starts a new journal and copies the records: every line before this point is in the
    /// copy, every line after it in the new journal. None if the new journal cannot be created.
    fn cut(&mut self) -> Option<Compaction> {
        let gen = self.gen + 1;
        let path = journal_path(&self.dir, gen);
        // A leftover file of that name is garbage from a crash before its first line.
        let _ = fs::remove_file(&path);
        match open_journal(&path) {
            Ok(journal) => {
                let old = self.journal.replace(journal);
                if old.is_some() {
                    self.obsolete.push(journal_path(&self.dir, self.gen));
                }
                self.gen = gen;
                self.journal_bytes = 0;
                self.tail_clean = true;
                self.dirty = false;
                self.shared.compacting.store(true, Ordering::Release);
                Some(Compaction {
                    gen,
                    records: self.records.clone(),
                    storms: self.storms.clone(),
                    obsolete: self.obsolete.clone(),
                })
            }
            Err(source) => {
                let error = StoreError::Io {
                    op: "create journal",
                    path,
                    source,
                };
                self.shared.fail(self.gen, error.to_string());
                None
            }
        }
    }

    /// A compaction finished (on the disk thread or here): forget the journals it deleted.
    fn compacted(&mut self, deleted: &[PathBuf]) {
        self.obsolete.retain(|p| !deleted.contains(p));
    }
}

/// Runs one compaction: the snapshot first, then (only once it is durable) the journals it
/// covers are deleted. Returns the journals deleted.
fn compact(dir: &Path, job: &Compaction, shared: &Shared) -> Vec<PathBuf> {
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let snapshot = dir.join(SNAPSHOT_FILE);
    let result = write_snapshot(&tmp, job, shared)
        .map_err(|source| StoreError::Io {
            op: "write snapshot",
            path: tmp.clone(),
            source,
        })
        .and_then(|()| {
            fs::rename(&tmp, &snapshot).map_err(|source| StoreError::Io {
                op: "replace snapshot",
                path: snapshot.clone(),
                source,
            })
        })
        .and_then(|()| {
            shared.sleep_before_fsync();
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError::Io {
                    op: "fsync state dir",
                    path: dir.to_path_buf(),
                    source,
                })
        });
    shared.compacting.store(false, Ordering::Release);
    match result {
        Ok(()) => {
            shared.compacted(job.gen);
            let mut deleted = Vec::new();
            for path in &job.obsolete {
                match fs::remove_file(path) {
                    Ok(()) => deleted.push(path.clone()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => deleted.push(path.clone()),
                    // Left for the next compaction; replay skips its lines as older anyway.
                    Err(_) => {}
                }
            }
            deleted
        }
        Err(error) => {
            let _ = fs::remove_file(&tmp);
            // The snapshot may not have replaced the old one: the failure is healed only by a
            // snapshot of a later generation.
            shared.fail(job.gen, error.to_string());
            Vec::new()
        }
    }
}

fn write_snapshot(tmp: &Path, job: &Compaction, shared: &Shared) -> io::Result<()> {
    let (generation, records) = (job.gen, &job.records);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)?;
    let mut w = BufWriter::with_capacity(SNAPSHOT_BUF_BYTES, file);
    // Streamed by hand so the records are not copied into another map first.
    write!(
        w,
        "{{\"version\":{SNAPSHOT_VERSION},\"generation\":{generation},\"tenants\":{{"
    )?;
    for (i, (tenant, record)) in records.iter().enumerate() {
        if i > 0 {
            w.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut w, &**tenant)?;
        w.write_all(b":")?;
        serde_json::to_writer(&mut w, record)?;
    }
    w.write_all(b"},\"storms\":")?;
    serde_json::to_writer(&mut w, &job.storms)?;
    w.write_all(b"}\n")?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    shared.sleep_before_fsync();
    file.sync_all()
}

fn open_journal(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The handle the rest of the process holds.
#[derive(Debug)]
pub(super) struct Handle {
    tx: Sender<Op>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    /// Compacts what was restored (on this thread: start-up may block on the disk), then starts
    /// the writer and disk threads.
    pub(super) fn start(
        dir: PathBuf,
        lock: File,
        on_disk: OnDisk,
        wake: Arc<Notify>,
        options: Options,
    ) -> Result<Handle, StoreError> {
        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            written_signal: (Mutex::new(()), std::sync::Condvar::new()),
            errors: AtomicU64::new(0),
            failure: Mutex::new(None),
            compacting: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            wake,
            fsync_delay: options.fsync_delay,
        });
        let mut writer = Writer::new(dir, on_disk, options, shared.clone());
        // The restored records become one fresh snapshot and an empty journal. If that fails
        // the store starts degraded, keeping the old files, which still replay correctly.
        if let Some(job) = writer.cut() {
            let deleted = compact(&writer.dir, &job, &shared);
            writer.compacted(&deleted);
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || run(writer, rx, lock))
            .map_err(|source| StoreError::Io {
                op: "start the journal writer for",
                path: PathBuf::from("state.dir"),
                source,
            })?;
        Ok(Handle {
            tx,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub(super) fn send(&self, op: Op) {
        // Fails only once the writer has stopped (after close), when there is nothing to do.
        let _ = self.tx.send(op);
    }

    pub(super) fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Blocks until [`Handle::written`] reaches `seq` or `max` has passed; returns it.
    pub(super) fn wait_written(&self, seq: u64, max: Duration) -> u64 {
        let (lock, signal) = &self.shared.written_signal;
        let guard = lock.lock().unwrap();
        let _unused = signal
            .wait_timeout_while(guard, max, |()| {
                self.shared.written.load(Ordering::Acquire) < seq
            })
            .unwrap();
        self.written()
    }

    pub(super) fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    pub(super) fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap()
            .as_ref()
            .map(|f| f.message.clone())
    }

    pub(super) fn close(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Op::Close(done));
        let _ = wait.recv();
        self.join();
    }

    /// Blocks until everything handed over so far is written and a compaction it started has
    /// finished.
    pub(super) fn barrier(&self) {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Op::Barrier(done));
        let _ = wait.recv();
    }

    #[cfg(any(test, feature = "testing"))]
    pub(super) fn crash(&self) {
        self.send(Op::Crash);
        self.join();
    }

    fn join(&self) {
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread. Holds the directory's lock until it returns.
fn run(mut writer: Writer, rx: Receiver<Op>, _lock: File) {
    let dir = writer.dir.clone();
    let shared = writer.shared.clone();
    let (disk_tx, disk_rx) = mpsc::channel::<DiskJob>();
    let (done_tx, done_rx) = mpsc::channel::<Vec<PathBuf>>();
    let disk = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("journal-disk".into())
            .spawn(move || disk_thread(dir, disk_rx, done_tx, shared))
            .expect("the journal's disk thread starts")
    };
    let mut close = None;
    let mut barriers = Vec::new();
    loop {
        let first = match rx.recv_timeout(SYNC_INTERVAL) {
            Ok(op) => Some(op),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut ops = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()));
        let mut taken = 0;
        for op in ops.by_ref() {
            match op {
                Op::Crash => {
                    let _ = disk_tx.send(DiskJob::Stop);
                    let _ = disk.join();
                    return;
                }
                Op::Close(done) => {
                    close = Some(done);
                    break;
                }
                Op::Barrier(done) => barriers.push(done),
                op => writer.apply(op),
            }
            taken += 1;
            if taken == MAX_BATCH {
                break;
            }
        }
        writer.write_batch();
        while let Ok(deleted) = done_rx.try_recv() {
            writer.compacted(&deleted);
        }
        if close.is_some() {
            break;
        }
        let now = Instant::now();
        if let Some(job) = writer.sync_due(now) {
            let _ = disk_tx.send(job);
        }
        if let Some(job) = writer.compaction_due(now) {
            let _ = disk_tx.send(DiskJob::Compact(job));
        }
        if !barriers.is_empty() {
            if shared.compacting.load(Ordering::Acquire) {
                if let Ok(deleted) = done_rx.recv() {
                    writer.compacted(&deleted);
                }
            }
            for done in barriers.drain(..) {
                let _ = done.send(());
            }
        }
    }
    // Closing: let the disk thread finish, then write one last snapshot of everything.
    let _ = disk_tx.send(DiskJob::Stop);
    let _ = disk.join();
    while let Ok(deleted) = done_rx.try_recv() {
        writer.compacted(&deleted);
    }
    if let Some(job) = writer.cut() {
        let deleted = compact(&writer.dir, &job, &shared);
        writer.compacted(&deleted);
    }
    if let Some(done) = close {
        let _ = done.send(());
    }
}

fn disk_thread(
    dir: PathBuf,
    jobs: Receiver<DiskJob>,
    done: Sender<Vec<PathBuf>>,
    shared: Arc<Shared>,
) {
    while let Ok(job) = jobs.recv() {
        match job {
            DiskJob::Sync(file, gen) => {
                shared.sleep_before_fsync();
                if let Err(source) = file.sync_data() {
                    // After a failed fsync Linux may drop the dirty pages, so what was appended
                    // can be gone: only a full rewrite from memory restores the guarantee.
                    let error = StoreError::Io {
                        op: "fsync journal",
                        path: journal_path(&dir, gen),
                        source,
                    };
                    shared.fail(gen, error.to_string());
                }
                shared.syncing.store(false, Ordering::Release);
            }
            DiskJob::Compact(job) => {
                let deleted = compact(&dir, &job, &shared);
                let _ = done.send(deleted);
            }
            DiskJob::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debounce::Status;
    use crate::store::{Owed, Store};

    fn shared(fsync_delay: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            written: AtomicU64::new(0),
            written_signal: (Mutex::new(()), std::sync::Condvar::new()),
            errors: AtomicU64::new(0),
            failure: Mutex::new(None),
            compacting: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            fsync_delay,
        })
    }

    fn delivery(n: u64) -> Delivery {
        Delivery {
            reported: None,
            owed: Some(Owed {
                status: Status::Disconnected,
                reason: None,
                changed_at_ms: n,
                idempotency_key: format!("{n:032x}"),
            }),
        }
    }

    #[test]
    fn a_batch_after_a_failed_write_starts_on_a_new_line() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = shared(Duration::ZERO);
        let mut writer = Writer::new(
            tmp.path().to_path_buf(),
            OnDisk {
                records: HashMap::new(),
                storms: Vec::new(),
                gen: 1,
                obsolete: Vec::new(),
            },
            Options::default(),
            shared.clone(),
        );
        // A full disk: every write fails with ENOSPC.
        writer.journal = Some(OpenOptions::new().write(true).open("/dev/full").unwrap());
        writer.apply(Op::Delivery(1, "a".into(), Some(delivery(1))));
        writer.write_batch();
        let failure = shared
            .failure
            .lock()
            .unwrap()
            .clone()
            .expect("the write failed");
        assert!(
            failure.message.contains("free disk space"),
            "{}",
            failure.message
        );
        // Still published: the record lives on in memory, and the store says it is degraded.
        assert_eq!(shared.written.load(Ordering::Acquire), 1);
        assert!(writer.records.contains_key("a"));

        let path = journal_path(tmp.path(), 1);
        writer.journal = Some(open_journal(&path).unwrap());
        writer.apply(Op::Delivery(2, "b".into(), Some(delivery(2))));
        writer.write_batch();
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("\n{\"gen\":1,\"tenant\":\"b\""),
            "{text:?}"
        );
        // The failure is healed only by a snapshot after it.
        let job = writer.cut().expect("a cut");
        assert_eq!(job.records.len(), 2);
        compact(tmp.path(), &job, &shared);
        assert!(shared.failure.lock().unwrap().is_none());
    }

    #[test]
    fn no_fsync_is_handed_over_when_nothing_was_written() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = shared(Duration::ZERO);
        let mut writer = Writer::new(
            tmp.path().to_path_buf(),
            OnDisk {
                records: HashMap::new(),
                storms: Vec::new(),
                gen: 1,
                obsolete: Vec::new(),
            },
            Options::default(),
            shared.clone(),
        );
        writer.journal = Some(open_journal(&journal_path(tmp.path(), 1)).unwrap());
        let now = Instant::now();
        assert!(writer.sync_due(now).is_none());
        writer.apply(Op::Damping("a".into(), Damping::default()));
        writer.write_batch();
        assert!(matches!(writer.sync_due(now), Some(DiskJob::Sync(_, 1))));
        // One at a time, and not again until something new is written.
        shared.syncing.store(false, Ordering::Release);
        assert!(writer.sync_due(now + SYNC_INTERVAL).is_none());
    }

    #[test]
    fn appends_are_written_while_a_slow_fsync_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            fsync_delay: Duration::from_secs(2),
            ..Options::default()
        };
        let (store, _) = Store::open_with(tmp.path(), Arc::new(Notify::new()), options).unwrap();
        store.delivery(1, &"a".into(), Some(delivery(1)));
        assert_eq!(store.wait_written(1, Duration::from_secs(10)), 1);
        // The first batch handed the disk thread an fsync that takes 2 s; the writer goes on.
        store.delivery(2, &"b".into(), Some(delivery(2)));
        assert_eq!(store.wait_written(2, Duration::from_secs(10)), 2);
        assert!(
            store.writer.shared.syncing.load(Ordering::Acquire),
            "the second append was written while the first fsync still ran"
        );
        store.crash();
    }

    #[test]
    fn a_compaction_cannot_drop_an_append_made_while_it_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let options = Options {
            compact_threshold: 4 * 1024,
            fsync_delay: Duration::from_millis(500),
        };
        let (store, _) = Store::open_with(tmp.path(), Arc::new(Notify::new()), options).unwrap();
        let shared = store.writer.shared.clone();
        // Grow the journal past the threshold until the writer cuts and the (slow) compaction
        // starts on the disk thread.
        let mut seq = 0;
        while !shared.compacting.load(Ordering::Acquire) {
            seq += 1;
            store.delivery(
                seq,
                &format!("t{}", seq % 50).as_str().into(),
                Some(delivery(seq)),
            );
            store.wait_written(seq, Duration::from_secs(10));
            assert!(seq < 100_000, "no compaction started");
        }
        // Appended while the snapshot is being written: it must survive the compaction.
        seq += 1;
        store.delivery(seq, &"late".into(), Some(delivery(seq)));
        store.wait_written(seq, Duration::from_secs(10));
        assert!(
            shared.compacting.load(Ordering::Acquire),
            "still compacting"
        );
        store.crash();

        let (_store, restored) =
            Store::open_with(tmp.path(), Arc::new(Notify::new()), Options::default()).unwrap();
        assert_eq!(
            restored.records["late"]
                .owed
                .as_ref()
                .unwrap()
                .changed_at_ms,
            seq
        );
        let distinct = (1..seq)
            .map(|i| i % 50)
            .collect::<std::collections::HashSet<_>>();
        assert_eq!(restored.records.len(), distinct.len() + 1);
    }
}
