//! The catalogue billing prices with, as the composition root loads it.
//!
//! The catalogue itself (the schema, the validation, the built-in `core/catalogue.json`) is
//! [`tally_core::Catalogue`]: one file defines the meters, the plans with their limits and
//! the prices, so what ingest and the API enforce and what billing charges cannot drift.
//! This module adds what core may not do: reading an operator's file from disk
//! ([`Catalogue::load`]), and pricing on top of it ([`Catalogue::priced`], and
//! `Catalogue::price_month`, which lives in the `report` module).
//!
//! A composition root (`tally`, the Lambdas) loads one catalogue and hands its views out:
//! [`tally_core::Catalogue::meter_catalogue`] to ingest and the API (the meters events are
//! validated against), [`tally_core::Catalogue::core_plans`] to ingest's configuration (the
//! limits it enforces), and the catalogue itself to billing.

use std::ops::Deref;
use std::path::Path;

pub use tally_core::catalogue::{
    BUILTIN_JSON, CURRENCY, MeterPrice, MeterSpec, PlanSpec, SCHEMA_VERSION,
};
use tally_core::{CatalogueError, Plan};

use crate::error::PricingError;

/// A loaded, validated catalogue: core's [`tally_core::Catalogue`] (every accessor of it is
/// reachable through `Deref`), with loading from a path and pricing on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    inner: tally_core::Catalogue,
}

impl Catalogue {
    /// The built-in catalogue, `core/catalogue.json`. It is checked by the tests, so an
    /// error here means the binary was built from a broken tree.
    pub fn builtin() -> Result<Catalogue, CatalogueError> {
        tally_core::Catalogue::builtin().map(Catalogue::from)
    }

    /// Reads and validates the catalogue file at `path` (the schema of
    /// [`tally_core::catalogue`]). Errors name the file, and the line or the field at fault.
    pub fn load(path: &Path) -> Result<Catalogue, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Read {
            path: path.to_owned(),
            source,
        })?;
        Catalogue::from_json(&text, &path.display().to_string())
    }

    /// The built-in catalogue when `path` is `None`, else the file at `path`: what a
    /// composition root calls with its `--catalogue` setting.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<Catalogue, CatalogueError> {
        match path {
            Some(path) => Catalogue::load(path),
            None => Catalogue::builtin(),
        }
    }

    /// Parses and validates catalogue JSON; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Catalogue, CatalogueError> {
        tally_core::Catalogue::from_json(text, origin).map(Catalogue::from)
    }

    /// The catalogue as core holds it.
    pub fn core(&self) -> &tally_core::Catalogue {
        &self.inner
    }

    /// The priced plan for a core [`Plan`] (for example a custom enterprise contract):
    /// this catalogue's prices and discount for `plan.id`, with the fee, caps, hard flag and
    /// allowances of `plan`. A meter that `plan` limits but the catalogue's plan does not
    /// price is refused.
    pub fn priced(&self, plan: &Plan) -> Result<PlanSpec, PricingError> {
        let base = self.plan(plan.id);
        if let Some(meter) = plan
            .limits
            .meters
            .keys()
            .find(|m| !base.meters.contains_key(*m))
        {
            return Err(PricingError::UnpricedMeter {
                plan: plan.id,
                meter: meter.clone(),
            });
        }
        let mut spec = base.clone();
        spec.monthly_fee = plan.monthly_fee;
        spec.users = plan.limits.users;
        spec.projects = plan.limits.projects;
        spec.hard_usage_limits = plan.limits.hard_usage_limits;
        for (name, price) in &mut spec.meters {
            price.included = plan.limits.meters.get(name).copied();
        }
        Ok(spec)
    }
}

impl From<tally_core::Catalogue> for Catalogue {
    fn from(inner: tally_core::Catalogue) -> Self {
        Catalogue { inner }
    }
}

impl Deref for Catalogue {
    type Target = tally_core::Catalogue;

    fn deref(&self) -> &tally_core::Catalogue {
        &self.inner
    }
}

// Pricing a month with a whole catalogue: core's engine on one of its plans.
impl Catalogue {
    /// Prices an org's month on one of this catalogue's plans (see [`tally_core::report::price_month`]).
    pub fn price_month(
        &self,
        org_id: tally_core::OrgId,
        period: tally_core::Month,
        plan: tally_core::PlanId,
        usage: &tally_core::report::MonthUsage,
    ) -> Result<tally_core::report::UsageReport, PricingError> {
        tally_core::report::price_month(org_id, period, self.plan(plan), usage)
    }
}
