//! The audit trail on SQLite: [`AuditLog`].
//!
//! Schema version 2 adds the audit trail ([`SCHEMA_V2`]): one row per record keyed `(org,
//! sk)`, `sk` being the record's [`AuditRecord::sort_key`] (microsecond instant, then id), so
//! an org's trail, newest first, is one backward range scan of the primary key.
//! `expires_at` (Unix seconds, 90 days after the record) plays DynamoDB's TTL: reads skip
//! expired rows and every write deletes the expired rows of all orgs through the
//! `audit_by_expiry` index.

use async_trait::async_trait;
use rusqlite::params;
use tally_core::ports::*;
use tally_core::tenant::*;

use super::*;

/// Schema version 2: the audit trail.
pub(super) const SCHEMA_V2: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    org         TEXT NOT NULL,
    sk          TEXT NOT NULL,      -- 20-digit Unix microseconds '#' record id
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,   -- Unix seconds; the record's TTL
    body        TEXT NOT NULL,      -- the whole record, JSON
    PRIMARY KEY (org, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_by_expiry ON audit (expires_at);
"#;

#[async_trait]
impl AuditLog for SqliteStore {
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(record)
            .map_err(|e| StoreError::Unavailable(format!("encoding audit record: {e}")))?;
        let r = record.clone();
        let now = r.at.timestamp();
        self.transact(move |tx| {
            execute(tx, "DELETE FROM audit WHERE expires_at <= ?1", params![now])?;
            execute(
                tx,
                "INSERT INTO audit (org, sk, actor, action, resource, expires_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (org, sk) DO NOTHING",
                params![
                    r.org_id.as_str(),
                    r.sort_key(),
                    r.actor,
                    r.action,
                    r.resource,
                    r.expires_at().timestamp(),
                    body
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let q = q.clone();
        self.read(move |conn| {
            let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
            // Upper bound (exclusive): the cursor, else `to`, else everything.
            let upper = match (&q.cursor, q.to) {
                (Some(c), _) => c.clone(),
                (None, Some(to)) => audit_instant_key(to),
                (None, None) => "~".to_owned(),
            };
            let upper = match q.to {
                Some(to) if audit_instant_key(to) < upper => audit_instant_key(to),
                _ => upper,
            };
            let lower = q.from.map(audit_instant_key).unwrap_or_default();
            let mut stmt = conn
                .prepare_cached(
                    "SELECT sk, body FROM audit
                     WHERE org = ?1 AND sk < ?2 AND sk >= ?3 AND expires_at > ?4
                       AND (?5 IS NULL OR actor = ?5)
                       AND (?6 IS NULL OR action = ?6)
                       AND (?7 IS NULL OR resource = ?7)
                     ORDER BY sk DESC LIMIT ?8",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(
                    params![
                        q.org.as_str(),
                        upper,
                        lower,
                        q.now.timestamp(),
                        q.actor,
                        q.action,
                        q.resource,
                        i64::try_from(limit + 1).unwrap_or(i64::MAX)
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .map_err(db)?;
            let mut records = Vec::new();
            for row in rows {
                let (sk, body) = row.map_err(db)?;
                let record: AuditRecord = serde_json::from_str(&body)
                    .map_err(|e| corrupt(format!("audit record {sk:?}: {e}")))?;
                records.push(record);
            }
            Ok(AuditPage::from_one_extra(records, limit))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tally_core::ids::OrgId;
    use tally_core::tenant::AuditOutcome;

    use super::*;
    use crate::sqlite::SCHEMA_VERSION;
    use crate::sqlite::fixtures::{older_db, user_version};

    fn record(org: &OrgId, at: &str) -> AuditRecord {
        AuditRecord {
            id: "aud_1".into(),
            org_id: org.clone(),
            actor: "cli".into(),
            action: "org.create".into(),
            resource: format!("org:{org}"),
            outcome: AuditOutcome::Allowed,
            reason: None,
            before: None,
            after: None,
            at: DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&Utc),
            ip: None,
            user_agent: None,
        }
    }

    /// A file of schema version 1 (before the audit trail, invitations, soft deletes,
    /// archiving, last use and project members) is upgraded in place.
    #[tokio::test]
    async fn version_1_files_gain_the_audit_trail() {
        // What version 1 had: no audit trail, none of version 4's tables and columns.
        let (_dir, path) = older_db(
            "DROP TABLE audit; DROP TABLE invitations; DROP TABLE project_members;
             ALTER TABLE orgs DROP COLUMN deleted_at;
             ALTER TABLE projects DROP COLUMN archived_at;
             ALTER TABLE api_keys DROP COLUMN last_used_at;
             PRAGMA user_version = 1;",
        );
        let store = SqliteStore::open(&path).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let r = record(&org, "2026-11-26T10:00:00Z");
        store.record_audit(&r).await.unwrap();
        let q = AuditQuery {
            org: org.clone(),
            from: None,
            to: None,
            actor: None,
            action: None,
            resource: None,
            limit: 10,
            cursor: None,
            now: r.at,
        };
        assert_eq!(store.list_audit(&q).await.unwrap().records, vec![r]);
        assert_eq!(user_version(&path), SCHEMA_VERSION);
    }

    /// Expired records are deleted by later writes, not only hidden.
    #[tokio::test]
    async fn expired_records_are_pruned_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tally.db")).unwrap();
        let org = OrgId::parse("org_a").unwrap();
        store
            .record_audit(&record(&org, "2026-01-01T00:00:00Z"))
            .await
            .unwrap();
        store
            .record_audit(&AuditRecord {
                id: "aud_2".into(),
                ..record(&org, "2026-11-26T10:00:00Z")
            })
            .await
            .unwrap();
        let n: i64 = store
            .read(|c| {
                c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
                    .map_err(db)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
