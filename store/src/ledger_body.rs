//! The body of a ledger record, shared by every store so a ledger written by one backend
//! reads the same in another: the event minus what the record's key holds (org and id),
//! as compact JSON with short field names to keep each record small.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tally_core::event::Quantity;
use tally_core::ports::StoreError;
use tally_core::{Aggregation, Event, EventId, MeterName, OrgId, ProjectId};

#[derive(Serialize)]
struct LedgerBodyRef<'a> {
    p: &'a ProjectId,
    m: &'a MeterName,
    a: &'a Aggregation,
    q: Quantity,
    t: DateTime<Utc>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    x: &'a Map<String, Value>,
}

#[derive(Deserialize)]
struct LedgerBody {
    p: ProjectId,
    m: MeterName,
    a: Aggregation,
    q: Quantity,
    t: DateTime<Utc>,
    #[serde(default)]
    x: Map<String, Value>,
}

/// Encodes an event's ledger body.
pub(crate) fn encode(e: &Event) -> Result<String, StoreError> {
    serde_json::to_string(&LedgerBodyRef {
        p: &e.project_id,
        m: &e.meter,
        a: &e.aggregation,
        q: e.quantity,
        t: e.timestamp,
        x: &e.properties,
    })
    .map_err(|err| StoreError::Unavailable(format!("encoding event {}: {err}", e.id)))
}

/// Decodes a ledger body back into the event it recorded; `what` names the record in the
/// `Corrupt` error.
pub(crate) fn decode(
    org: &OrgId,
    id: EventId,
    body: &str,
    what: &str,
) -> Result<Event, StoreError> {
    let b: LedgerBody = serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("{what} {org}/{id}: {e}")))?;
    Ok(Event {
        org_id: org.clone(),
        id,
        project_id: b.p,
        meter: b.m,
        aggregation: b.a,
        quantity: b.q,
        timestamp: b.t,
        properties: b.x,
    })
}
