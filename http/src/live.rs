//! The catalogue a running process serves by, replaceable while it serves: [`Live`] holds
//! an `Arc` that a refresh task swaps whole, and [`InForce`] is what the HTTP APIs read
//! from it (the meters and the plans of the catalogue version in force, and the meters of
//! the previous month's when it was another version, for late events).
//!
//! A request takes one snapshot ([`Live::load`]) and uses it to the end, so it sees the old
//! catalogue or the new one, never part of each: the swap is one pointer store under a
//! lock held for no longer than that store (readers clone an `Arc` under the read lock). The
//! composition roots (`tally serve`, the Lambda functions) decide when to swap: they re-read
//! the stored versions on an interval and replace the value when the version in force for
//! the current month changed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tally_core::plan::{Plan, PlanId};
use tally_core::{MeterCatalogue, Month};

/// A shared value that can be replaced whole while readers hold earlier snapshots. Cheap
/// to clone: every clone sees the same current value.
#[derive(Debug)]
pub struct Live<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Live<T> {
    fn clone(&self) -> Self {
        Live(self.0.clone())
    }
}

impl<T> Live<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Live<T> {
        Live(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The current value. A reader keeps the snapshot it took even if the value is replaced
    /// meanwhile.
    pub fn load(&self) -> Arc<T> {
        // A poisoned lock only means a writer panicked between taking the lock and storing
        // one `Arc`; the `Arc` inside is whole either way, so it is read through.
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the value; readers from now on see `value`.
    pub fn store(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// The meters events may name and the plans limits are enforced by: one catalogue's, taken
/// together so a request never pairs one version's meters with another's plans.
#[derive(Debug, Clone, PartialEq)]
pub struct InForce {
    /// The meters.
    pub meters: Arc<MeterCatalogue>,
    /// The plans; a plan missing here is [`Plan::builtin`].
    pub plans: BTreeMap<PlanId, Arc<Plan>>,
    /// The stored catalogue version these come from; `None`: the `--catalogue` file or the
    /// built-in catalogue (or a test's).
    pub version: Option<u32>,
    /// The meters of the previous month, when another version was in force then: ingest
    /// validates a late event (stamped last month, while that month is open) with them.
    /// `None`: the same version, so `meters`.
    pub previous: Option<PreviousMonth>,
}

/// The meters in force in the month before the current one, kept beside the current ones so
/// a late event costs no store read to validate.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousMonth {
    /// The month.
    pub month: Month,
    /// Its meters.
    pub meters: Arc<MeterCatalogue>,
    /// The version they come from (`None`: the file or built-in catalogue).
    pub version: Option<u32>,
}

impl InForce {
    /// `meters` and `plans` of catalogue version `version`.
    pub fn new(
        meters: MeterCatalogue,
        plans: BTreeMap<PlanId, Plan>,
        version: Option<u32>,
    ) -> InForce {
        InForce {
            meters: Arc::new(meters),
            plans: plans.into_iter().map(|(id, p)| (id, Arc::new(p))).collect(),
            version,
            previous: None,
        }
    }

    /// The same, validating events stamped in `month` (the previous one) with `meters`,
    /// version `version`'s.
    pub fn with_previous(
        mut self,
        month: Month,
        meters: MeterCatalogue,
        version: Option<u32>,
    ) -> InForce {
        self.previous = Some(PreviousMonth {
            month,
            meters: Arc::new(meters),
            version,
        });
        self
    }

    /// What event validation reads for the previous month (see
    /// [`ValidationContext::other_month`](tally_core::event::ValidationContext)).
    pub fn other_month(&self) -> Option<(Month, &MeterCatalogue)> {
        self.previous.as_ref().map(|p| (p.month, p.meters.as_ref()))
    }

    /// `meters` with the built-in plans.
    pub fn meters_only(meters: Arc<MeterCatalogue>) -> InForce {
        InForce {
            meters,
            plans: BTreeMap::new(),
            version: None,
            previous: None,
        }
    }

    /// The plan `id`: this catalogue's, else the built-in one.
    pub fn plan(&self, id: PlanId) -> Arc<Plan> {
        self.plans
            .get(&id)
            .cloned()
            .unwrap_or_else(|| Arc::new(Plan::builtin(id)))
    }
}

/// The catalogue the HTTP APIs read, replaced when a new version comes into force.
pub type LiveCatalogue = Live<InForce>;

impl From<Arc<MeterCatalogue>> for LiveCatalogue {
    /// `meters` with the built-in plans, never replaced unless someone holds a clone.
    fn from(meters: Arc<MeterCatalogue>) -> LiveCatalogue {
        Live::new(InForce::meters_only(meters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_survives_a_replacement_and_every_clone_sees_the_new_value() {
        let live = Live::new(1u32);
        let other = live.clone();
        let before = live.load();
        other.store(2);
        assert_eq!(*before, 1, "a reader keeps the snapshot it took");
        assert_eq!(*live.load(), 2, "a clone's store is seen by every clone");
    }

    #[test]
    fn a_plan_missing_from_the_catalogue_is_the_builtin_one() {
        let mut plans = BTreeMap::new();
        let mut pro = Plan::builtin(PlanId::Pro);
        pro.limits.users = Some(1);
        plans.insert(PlanId::Pro, pro.clone());
        let in_force = InForce::new(MeterCatalogue::default(), plans, Some(3));
        assert_eq!(*in_force.plan(PlanId::Pro), pro);
        assert_eq!(*in_force.plan(PlanId::Free), Plan::builtin(PlanId::Free));
    }
}
