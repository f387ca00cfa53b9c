//! [`OverrideStore`](tally_core::ports::OverrideStore) on SQLite: each org's price
//! overrides.
//!
//! Schema version 11 adds one table ([`SCHEMA_V11`]), keyed by (org, override id). It is
//! additive: a file of an older schema gains the empty table when a newer build opens it,
//! and an empty table means "no override" (every org at its plan's list prices), so an old
//! store keeps working with no operator action. The override is kept as JSON (`body`, as
//! set) with its end in a column of its own (`end_month`), the one thing that changes: the
//! column is what is read back. Puts and ends run in one write transaction each, so the
//! per-org bound, first-write-wins and "an end only moves earlier" hold under races.

use async_trait::async_trait;
use rusqlite::params;
use tally_core::overrides::{MAX_OVERRIDES_PER_ORG, PriceOverride};
use tally_core::ports::{
    EndOutcome, OverrideEnd, OverrideStore, StoreError, check_stored_override, sort_overrides,
    too_many_overrides,
};
use tally_core::{Month, OrgId};

use super::{SqliteStore, corrupt, execute, query_all, query_opt};

/// Schema version 11: price overrides.
pub(super) const SCHEMA_V11: &str = r#"
CREATE TABLE IF NOT EXISTS price_overrides (
    org_id      TEXT NOT NULL,
    id          TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    end_month   TEXT,               -- YYYY-MM, exclusive; NULL: open-ended
    body        TEXT NOT NULL,      -- the override as set, JSON
    PRIMARY KEY (org_id, id)
);
"#;

fn decode(body: String, end: Option<String>) -> Result<PriceOverride, StoreError> {
    let mut o: PriceOverride =
        serde_json::from_str(&body).map_err(|e| corrupt(format!("price override: {e}")))?;
    o.end = end
        .map(|e| Month::parse(&e).map_err(|err| corrupt(format!("override {} end: {err}", o.id))))
        .transpose()?;
    Ok(o)
}

fn encode(o: &PriceOverride) -> Result<String, StoreError> {
    serde_json::to_string(o).map_err(|e| corrupt(format!("price override {}: {e}", o.id)))
}

#[async_trait]
impl OverrideStore for SqliteStore {
    async fn put_override(&self, o: &PriceOverride) -> Result<bool, StoreError> {
        check_stored_override(o)?;
        let body = encode(o)?;
        let o = o.clone();
        self.transact(move |tx| {
            let org = o.org_id.to_string();
            let taken = query_opt(
                tx,
                "SELECT 1 FROM price_overrides WHERE org_id = ?1 AND id = ?2",
                params![org, o.id.as_str()],
                |_| Ok(()),
            )?;
            if taken.is_some() {
                return Ok(false);
            }
            let count: i64 = query_opt(
                tx,
                "SELECT count(*) FROM price_overrides WHERE org_id = ?1",
                params![org],
                |r| r.get(0),
            )?
            .unwrap_or(0);
            if usize::try_from(count).unwrap_or(usize::MAX) >= MAX_OVERRIDES_PER_ORG {
                return Err(too_many_overrides(&o.org_id));
            }
            execute(
                tx,
                "INSERT INTO price_overrides (org_id, id, created_at, end_month, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    org,
                    o.id.as_str(),
                    super::ts_text(o.created_at),
                    o.end.map(|e| e.to_string()),
                    body
                ],
            )?;
            Ok(true)
        })
        .await
    }

    async fn list_overrides(&self, org: &OrgId) -> Result<Vec<PriceOverride>, StoreError> {
        let org = org.to_string();
        let mut list = self
            .read(move |conn| {
                query_all(
                    conn,
                    "SELECT body, end_month FROM price_overrides WHERE org_id = ?1",
                    params![org],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
                    |(body, end)| decode(body, end),
                )
            })
            .await?;
        sort_overrides(&mut list);
        Ok(list)
    }

    async fn end_override(&self, req: &OverrideEnd<'_>) -> Result<EndOutcome, StoreError> {
        let (org, id, end) = (req.org, req.id, req.end);
        let (org, id) = (org.to_string(), id.clone());
        self.transact(move |tx| {
            let row = query_opt(
                tx,
                "SELECT body, end_month FROM price_overrides WHERE org_id = ?1 AND id = ?2",
                params![org, id.as_str()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )?;
            let Some((body, stored_end)) = row else {
                return Ok(EndOutcome::NotFound);
            };
            let stored = decode(body, stored_end)?;
            if stored.end.is_some_and(|e| e <= end) {
                return Ok(EndOutcome::AlreadyEnded(stored));
            }
            let mut ended = stored;
            ended.end = Some(end);
            check_stored_override(&ended)?;
            execute(
                tx,
                "UPDATE price_overrides SET end_month = ?3 WHERE org_id = ?1 AND id = ?2",
                params![org, id.as_str(), end.to_string()],
            )?;
            Ok(EndOutcome::Ended(ended))
        })
        .await
    }
}
