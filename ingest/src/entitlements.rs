//! `GET /v1/entitlements`: whether the API key's org may consume more of a meter now.
//!
//! This is how the services that send events also gate features on plan limits: before
//! starting something metered, ask. It lives in ingest, beside the hard limits, because it
//! answers from the same figures: the org-wide month-to-date counter cached by
//! [`PlanGuard`](crate::limits::PlanGuard) (re-read from the store once older than
//! [`CacheConfig::usage_ttl`](crate::CacheConfig), 2 s by default) plus the events this
//! process accepted since. So an answer is exactly as stale as enforcement:
//!
//! **Staleness bound**: usage accepted elsewhere (another process, or this one before its
//! last re-read) shows after at most the usage TTL (**2 s**) + the aggregator's batching
//! window (**200 ms**) + the time events wait in the queue (about zero when the aggregator
//! keeps up). On plans with hard limits, events this process accepted are counted at once.
//! **Latency**: one store read per (org, meter, month) per TTL; otherwise memory only.
//!
//! Per meter: `limit` is the plan's monthly allowance (`null`: unlimited), `hard` whether
//! the plan refuses events past it (free) or bills them as overage (paid plans), `usage`
//! the month to date, `remaining = max(0, limit − usage)`. `allowed` is what ingest would
//! do with one more event now: `false` only on a hard plan whose `sum`, `count` or
//! `unique_count` meter has `usage >= limit` (any increment would pass it); a `max` or
//! `latest` meter takes any reading up to the limit, so it stays allowed; soft plans are
//! always allowed (overage is billed, `remaining` shows 0).
//!
//! **Rate limit**: every check takes one unit from the key's rate bucket, the same bucket
//! `POST /v1/events` takes from (sized by the org's plan, or the key's override; shared
//! across instances on Lambda), and is refused with `429 rate_limited` and `Retry-After`
//! when it is empty. So a key cannot poll without bound, and polling eats into what it may
//! send.
//!
//! A test key (`tk_test_…`) answers for the org's test usage, held to the free plan's hard
//! limits, as ingest holds it. Keys with `events:write` or `usage:read` may ask; the key
//! itself is authenticated through ingest's key cache (a revoked key stops working within
//! the cache's TTL, 10 s; a key never seen before is read from the store).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Query, State};
use axum::http::HeaderMap;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_core::ids::MeterName;
use tally_core::meter::{Aggregation, Meter};
use tally_core::period::Month;
use tally_core::plan::{Plan, PlanId};
use tally_core::tenant::{KeyMode, KeyScope};

use crate::Ingest;
use crate::auth::{KeyAuth, bearer_token};
use crate::error::ApiError;

/// The statuses `GET /v1/entitlements` answers with (documented in the shared OpenAPI
/// document).
pub use tally_http::openapi::GET_ENTITLEMENTS_STATUSES;

/// Longest `meter` accepted (meter names are at most 64 characters).
const MAX_METER_LEN: usize = 64;

/// The query: `meter` (optional; without it, every meter).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EntitlementParams {
    /// The meter asked about.
    pub meter: Option<String>,
}

/// One meter's entitlement. Quantities are decimal strings in the meter's unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    /// The meter.
    pub meter: String,
    /// Whether one more event of the meter would be accepted now.
    pub allowed: bool,
    /// The plan's monthly allowance; `null` when the plan does not limit the meter, and
    /// always for a `time_weighted_sum` meter (its value × hours is known only after the
    /// fact, so it is never limited: `allowed` is `true`).
    pub limit: Option<String>,
    /// Month-to-date usage (see the module doc for how stale it may be).
    pub usage: String,
    /// `max(0, limit − usage)`; `null` when unlimited.
    pub remaining: Option<String>,
    /// Whether the plan refuses events past `limit` (else they are billed as overage).
    pub hard: bool,
    /// The month, `YYYY-MM` (UTC).
    pub period: String,
}

/// The answer without `meter`: every meter, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementsResponse {
    /// The plan the answers come from (`free` for a test key).
    pub plan: String,
    /// The month, `YYYY-MM` (UTC).
    pub period: String,
    /// One entry per meter.
    pub entitlements: Vec<Entitlement>,
}

/// The answer: one meter's entitlement when `meter` was given, else every meter's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntitlementsAnswer {
    /// `?meter=M`.
    One(Entitlement),
    /// No `meter`.
    All(EntitlementsResponse),
}

/// What ingest would do with one more event of `meter`, from its figures. Pure: the rule
/// the handler applies, written once.
pub fn entitlement(meter: &Meter, plan: &Plan, usage: Decimal, period: Month) -> Entitlement {
    // A time-weighted meter's figure (GB-hours) is known only after the fact, so it has no
    // limit to check against: the catalogue refuses a hard limit on it, and an allowance
    // is an amount billed at month close, not a limit.
    let limit = match meter.aggregation {
        Aggregation::TimeWeightedSum => None,
        _ => plan.meter_limit(&meter.name),
    };
    let hard = plan.limits.hard_usage_limits;
    let adds = matches!(
        meter.aggregation,
        Aggregation::Sum | Aggregation::Count | Aggregation::UniqueCount { .. }
    );
    let allowed = match limit {
        Some(limit) if hard && adds => usage < limit,
        _ => true,
    };
    Entitlement {
        meter: meter.name.to_string(),
        allowed,
        limit: limit.map(|l| l.normalize().to_string()),
        usage: usage.normalize().to_string(),
        remaining: limit.map(|l| (l - usage).max(Decimal::ZERO).normalize().to_string()),
        hard,
        period: period.to_string(),
    }
}

/// The client's address ([`tally_http::client`]), which the key's org's IP allowlist is
/// checked against.
pub(crate) struct ClientAddr(pub Option<std::net::IpAddr>);

impl axum::extract::FromRequestParts<Ingest> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Ingest,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(tally_http::client::client_ip_of(
            parts,
            state.config().trusted_proxies,
        )))
    }
}

/// The handler.
pub(crate) async fn get_entitlements(
    State(state): State<Ingest>,
    client: ClientAddr,
    headers: HeaderMap,
    query: Result<Query<EntitlementParams>, QueryRejection>,
) -> Result<Json<EntitlementsAnswer>, ApiError> {
    let key = KeyAuth::from_ref(&state)
        .authenticate_from(bearer_token(&headers)?, client.0)
        .await?;
    if !key.has_scope(KeyScope::EventsWrite) && !key.has_scope(KeyScope::UsageRead) {
        return Err(ApiError::Forbidden(
            "this API key has neither events:write nor usage:read, one of which this route needs"
                .into(),
        ));
    }
    tracing::Span::current().record("org", key.org_id.as_str());
    let Query(params) = query.map_err(|e| {
        ApiError::bad_request("invalid_query", "query", format!("invalid query: {e}"))
    })?;
    let inner = &state.inner;
    // One catalogue snapshot for the whole answer (see `tally_http::live`).
    let catalogue = inner.ports.catalogue.load();
    let meters: Vec<&Meter> = match &params.meter {
        Some(name) => {
            if name.len() > MAX_METER_LEN {
                return Err(ApiError::bad_request(
                    "invalid_meter",
                    "meter",
                    format!("meter is longer than {MAX_METER_LEN} characters"),
                ));
            }
            let meter = catalogue.meters.get(name).ok_or_else(|| {
                ApiError::bad_request(
                    "unknown_meter",
                    "meter",
                    format!(
                        "unknown meter {name:?}; known meters: {}",
                        catalogue.meters.names().join(", ")
                    ),
                )
            })?;
            vec![meter]
        }
        None => catalogue.meters.meters().collect(),
    };
    let plan_id = inner.lookups.org_plan(&key.org_id).await?.ok_or_else(|| {
        ApiError::Unauthorized("the organization of this API key no longer exists".into())
    })?;
    // A check is a request like any other: it takes a unit from the key's rate bucket (the
    // bucket of the org's plan, as `POST /v1/events` takes it), so a key cannot poll
    // without bound. Taken before any usage is read, so a refused poll costs no store read.
    let rates = &inner.config.rate_limits;
    if rates.enabled {
        let limit = rates.limit_for(&key.id, plan_id);
        crate::events::take_one(&state, &key.id, limit, rates.cost).await?;
    }
    // A test key's usage is the twin's, held to the free plan (as ingest holds it).
    let mode = key.mode();
    let plan_id = match mode {
        KeyMode::Live => plan_id,
        KeyMode::Test => PlanId::Free,
    };
    let plan = catalogue.plan(plan_id);
    let usage_org = mode.usage_org(&key.org_id);
    let period = Month::of(inner.ports.clock.now());
    let mut out = Vec::with_capacity(meters.len());
    for meter in meters {
        let name: &MeterName = &meter.name;
        let usage = inner
            .plan_guard
            .month_usage(&usage_org, name, period)
            .await?;
        out.push(entitlement(meter, &plan, usage, period));
    }
    metrics::counter!(METRIC_ENTITLEMENT_CHECKS).increment(1);
    if params.meter.is_some()
        && let Some(one) = out.pop()
    {
        return Ok(Json(EntitlementsAnswer::One(one)));
    }
    Ok(Json(EntitlementsAnswer::All(EntitlementsResponse {
        plan: plan_id.as_str().to_owned(),
        period: period.to_string(),
        entitlements: out,
    })))
}

/// Counter of entitlement checks answered.
pub const METRIC_ENTITLEMENT_CHECKS: &str = "tally_ingest_entitlement_checks_total";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tally_core::{MeterName, Money, PlanId, PlanLimits};

    /// A time-weighted meter has no limit to answer against, even on a hard plan that
    /// lists an allowance for it (the catalogue refuses that; this is the second guard):
    /// allowed, no limit, no remaining. The same figures on a sum meter are refused, so
    /// the rule is what makes the difference.
    #[test]
    fn a_time_weighted_meter_is_allowed_with_no_limit() {
        let name = MeterName::parse("storage_gb").unwrap();
        let plan = Plan {
            id: PlanId::Free,
            monthly_fee: Money::new(Decimal::ZERO),
            limits: PlanLimits {
                users: None,
                projects: None,
                meters: BTreeMap::from([(name.clone(), Decimal::from(10))]),
                hard_usage_limits: true,
            },
        };
        let mut meter = Meter {
            name,
            unit: "GB".into(),
            aggregation: Aggregation::TimeWeightedSum,
            default_quantity: None,
            value: Default::default(),
            dimensions: Default::default(),
        };
        let month = Month::new(2026, 11).unwrap();
        let e = entitlement(&meter, &plan, Decimal::from(20), month);
        assert!(e.allowed);
        assert_eq!((e.limit, e.remaining), (None, None));
        meter.aggregation = Aggregation::Sum;
        let e = entitlement(&meter, &plan, Decimal::from(20), month);
        assert!(!e.allowed);
        assert_eq!(e.limit.as_deref(), Some("10"));
    }
}
