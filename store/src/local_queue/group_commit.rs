//! Group commit for [`super::LocalQueue`]'s publishes: concurrent publishes share one
//! write transaction, and one hop to the blocking pool, instead of paying one each.
//!
//! Ingest publishes once per request, so with 1-event requests a transaction (`BEGIN
//! IMMEDIATE`, one insert, `COMMIT`: a WAL append) and a `spawn_blocking` hop were paid per
//! event (issue 21, item 2: 14 % of a 1-event request's profile). Now a publish puts its
//! message bodies in [`GroupCommit`]'s pending list and waits for the commit that holds them;
//! the first publish to find no writer running starts one on the blocking pool, and that
//! writer, holding the queue's connection, takes everything pending (up to
//! [`MAX_GROUP_BYTES`]), writes it in one transaction, answers each publish with the
//! transaction's outcome, and hands over to a fresh writer if more publishes joined
//! meanwhile ([`GroupCommit::more`]).
//!
//! What a caller sees is unchanged: `publish` returns `Ok` only after the transaction that
//! holds its rows committed (the `202` still follows durability), and an error when that
//! transaction failed, in which case none of its rows exists (a failed transaction rolls back
//! every publish in it, and each of them answers `503`, as a lone one did). Each publish still
//! writes one message row per org, so deliveries are unchanged.
//!
//! This is the local queue's own form of [`crate::coalesce::CoalescingQueue`] (which merges
//! the publishes of SQS and Kinesis into full batch calls): here the merge happens at the
//! transaction, with no extra task hop, since one SQLite transaction takes any number of
//! rows. How many publishes each transaction carried is the histogram
//! [`METRIC_PUBLISHES_PER_COMMIT`].
//!
//! A writer that never runs (the runtime shutting down before the blocking task starts) or
//! that panics is dropped with its [`Writer`] guard, which fails every waiting publish and
//! clears the running flag, so the next publish starts a fresh writer instead of waiting
//! forever.

use std::mem;
use std::sync::{Arc, Mutex, PoisonError};

use tally_core::ports::QueueError;
use tokio::sync::oneshot;

/// Most message bytes one transaction takes from the pending list (at least one publish is
/// always taken, whatever its size): bounds how long a transaction holds the write lock
/// when many large publishes arrive at once.
pub(super) const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Histogram of the publishes one group-commit transaction wrote (1 when publishes do not
/// overlap).
pub const METRIC_PUBLISHES_PER_COMMIT: &str = "tally_local_queue_publishes_per_commit";

/// Message bodies with their event counts, as one publish writes them.
pub(super) type Bodies = Vec<(String, usize)>;

/// Where a publish learns how its transaction went.
pub(super) type Done = oneshot::Sender<Result<(), QueueError>>;

/// The publishes waiting for a transaction, and whether a writer is running.
#[derive(Default)]
pub(super) struct GroupCommit {
    pending: Mutex<Pending>,
    /// Groups handed to a writer so far (for tests that count transactions).
    #[cfg(test)]
    groups: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Pending {
    publishes: Vec<(Bodies, Done)>,
    /// A writer is running (or about to): a new publish only joins the list.
    writing: bool,
}

/// The publishes one transaction writes.
pub(super) struct Group {
    /// Every body of every publish in the group, in order.
    pub(super) bodies: Bodies,
    waiters: Vec<Done>,
}

impl Group {
    /// How many publishes the group holds.
    pub(super) fn publishes(&self) -> usize {
        self.waiters.len()
    }

    /// Tells every publish in the group how its transaction went.
    pub(super) fn answer(self, result: &Result<(), QueueError>) {
        for done in self.waiters {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(copy));
        }
    }
}

/// `QueueError` is not `Clone` (it is the port's type); each publish gets its own copy.
fn copy(e: &QueueError) -> QueueError {
    match e {
        QueueError::Unavailable(m) => QueueError::Unavailable(m.clone()),
        QueueError::Malformed(m) => QueueError::Malformed(m.clone()),
    }
}

impl GroupCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a publish to the pending list. `true` when no writer is running: the caller
    /// must start one (with a [`Writer`] guard).
    pub(super) fn join(&self, bodies: Bodies, done: Done) -> bool {
        let mut p = self.lock();
        p.publishes.push((bodies, done));
        !mem::replace(&mut p.writing, true)
    }

    /// The next group to write: pending publishes in arrival order until
    /// [`MAX_GROUP_BYTES`] (at least one). `None` when nothing is pending, and then the
    /// writer is marked stopped (under the same lock, so a publish joining right after
    /// starts a new one).
    pub(super) fn next_group(&self) -> Option<Group> {
        let mut p = self.lock();
        if p.publishes.is_empty() {
            p.writing = false;
            return None;
        }
        let mut bytes = 0;
        let mut take = 0;
        for (bodies, _) in &p.publishes {
            if take > 0 && bytes >= MAX_GROUP_BYTES {
                break;
            }
            bytes += bodies.iter().map(|(b, _)| b.len()).sum::<usize>();
            take += 1;
        }
        #[cfg(test)]
        self.groups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut group = Group {
            bodies: Vec::new(),
            waiters: Vec::with_capacity(take),
        };
        for (bodies, done) in p.publishes.drain(..take) {
            group.bodies.extend(bodies);
            group.waiters.push(done);
        }
        Some(group)
    }

    /// After a group: `true` when publishes are pending (the caller starts the next
    /// writer), otherwise marks the writer stopped, under the same lock as
    /// [`GroupCommit::join`], so no publish is left without one.
    pub(super) fn more(&self) -> bool {
        let mut p = self.lock();
        if p.publishes.is_empty() {
            p.writing = false;
            return false;
        }
        true
    }

    /// Fails every pending publish and marks the writer stopped: what a writer that did not
    /// finish leaves behind.
    fn abandon(&self) {
        let publishes = {
            let mut p = self.lock();
            p.writing = false;
            mem::take(&mut p.publishes)
        };
        for (_, done) in publishes {
            let _ = done.send(Err(QueueError::Unavailable(
                "the queue's writer stopped before this publish was written".into(),
            )));
        }
    }

    /// How many groups were handed to a writer, each one transaction.
    #[cfg(test)]
    pub(super) fn groups(&self) -> usize {
        self.groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many publishes wait (for tests that hold a group back).
    #[cfg(test)]
    pub(super) fn pending(&self) -> usize {
        self.lock().publishes.len()
    }
}

/// Held by a running writer: dropped without [`Writer::finish`] (the task never ran, or
/// panicked), it fails the pending publishes and clears the running flag.
pub(super) struct Writer {
    group: Arc<GroupCommit>,
    finished: bool,
}

impl Writer {
    /// The guard of the writer a [`GroupCommit::join`] that returned `true` starts.
    pub(super) fn new(group: Arc<GroupCommit>) -> Self {
        Writer {
            group,
            finished: false,
        }
    }

    /// The writer ends normally: it saw nothing pending ([`GroupCommit::next_group`]
    /// returned `None`, or [`GroupCommit::more`] `false`), or it hands over to the next
    /// writer (`more` returned `true`), whose own guard takes over.
    pub(super) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.finished {
            self.group.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(n: usize, len: usize) -> Bodies {
        (0..n).map(|_| ("x".repeat(len), 1)).collect()
    }

    #[test]
    fn the_first_publish_starts_the_writer_and_a_group_takes_the_rest_up_to_its_bound() {
        let g = GroupCommit::default();
        let (a, _ra) = oneshot::channel();
        let (b, _rb) = oneshot::channel();
        let (c, _rc) = oneshot::channel();
        assert!(g.join(bodies(1, 10), a), "no writer yet: start one");
        assert!(!g.join(bodies(2, 10), b), "a writer runs: only join");
        // A publish of 8 MiB: the group so far has 30 bytes (< bound), so it is taken too,
        // and the next one would start a new group.
        assert!(!g.join(bodies(1, MAX_GROUP_BYTES), c));
        let (d, _rd) = oneshot::channel();
        assert!(!g.join(bodies(1, 10), d));
        let first = g.next_group().unwrap();
        assert_eq!(first.bodies.len(), 4, "3 publishes, 1 + 2 + 1 bodies");
        assert_eq!(first.waiters.len(), 3);
        assert!(g.more(), "one publish is left: the writer hands over");
        let second = g.next_group().unwrap();
        assert_eq!(second.bodies.len(), 1);
        assert!(!g.more(), "nothing left: the writer stops");
        let (e, _re) = oneshot::channel();
        assert!(
            g.join(bodies(1, 10), e),
            "the writer stopped: the next one starts one"
        );
    }

    #[tokio::test]
    async fn every_publish_of_a_group_hears_its_outcome_and_an_abandoned_writer_fails_the_rest() {
        let g = Arc::new(GroupCommit::default());
        let (a, ra) = oneshot::channel();
        let (b, rb) = oneshot::channel();
        assert!(g.join(bodies(1, 1), a));
        g.join(bodies(1, 1), b);
        let writer = Writer::new(g.clone());
        g.next_group()
            .unwrap()
            .answer(&Err(QueueError::Unavailable("disk full".into())));
        for r in [ra, rb] {
            assert!(
                matches!(r.await.unwrap(), Err(QueueError::Unavailable(m)) if m == "disk full")
            );
        }
        // A publish joins, then the writer dies before taking it: it is failed, not left
        // waiting, and the next publish starts a new writer.
        let (c, rc) = oneshot::channel();
        assert!(!g.join(bodies(1, 1), c));
        drop(writer);
        assert!(matches!(rc.await.unwrap(), Err(QueueError::Unavailable(_))));
        let (d, _rd) = oneshot::channel();
        assert!(g.join(bodies(1, 1), d));
        // A writer that finishes normally fails nothing.
        let writer = Writer::new(g.clone());
        let group = g.next_group().unwrap();
        assert!(g.next_group().is_none());
        writer.finish();
        group.answer(&Ok(()));
        assert_eq!(g.pending(), 0);
    }
}
