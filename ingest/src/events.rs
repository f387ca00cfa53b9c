//! `POST /v1/events`: authenticate, rate-limit, split the body, validate each event, check
//! projects, periods and hard plan limits, publish what passed in one call, and answer `202`
//! with the count accepted and every rejection.
//!
//! One bad event never sinks the others: everything about a single event (bad field,
//! unknown project, closed month, a used-up allowance when other events of the request pass,
//! the queue refusing it) is a rejection inside the `202`. Only what concerns the whole
//! request is an error status: `400` body shape, `401`/`403` key, `413` size, `429` rate
//! limit or (when every event is refused by it) a hard plan limit, `503` when the store or
//! the queue cannot be reached (then nothing was accepted and the client resends
//! everything; resent ids are deduplicated downstream), `500` for corrupt stored data.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_core::event::{ErrorCode, Event, EventError, ValidationContext};
use tally_core::ids::{ApiKeyId, OrgId, ProjectId};
use tally_core::period::{MAX_LATE_WINDOW, Month, open_for_events};
use tally_core::plan::{Plan, PlanId, RateLimit};
use tally_core::ports::{EventQueue, QueueError};
use tally_core::tenant::{KeyMode, KeyScope};
use tally_http::InForce;
use tracing::Instrument;

use crate::Ingest;
use crate::auth::{KeyAuth, bearer_token, require_scope};
use crate::body::{BodyFormat, Candidate, MAX_BODY_BYTES, split_body};
use crate::config::RateCost;
use crate::error::{ApiError, ErrorBody, LimitDetails, PLAN_LIMIT_EXCEEDED};
use crate::keys::CachedKey;
use crate::limits::{METRIC_RATE_LIMITED, PlanRefusal, Throttled};
use crate::lookups::ProjectState;

/// Most distinct projects one `POST /v1/events` may name; events naming more are refused
/// (`too_many_projects`), so a request costs at most this many project lookups.
pub const MAX_PROJECTS_PER_REQUEST: usize = 50;

/// Counter of accepted events (durably queued).
pub const METRIC_ACCEPTED: &str = "tally_events_accepted_total";
/// Counter of rejected events, labelled `code`.
pub const METRIC_REJECTED: &str = "tally_events_rejected_total";
/// Histogram of events per request (requests whose body split into events).
pub const METRIC_BATCH_SIZE: &str = "tally_ingest_batch_size";

/// Code of a rejection for an event the queue did not take (resend it).
pub const QUEUE_UNAVAILABLE: &str = "queue_unavailable";

/// The `202` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    /// How many events were durably queued (resent ids included: they are deduplicated
    /// downstream, never counted twice).
    pub accepted: usize,
    /// Every event that was not, in body order.
    pub rejected: Vec<Rejection>,
    /// Accepted events the client should look at (absent when there are none): an id sent
    /// twice in this request with different contents (`duplicate_conflict`). The first
    /// body sent under an id is the one counted, as with Stripe's idempotency keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Rejection>,
}

/// Code of the notice for an id resent with a different body in the same request.
pub const DUPLICATE_CONFLICT: &str = "duplicate_conflict";
/// Counter of ids resent with a different body that ingest saw.
pub const METRIC_DUPLICATE_CONFLICTS: &str = "tally_events_duplicate_conflicts_total";

/// Notices for the events of `events` (index, event) whose id an earlier event of the same
/// request already used with other contents: the later one changes nothing downstream.
fn duplicate_conflicts<'a>(events: impl IntoIterator<Item = (usize, &'a Event)>) -> Vec<Rejection> {
    let mut events = events.into_iter().peekable();
    // Fewer than two events cannot conflict: no map (nor its allocation) for a 1-event
    // request.
    let Some((_, head)) = events.next() else {
        return Vec::new();
    };
    if events.peek().is_none() {
        return Vec::new();
    }
    let mut first: HashMap<&str, &Event> = HashMap::from([(head.id.as_str(), head)]);
    let mut notices = Vec::new();
    for (index, event) in events {
        match first.get(event.id.as_str()) {
            None => {
                first.insert(event.id.as_str(), event);
            }
            Some(earlier) if *earlier != event => notices.push(Rejection {
                index,
                id: Some(event.id.as_str().to_owned()),
                error: ErrorBody::new(
                    DUPLICATE_CONFLICT,
                    "an earlier event of this request has the same id and other contents; \
                     the first one is counted and this one is ignored",
                    Some("id"),
                ),
            }),
            Some(_) => {}
        }
    }
    notices
}

/// One refused event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Position of the event in the body (0 for a single-event body).
    pub index: usize,
    /// The event's id when one could be read, else `null`.
    pub id: Option<String>,
    /// Why; `field` names the offending field (absent when the event as a whole is wrong).
    pub error: ErrorBody,
}

impl Rejection {
    /// The rejection a client sees for event `index` (with its `id`, if it had one) of a
    /// body in `format`, refused for `e`: the field is named as the client wrote it.
    pub fn of(index: usize, id: Option<String>, format: BodyFormat, e: EventError) -> Self {
        let field = if e.field.is_empty() {
            // An unknown field whose name is the empty string: name it as JSON would.
            (e.code == ErrorCode::UnknownField).then(|| "\"\"".to_owned())
        } else {
            Some(format.client_field(&e.field))
        };
        Rejection {
            index,
            id,
            error: ErrorBody::new(e.code.as_str(), e.message, field),
        }
    }

    fn plan_limit(
        index: usize,
        event: &Event,
        format: BodyFormat,
        r: &PlanRefusal,
        mode: KeyMode,
    ) -> Self {
        Rejection {
            index,
            id: Some(event.id.as_str().to_owned()),
            error: ErrorBody {
                limit: Some(details(r)),
                ..ErrorBody::new(
                    PLAN_LIMIT_EXCEEDED,
                    plan_limit_message(r, mode),
                    Some(format.client_field("meter")),
                )
            },
        }
    }
}

fn details(r: &PlanRefusal) -> LimitDetails {
    LimitDetails {
        meter: r.meter.as_str().to_owned(),
        period: r.month.to_string(),
        limit: r.limit.normalize().to_string(),
        usage: r.usage.normalize().to_string(),
    }
}

fn plan_limit_message(r: &PlanRefusal, mode: KeyMode) -> String {
    let (limit, meter, month, usage) =
        (r.limit.normalize(), &r.meter, r.month, r.usage.normalize());
    match mode {
        KeyMode::Live => format!(
            "this organization's plan allows {limit} {meter} in {month} and {usage} are used; upgrade the plan to send more"
        ),
        KeyMode::Test => format!(
            "test mode allows {limit} {meter} in {month} (the free plan's allowance) and {usage} are used; test keys are for testing, send production usage with a live key"
        ),
    }
}

/// Extractor: an active key with `events:write` (`401`/`403`), its org's plan, and a rate
/// limit token (`429`: taken when charging per request, only checked for when charging per
/// event). Runs before the body is read, so refused callers never upload it.
pub(crate) struct Admitted {
    /// The key as the key cache holds it (shared, not copied per request).
    key: Arc<CachedKey>,
    /// The catalogue in force when the request came in: the whole request is validated,
    /// bounded and limited by this one snapshot, even if a new version is swapped in
    /// meanwhile.
    catalogue: Arc<InForce>,
    plan: Arc<Plan>,
    /// The key's limit, when rate limits are on and charged per event (after the body is
    /// split).
    per_event: Option<RateLimit>,
}

impl FromRequestParts<Ingest> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Ingest) -> Result<Self, ApiError> {
        let client = tally_http::client::client_ip_of(parts, state.inner.config.trusted_proxies);
        let cached = KeyAuth::from_ref(state)
            .authenticate_cached(bearer_token(&parts.headers)?, client)
            .await?;
        let key = &cached.key;
        require_scope(key, KeyScope::EventsWrite)?;
        tracing::Span::current().record("org", key.org_id.as_str());
        let plan_id = state
            .inner
            .lookups
            .org_plan(&key.org_id)
            .await?
            .ok_or_else(|| {
                ApiError::Unauthorized("the organization of this API key no longer exists".into())
            })?;
        let config = &state.inner.config.rate_limits;
        let mut per_event = None;
        if config.enabled {
            let limit = config.limit_for(&key.id, plan_id);
            let now = state.inner.ports.clock.now();
            let limiter = &state.inner.limiter;
            let refused = |t| rate_limited(t, None, config.cost);
            match config.cost {
                RateCost::PerRequest => take_one(state, &key.id, limit, config.cost).await?,
                RateCost::PerEvent => {
                    per_event = Some(limit);
                    limiter.check(&key.id, limit, now).map_err(refused)?;
                    if let Some(shared) = &state.inner.shared {
                        shared.check_rate(&key.id, limit, now).map_err(refused)?;
                    }
                }
            }
        }
        let catalogue = state.inner.ports.catalogue.load();
        Ok(Admitted {
            key: cached.clone(),
            plan: catalogue.plan(plan_id),
            catalogue,
            per_event,
        })
    }
}

/// Takes one unit from the key's rate bucket: the shared one first when there is one (a
/// refusal there costs the process's bucket nothing), then the process's own, giving the
/// shared unit back if that refuses. `429 rate_limited` with `Retry-After` when either is
/// empty. Every request that is not `POST /v1/events` charged per event pays this way
/// (`GET /v1/entitlements` too, so a key cannot poll without bound).
pub(crate) async fn take_one(
    state: &Ingest,
    key: &ApiKeyId,
    limit: RateLimit,
    cost: RateCost,
) -> Result<(), ApiError> {
    let now = state.inner.ports.clock.now();
    let limiter = &state.inner.limiter;
    let refused = |t| rate_limited(t, None, cost);
    match &state.inner.shared {
        Some(shared) => {
            limiter.check(key, limit, now).map_err(refused)?;
            shared
                .take_rate(key, limit, 1, now)
                .await
                .map_err(refused)?;
            limiter.charge(key, limit, 1, now).map_err(|t| {
                shared.give_back_rate(key, limit, 1, now);
                refused(t)
            })
        }
        None => limiter.charge(key, limit, 1, now).map_err(refused),
    }
}

fn rate_limited(t: Throttled, events: Option<usize>, cost: RateCost) -> ApiError {
    metrics::counter!(METRIC_RATE_LIMITED).increment(1);
    let unit = match cost {
        RateCost::PerRequest => "requests",
        RateCost::PerEvent => "events",
    };
    let hint = match events {
        Some(n) if n as u64 > u64::from(t.limit.burst) => format!(
            " This request's {n} events exceed the burst, so it waits for a full bucket; smaller batches pass sooner."
        ),
        _ => String::new(),
    };
    ApiError::RateLimited {
        message: format!(
            "rate limit of {} {unit} per second (burst {}) for this API key exceeded; retry after {} s.{hint}",
            t.limit.per_second, t.limit.burst, t.retry_after_secs
        ),
        retry_after_secs: t.retry_after_secs,
    }
}

/// The route handler. Extractors run in order: the key, plan and rate pre-check
/// (`401`/`403`/`429`) before the body is read (`413` beyond [`MAX_BODY_BYTES`]).
pub(crate) async fn post_events(
    State(state): State<Ingest>,
    caller: Admitted,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    let Admitted {
        key: cached,
        catalogue,
        plan,
        per_event,
    } = caller;
    let key = &cached.key;
    let org = &key.org_id;
    let span = tracing::Span::current();
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::bad_request("invalid_body", "body", "the request body could not be read")
        }
    })?;
    let format = BodyFormat::from_headers(&headers);
    let candidates = split_body(format, &body)?;
    span.record("batch_size", candidates.len());
    metrics::histogram!(METRIC_BATCH_SIZE).record(candidates.len() as f64);
    if let Some(limit) = per_event {
        let now = state.inner.ports.clock.now();
        let n = candidates.len() as u64;
        let refused = |t| rate_limited(t, Some(candidates.len()), RateCost::PerEvent);
        if let Some(shared) = &state.inner.shared {
            shared
                .take_rate(&key.id, limit, n, now)
                .await
                .map_err(refused)?;
        }
        state
            .inner
            .limiter
            .charge(&key.id, limit, n, now)
            .map_err(|t| {
                if let Some(shared) = &state.inner.shared {
                    shared.give_back_rate(&key.id, limit, n, now);
                }
                refused(t)
            })?;
    }
    let request = Request {
        org,
        mode: key.mode(),
        catalogue: &catalogue,
        plan: &plan,
        format,
    };
    let response = ingest(&state, &request, &candidates).await?;
    metrics::counter!(METRIC_ACCEPTED).increment(response.accepted as u64);
    for r in &response.rejected {
        metrics::counter!(METRIC_REJECTED, "code" => r.error.code.clone()).increment(1);
    }
    tracing::info!(
        accepted = response.accepted,
        rejected = response.rejected.len(),
        "events ingested"
    );
    Ok((StatusCode::ACCEPTED, Json(response)))
}

/// Who sent one request and what it is held to.
#[derive(Clone, Copy)]
struct Request<'a> {
    /// The key's org.
    org: &'a OrgId,
    /// Live or test key.
    mode: KeyMode,
    /// The catalogue snapshot of the request ([`Admitted::catalogue`]).
    catalogue: &'a InForce,
    /// The org's plan in that catalogue.
    plan: &'a Plan,
    /// How the body is encoded (how rejections name events).
    format: BodyFormat,
}

/// Validates, checks and publishes the candidates of one request for `org`. Test-mode
/// events (`mode` of a test key) are stamped with the org's
/// [test twin](OrgId::test_twin): they are counted apart and never priced, so they neither
/// use nor are held to the org's plan. They are held instead to the free plan's hard limits,
/// counted on the twin: unbilled test usage must stay a test, never a way to meter
/// production traffic for nothing.
async fn ingest(
    state: &Ingest,
    request: &Request<'_>,
    candidates: &[Candidate<'_>],
) -> Result<IngestResponse, ApiError> {
    let Request {
        org,
        mode,
        catalogue,
        plan,
        format,
    } = *request;
    let inner = &state.inner;
    let now = inner.ports.clock.now();
    let usage_org = mode.usage_org(org);
    let ctx = ValidationContext {
        org_id: &usage_org,
        catalogue: &catalogue.meters,
        now,
        // Late events are held to the meters of their own month (kept with the catalogue
        // in force, so this costs no read).
        other_month: catalogue.other_month(),
    };
    let mut rejected = Vec::new();
    let mut valid = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        let checked = match candidate {
            Ok(json) => Event::validate(json, &ctx),
            Err(e) => Err(e.clone()),
        };
        match checked {
            Ok(event) => valid.push((index, event)),
            Err(e) => {
                let id = candidate.as_ref().ok().and_then(|j| Event::id_hint(j));
                rejected.push(Rejection::of(index, id, format, e));
            }
        }
    }

    // Each distinct project and month is looked up once per request (through the caches),
    // the projects concurrently and at most MAX_PROJECTS_PER_REQUEST of them: an event
    // naming one more is refused, so one request cannot cost a thousand store reads.
    let mut distinct: Vec<ProjectId> = Vec::new();
    for (_, event) in &valid {
        if distinct.len() < MAX_PROJECTS_PER_REQUEST && !distinct.contains(&event.project_id) {
            distinct.push(event.project_id.clone());
        }
    }
    let looked_up = futures_util::future::join_all(
        distinct
            .iter()
            .map(|p| inner.lookups.project_in_org(org, p)),
    )
    .await;
    let mut project_state: HashMap<ProjectId, ProjectState> = HashMap::new();
    for (p, state) in distinct.into_iter().zip(looked_up) {
        project_state.insert(p, state?);
    }
    let mut month_closed: HashMap<Month, bool> = HashMap::new();
    for (_, event) in &valid {
        let month = Month::of(event.timestamp);
        if project_state.get(&event.project_id) == Some(&ProjectState::Active)
            && open_for_events(month, now)
            && !month_closed.contains_key(&month)
        {
            let closed = inner.lookups.period_closed(month).await?;
            month_closed.insert(month, closed);
        }
    }

    let mut indexes = Vec::with_capacity(valid.len());
    let mut events = Vec::with_capacity(valid.len());
    for (index, event) in valid {
        let id = Some(event.id.as_str().to_owned());
        if let Err(e) = placement(
            &event,
            project_state.get(&event.project_id).copied(),
            month_closed.get(&Month::of(event.timestamp)).copied(),
            now,
        ) {
            rejected.push(Rejection::of(index, id, format, e));
            continue;
        }
        indexes.push(index);
        events.push(event);
    }

    // The series bound of dimensioned meters, before plan limits reserve anything: a
    // refused event leaves the publish list, the rest of the batch goes on.
    let series_refusals = inner
        .series
        .check(&catalogue.meters, catalogue.other_month(), &events)
        .instrument(tracing::debug_span!("series", events = events.len()))
        .await?;
    let (indexes, events) = {
        let mut keep = (
            Vec::with_capacity(events.len()),
            Vec::with_capacity(events.len()),
        );
        for ((index, event), refusal) in indexes.into_iter().zip(events).zip(series_refusals) {
            match refusal {
                Some(e) => {
                    let id = Some(event.id.as_str().to_owned());
                    rejected.push(Rejection::of(index, id, format, e));
                }
                None => {
                    keep.0.push(index);
                    keep.1.push(event);
                }
            }
        }
        keep
    };

    // Hard plan limits: refused events leave the publish list. Test usage is held to the
    // free plan's, on the twin's own counters (see the doc above).
    let test_plan;
    let guarded: (&OrgId, &Plan) = match mode {
        KeyMode::Live => (org, plan),
        KeyMode::Test => {
            test_plan = catalogue.plan(PlanId::Free);
            (&usage_org, &test_plan)
        }
    };
    let refusals = inner
        .plan_guard
        .check(guarded.0, guarded.1, &events)
        .instrument(tracing::debug_span!("plan_limits", events = events.len()))
        .await?;
    let mut first_refusal = None;
    let mut plan_refused = 0;
    let mut keep_indexes = Vec::with_capacity(events.len());
    let mut keep_events = Vec::with_capacity(events.len());
    for ((index, event), refusal) in indexes.into_iter().zip(events).zip(refusals) {
        match refusal {
            Some(r) => {
                plan_refused += 1;
                rejected.push(Rejection::plan_limit(index, &event, format, &r, mode));
                first_refusal.get_or_insert(r);
            }
            None => {
                keep_indexes.push(index);
                keep_events.push(event);
            }
        }
    }
    let (indexes, events) = (keep_indexes, keep_events);
    if let Some(r) = first_refusal
        && plan_refused == candidates.len()
    {
        return Err(ApiError::PlanLimitExceeded {
            message: plan_limit_message(&r, mode),
            details: Box::new(details(&r)),
            retry_after_secs: secs_until_next_month(now),
        });
    }

    let mut failed = Vec::new();
    if !events.is_empty() {
        let published = publish(
            inner.ports.queue.as_ref(),
            &events,
            inner.config.publish_retries,
        )
        .instrument(tracing::info_span!("publish", events = events.len()))
        .await;
        failed = match published {
            Ok(failed) => failed,
            Err(e) => {
                inner.plan_guard.release(guarded.0, guarded.1, &events);
                return Err(ApiError::Unavailable(format!("queue publish failed: {e}")));
            }
        };
        inner.plan_guard.release(
            guarded.0,
            guarded.1,
            failed.iter().filter_map(|(i, _)| events.get(*i)),
        );
        for (i, reason) in &failed {
            let (Some(index), Some(event)) = (indexes.get(*i), events.get(*i)) else {
                continue;
            };
            tracing::warn!(%reason, id = event.id.as_str(), "queue did not take an event");
            rejected.push(Rejection {
                index: *index,
                id: Some(event.id.as_str().to_owned()),
                error: ErrorBody::new(
                    QUEUE_UNAVAILABLE,
                    "the queue did not take this event; send it again",
                    None::<String>,
                ),
            });
        }
    }
    rejected.sort_by_key(|r| r.index);
    let not_queued: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
    let notices = duplicate_conflicts(
        indexes
            .iter()
            .copied()
            .zip(&events)
            .enumerate()
            .filter(|(i, _)| !not_queued.contains(i))
            .map(|(_, pair)| pair),
    );
    if !notices.is_empty() {
        metrics::counter!(METRIC_DUPLICATE_CONFLICTS).increment(notices.len() as u64);
    }
    Ok(IngestResponse {
        accepted: events.len() - failed.len(),
        rejected,
        notices,
    })
}

/// Whether a validated `event` may be recorded at `now`, given what the store says of its
/// project and of its month: the checks after [`Event::validate`] that need the store,
/// shared by `POST /v1/events` and `tally import`.
///
/// `project` is `None` when it was not looked up (past [`MAX_PROJECTS_PER_REQUEST`]:
/// `too_many_projects`); `month_closed` is `None` when the month was not looked up, which
/// counts as closed. Refusals: `project_archived`, `unknown_project`, and `period_closed`
/// for a month out of the open window ([`open_for_events`]) or closed by billing.
pub fn placement(
    event: &Event,
    project: Option<ProjectState>,
    month_closed: Option<bool>,
    now: DateTime<Utc>,
) -> Result<(), EventError> {
    // Every project refusal names `project_id`; only the code and the message differ.
    let refusal = match project {
        Some(ProjectState::Active) => None,
        Some(ProjectState::Archived) => Some((
            ErrorCode::ProjectArchived,
            format!(
                "project {} is archived and takes no more usage",
                event.project_id
            ),
        )),
        Some(ProjectState::Missing) => Some((
            ErrorCode::UnknownProject,
            format!(
                "{} is not a project of this API key's organization",
                event.project_id
            ),
        )),
        None => Some((
            ErrorCode::TooManyProjects,
            format!(
                "a request may name at most {MAX_PROJECTS_PER_REQUEST} distinct projects; \
                 send events of the others in another request"
            ),
        )),
    };
    if let Some((code, message)) = refusal {
        return Err(EventError::new(code, "project_id", message));
    }
    let month = Month::of(event.timestamp);
    if !open_for_events(month, now) {
        return Err(EventError::new(
            ErrorCode::PeriodClosed,
            "timestamp",
            format!(
                "the billing period {month} is closed to new events: Tally records usage \
                 of the current month, and of the previous one until it is billed (at most \
                 {} days after it ends)",
                MAX_LATE_WINDOW.num_days()
            ),
        ));
    }
    if month_closed != Some(false) {
        return Err(EventError::new(
            ErrorCode::PeriodClosed,
            "timestamp",
            format!("the billing period {month} is closed; usage in it can no longer be recorded"),
        ));
    }
    Ok(())
}

/// Publishes `events`; the ones the queue did not take are published again (only those),
/// up to `retries` times. Returns the indexes (into `events`, distinct, in range) that
/// still failed, with the last reason. An error of the first call is the caller's `503`
/// (nothing was queued); an error of a retry leaves the retried events failed, since the
/// others are already queued.
async fn publish(
    queue: &dyn EventQueue,
    events: &[Event],
    retries: u32,
) -> Result<Vec<(usize, String)>, QueueError> {
    let report = queue.publish(events).await?;
    let mut failed = in_range(report.failed, Some, events.len());
    for attempt in 1..=retries {
        if failed.is_empty() {
            break;
        }
        let again: Vec<Event> = failed
            .iter()
            .filter_map(|(i, _)| events.get(*i).cloned())
            .collect();
        tracing::info!(
            attempt,
            events = again.len(),
            "publishing the events the queue did not take again"
        );
        match queue.publish(&again).await {
            Ok(report) => {
                let map: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
                failed = in_range(report.failed, |j| map.get(j).copied(), events.len());
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish retry failed");
                break;
            }
        }
    }
    Ok(failed)
}

/// The failed entries of a publish report mapped to indexes of the original slice, keeping
/// the first report of each and dropping out-of-range ones (a buggy adapter).
fn in_range(
    failed: Vec<(usize, String)>,
    map: impl Fn(usize) -> Option<usize>,
    len: usize,
) -> Vec<(usize, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (j, reason) in failed {
        match map(j).filter(|i| *i < len) {
            Some(i) if seen.insert(i) => out.push((i, reason)),
            Some(_) => {}
            None => tracing::warn!(j, len, "publish report names an event out of range"),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// Whole seconds (rounded up, at least 1) from `now` to the start of the next UTC month.
pub fn secs_until_next_month(now: DateTime<Utc>) -> u64 {
    let next = Month::of(now).next().start();
    let micros = (next - now).num_microseconds().unwrap_or(i64::MAX).max(0);
    u64::try_from(micros.saturating_add(999_999) / 1_000_000)
        .unwrap_or(u64::MAX)
        .max(1)
}
