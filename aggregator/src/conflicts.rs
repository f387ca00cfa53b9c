//! Resends the aggregator alone can see: an event id already counted, sent again with other
//! contents in a later request (`duplicate_conflict`).
//!
//! Ingest names such a resend in its `202` when both copies are in one request; across
//! requests only the ledger knows the first copy, so the store reports the index of each
//! conflicting duplicate ([`ApplyReport::conflicts`](tally_core::ports::ApplyReport)) and
//! this module makes it visible: a counter ([`METRIC`]), a warning in the log, and a record
//! in the org's audit trail (`event.duplicate_conflict`, refused, with the resend's contents
//! as `after`), which the org's owners and admins read with `GET /v1/orgs/{id}/audit`.
//! The first copy stays counted, as with Stripe's idempotency keys.
//!
//! A tenant resending thousands of ids with other contents must not turn each into an
//! audit write: at most [`MAX_AUDITED_PER_BATCH`] records are written per batch, the rest
//! are counted by the metric only. An audit write that fails is logged and never fails the
//! batch (its events are settled). Test-mode events are audited under the org's test twin.

use chrono::{DateTime, Utc};
use tally_core::event::Event;
use tally_core::ports::AuditLog;
use tally_core::tenant::{AuditOutcome, AuditRecord};

/// Counter of duplicates whose contents differed from the counted copy.
pub const METRIC: &str = "tally_duplicate_conflicts_total";

/// Most audit records one batch writes for conflicting resends.
pub const MAX_AUDITED_PER_BATCH: usize = 20;

/// The audit action of a conflicting resend.
pub const ACTION: &str = "event.duplicate_conflict";

/// Counts, logs and audits the conflicting duplicates `conflicts` (indexes into `batch`).
pub async fn report(
    audit: Option<&dyn AuditLog>,
    batch: &[Event],
    conflicts: &[usize],
    now: DateTime<Utc>,
) {
    if conflicts.is_empty() {
        return;
    }
    metrics::counter!(METRIC).increment(conflicts.len() as u64);
    for (n, e) in conflicts.iter().filter_map(|&i| batch.get(i)).enumerate() {
        tracing::warn!(
            org = e.org_id.as_str(),
            id = e.id.as_str(),
            "event id resent with other contents; the first copy stays counted"
        );
        let Some(audit) = audit else { continue };
        if n >= MAX_AUDITED_PER_BATCH {
            continue;
        }
        let record = record_of(e, now);
        if let Err(err) = audit.record_audit(&record).await {
            tracing::warn!(error = %err, org = e.org_id.as_str(), id = e.id.as_str(), "could not audit a conflicting resend");
        }
    }
}

/// The audit record of one conflicting resend.
pub fn record_of(e: &Event, now: DateTime<Utc>) -> AuditRecord {
    AuditRecord {
        id: format!("aud_{:032x}", rand::random::<u128>()),
        org_id: e.org_id.clone(),
        actor: "aggregator".to_owned(),
        action: ACTION.to_owned(),
        resource: format!("event:{}", e.id),
        outcome: AuditOutcome::Refused,
        reason: Some("duplicate_conflict".to_owned()),
        before: None,
        after: serde_json::to_value(e).ok(),
        at: now,
        ip: None,
        user_agent: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_the_event_and_why_it_was_not_counted() {
        let e: Event = serde_json::from_value(serde_json::json!({
            "org_id": "org_a", "id": "ev-1", "project_id": "prj_a", "meter": "compute_minutes",
            "aggregation": {"kind": "sum"}, "quantity": "5", "timestamp": "2026-11-26T10:00:00Z"
        }))
        .unwrap();
        let at = "2026-11-26T11:00:00Z".parse().unwrap();
        let r = record_of(&e, at);
        assert_eq!(r.org_id.as_str(), "org_a");
        assert_eq!(r.action, ACTION);
        assert_eq!(r.resource, "event:ev-1");
        assert_eq!(r.outcome, AuditOutcome::Refused);
        assert_eq!(r.reason.as_deref(), Some("duplicate_conflict"));
        assert_eq!(r.after.unwrap()["quantity"], "5");
        assert!(r.id.starts_with("aud_") && r.id.len() == 36);
    }
}
