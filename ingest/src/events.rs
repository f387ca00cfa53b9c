//! `POST /v1/events`: authenticate, split the body, validate each event, check projects and
//! periods against the store, publish what passed in one call, and answer `202` with the
//! count accepted and every rejection.
//!
//! One bad event never sinks the others: everything about a single event (bad field,
//! unknown project, closed month, the queue refusing it) is a rejection inside the `202`.
//! Only what concerns the whole request is an error status: `400` body shape, `401`/`403`
//! key, `413` size, `503` when the store or the queue cannot be reached (then nothing was
//! accepted and the client resends everything; resent ids are deduplicated downstream).

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tally_core::event::{ErrorCode, Event, EventError, ValidationContext};
use tally_core::ids::{OrgId, ProjectId};
use tally_core::period::Month;

use crate::IngestState;
use crate::auth::{EventsWrite, ScopedKey};
use crate::body::{BodyFormat, Candidate, MAX_BODY_BYTES, split_body};
use crate::error::{ApiError, ErrorBody};

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
    fn of(index: usize, id: Option<String>, format: BodyFormat, e: EventError) -> Self {
        let field = (!e.field.is_empty()).then(|| format.client_field(&e.field));
        Rejection {
            index,
            id,
            error: ErrorBody::new(e.code.as_str(), e.message, field),
        }
    }
}

/// The route handler. Extractors run in order: the key (`401`/`403`) before the body is
/// read (`413` beyond [`MAX_BODY_BYTES`]).
pub(crate) async fn post_events(
    State(state): State<IngestState>,
    auth: ScopedKey<EventsWrite>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    let org = auth.into_inner().org_id;
    let span = tracing::Span::current();
    span.record("org", org.as_str());
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
    let response = ingest(&state, &org, format, &candidates).await?;
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

/// Validates, checks and publishes the candidates of one request for `org`.
async fn ingest(
    state: &IngestState,
    org: &OrgId,
    format: BodyFormat,
    candidates: &[Candidate<'_>],
) -> Result<IngestResponse, ApiError> {
    let ctx = ValidationContext {
        org_id: org,
        catalogue: &state.catalogue,
        now: state.clock.now(),
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

    // Each distinct project and month is asked about once per request.
    let mut project_ok: HashMap<ProjectId, bool> = HashMap::new();
    let mut month_closed: HashMap<Month, bool> = HashMap::new();
    for (_, event) in &valid {
        let ok = match project_ok.get(&event.project_id) {
            Some(ok) => *ok,
            None => {
                let ok = state
                    .tenants
                    .get_project(org, &event.project_id)
                    .await?
                    .is_some_and(|p| p.org_id == *org);
                project_ok.insert(event.project_id.clone(), ok);
                ok
            }
        };
        let month = Month::of(event.timestamp);
        if ok && !month_closed.contains_key(&month) {
            let closed = state.usage.is_period_closed(month).await?;
            month_closed.insert(month, closed);
        }
    }

    let mut indexes = Vec::with_capacity(valid.len());
    let mut events = Vec::with_capacity(valid.len());
    for (index, event) in valid {
        let id = Some(event.id.as_str().to_owned());
        if project_ok.get(&event.project_id) != Some(&true) {
            let e = EventError::new(
                ErrorCode::UnknownProject,
                "project_id",
                format!(
                    "{} is not a project of this API key's organization",
                    event.project_id
                ),
            );
            rejected.push(Rejection::of(index, id, format, e));
            continue;
        }
        let month = Month::of(event.timestamp);
        if month_closed.get(&month) != Some(&false) {
            let e = EventError::new(
                ErrorCode::PeriodClosed,
                "timestamp",
                format!(
                    "the billing period {month} is closed; usage in it can no longer be recorded"
                ),
            );
            rejected.push(Rejection::of(index, id, format, e));
            continue;
        }
        indexes.push(index);
        events.push(event);
    }

    let mut failed = HashSet::new();
    if !events.is_empty() {
        let report = state
            .queue
            .publish(&events)
            .await
            .map_err(|e| ApiError::Unavailable(format!("queue publish failed: {e}")))?;
        for (i, reason) in report.failed {
            let (Some(index), Some(event)) = (indexes.get(i), events.get(i)) else {
                tracing::warn!(
                    i,
                    published = events.len(),
                    "publish report names an event out of range"
                );
                continue;
            };
            if failed.insert(i) {
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
    }
    rejected.sort_by_key(|r| r.index);
    Ok(IngestResponse {
        accepted: events.len() - failed.len(),
        rejected,
    })
}
