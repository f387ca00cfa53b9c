//! Builders the suites share: fresh ids, events, timestamps and decimals, plus the reference
//! counter computation (a fold of a set of unique events) that stores are compared against.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use tally_core::counter::OwnedCounterKey;
use tally_core::event::{Event, Quantity};
use tally_core::fold::{self, Delta};
use tally_core::ids::{ApiKeyId, EventId, MeterName, OrgId, ProjectId, UserId};
use tally_core::meter::Aggregation;
use tally_core::period::Month;
use tally_core::plan::PlanId;
use tally_core::ports::{OrgStore, UsageStore, UserStore};
use tally_core::tenant::{ApiKey, KeyScope, Org, User};

/// 32 random hex characters, for unique slugs, emails and event ids.
pub fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A fresh org id no other test (or run) uses.
pub fn fresh_org() -> OrgId {
    OrgId::from_random(rand::random())
}

/// A fresh project id.
pub fn fresh_project() -> ProjectId {
    ProjectId::from_random(rand::random())
}

/// Parses an RFC 3339 timestamp (test literals only).
pub fn ts(s: &str) -> DateTime<Utc> {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(e) => panic!("bad test timestamp {s:?}: {e}"),
    }
}

/// The creation time the tenant suites stamp on what they make. Sub-second precision on
/// purpose: timestamps must round-trip exactly.
pub fn created() -> DateTime<Utc> {
    ts("2026-11-26T10:00:00.123456Z")
}

/// Parses a month (`2026-03`; test literals only).
pub fn month(s: &str) -> Month {
    Month::parse(s).unwrap()
}

/// Parses a meter name (test literals only).
pub fn meter(name: &str) -> MeterName {
    MeterName::parse(name).unwrap()
}

/// Parses a decimal (test literals only).
pub fn dec(s: &str) -> Decimal {
    match Decimal::from_str(s) {
        Ok(d) => d,
        Err(e) => panic!("bad test decimal {s:?}: {e}"),
    }
}

/// The aggregation each test meter name uses, so events of one meter agree.
pub fn aggregation_of(meter: &str) -> Aggregation {
    match meter {
        "requests" => Aggregation::Count,
        "storage_bytes" => Aggregation::Max,
        "temperature" => Aggregation::Latest,
        "storage_gb" => Aggregation::TimeWeightedSum,
        "active_users" => Aggregation::UniqueCount {
            property: "user".into(),
        },
        _ => Aggregation::Sum,
    }
}

/// One test meter of each aggregation [`aggregation_of`] knows, for streams that mix them.
pub const MIXED_METERS: [&str; 5] = [
    "compute_minutes",
    "requests",
    "storage_bytes",
    "temperature",
    "active_users",
];

/// A die for random streams: each call answers a number below its argument, from an
/// xorshift with a random seed (cheap, and no generator type to thread through a test).
pub fn dice() -> impl FnMut(u64) -> u64 {
    let mut x = rand::random::<u64>() | 1;
    move |n| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    }
}

/// Builds an event. The aggregation follows the meter name ([`aggregation_of`]): `requests`
/// counts, `storage_bytes` is a max, `temperature` a latest, `storage_gb` a time-weighted
/// sum, `active_users` counts distinct `properties.user`, anything else sums.
pub fn event(
    org: &OrgId,
    project: &ProjectId,
    id: &str,
    meter: &str,
    quantity: &str,
    at: &str,
) -> Event {
    Event {
        org_id: org.clone(),
        id: EventId::parse(id).unwrap_or_else(|e| panic!("bad test event id {id:?}: {e}")),
        project_id: project.clone(),
        meter: MeterName::parse(meter).unwrap_or_else(|e| panic!("bad test meter: {e}")),
        aggregation: aggregation_of(meter),
        quantity: Quantity::parse(quantity)
            .unwrap_or_else(|e| panic!("bad test quantity {quantity:?}: {e}")),
        timestamp: ts(at),
        properties: Map::new(),
    }
}

/// A fresh org and project ([`fresh_org`], [`fresh_project`]) with one event of theirs
/// ([`event`]): how a test starts that needs an event no other test (or run) writes.
pub fn fresh_event(id: &str, meter: &str, quantity: &str, at: &str) -> (OrgId, ProjectId, Event) {
    let (org, project) = (fresh_org(), fresh_project());
    let e = event(&org, &project, id, meter, quantity, at);
    (org, project, e)
}

/// The same event with one property set.
pub fn with_prop(mut e: Event, key: &str, value: impl Into<Value>) -> Event {
    e.properties.insert(key.to_owned(), value.into());
    e
}

/// A quantity of `meter` drawn from `rng`, as the random workloads send them: `1` for
/// `requests`, else 0.00 to 499.99 with two places.
pub fn drawn_quantity(meter: &str, rng: &mut impl rand::Rng) -> String {
    match meter {
        "requests" => "1".to_owned(),
        _ => format!(
            "{}.{:02}",
            rng.random_range(0..500),
            rng.random_range(0..100)
        ),
    }
}

pub use tally_core::fixtures::first_ledger_page;

/// The org's counters of `month` as the store holds them, by key (to compare with
/// [`expected_counters`]).
pub async fn stored_counter_map<S: UsageStore + ?Sized>(
    s: &S,
    org: &OrgId,
    month: Month,
) -> BTreeMap<OwnedCounterKey, Decimal> {
    s.stored_counters(org, month)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// What every counter should hold after exactly these events (each counted once, however
/// they were batched): one fold, each delta applied to an absent counter.
pub fn expected_counters(events: &[Event]) -> BTreeMap<OwnedCounterKey, Decimal> {
    fold::fold(events.iter())
        .into_iter()
        .map(|(key, delta)| {
            let distinct = match &delta {
                Delta::Unique(values) => values.len() as u64,
                _ => 0,
            };
            let (value, _) = fold::apply_delta(None, None, &delta, distinct);
            (key.to_owned_key(), value)
        })
        .collect()
}

/// Creates the user `email` (id from `seeds.0`) and an org named `name` it owns (id from
/// `seeds.1`, its slug the name in lower case, on `plan`), both at `at`: how tests that need
/// a tenant begin. Returns the org as created.
pub async fn create_owned_org<S>(
    store: &S,
    seeds: (u8, u8),
    email: &str,
    name: &str,
    plan: PlanId,
    at: DateTime<Utc>,
) -> Org
where
    S: UserStore + OrgStore + ?Sized,
{
    let owner = store
        .ensure_user(&User {
            id: UserId::from_random([seeds.0; 16]),
            email: email.into(),
            created_at: at,
        })
        .await
        .unwrap();
    let org = Org {
        id: OrgId::from_random([seeds.1; 16]),
        name: name.into(),
        slug: name.to_lowercase(),
        plan,
        owner_id: owner.id,
        created_at: at,
        deleted_at: None,
    };
    store.create_org(&org).await.unwrap();
    org
}

/// An active API key of `org` for `secret` (a fresh id, named `ci`), created at `at`, that
/// may do `scopes` and never expires.
pub fn api_key(org: &OrgId, secret: &str, scopes: &[KeyScope], at: DateTime<Utc>) -> ApiKey {
    let id = ApiKeyId::from_random(rand::random());
    ApiKey {
        name: "ci".into(),
        scopes: scopes.to_vec(),
        ..ApiKey::new(id, org.clone(), secret, at)
    }
}

/// Asserts that reconcile judges `org`'s `month` at `within` (and finds no drift) and
/// refuses it at `past` as beyond the 45-day ledger retention, with a sentence saying so
/// rather than reporting every counter as drift.
pub async fn assert_reconcile_retention(
    store: &dyn UsageStore,
    org: &OrgId,
    month: Month,
    within: DateTime<Utc>,
    past: DateTime<Utc>,
) {
    let judged = tally_aggregator::reconcile(store, org, month, within).await;
    assert!(judged.as_ref().is_ok_and(Vec::is_empty), "{judged:?}");
    let refused = tally_aggregator::reconcile(store, org, month, past).await;
    let Err(refused) = refused else {
        panic!("reconcile judged a month past the retention: {refused:?}");
    };
    assert!(
        matches!(
            refused,
            tally_aggregator::ReconcileError::BeyondRetention { days: 45, .. }
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("too old to reconcile"),
        "{refused}"
    );
}
