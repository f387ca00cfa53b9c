//! Workload W: Zipf-distributed orgs, a few projects and meters each, one simulated hour.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tally_core::counter::OwnedCounterKey;
use tally_core::event::Quantity;
use tally_core::fold::{Delta, apply_delta, dedupe_in_batch, fold};
use tally_core::{Aggregation, Event, EventId, MeterName, OrgId, ProjectId};

/// Shape of a generated workload.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSpec {
    /// Number of orgs.
    pub orgs: usize,
    /// Projects per org.
    pub projects: usize,
    /// Zipf exponent of org activity (`0.0` is uniform).
    pub zipf_s: f64,
    /// Events to generate, resends included.
    pub events: usize,
    /// Share of events that are resends of an earlier event (0.0–1.0).
    pub resend_share: f64,
    /// Start of the simulated hour.
    pub start: DateTime<Utc>,
    /// RNG seed.
    pub seed: u64,
    /// Whether the meters cover every aggregation's write path ([`meters_all`]: a `latest` and a
    /// `unique_count` meter besides the four of [`meters`]), as the write-cost benchmark
    /// runs it since issue 16; the other benchmarks keep the four.
    pub all_aggregations: bool,
}

impl WorkloadSpec {
    /// Workload W as the issues define it: 1,000 orgs, Zipf s = 1.1, 5 projects, 4 meters,
    /// 200,000 events over one hour, 10 % resends.
    pub fn w(start: DateTime<Utc>) -> Self {
        WorkloadSpec {
            orgs: 1_000,
            projects: 5,
            zipf_s: 1.1,
            events: 200_000,
            resend_share: 0.10,
            start,
            seed: 42,
            all_aggregations: false,
        }
    }
}

/// The four built-in meters with their aggregations.
pub fn meters() -> Vec<(MeterName, Aggregation)> {
    [
        ("api_calls", Aggregation::Sum),
        ("compute_minutes", Aggregation::Sum),
        ("storage_bytes", Aggregation::Max),
        ("bandwidth_bytes", Aggregation::Sum),
    ]
    .into_iter()
    .filter_map(|(n, a)| MeterName::parse(n).ok().map(|m| (m, a)))
    .collect()
}

/// The four meters of [`meters`], a `latest` one (`plan_seats`: the seats an org's plan
/// has, last value wins) and a `unique_count` one (`active_users`: distinct `user`
/// properties): every aggregation's write path (`count` takes `sum`'s).
pub fn meters_all() -> Vec<(MeterName, Aggregation)> {
    let mut out = meters();
    out.extend(
        [
            ("plan_seats", Aggregation::Latest),
            (
                "active_users",
                Aggregation::UniqueCount {
                    property: USER_PROPERTY.to_owned(),
                },
            ),
        ]
        .into_iter()
        .filter_map(|(n, a)| MeterName::parse(n).ok().map(|m| (m, a))),
    );
    out
}

/// The property `active_users` counts distinct values of.
const USER_PROPERTY: &str = "user";
/// Distinct users per org `active_users` draws from: a few dozen, so most values repeat
/// within the hour (their markers are then skipped or refused), as real active-user counts do.
const USERS_PER_ORG: u32 = 40;

/// Samples ranks 0..n with probability proportional to 1 / (rank + 1)^s.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// Precomputes the distribution.
    pub fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let cdf = (0..n.max(1))
            .map(|k| {
                acc += 1.0 / ((k + 1) as f64).powf(s);
                acc
            })
            .collect::<Vec<_>>();
        let total = acc;
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    /// Draws a rank.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Ids of generated orgs and projects, so a benchmark can create them in a store.
#[derive(Debug, Clone)]
pub struct Tenants {
    /// Org ids, in rank order (rank 0 is the busiest).
    pub orgs: Vec<OrgId>,
    /// Project ids per org.
    pub projects: Vec<Vec<ProjectId>>,
}

fn id16(kind: u8, a: usize, b: usize) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0] = kind;
    bytes[1..9].copy_from_slice(&(a as u64).to_be_bytes());
    bytes[9..13].copy_from_slice(&(b as u32).to_be_bytes());
    bytes
}

/// Deterministic tenants for a spec.
pub fn tenants(spec: &WorkloadSpec) -> Tenants {
    let orgs: Vec<OrgId> = (0..spec.orgs)
        .map(|o| OrgId::from_random(id16(1, o, 0)))
        .collect();
    let projects = (0..spec.orgs)
        .map(|o| {
            (0..spec.projects)
                .map(|p| ProjectId::from_random(id16(2, o, p)))
                .collect()
        })
        .collect();
    Tenants { orgs, projects }
}

/// Generates the events of a workload, in arrival order. Resends are exact copies of an
/// earlier event (a client retrying).
pub fn generate(spec: &WorkloadSpec, tenants: &Tenants) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let zipf = Zipf::new(spec.orgs, spec.zipf_s);
    let meters = if spec.all_aggregations {
        meters_all()
    } else {
        meters()
    };
    let mut out: Vec<Event> = Vec::with_capacity(spec.events);
    for i in 0..spec.events {
        if !out.is_empty() && rng.random::<f64>() < spec.resend_share {
            let j = rng.random_range(0..out.len());
            let copy = out[j].clone();
            out.push(copy);
            continue;
        }
        let org = zipf.sample(&mut rng);
        let project = rng.random_range(0..spec.projects);
        let (meter, aggregation) = meters[rng.random_range(0..meters.len())].clone();
        let quantity = match meter.as_str() {
            "api_calls" => Decimal::ONE,
            "compute_minutes" => Decimal::new(rng.random_range(1..=600), 1),
            "storage_bytes" => Decimal::from(rng.random_range(1_000_000u64..10_000_000_000)),
            "plan_seats" => Decimal::from(rng.random_range(1u64..=500)),
            "active_users" => Decimal::ONE,
            _ => Decimal::from(rng.random_range(100u64..10_000_000)),
        };
        let offset_ms = (i as i64 * 3_600_000) / spec.events.max(1) as i64;
        let mut properties = serde_json::Map::new();
        if let Aggregation::UniqueCount { property } = &aggregation {
            properties.insert(
                property.clone(),
                serde_json::Value::String(format!("u{}", rng.random_range(0..USERS_PER_ORG))),
            );
        }
        out.push(Event {
            org_id: tenants.orgs[org].clone(),
            id: EventId::parse(&format!("evt_{i:08}_{:08x}", rng.random::<u32>()))
                .unwrap_or_else(|_| unreachable_id()),
            project_id: tenants.projects[org][project].clone(),
            meter,
            aggregation,
            quantity: Quantity::new(quantity).unwrap_or(Quantity::ZERO),
            timestamp: spec.start + chrono::Duration::milliseconds(offset_ms),
            properties,
        });
    }
    out
}

#[cold]
fn unreachable_id() -> EventId {
    panic!("generated event ids are printable ASCII")
}

/// Ground truth: every counter of the distinct events, per org, by the core's own fold:
/// what a benchmark checks the counters its store ends with against.
pub fn truth(events: &[Event]) -> HashMap<OrgId, BTreeMap<OwnedCounterKey, Decimal>> {
    let mut out: HashMap<OrgId, BTreeMap<OwnedCounterKey, Decimal>> = HashMap::new();
    for (k, d) in fold(dedupe_in_batch(events)) {
        // A `unique_count` delta's values are all new to an empty counter.
        let distinct = match &d {
            Delta::Unique(values) => values.len() as u64,
            _ => 0,
        };
        let (v, _) = apply_delta(None, None, &d, distinct);
        out.entry(k.org.clone())
            .or_default()
            .insert(k.to_owned_key(), v);
    }
    out
}
