//! The embedded store: one SQLite file shared by every reef process on a machine.
//!
//! Why SQLite: it gives atomic multi-row transactions across processes with file locking,
//! survives kill -9 at any instant (the write-ahead log is replayed or discarded on the next
//! open), needs no daemon, and is built from source here (rusqlite "bundled"), so no system
//! library is needed.
//!
//! - WAL journal: readers never block the writer and vice versa.
//! - `synchronous = NORMAL`: a commit is atomic and survives a process crash; only a power
//!   loss may drop the last commits (never corrupt the file). A full fsync per commit would
//!   cap allocation at the disk's sync rate.
//! - Writes run in `BEGIN IMMEDIATE` transactions (take the write lock up front, so two
//!   processes never deadlock upgrading read locks); `busy_timeout` makes a writer wait for
//!   the lock rather than fail.
//! - Every write appends to a change log whose row id is the store-wide revision, which is
//!   also the written object's revision; watches read the log.
//! - Checkpoints (copying the WAL into the database, with an fsync of each) are the one slow
//!   step left (~4-12 ms here). A long-lived process (the agent) runs them on a thread of its
//!   own ([`EmbeddedStore::start_checkpointer`]): WAL checkpoints run concurrently with
//!   writers, so allocations rarely wait for that fsync. A writer still checkpoints itself
//!   when the WAL passes [`AUTOCHECKPOINT_PAGES`], a backstop for when no agent runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::store::{Kind, Labels, Object, Revision, Store, WatchEvent, Watcher};
use crate::Error;

/// Change-log entries kept for watchers that fall behind.
const KEEP_CHANGES: i64 = 20_000;
/// Polls of a busy lock before a writer gives up (~200 µs each: about 30 s).
const BUSY_POLLS: i32 = 150_000;

fn busy_wait(attempt: i32) -> bool {
    if attempt >= BUSY_POLLS {
        return false;
    }
    // Spread the pollers of several processes a little so they do not wake in step.
    let jitter = u64::from(std::process::id() % 7) * 20;
    std::thread::sleep(Duration::from_micros(150 + jitter));
    true
}

/// WAL pages after which a committing writer checkpoints itself: SQLite's default, which
/// bounds what the first connection to open must scan to rebuild the WAL index (a CNI call
/// while no agent holds the store open).
pub const AUTOCHECKPOINT_PAGES: u32 = 1000;
/// The same for a connection whose process runs the background checkpointer: with about ten
/// pages per allocation, 1000 would still put a writer's own checkpoint (and its fsync) into
/// ~1% of back-to-back allocations. The checkpointer normally restarts the WAL long before.
pub const AUTOCHECKPOINT_PAGES_WITH_CHECKPOINTER: u32 = 4000;
/// How often the background checkpointer checkpoints (a checkpoint with no new WAL pages
/// does nothing, so an idle store costs nothing).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// How often a watcher polls the change log.
const WATCH_POLL: Duration = Duration::from_millis(20);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    revision INTEGER NOT NULL,
    labels TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
-- No AUTOINCREMENT and no index on kind: each would cost a page write per commit. Row ids
-- still only grow: pruning never deletes the newest row.
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('pruned_through', 0);
";
const SCHEMA_VERSION: i64 = 1;

/// The embedded store. Cheap to clone (shares one connection).
#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// The background checkpointer, when started; stops (and is joined) with the store.
    checkpointer: Mutex<Option<Checkpointer>>,
}

/// A thread that checkpoints the WAL with its own connection.
#[derive(Debug)]
struct Checkpointer {
    /// Dropping it stops the thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn db_err<'a>(path: &'a Path, what: &str) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| {
        let context = format!("embedded store {}: {what}", path.display());
        if is_damaged(&e) {
            Error::Unusable {
                context,
                fix: format!(
                    "the file is not a reef store or is damaged, and retrying will not help: stop the reef agent, move {} (and any -wal / -shm file beside it) aside or restore it from a backup, then start the agent, which creates a new store (allocations in the old file are lost: restart this node's pods)",
                    path.display()
                ),
                source: Box::new(e),
            }
        } else {
            Error::Backend {
                context,
                source: Box::new(e),
            }
        }
    }
}

/// SQLite's answers for a file that is not a database or whose pages do not hold together:
/// permanent, unlike a busy or locked store.
fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            )
    )
}

/// Mode of the store's directory when open creates it, and of the database and its WAL and
/// shared-memory files: the store holds every pod's name and address, for root only.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Creates the store's directory (and missing parents) as [`DIR_MODE`]. Directories that
/// exist keep their mode: they may be shared (e.g. /tmp).
fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates the database file as [`FILE_MODE`] before SQLite opens it (SQLite would create it
/// 0644 and give the WAL and shared-memory files the database file's mode), and takes group
/// and world access away from a store an older reef created.
fn restrict_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        match std::fs::metadata(file) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => std::fs::set_permissions(
                file,
                std::fs::Permissions::from_mode(m.permissions().mode() & !0o077),
            )?,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir(dir).map_err(|e| Error::Backend {
                context: format!("embedded store: create directory {}", dir.display()),
                source: Box::new(e),
            })?;
        }
        restrict_files(&path).map_err(|e| Error::Backend {
            context: format!(
                "embedded store {}: create the file or restrict its mode to {FILE_MODE:o}",
                path.display()
            ),
            source: Box::new(e),
        })?;
        let conn = Connection::open(&path).map_err(db_err(&path, "open"))?;
        // SQLite's own busy handler backs off to 100 ms sleeps, which makes the latency tail
        // of several writer processes long; ours polls the lock every ~200 µs.
        conn.busy_handler(Some(busy_wait))
            .map_err(db_err(&path, "set busy handler"))?;
        // The last connection to close would checkpoint the WAL into the database and fsync
        // it: every short-lived CNI process would pay a sync (~10 ms here). Checkpoints
        // happen instead in the commit that fills the WAL past 1000 pages (SQLite's default),
        // which also bounds what the first connection to open must scan to rebuild the WAL
        // index (the agent normally holds the store open, so CNI calls skip even that).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(db_err(&path, "disable checkpoint on close"))?;
        // Switching to WAL takes a lock; it persists in the file, so only the first open pays.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db_err(&path, "read journal mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
                .map_err(db_err(&path, "enable WAL"))?;
        }
        conn.execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES};"
        ))
        .map_err(db_err(&path, "set synchronous and checkpoint size"))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err(&path, "read schema version"))?;
        if version < SCHEMA_VERSION {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(db_err(&path, "create schema"))?;
        } else if version > SCHEMA_VERSION {
            return Err(Error::Unusable {
                context: format!("embedded store {}", path.display()),
                fix: "upgrade reef on this node to the version that wrote it".into(),
                source: format!(
                    "schema version {version} is newer than this reef understands ({SCHEMA_VERSION})"
                )
                .into(),
            });
        }
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                checkpointer: Mutex::new(None),
            }),
        })
    }

    /// Starts checkpointing the WAL on a thread of its own, off the writers' path (for a
    /// long-lived process such as the agent; a short-lived CNI call need not). Idempotent;
    /// the thread stops when the last clone of this store is dropped.
    pub fn start_checkpointer(&self) -> Result<(), Error> {
        let mut slot = self
            .inner
            .checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Ok(());
        }
        self.conn()
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES_WITH_CHECKPOINTER};"
            ))
            .map_err(self.err("set checkpoint size"))?;
        // No busy handler: when another process is checkpointing, try again next round.
        let conn = Connection::open(&self.inner.path).map_err(self.err("open checkpointer"))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = self.inner.path.clone();
        let thread = std::thread::Builder::new()
            .name("reef-store-ckpt".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    match checkpoint(&conn) {
                        Ok(()) => {}
                        // Another process's checkpointer is at it.
                        Err(rusqlite::Error::SqliteFailure(e, _))
                            if matches!(
                                e.code,
                                rusqlite::ErrorCode::DatabaseBusy
                                    | rusqlite::ErrorCode::DatabaseLocked
                            ) => {}
                        // Not fatal: the writers' own checkpoints are the backstop.
                        Err(e) => {
                            tracing::warn!(store = %path.display(), error = %e, "checkpoint failed")
                        }
                    }
                }
            })
            .map_err(|e| Error::Backend {
                context: format!(
                    "embedded store {}: start checkpointer",
                    self.inner.path.display()
                ),
                source: Box::new(e),
            })?;
        *slot = Some(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        });
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: SQLite rolls back
        // the open transaction when it is dropped.
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, what: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        db_err(&self.inner.path, what)
    }

    /// Runs `f` in a write transaction; the closure gets the new revision to stamp.
    fn write<T>(
        &self,
        kind: Kind,
        name: &str,
        deleted: bool,
        f: impl FnOnce(&rusqlite::Transaction<'_>, i64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err("begin write"))?;
        tx.prepare_cached("INSERT INTO changes (kind, name, deleted) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![kind.as_str(), name, deleted]))
            .map_err(self.err("append change"))?;
        let rev = tx.last_insert_rowid();
        let out = f(&tx, rev)?;
        if rev % 1024 == 0 {
            let through = rev - KEEP_CHANGES;
            tx.execute("DELETE FROM changes WHERE revision <= ?1", [through])
                .and_then(|_| {
                    tx.execute(
                        "UPDATE meta SET value = max(value, ?1) WHERE key = 'pruned_through'",
                        [through],
                    )
                })
                .map_err(self.err("prune change log"))?;
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(out)
    }
}

/// Checkpoints the WAL when it holds enough new pages. PASSIVE: never waits for readers or
/// writers, so it cannot hold up an allocation.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    // It answers (busy, pages in the WAL, pages checkpointed); busy is not an error here.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("JSON values and label maps always serialise")
}

fn row_to_object(
    path: &Path,
    name: String,
    rev: i64,
    labels: String,
    spec: String,
    status: Option<String>,
) -> Result<Object, Error> {
    let bad = |e: serde_json::Error| Error::Backend {
        context: format!(
            "embedded store {}: object {name} holds invalid JSON",
            path.display()
        ),
        source: Box::new(e),
    };
    Ok(Object {
        labels: serde_json::from_str(&labels).map_err(bad)?,
        spec: serde_json::from_str(&spec).map_err(bad)?,
        status: status
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(bad)?,
        revision: Revision(rev.to_string()),
        name,
    })
}

fn parse_rev(kind: Kind, name: &str, r: &Revision) -> Result<i64, Error> {
    r.0.parse().map_err(|_| Error::Conflict {
        kind,
        name: name.to_string(),
    })
}

type Row = (String, i64, String, String, Option<String>);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

impl Store for EmbeddedStore {
    fn list(&self, kind: Kind, selector: &Labels) -> Result<(Vec<Object>, Revision), Error> {
        let mut conn = self.conn();
        // One read transaction: the rows and the revision come from the same snapshot.
        let tx = conn.transaction().map_err(self.err("begin read"))?;
        let mut sql = String::from(
            "SELECT name, revision, labels, spec, status FROM objects WHERE kind = ?1",
        );
        let mut args: Vec<String> = vec![kind.as_str().to_string()];
        for (k, v) in selector {
            // JSON path with the key quoted: label keys contain '.' and '/'.
            let key = k.replace('"', "");
            args.push(v.clone());
            sql.push_str(&format!(
                " AND json_extract(labels, '$.\"{key}\"') = ?{}",
                args.len()
            ));
        }
        sql.push_str(" ORDER BY name");
        let rows: Vec<Row> = {
            let mut st = tx.prepare_cached(&sql).map_err(self.err("list"))?;
            let it = st
                .query_map(rusqlite::params_from_iter(args.iter()), read_row)
                .map_err(self.err("list"))?;
            it.collect::<Result<_, _>>().map_err(self.err("list"))?
        };
        let rev: i64 = tx
            .query_row("SELECT coalesce(max(revision), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .map_err(self.err("read revision"))?;
        tx.commit().map_err(self.err("end read"))?;
        let objects = rows
            .into_iter()
            .map(|(n, r, l, s, st)| row_to_object(&self.inner.path, n, r, l, s, st))
            .collect::<Result<_, _>>()?;
        Ok((objects, Revision(rev.to_string())))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Option<Object>, Error> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT name, revision, labels, spec, status FROM objects WHERE kind = ?1 AND name = ?2",
            )
            .and_then(|mut s| s.query_row(params![kind.as_str(), name], read_row).optional())
            .map_err(self.err("get"))?;
        row.map(|(n, r, l, s, st)| row_to_object(&self.inner.path, n, r, l, s, st))
            .transpose()
    }

    fn create(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
        let rev = self.write(kind, &object.name, false, |tx, rev| {
            let n = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO objects (kind, name, revision, labels, spec, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        kind.as_str(),
                        object.name,
                        rev,
                        to_json(&object.labels),
                        to_json(&object.spec),
                        object.status.as_ref().map(to_json),
                    ])
                })
                .map_err(self.err("create"))?;
            if n == 0 {
                return Err(Error::AlreadyExists {
                    kind,
                    name: object.name.clone(),
                });
            }
            Ok(rev)
        })?;
        Ok(Object {
            revision: Revision(rev.to_string()),
            ..object.clone()
        })
    }

    fn update(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
        let expected = parse_rev(kind, &object.name, &object.revision)?;
        let (rev, status) = self.write(kind, &object.name, false, |tx, rev| {
            // RETURNING hands back the untouched status: no second read.
            let status: Option<Option<String>> = tx
                .prepare_cached(
                    "UPDATE objects SET revision = ?1, labels = ?2, spec = ?3
                     WHERE kind = ?4 AND name = ?5 AND revision = ?6 RETURNING status",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            rev,
                            to_json(&object.labels),
                            to_json(&object.spec),
                            kind.as_str(),
                            object.name,
                            expected
                        ],
                        |r| r.get(0),
                    )
                    .optional()
                })
                .map_err(self.err("update"))?;
            match status {
                Some(st) => Ok((rev, st)),
                None => Err(missing_or_conflict(
                    tx,
                    kind,
                    &object.name,
                    &self.inner.path,
                )),
            }
        })?;
        let status = status
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| Error::Backend {
                context: format!(
                    "embedded store {}: status of {} holds invalid JSON",
                    self.inner.path.display(),
                    object.name
                ),
                source: Box::new(e),
            })?;
        Ok(Object {
            revision: Revision(rev.to_string()),
            status,
            ..object.clone()
        })
    }

    fn update_status(&self, kind: Kind, object: &Object) -> Result<Object, Error> {
        let expected = parse_rev(kind, &object.name, &object.revision)?;
        let rev = self.write(kind, &object.name, false, |tx, rev| {
            let n = tx
                .prepare_cached(
                    "UPDATE objects SET revision = ?1, status = ?2
                     WHERE kind = ?3 AND name = ?4 AND revision = ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        rev,
                        object.status.as_ref().map(to_json),
                        kind.as_str(),
                        object.name,
                        expected
                    ])
                })
                .map_err(self.err("update status"))?;
            if n == 0 {
                return Err(missing_or_conflict(
                    tx,
                    kind,
                    &object.name,
                    &self.inner.path,
                ));
            }
            Ok(rev)
        })?;
        let mut out = self.get(kind, &object.name)?.ok_or(Error::NotFound {
            kind,
            name: object.name.clone(),
        })?;
        out.revision = Revision(rev.to_string());
        out.status = object.status.clone();
        Ok(out)
    }

    fn delete(&self, kind: Kind, name: &str, revision: Option<&Revision>) -> Result<(), Error> {
        let expected = revision.map(|r| parse_rev(kind, name, r)).transpose()?;
        self.write(kind, name, true, |tx, _rev| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM objects WHERE kind = ?1 AND name = ?2 AND (?3 IS NULL OR revision = ?3)",
                )
                .and_then(|mut s| s.execute(params![kind.as_str(), name, expected]))
                .map_err(self.err("delete"))?;
            if n == 0 {
                return Err(missing_or_conflict(tx, kind, name, &self.inner.path));
            }
            Ok(())
        })
    }

    fn names(&self, kind: Kind) -> Result<Vec<String>, Error> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached("SELECT name FROM objects WHERE kind = ?1 ORDER BY name")
            .map_err(self.err("list names"))?;
        let names = st
            .query_map([kind.as_str()], |r| r.get(0))
            .and_then(|it| it.collect())
            .map_err(self.err("list names"));
        names
    }

    fn watch(&self, kind: Kind, since: &Revision) -> Result<Box<dyn Watcher>, Error> {
        let after = since.0.parse().map_err(|_| Error::Expired {
            kind,
            revision: since.clone(),
        })?;
        Ok(Box::new(EmbeddedWatcher {
            store: self.clone(),
            kind,
            after,
            pending: Default::default(),
        }))
    }
}

/// After a write matched no row: was the object gone, or at another revision?
fn missing_or_conflict(
    tx: &rusqlite::Transaction<'_>,
    kind: Kind,
    name: &str,
    path: &Path,
) -> Error {
    let exists = tx
        .query_row(
            "SELECT 1 FROM objects WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name],
            |_| Ok(()),
        )
        .optional();
    match exists {
        Ok(Some(())) => Error::Conflict {
            kind,
            name: name.to_string(),
        },
        Ok(None) => Error::NotFound {
            kind,
            name: name.to_string(),
        },
        Err(e) => db_err(path, "read after write")(e),
    }
}

#[derive(Debug)]
struct EmbeddedWatcher {
    store: EmbeddedStore,
    kind: Kind,
    after: i64,
    pending: std::collections::VecDeque<WatchEvent>,
}

impl EmbeddedWatcher {
    fn poll(&mut self) -> Result<(), Error> {
        let conn = self.store.conn();
        let pruned: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'pruned_through'",
                [],
                |r| r.get(0),
            )
            .map_err(self.store.err("watch"))?;
        if self.after < pruned {
            return Err(Error::Expired {
                kind: self.kind,
                revision: Revision(self.after.to_string()),
            });
        }
        let mut st = conn
            .prepare_cached(
                "SELECT c.revision, c.name, c.deleted, o.revision, o.labels, o.spec, o.status
                 FROM changes c LEFT JOIN objects o ON o.kind = c.kind AND o.name = c.name
                 WHERE c.kind = ?1 AND c.revision > ?2 ORDER BY c.revision LIMIT 256",
            )
            .map_err(self.store.err("watch"))?;
        type ChangeRow = (
            i64,
            String,
            bool,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<ChangeRow> = st
            .query_map(params![self.kind.as_str(), self.after], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .and_then(|it| it.collect())
            .map_err(self.store.err("watch"))?;
        drop(st);
        drop(conn);
        for (rev, name, deleted, orev, labels, spec, status) in rows {
            self.after = rev;
            // The log records which object changed; the object's current row is its latest
            // state. Report a change only at the revision that produced the current row (or a
            // deletion once the object is gone), so a watcher sees each state once.
            match (deleted, orev, labels, spec) {
                (true, None, ..) => self.pending.push_back(WatchEvent::Deleted {
                    name,
                    revision: Revision(rev.to_string()),
                }),
                (false, Some(orev), Some(labels), Some(spec)) if orev == rev => {
                    let o =
                        row_to_object(&self.store.inner.path, name, orev, labels, spec, status)?;
                    self.pending.push_back(WatchEvent::Put(o));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Watcher for EmbeddedWatcher {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            self.poll()?;
            if !self.pending.is_empty() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(WATCH_POLL.min(deadline - now));
        }
    }
}
