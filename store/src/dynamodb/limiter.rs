//! [`AllowanceStore`] on DynamoDB: the shared rate and plan limits of every ingest
//! instance.
//!
//! One item per (scope, window): `pk` = `LIMIT#<scope>`, `sk` = `<window>`, `t` (N: the
//! units taken so far by every process) and `ttl` (the window's end plus a day, so windows
//! go by themselves). A take is **one conditional `UpdateItem`**:
//! `SET ttl ADD t :want` if `attribute_not_exists(t) OR t <= cap − want`. So the units taken
//! never pass the cap, however many instances ask at once, and nothing is read first. When
//! the condition fails the item comes back (`ALL_OLD`): if room is left the call asks again
//! for what is left (at most [`ROUNDS`] writes), else it grants zero.
//!
//! # Write cost
//!
//! An item is well under 1 KB, so each write is 1 WCU on-demand, a failed condition
//! included. Callers take units in blocks and spend them in memory (`tally_ingest::shared`),
//! so a request costs 1/block of a WCU; the module doc there has the numbers per plan.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use rust_decimal::Decimal;
use tally_core::ports::{
    AllowanceRequest, AllowanceStore, Grant, StoreError, check_allowance_request,
};

use super::DynamoStore;
use super::codec::{Item, describe_sdk_error, n, send_retrying};
use super::keys::TTL;

/// Attribute of an allowance item: the units taken so far.
const TAKEN: &str = "t";
/// Writes one take may cost when other processes keep taking between them; after that it
/// grants what it has (zero), which only refuses early.
const ROUNDS: u32 = 4;
/// Seconds an allowance item outlives its window before DynamoDB's TTL may delete it.
const TTL_SLACK_SECS: i64 = 86_400;

/// `LIMIT#<scope>`: the partition of a limited thing's windows.
fn limit_pk(scope: &str) -> String {
    format!("LIMIT#{scope}")
}

#[async_trait::async_trait]
impl AllowanceStore for DynamoStore {
    async fn take_allowance(&self, req: &AllowanceRequest<'_>) -> Result<Grant, StoreError> {
        let (window, cap, want) = (req.window, req.cap, req.want);
        check_allowance_request(window, cap, want)?;
        let mut want = want.min(cap);
        let mut writes = 0;
        let ttl = window.expires_at.timestamp().saturating_add(TTL_SLACK_SECS);
        while want > Decimal::ZERO && writes < ROUNDS {
            writes += 1;
            let most_before = cap - want;
            let sent = send_retrying(&self.retry, || {
                self.update_item_at(limit_pk(&window.scope), &window.window)
                    .update_expression("SET #ttl = :ttl ADD #t :w")
                    .condition_expression("attribute_not_exists(#t) OR #t <= :most")
                    .expression_attribute_names("#t", TAKEN)
                    .expression_attribute_names("#ttl", TTL)
                    .expression_attribute_values(":w", n(want))
                    .expression_attribute_values(":most", n(most_before))
                    .expression_attribute_values(":ttl", n(ttl))
                    .return_values(ReturnValue::None)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    )
                    .send()
            })
            .await;
            match sent {
                Ok(_) => {
                    metrics::counter!("tally_dynamodb_allowance_writes_total").increment(1);
                    return Ok(Grant {
                        granted: want,
                        writes,
                    });
                }
                Err(e) => match e.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                        metrics::counter!("tally_dynamodb_allowance_writes_total").increment(1);
                        let taken = taken(c.item())?;
                        want = want.min(cap - taken);
                    }
                    _ => {
                        return Err(StoreError::Unavailable(describe_sdk_error(
                            "UpdateItem",
                            &e,
                        )));
                    }
                },
            }
        }
        Ok(Grant {
            granted: Decimal::ZERO,
            writes,
        })
    }
}

/// The units an allowance item says are taken (an item without `t` has none taken; the
/// next round's condition judges again).
fn taken(item: Option<&Item>) -> Result<Decimal, StoreError> {
    match item.and_then(|i| i.get(TAKEN)) {
        None => Ok(Decimal::ZERO),
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("allowance item's {TAKEN} {v:?}: {e}"))),
        Some(other) => Err(StoreError::Corrupt(format!(
            "allowance item's {TAKEN} is not a number: {other:?}"
        ))),
    }
}
