//! `GET /v1/orgs/{org_id}/reports/{period}/lines/{meter}/events`: the ledger entries a
//! report line bills, a page at a time, for the org's owners and admins (`ledger.read`).
//!
//! These are the entries whose count and digest month close recorded on the line (see
//! `tally_core::audit` and `docs/audit.md`): the org's ledger records of the meter stamped
//! in the month, each event once. Each entry is given in the canonical texts of
//! `tally_core::export`, so a customer can rebuild each canonical line and the digest from
//! the pages alone, in any order. A page may hold fewer entries than `limit` (the store
//! pages the org's whole month and this route keeps the meter's); follow `next_cursor`
//! until it is absent.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tally_core::export::ledger_row;
use tally_core::ids::MeterName;
use tally_core::period::Month;
use tally_core::ports::{LedgerPageQuery, StoreError};

use crate::ApiState;
use crate::auth::Caller;
use crate::http::{ApiError, page_limit, query_params};
use crate::mgmt::{MgmtError, PathParams};
use crate::roles::Action;

/// Default page size.
pub const DEFAULT_LINE_EVENTS_PAGE: usize = 100;
/// Largest page size.
pub const MAX_LINE_EVENTS_PAGE: usize = 1_000;
/// Longest cursor accepted (the stores' cursors are far shorter).
const MAX_CURSOR_LEN: usize = 512;
/// Store pages read at most per request while looking for the meter's entries.
const MAX_STORE_PAGES: usize = 10;

/// The query of the route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LineEventsParams {
    /// Page size, 1 to 1,000 (default 100).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One ledger entry, in the canonical texts (`tally_core::export::LEDGER_COLUMNS`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineEvent {
    /// The event id.
    pub event_id: String,
    /// The org.
    pub org_id: String,
    /// The project.
    pub project_id: String,
    /// The meter.
    pub meter: String,
    /// `sum`, `count`, `max`, `latest` or `unique_count:<property>`.
    pub aggregation: String,
    /// The quantity, normalized.
    pub quantity: String,
    /// RFC 3339, UTC, nine fraction digits.
    pub timestamp: String,
    /// The properties, as an object.
    pub properties: Value,
}

/// The route's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LineEventsResponse {
    /// This page's entries.
    pub events: Vec<LineEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/orgs/{org_id}/reports/{period}/lines/{meter}/events` (`ledger.read`).
pub(crate) async fn line_events(
    State(state): State<ApiState>,
    caller: Caller,
    PathParams((org, period, meter)): PathParams<(String, String, String)>,
    params: Result<Query<LineEventsParams>, QueryRejection>,
) -> Result<Json<LineEventsResponse>, MgmtError> {
    let auth = caller.authorize(&state, &org, Action::LedgerRead).await?;
    let p = query_params(params)?;
    let period = Month::parse(&period).map_err(|_| {
        ApiError::bad_request(
            "invalid_period",
            "period",
            "period must be a month, YYYY-MM",
        )
    })?;
    let meter = MeterName::parse(&meter)
        .map_err(|e| ApiError::bad_request("invalid_meter", "meter", e.to_string()))?;
    let limit = page_limit(
        p.limit.as_deref(),
        DEFAULT_LINE_EVENTS_PAGE,
        MAX_LINE_EVENTS_PAGE,
    )
    .map_err(|m| ApiError::bad_request("invalid_limit", "limit", m))?;
    let invalid_cursor = || {
        ApiError::bad_request(
            "invalid_cursor",
            "cursor",
            "cursor must be the next_cursor of a previous page",
        )
    };
    let mut cursor = match p.cursor {
        Some(c) if c.is_empty() || c.len() > MAX_CURSOR_LEN => return Err(invalid_cursor().into()),
        other => other,
    };
    let mut events = Vec::new();
    for _ in 0..MAX_STORE_PAGES {
        let given = cursor.is_some();
        let page = match state
            .usage
            .ledger_page(&LedgerPageQuery::new(
                &auth.org,
                period,
                cursor.take(),
                limit,
            ))
            .await
        {
            Ok(page) => page,
            // The stores refuse a cursor they did not issue as corrupt.
            Err(StoreError::Corrupt(_)) if given && events.is_empty() => {
                return Err(invalid_cursor().into());
            }
            Err(e) => return Err(e.into()),
        };
        for e in page
            .events
            .iter()
            .filter(|e| e.meter.base() == meter.as_str())
        {
            let [
                event_id,
                org_id,
                project_id,
                meter,
                aggregation,
                quantity,
                timestamp,
                _,
            ] = ledger_row(e);
            events.push(LineEvent {
                event_id,
                org_id,
                project_id,
                meter,
                aggregation,
                quantity,
                timestamp,
                properties: Value::Object(e.properties.clone()),
            });
        }
        cursor = page.next;
        if cursor.is_none() || !events.is_empty() {
            break;
        }
    }
    Ok(Json(LineEventsResponse {
        events,
        next_cursor: cursor,
    }))
}
