//! Replaying dead letters: after the fault that set them aside is fixed, move them back onto
//! the main queue so the aggregator applies them again.
//!
//! The queue adapters that keep their dead letters whole implement [`DeadLetterReplay`]:
//! [`LocalQueue`](crate::local_queue::LocalQueue) (its `dead_letters` table) and
//! [`SqsQueue`](crate::sqs::SqsQueue) (its dead-letter queue). Kinesis does not: the Lambda
//! consumer's on-failure destination keeps only pointers to the records, and the polling
//! worker's dead-letter items keep the data only as lossy, bounded text for inspection.
//!
//! - **Harmless to repeat.** A replayed letter is an ordinary message again, and the store
//!   applies every event exactly once (the ledger), so replaying a letter whose events were
//!   already counted (twice, or after a partial apply) changes no counter.
//! - **Never lost.** A letter leaves the dead-letter store only once its republished copy
//!   is durable on the main queue (the local queue does both in one transaction; SQS sends,
//!   then deletes). A crash in between leaves the letter where it was, to be replayed again.
//! - **Never looping.** A replay is an operator's act, once per letter per run. A letter
//!   still unreadable after the fix is dead-lettered again by the aggregator, with its
//!   reason, and stays there until someone replays it again.
//! - **Only Tally's own messages.** A letter whose body is not a message of events this
//!   build reads (a local body that is not a JSON list of events, an SQS body that is not a
//!   Tally envelope) is left where it is and reported ([`LetterStatus::Left`]).
//!
//! The selection ([`ReplayRequest`]) is all letters, some ids, or those whose reason
//! contains some text, at most [`MAX_REPLAY_LIMIT`] per run; a dry run lists what would be
//! replayed and moves nothing.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_core::ports::QueueError;

/// Letters one run replays when no limit is given.
pub const DEFAULT_REPLAY_LIMIT: usize = 100;
/// Most letters one run may replay (`--limit`).
pub const MAX_REPLAY_LIMIT: usize = 1_000;
/// Most ids one request may name.
pub const MAX_REPLAY_IDS: usize = 100;
/// Longest id one request may name, in bytes (SQS message ids are 36 characters).
pub const MAX_ID_BYTES: usize = 128;
/// Longest reason filter, in bytes (reasons themselves are kept to 1 KiB).
pub const MAX_REASON_FILTER_BYTES: usize = 1_024;

/// Why a [`ReplayRequest`] was refused. Nothing was read or moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRequestError {
    /// A field of the selection is out of bounds; the CLI prints this (naming the flag)
    /// and exits 1.
    #[error("{field}: {problem}")]
    Invalid {
        /// The flag, e.g. `--limit`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ReplayRequestError {
    ReplayRequestError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Which dead letters to replay, and whether to move them or only list them. Built by
/// [`ReplayRequest::new`], which checks every bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    ids: Vec<String>,
    reason: Option<String>,
    /// The reason filter in lower case, for the case-insensitive match.
    reason_lower: Option<String>,
    limit: usize,
    dry_run: bool,
}

impl ReplayRequest {
    /// A request for the letters with one of `ids` (all if empty) whose reason contains
    /// `reason` (ignoring case; any reason if `None`), at most `limit` of them (1 to
    /// [`MAX_REPLAY_LIMIT`]), oldest first. With `dry_run` nothing is moved.
    pub fn new(
        ids: Vec<String>,
        reason: Option<String>,
        limit: usize,
        dry_run: bool,
    ) -> Result<Self, ReplayRequestError> {
        if !(1..=MAX_REPLAY_LIMIT).contains(&limit) {
            return Err(invalid(
                "--limit",
                format!("must be 1 to {MAX_REPLAY_LIMIT}, got {limit}"),
            ));
        }
        if ids.len() > MAX_REPLAY_IDS {
            return Err(invalid(
                "--id",
                format!("at most {MAX_REPLAY_IDS} ids per run, got {}", ids.len()),
            ));
        }
        for id in &ids {
            if id.trim().is_empty() || id.len() > MAX_ID_BYTES {
                return Err(invalid(
                    "--id",
                    format!("an id is 1 to {MAX_ID_BYTES} bytes, got {id:?}"),
                ));
            }
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        if unique.len() > limit {
            return Err(invalid(
                "--limit",
                format!("{limit} is fewer than the {} ids asked for", unique.len()),
            ));
        }
        if let Some(r) = &reason
            && (r.is_empty() || r.len() > MAX_REASON_FILTER_BYTES)
        {
            return Err(invalid(
                "--reason",
                format!("must be 1 to {MAX_REASON_FILTER_BYTES} bytes"),
            ));
        }
        let reason_lower = reason.as_deref().map(str::to_lowercase);
        Ok(ReplayRequest {
            ids: unique,
            reason,
            reason_lower,
            limit,
            dry_run,
        })
    }

    /// Every letter (up to [`DEFAULT_REPLAY_LIMIT`]), moved.
    pub fn all() -> Self {
        ReplayRequest {
            ids: Vec::new(),
            reason: None,
            reason_lower: None,
            limit: DEFAULT_REPLAY_LIMIT,
            dry_run: false,
        }
    }

    /// The same selection, listed only.
    pub fn listing(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// The ids asked for, sorted and without repeats; empty means any.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The reason filter, as given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Most letters this run takes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether this run only lists.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether the letter `id`, set aside for `reason` (`None`: no reason recorded, e.g. SQS's
    /// redrive policy moved it), is selected. A reason filter never matches a letter without
    /// a reason.
    pub fn matches(&self, id: &str, reason: Option<&str>) -> bool {
        let id_ok =
            self.ids.is_empty() || self.ids.binary_search_by(|i| i.as_str().cmp(id)).is_ok();
        let reason_ok = match (&self.reason_lower, reason) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(have)) => have.to_lowercase().contains(want.as_str()),
        };
        id_ok && reason_ok
    }

    /// The ids asked for that are not among `found`.
    pub fn missing<'a>(&self, found: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let found: std::collections::HashSet<&str> = found.into_iter().collect();
        self.ids
            .iter()
            .filter(|i| !found.contains(i.as_str()))
            .cloned()
            .collect()
    }
}

/// What happened to one selected letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LetterStatus {
    /// Dry run: it would be replayed.
    WouldReplay,
    /// Back on the main queue and gone from the dead-letter store.
    Replayed,
    /// Back on the main queue, but still in the dead-letter store too (removing it failed):
    /// a later replay sends it again, which the ledger makes harmless.
    ReplayedNotRemoved,
    /// Not replayed (the body is not a message this build reads, or republishing failed);
    /// it stays in the dead-letter store. In a dry run: it would be left.
    Left,
}

/// One selected dead letter and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayedLetter {
    /// Its id in the dead-letter store (the local queue's message id; the SQS dead-letter
    /// queue's message id), as `--id` takes it.
    pub id: String,
    /// Why it was set aside; `None` when no reason was recorded (SQS's redrive policy).
    pub reason: Option<String>,
    /// Events it holds (0 if its body is not a message of events).
    pub events: usize,
    /// When it was dead-lettered, if the store says (for a message SQS's redrive policy
    /// moved: when it was first sent).
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// What happened to it.
    pub status: LetterStatus,
    /// Why it was left or not removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// What one replay (or dry run) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Whether this was a dry run (nothing moved).
    pub dry_run: bool,
    /// The selected letters, oldest first where the store knows the order.
    pub letters: Vec<ReplayedLetter>,
    /// Ids asked for that were not found (or whose reason did not match).
    pub missing_ids: Vec<String>,
    /// The limit stopped the selection: more letters may match.
    pub limit_reached: bool,
}

impl ReplayReport {
    /// Letters whose events are back on the main queue (or would be, in a dry run).
    pub fn republished(&self) -> usize {
        self.letters.iter().filter(|l| l.is_republished()).count()
    }

    /// Events in those letters.
    pub fn events_republished(&self) -> usize {
        self.letters
            .iter()
            .filter(|l| l.is_republished())
            .map(|l| l.events)
            .sum()
    }

    /// Letters not replayed, or replayed and not removed.
    pub fn not_done(&self) -> impl Iterator<Item = &ReplayedLetter> {
        self.letters.iter().filter(|l| {
            matches!(
                l.status,
                LetterStatus::Left | LetterStatus::ReplayedNotRemoved
            )
        })
    }

    /// Whether every selected letter was replayed and removed and every id asked for was
    /// found. The CLI exits non-zero otherwise.
    pub fn is_complete(&self) -> bool {
        self.not_done().next().is_none() && self.missing_ids.is_empty()
    }
}

impl ReplayedLetter {
    fn is_republished(&self) -> bool {
        matches!(
            self.status,
            LetterStatus::WouldReplay | LetterStatus::Replayed | LetterStatus::ReplayedNotRemoved
        )
    }
}

/// A queue whose dead letters can be moved back onto it.
#[async_trait]
pub trait DeadLetterReplay: Send + Sync {
    /// Replays (or, for a dry run, lists) the letters `request` selects, oldest first, and
    /// reports each. `Err` only when the dead-letter store cannot be read at all; a letter
    /// that could not be moved is reported [`LetterStatus::Left`] and stays where it was.
    async fn replay_dead_letters(
        &self,
        request: &ReplayRequest,
    ) -> Result<ReplayReport, QueueError>;
}

/// Implements [`DeadLetterReplay`] for each queue by its inherent `replay_dead_letters`
/// (the local queue's and SQS's): the same impl for several types, so a macro rather than
/// a function.
macro_rules! replay_by_inherent_method {
    ($($queue:ty),+) => {$(
        #[async_trait]
        impl DeadLetterReplay for $queue {
            async fn replay_dead_letters(
                &self,
                request: &ReplayRequest,
            ) -> Result<ReplayReport, QueueError> {
                <$queue>::replay_dead_letters(self, request).await
            }
        }
    )+};
}
replay_by_inherent_method!(crate::LocalQueue, crate::sqs::SqsQueue);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_and_name_the_flag() {
        let err = |r: Result<ReplayRequest, ReplayRequestError>| r.unwrap_err().to_string();
        assert!(err(ReplayRequest::new(vec![], None, 0, false)).starts_with("--limit"));
        assert!(
            err(ReplayRequest::new(
                vec![],
                None,
                MAX_REPLAY_LIMIT + 1,
                false
            ))
            .starts_with("--limit")
        );
        assert!(err(ReplayRequest::new(vec![" ".into()], None, 10, false)).starts_with("--id"));
        assert!(
            err(ReplayRequest::new(
                vec!["x".repeat(MAX_ID_BYTES + 1)],
                None,
                10,
                false
            ))
            .starts_with("--id")
        );
        assert!(
            err(ReplayRequest::new(
                vec!["a".into(), "b".into()],
                None,
                1,
                false
            ))
            .starts_with("--limit")
        );
        assert!(
            err(ReplayRequest::new(vec![], Some(String::new()), 10, false)).starts_with("--reason")
        );
    }

    #[test]
    fn selection_by_id_and_reason_substring_ignoring_case() {
        let r = ReplayRequest::new(
            vec!["7".into(), "3".into(), "7".into()],
            Some("Store Was".into()),
            10,
            false,
        )
        .unwrap();
        assert_eq!(r.ids(), ["3", "7"]);
        assert!(r.matches("7", Some("the store was down")));
        assert!(!r.matches("7", Some("does not decode")));
        assert!(!r.matches("7", None));
        assert!(!r.matches("5", Some("the store was down")));
        assert_eq!(r.missing(["3"]), ["7"]);
        let all = ReplayRequest::all();
        assert!(all.matches("anything", None));
    }
}
