//! The counter writes of a batch's intent ([`Op`], grouped by partition as [`Ops`]): what
//! the apply protocol (`apply.rs`) records in the intent item and replays, and what the
//! `max`/`latest` raises (`raise.rs`) write outside transactions. Their serialized form is
//! stored (deflated) in intent items, so the `serde` names are part of the table's format.

use serde::{Deserialize, Serialize};

/// One counter write of an intent. The partition comes from the group it is in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) enum Op {
    /// `ADD` to hours of a day cell: (cell sort key, [(hour index, amount)]).
    #[serde(rename = "a")]
    Add(String, Vec<(u32, String)>),
    /// Raise an hour of a `max` cell: (cell sort key, hour index, value).
    #[serde(rename = "m")]
    Max(String, u32, String),
    /// Replace an hour of a `latest` cell if later: (cell sort key, hour, value, time in ns).
    #[serde(rename = "l")]
    Latest(String, u32, String, String),
    /// Count `unique_count` values once each: (counter sort key, marker partition, one
    /// marker sort key per value), at most [`MAX_MARKERS_PER_OP`] markers.
    #[serde(rename = "u")]
    Unique(String, String, Vec<String>),
}

/// Most values one [`Op::Unique`] carries, so an op always fits a chunk.
pub(super) const MAX_MARKERS_PER_OP: usize = 48;

impl Op {
    /// Transaction actions the op takes.
    pub(super) fn actions(&self) -> usize {
        match self {
            Op::Unique(_, _, markers) => markers.len() + 1,
            _ => 1,
        }
    }

    /// Whether applying the op twice leaves the same result as once (`max`, `latest`): such
    /// an op needs no transaction and no marker.
    pub(super) fn is_idempotent(&self) -> bool {
        matches!(self, Op::Max(..) | Op::Latest(..))
    }

    /// The sort key of the counter item the op updates (its partition is the group's).
    pub(super) fn item_sk(&self) -> &str {
        match self {
            Op::Add(sk, _) | Op::Max(sk, ..) | Op::Latest(sk, ..) | Op::Unique(sk, ..) => sk,
        }
    }
}

/// Everything a batch will write to counters, grouped by partition, in a fixed order: the
/// intent item holds exactly this, and anyone who finishes the batch replays it.
pub(super) type Ops = Vec<(String, Vec<Op>)>;
