//! What the SQLite store and the local queue share: opening a connection with the pragmas
//! both need, running blocking work off the async runtime, and sorting rusqlite errors into
//! "retry may help", "the data is bad" and "a unique value is taken".

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

/// Settings every connection gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnSettings {
    /// How long a statement waits for another connection's (or process's) write lock.
    pub busy_timeout: Duration,
    /// Page cache per connection, in MiB.
    pub cache_mib: u32,
    /// `synchronous=FULL` instead of `NORMAL`.
    pub sync_full: bool,
    /// WAL size (pages) at which a commit on this connection checkpoints by itself.
    pub autocheckpoint_pages: u32,
}

/// WAL size (pages, 4 KiB each) at which a commit checkpoints by itself even though the
/// background checkpointer runs: a backstop should it fall behind.
const BACKSTOP_CHECKPOINT_PAGES: u32 = 16_384;

/// SQLite's own automatic checkpoint threshold, kept when no background checkpointer runs.
const DEFAULT_AUTOCHECKPOINT_PAGES: u32 = 1000;

impl ConnSettings {
    /// The settings of one connection to a file with `cache_mib` of page cache. With a
    /// background checkpointer (`checkpointer`), a commit checkpoints by itself only past
    /// [`BACKSTOP_CHECKPOINT_PAGES`]; without one, at SQLite's default.
    pub(crate) fn new(
        busy_timeout: Duration,
        sync_full: bool,
        checkpointer: bool,
        cache_mib: u32,
    ) -> Self {
        ConnSettings {
            busy_timeout,
            cache_mib,
            sync_full,
            autocheckpoint_pages: if checkpointer {
                BACKSTOP_CHECKPOINT_PAGES
            } else {
                DEFAULT_AUTOCHECKPOINT_PAGES
            },
        }
    }
}

/// What the config of one file (the local queue's [`crate::LocalQueueConfig`], the store's
/// [`crate::SqliteConfig`]) says about all its connections: [`FileSettings::conn`] gives
/// one connection's settings, [`FileSettings::checkpointer`] starts the file's background
/// checkpointer if the config asks for one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileSettings {
    /// How long a statement waits for another connection's write lock.
    pub busy_timeout: Duration,
    /// `synchronous=FULL` instead of `NORMAL`.
    pub sync_full: bool,
    /// How often the background checkpointer runs; `None` runs none.
    pub checkpoint_interval: Option<Duration>,
}

/// Gives each SQLite file config its [`FileSettings`]: the same impl for several types,
/// so a macro rather than a function.
macro_rules! file_settings_of {
    ($($config:ty),+) => {$(
        impl $config {
            /// The settings all connections to this config's file share.
            pub(crate) fn file_settings(&self) -> FileSettings {
                FileSettings {
                    busy_timeout: self.busy_timeout,
                    sync_full: self.sync_full,
                    checkpoint_interval: self.checkpoint_interval,
                }
            }
        }
    )+};
}
file_settings_of!(crate::LocalQueueConfig, crate::SqliteConfig);

impl FileSettings {
    /// The settings of one connection to the file with `cache_mib` of page cache.
    pub(crate) fn conn(self, cache_mib: u32) -> ConnSettings {
        ConnSettings::new(
            self.busy_timeout,
            self.sync_full,
            self.checkpoint_interval.is_some(),
            cache_mib,
        )
    }

    /// Starts the file's background checkpointer (on its own connection with 2 MiB of
    /// cache) when the config has a checkpoint interval; `None` when it has not.
    pub(crate) fn checkpointer(self, path: &Path) -> Result<Option<Checkpointer>, String> {
        self.checkpoint_interval
            .map(|every| Checkpointer::spawn(path, self.conn(2), every))
            .transpose()
    }
}

/// Opens (creating if missing) a database file in WAL mode with the shared pragmas.
///
/// The busy timeout is set first, so that switching to WAL waits for a process that holds
/// the file instead of failing at once.
pub(crate) fn open(path: &Path, s: ConnSettings) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(s.busy_timeout)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!(
                "could not switch {} to WAL mode (got {mode})",
                path.display()
            )),
        ));
    }
    conn.pragma_update(
        None,
        "synchronous",
        if s.sync_full { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "cache_size", -(i64::from(s.cache_mib) * 1024))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "wal_autocheckpoint", s.autocheckpoint_pages)?;
    // After a checkpoint resets the WAL, trim the file back to this size.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The schema version (`user_version`) of the file `conn` is on, refused when it is past
/// `supported`: a later build wrote the file, and this one must not touch it. `read` maps a
/// failed read, `newer` the refusal (`"<what> schema version N is newer than this build
/// supports (M)"`), into the caller's error.
pub(crate) fn schema_version<E>(
    conn: &Connection,
    what: &str,
    supported: i64,
    read: impl FnOnce(rusqlite::Error) -> E,
    newer: impl FnOnce(String) -> E,
) -> Result<i64, E> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(read)?;
    if version > supported {
        return Err(newer(format!(
            "{what} schema version {version} is newer than this build supports ({supported})"
        )));
    }
    Ok(version)
}

/// How a rusqlite error should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Busy, locked, I/O, full disk, out of memory: retrying may help.
    Transient,
    /// The file or a stored value could not be decoded.
    Corrupt,
    /// A uniqueness (or other) constraint refused the write.
    Constraint,
    /// Anything else (a bug more likely than not); reported as a failure.
    Other,
}

/// Sorts an error.
pub(crate) fn kind(e: &rusqlite::Error) -> Kind {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::OutOfMemory
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::PermissionDenied
            | ErrorCode::ReadOnly
            | ErrorCode::OperationInterrupted
            | ErrorCode::SchemaChanged => Kind::Transient,
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::TypeMismatch => {
                Kind::Corrupt
            }
            ErrorCode::ConstraintViolation => Kind::Constraint,
            _ => Kind::Other,
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::InvalidColumnType(..) => Kind::Corrupt,
        _ => Kind::Other,
    }
}

/// Locks a connection. A panic while the lock was held unwound through the `Transaction`
/// guard, which rolled back, so the connection is still usable and poisoning is ignored.
pub(crate) fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch by the wall clock (shared by processes, unlike
/// `Instant`).
pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A background thread that checkpoints the WAL of one file, so commits do not.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses the threshold (1,000
/// pages by default): the writer copies pages into the database file and fsyncs it while
/// the batch waits. Under random-order ledger inserts, whose every commit dirties about a
/// page per event, that is every commit, and it halves throughput. This thread, on its own
/// connection, runs a `PASSIVE` checkpoint every interval instead (it never blocks readers or
/// the writer); the connections it serves keep a large automatic threshold as a backstop in
/// case it falls behind. Dropping the handle stops the thread after a last checkpoint.
pub(crate) struct Checkpointer {
    /// Dropping it disconnects the channel, which tells the thread to stop.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing `path` every `interval`.
    pub(crate) fn spawn(
        path: &Path,
        settings: ConnSettings,
        interval: Duration,
    ) -> Result<Checkpointer, String> {
        let conn = open(path, settings).map_err(|e| e.to_string())?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let name = path.display().to_string();
        std::thread::Builder::new()
            .name("tally-sqlite-checkpoint".into())
            .spawn(move || {
                loop {
                    let last = matches!(
                        stopped.recv_timeout(interval),
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                    );
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::debug!(file = %name, error = %e, "WAL checkpoint skipped");
                    }
                    if last {
                        break;
                    }
                }
            })
            .map_err(|e| format!("starting the checkpoint thread: {e}"))?;
        Ok(Checkpointer { _stop: stop })
    }
}
