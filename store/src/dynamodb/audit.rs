//! The audit trail on DynamoDB: one item per record under its org, sorted by instant then
//! id, so a page newest first is one query; the record's `ttl` expires it after 90 days.

use async_trait::async_trait;
use tally_core::ports::{AuditLog, StoreError};
use tally_core::tenant::{AuditPage, AuditQuery, AuditRecord, MAX_AUDIT_PAGE, audit_instant_key};

use super::DynamoStore;
use super::codec::{Item, corrupt, get_s, item, n, s, sdk_error};
use super::keys::{self, PK, SK, TTL};

#[async_trait]
impl AuditLog for DynamoStore {
    /// One conditional put into `ORG#<org>#AUDIT`, with `ttl` 90 days on.
    async fn record_audit(&self, r: &AuditRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(r)
            .map_err(|e| StoreError::Unavailable(format!("encoding audit record: {e}")))?;
        self.put_if_absent(item([
            (PK, s(keys::audit_pk(&r.org_id))),
            (SK, s(r.sort_key())),
            ("actor", s(&r.actor)),
            ("action", s(&r.action)),
            ("resource", s(&r.resource)),
            ("body", s(body)),
            (TTL, n(r.expires_at().timestamp())),
        ]))
        .await
        .map(|_| ())
    }

    /// A backward query of `ORG#<org>#AUDIT` between the bounds, filtered on actor, action,
    /// resource and `ttl` (DynamoDB deletes expired items lazily), page after page until the
    /// page is full, but reading at most [`AUDIT_QUERY_PAGES`] pages of
    /// [`AUDIT_QUERY_PAGE_ITEMS`] items: a filter that matches little cannot make one call
    /// read a whole trail. Stopped early, the answer holds what was found and a cursor
    /// where the reading stopped, so the caller goes on from there.
    async fn list_audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
        let pk = keys::audit_pk(&q.org);
        let lower = q.from.map(audit_instant_key).unwrap_or_else(|| "0".into());
        let mut upper = q.to.map(audit_instant_key).unwrap_or_else(|| "~".into());
        if let Some(c) = q.cursor.as_ref().filter(|c| **c < upper) {
            upper = c.clone();
        }
        if upper < lower {
            return Ok(AuditPage::default());
        }
        let mut filters = vec!["#ttl > :now"];
        let mut names = vec![("#pk", PK), ("#sk", SK), ("#ttl", TTL)];
        let mut values = vec![
            (":pk", s(&pk)),
            (":lo", s(&lower)),
            (":hi", s(&upper)),
            (":now", n(q.now.timestamp())),
        ];
        for (attr, name, placeholder, v) in [
            ("actor", "#actor", ":actor", &q.actor),
            ("action", "#action", ":action", &q.action),
            ("resource", "#resource", ":resource", &q.resource),
        ] {
            if let Some(v) = v {
                filters.push(match attr {
                    "actor" => "#actor = :actor",
                    "action" => "#action = :action",
                    _ => "#resource = :resource",
                });
                names.push((name, attr));
                values.push((placeholder, s(v)));
            }
        }
        let filter = filters.join(" AND ");
        let mut start = q
            .cursor
            .as_ref()
            .filter(|c| **c == upper)
            .map(|c| item([(PK, s(&pk)), (SK, s(c))]));
        let mut records = Vec::new();
        let mut pages = 0;
        loop {
            pages += 1;
            let mut req = self
                .client
                .query()
                .table_name(self.table())
                .consistent_read(true)
                .scan_index_forward(false)
                .key_condition_expression("#pk = :pk AND #sk BETWEEN :lo AND :hi")
                .filter_expression(&filter)
                .limit(AUDIT_QUERY_PAGE_ITEMS)
                .set_exclusive_start_key(start.take());
            for (k, v) in &names {
                req = req.expression_attribute_names(*k, *v);
            }
            for (k, v) in &values {
                req = req.expression_attribute_values(*k, v.clone());
            }
            let out = req.send().await.map_err(|e| sdk_error("Query", e))?;
            for it in out.items.unwrap_or_default() {
                let body = get_s(&it, "body")?;
                let record: AuditRecord = serde_json::from_str(body)
                    .map_err(|e| corrupt(format!("audit record {}: {e}", r_sk(&it))))?;
                records.push(record);
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() && records.len() <= limit => {
                    if pages >= AUDIT_QUERY_PAGES {
                        // The budget is spent: hand back what was found and where to go on.
                        let next = k.get(SK).and_then(|v| v.as_s().ok()).cloned();
                        return Ok(AuditPage { records, next });
                    }
                    start = Some(k);
                }
                _ => break,
            }
        }
        Ok(AuditPage::from_one_extra(records, limit))
    }
}

/// Items one audit query page evaluates (before the filter).
pub const AUDIT_QUERY_PAGE_ITEMS: i32 = 200;
/// Pages one `list_audit` call reads at most: 1,000 items evaluated, whatever the filter.
pub const AUDIT_QUERY_PAGES: usize = 5;

fn r_sk(it: &Item) -> &str {
    get_s(it, SK).unwrap_or("?")
}
