//! [`OverrideStore`](tally_core::ports::OverrideStore) on DynamoDB: each org's price
//! overrides, one item each in the partition `ORG#<org>#OVERRIDE`, sorted by id.
//!
//! The item holds the override as set (`body`, JSON) and its end in an attribute of its own
//! (`end`, `YYYY-MM`), the one thing that changes and the one read back. A put is
//! conditional on `attribute_not_exists(pk)` (first write wins); the per-org bound is
//! checked by a query of the partition first, so two operators racing on an org at the
//! bound could store one more than it (an operator command on a bound of 100; not a hot
//! path, and not a money path). An end is one `UpdateItem` conditioned on the item existing
//! with no end or a later one, so an end only ever moves earlier. A table without the
//! partition (every table before this item type) reads as "no override".

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use tally_core::overrides::{MAX_OVERRIDES_PER_ORG, PriceOverride};
use tally_core::ports::{
    EndOutcome, OverrideEnd, OverrideStore, StoreError, check_stored_override, sort_overrides,
    too_many_overrides,
};
use tally_core::{Month, OrgId};

use super::DynamoStore;
use super::codec::{Item, corrupt, get_opt_s, get_s, item, s, ts_text, unless_condition_failed};

const PK: &str = "pk";
const SK: &str = "sk";

fn overrides_pk(org: &OrgId) -> String {
    format!("ORG#{org}#OVERRIDE")
}

fn decode(it: &Item) -> Result<PriceOverride, StoreError> {
    let mut o: PriceOverride = serde_json::from_str(get_s(it, "body")?)
        .map_err(|e| corrupt(format!("price override: {e}")))?;
    o.end = get_opt_s(it, "end")?
        .map(|e| Month::parse(e).map_err(|err| corrupt(format!("override {} end: {err}", o.id))))
        .transpose()?;
    Ok(o)
}

#[async_trait]
impl OverrideStore for DynamoStore {
    async fn put_override(&self, o: &PriceOverride) -> Result<bool, StoreError> {
        check_stored_override(o)?;
        let pk = overrides_pk(&o.org_id);
        let existing = self.query_partition(None, pk.clone()).await?;
        if existing
            .iter()
            .any(|it| get_s(it, SK).is_ok_and(|sk| sk == o.id.as_str()))
        {
            return Ok(false);
        }
        if existing.len() >= MAX_OVERRIDES_PER_ORG {
            return Err(too_many_overrides(&o.org_id));
        }
        let body = serde_json::to_string(o)
            .map_err(|e| corrupt(format!("price override {}: {e}", o.id)))?;
        let mut record = item([
            (PK, s(pk)),
            (SK, s(o.id.as_str())),
            ("body", s(body)),
            ("created_at", s(ts_text(o.created_at))),
        ]);
        if let Some(end) = o.end {
            record.insert("end".into(), s(end.to_string()));
        }
        self.put_if_absent(record).await
    }

    async fn list_overrides(&self, org: &OrgId) -> Result<Vec<PriceOverride>, StoreError> {
        let items = self.query_partition(None, overrides_pk(org)).await?;
        let mut list = items.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        sort_overrides(&mut list);
        Ok(list)
    }

    async fn end_override(&self, req: &OverrideEnd<'_>) -> Result<EndOutcome, StoreError> {
        let (org, id, end) = (req.org, req.id, req.end);
        let pk = overrides_pk(org);
        let Some(current) = self.get(pk.clone(), id.as_str()).await? else {
            return Ok(EndOutcome::NotFound);
        };
        let stored = decode(&current)?;
        if stored.end.is_some_and(|e| e <= end) {
            return Ok(EndOutcome::AlreadyEnded(stored));
        }
        let mut ended = stored;
        ended.end = Some(end);
        check_stored_override(&ended)?;
        let sent = self
            .update_item_at(pk.clone(), id.as_str())
            .update_expression("SET #end = :end")
            .condition_expression(
                "attribute_exists(#pk) AND (attribute_not_exists(#end) OR #end > :end)",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#end", "end")
            .expression_attribute_values(":end", AttributeValue::S(end.to_string()))
            .send()
            .await;
        if unless_condition_failed("UpdateItem", sent)?.is_some() {
            return Ok(EndOutcome::Ended(ended));
        }
        // Another end came first with an earlier month: report the override as it stands.
        match self.get(pk, id.as_str()).await? {
            Some(it) => Ok(EndOutcome::AlreadyEnded(decode(&it)?)),
            None => Ok(EndOutcome::NotFound),
        }
    }
}
