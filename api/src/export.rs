//! `GET /v1/orgs/{org_id}/export`: the org's usage counters or ledger entries of a month as
//! CSV, streamed, for its owners and admins (`ledger.read`); what `tally export --org` writes
//! (the same rows, from `tally_core::export`).
//!
//! The body is a stream: the ledger is read a page at a time and each page is sent before
//! the next is read, so a month of millions of entries never sits in the server's memory
//! (and the response has no `Content-Length`). A store failure after the first page cuts the
//! body short; the CSV then lacks its last rows, which a client notices as a connection
//! closed before the chunked body ended.

use axum::body::{Body, Bytes};
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tally_core::export::{COUNTER_COLUMNS, LEDGER_COLUMNS, counter_row, csv_record, ledger_row};
use tally_core::ids::{MeterName, OrgId};
use tally_core::period::Month;
use tally_core::ports::{LedgerPageQuery, UsageStore};

use crate::http::{ApiError, query_params};
use crate::mgmt::{MgmtError, OrgCaller};
use crate::roles::Action;

/// Ledger entries read per page of the stream.
const PAGE: usize = 1_000;

/// The query of the route.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExportParams {
    /// The month, `YYYY-MM` (required).
    pub period: Option<String>,
    /// `counters` (the default) or `ledger`.
    pub kind: Option<String>,
    /// Only this meter.
    pub meter: Option<String>,
}

/// `GET /v1/orgs/{org_id}/export` (`ledger.read`).
pub(crate) async fn export(
    at: OrgCaller,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, MgmtError> {
    let (state, auth) = at.authorize(Action::LedgerRead).await?;
    let p = query_params(params)?;
    let period = p
        .period
        .as_deref()
        .and_then(|s| Month::parse(s).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_period",
                "period",
                "period must be a month, YYYY-MM",
            )
        })?;
    let ledger = match p.kind.as_deref() {
        None | Some("counters") => false,
        Some("ledger") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_kind",
                "kind",
                "kind must be counters or ledger",
            )
            .into());
        }
    };
    let meter = p
        .meter
        .as_deref()
        .map(MeterName::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_meter", "meter", e.to_string()))?;
    let kind = if ledger { "ledger" } else { "counters" };
    let name = format!("attachment; filename=\"{kind}-{}-{period}.csv\"", auth.org);
    let body = if ledger {
        ledger_body(state.usage.clone(), auth.org, period, meter)
    } else {
        // A month of one org's counters is one store read (one partition on DynamoDB).
        let counters = state.usage.stored_counters(&auth.org, period).await?;
        let mut text = csv_record(&COUNTER_COLUMNS);
        for (key, value) in counters
            .iter()
            .filter(|(k, _)| meter.as_ref().is_none_or(|m| m.as_str() == k.meter.base()))
        {
            text.push_str(&csv_record(&counter_row(key, *value)));
        }
        Body::from(text)
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Where the ledger stream is.
struct Cursor {
    usage: std::sync::Arc<dyn UsageStore>,
    org: OrgId,
    period: Month,
    meter: Option<MeterName>,
    /// `None` before the first page; then the store's cursor of the next one.
    next: Option<Option<String>>,
}

/// The ledger export as a stream of chunks: the header with the first page, then a page per
/// chunk.
fn ledger_body(
    usage: std::sync::Arc<dyn UsageStore>,
    org: OrgId,
    period: Month,
    meter: Option<MeterName>,
) -> Body {
    let start = Cursor {
        usage,
        org,
        period,
        meter,
        next: None,
    };
    let stream = futures_util::stream::unfold(start, |mut st| async move {
        let (cursor, first) = match st.next.take() {
            None => (None, true),
            Some(None) => return None,
            Some(Some(c)) => (Some(c), false),
        };
        let page = match st
            .usage
            .ledger_page(&LedgerPageQuery::new(&st.org, st.period, cursor, PAGE))
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(org = %st.org, period = %st.period, error = %e, "ledger export cut short");
                // Ends the body early: the client sees the connection close mid-stream.
                st.next = Some(None);
                return Some((Err(std::io::Error::other(e.to_string())), st));
            }
        };
        let mut text = if first {
            csv_record(&LEDGER_COLUMNS)
        } else {
            String::new()
        };
        for e in page.events.iter().filter(|e| {
            st.meter
                .as_ref()
                .is_none_or(|m| m.as_str() == e.meter.base())
        }) {
            text.push_str(&csv_record(&ledger_row(e)));
        }
        st.next = Some(page.next);
        Some((Ok::<_, std::io::Error>(Bytes::from(text)), st))
    });
    Body::from_stream(stream)
}
