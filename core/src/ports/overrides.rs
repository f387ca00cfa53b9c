//! [`OverrideStore`]: each org's price overrides (a negotiated contract; see
//! [`crate::overrides`]), set and ended by the operator only.
//!
//! An override is written once under its id (first write wins) and never deleted, so an
//! org's contract history stays readable; the only change a store makes to a stored one is
//! [`OverrideStore::end_override`], which may only bring its end earlier (or set one): the
//! months it covered stay covered up to the new end, and a closed month's report was stored
//! when it closed, so nothing billed is ever re-priced.

use async_trait::async_trait;

use super::StoreError;
use crate::overrides::{MAX_OVERRIDES_PER_ORG, OverrideId, PriceOverride, check_override};
use crate::{Month, OrgId};

/// Checks an override's bounds before a store writes it: a caller's bug is
/// [`StoreError::Corrupt`] (`500`) naming the field.
pub fn check_stored_override(o: &PriceOverride) -> Result<(), StoreError> {
    check_override(o).map_err(|e| StoreError::Corrupt(format!("price override {}: {e}", o.id)))
}

/// What [`OverrideStore::end_override`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// The end is now the month asked for; the override as stored after the change.
    Ended(PriceOverride),
    /// The override already ends at or before the month asked for: nothing changed (an end
    /// is never moved later). The override as stored.
    AlreadyEnded(PriceOverride),
    /// The org has no override with that id.
    NotFound,
}

/// Each org's price overrides. See the [module docs](self).
#[async_trait]
pub trait OverrideStore: Send + Sync {
    /// Stores `o` under its org and id unless that id is taken: `true` if this call stored
    /// it, `false` if the id exists (the stored one is left as it was). Refuses the
    /// [`MAX_OVERRIDES_PER_ORG`]+1st override of an org with [`StoreError::Conflict`]
    /// (`409`), and an override out of bounds ([`check_stored_override`]).
    async fn put_override(&self, o: &PriceOverride) -> Result<bool, StoreError>;

    /// Every override of `org` (ended ones too), oldest first (`created_at`, then id).
    async fn list_overrides(&self, org: &OrgId) -> Result<Vec<PriceOverride>, StoreError>;

    /// Sets the end of `org`'s override `id` to `end` (exclusive) if it has no end or a later
    /// one; an end is never moved later. Conditional in every store, so of two operators
    /// ending one override at once, the earlier end stands.
    async fn end_override(&self, req: &OverrideEnd<'_>) -> Result<EndOutcome, StoreError>;
}

/// What [`OverrideStore::end_override`] is asked: end `org`'s override `id` at `end`.
#[derive(Debug, Clone, Copy)]
pub struct OverrideEnd<'a> {
    /// The org.
    pub org: &'a OrgId,
    /// Its override.
    pub id: &'a OverrideId,
    /// The month the override ends at (exclusive).
    pub end: Month,
}

/// The error a store returns for an org past [`MAX_OVERRIDES_PER_ORG`].
pub fn too_many_overrides(org: &OrgId) -> StoreError {
    StoreError::Conflict {
        what: format!(
            "the {MAX_OVERRIDES_PER_ORG} price overrides of {org} (the most an org may carry)"
        ),
    }
}

/// Sorts overrides oldest first, as [`OverrideStore::list_overrides`] returns them.
pub fn sort_overrides(list: &mut [PriceOverride]) {
    list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
}
