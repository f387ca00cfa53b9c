//! [`AlertLedger`](tally_core::ports::AlertLedger) on DynamoDB: the outbox of plan-limit
//! alerts.
//!
//! An org's alerts are the partition `ORG#<org>#ALERT`, one item per alert with sort key
//! `<YYYY-MM>#<meter>#<threshold, 3 digits>`, so the key orders by month, meter and
//! threshold, and "pending from a month on" is one strongly consistent query (`sk >=
//! <YYYY-MM>`, filtered on `attribute_not_exists(delivered_at)`) of a partition that grows
//! by at most two items per limited meter and month. The claim is a put under
//! `attribute_not_exists(pk)`; the lease is an `UpdateItem` conditioned on the lease seen
//! and on no delivery; delivery is `SET delivered_at = if_not_exists(...)` conditioned on the
//! item existing. Times are Unix microseconds (numbers), compared exactly.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use tally_core::ids::{MeterName, OrgId};
use tally_core::period::Month;
use tally_core::ports::{
    AlertKey, AlertLease, AlertLedger, StoreError, StoredAlert, ThresholdPct, check_alert_body,
};

use super::codec::unless_condition_failed;
use super::codec::{Item, corrupt, get_s, item, n, parse_id, s};
use super::{DynamoStore, QuerySpec};

const PK: &str = "pk";
const SK: &str = "sk";

fn alerts_pk(org: &OrgId) -> String {
    format!("ORG#{}#ALERT", org.as_str())
}

fn alert_sk(key: &AlertKey) -> String {
    format!(
        "{}#{}#{:03}",
        key.period,
        key.meter.as_str(),
        key.threshold.get()
    )
}

fn micros(t: DateTime<Utc>) -> AttributeValue {
    n(t.timestamp_micros())
}

fn get_micros(it: &Item, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    match it.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .map(Some)
            .ok_or_else(|| corrupt(format!("alert attribute {name} = {v:?}"))),
        Some(_) => Err(corrupt(format!("alert attribute {name} is not a number"))),
    }
}

fn required_micros(it: &Item, name: &str) -> Result<DateTime<Utc>, StoreError> {
    get_micros(it, name)?.ok_or_else(|| corrupt(format!("alert attribute {name} is missing")))
}

fn alert_of(org: &OrgId, it: &Item) -> Result<StoredAlert, StoreError> {
    let sk = get_s(it, SK)?;
    let bad = || corrupt(format!("alert key {sk:?}"));
    let mut parts = sk.splitn(3, '#');
    let (Some(period), Some(meter), Some(threshold)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let threshold = threshold
        .parse::<u8>()
        .ok()
        .and_then(ThresholdPct::new)
        .ok_or_else(bad)?;
    Ok(StoredAlert {
        key: AlertKey {
            org: org.clone(),
            period: parse_id(period, Month::parse)?,
            meter: parse_id(meter, MeterName::parse)?,
            threshold,
        },
        body: get_s(it, "body")?.to_owned(),
        claimed_at: required_micros(it, "claimed_at")?,
        lease_until: required_micros(it, "lease_until")?,
        delivered_at: get_micros(it, "delivered_at")?,
    })
}

#[async_trait]
impl AlertLedger for DynamoStore {
    async fn claim_alert(&self, alert: &StoredAlert) -> Result<bool, StoreError> {
        check_alert_body(&alert.body)?;
        let mut record = item([
            (PK, s(alerts_pk(&alert.key.org))),
            (SK, s(alert_sk(&alert.key))),
            ("body", s(alert.body.as_str())),
            ("claimed_at", micros(alert.claimed_at)),
            ("lease_until", micros(alert.lease_until)),
        ]);
        if let Some(at) = alert.delivered_at {
            record.insert("delivered_at".to_owned(), micros(at));
        }
        self.put_if_absent(record).await
    }

    async fn get_alert(&self, key: &AlertKey) -> Result<Option<StoredAlert>, StoreError> {
        self.get_as(alerts_pk(&key.org), &alert_sk(key), |it| {
            alert_of(&key.org, it)
        })
        .await
    }

    async fn pending_alerts(
        &self,
        org: &OrgId,
        since: Month,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let items = self
            .query_all(&QuerySpec {
                index: None,
                key_condition: "#pk = :pk AND #sk >= :since",
                filter: Some("attribute_not_exists(delivered_at)"),
                names: &[],
                values: vec![(":pk", s(alerts_pk(org))), (":since", s(since.to_string()))],
            })
            .await?;
        items.iter().map(|it| alert_of(org, it)).collect()
    }

    async fn renew_alert_lease(&self, lease: &AlertLease<'_>) -> Result<bool, StoreError> {
        let (key, seen, until) = (lease.key, lease.seen, lease.until);
        update(
            self,
            key,
            "SET lease_until = :until",
            "attribute_exists(#pk) AND lease_until = :seen AND attribute_not_exists(delivered_at)",
            vec![(":seen", micros(seen)), (":until", micros(until))],
        )
        .await
    }

    async fn mark_alert_delivered(
        &self,
        key: &AlertKey,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let found = update(
            self,
            key,
            "SET delivered_at = if_not_exists(delivered_at, :at)",
            "attribute_exists(#pk)",
            vec![(":at", micros(at))],
        )
        .await?;
        if found {
            Ok(())
        } else {
            Err(StoreError::NotFound {
                what: format!("alert {key}"),
            })
        }
    }
}

/// One conditional `UpdateItem` of an alert; `false` when its condition failed.
async fn update(
    store: &DynamoStore,
    key: &AlertKey,
    update: &str,
    condition: &str,
    values: Vec<(&str, AttributeValue)>,
) -> Result<bool, StoreError> {
    let mut req = store
        .update_item_at(alerts_pk(&key.org), alert_sk(key))
        .update_expression(update)
        .condition_expression(condition)
        .expression_attribute_names("#pk", PK);
    for (name, value) in values {
        req = req.expression_attribute_values(name, value);
    }
    Ok(unless_condition_failed("UpdateItem", req.send().await)?.is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_order_by_month_meter_and_threshold() {
        let org = OrgId::parse("org_acme").unwrap();
        let key = |p: &str, t: u8| AlertKey {
            org: org.clone(),
            period: Month::parse(p).unwrap(),
            meter: MeterName::parse("api_calls").unwrap(),
            threshold: ThresholdPct::new(t).unwrap(),
        };
        assert_eq!(alerts_pk(&org), "ORG#org_acme#ALERT");
        assert_eq!(alert_sk(&key("2026-11", 80)), "2026-11#api_calls#080");
        assert!(alert_sk(&key("2026-11", 80)) < alert_sk(&key("2026-11", 100)));
        assert!(alert_sk(&key("2026-11", 100)) < alert_sk(&key("2026-12", 80)));
    }
}
