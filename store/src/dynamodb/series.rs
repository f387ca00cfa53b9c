//! [`SeriesRegistry`](tally_core::ports::SeriesRegistry) on DynamoDB: the series of one
//! dimensioned meter an org made in one month, in the partition
//! `ORG#<org>#SERIES#<YYYY-MM>#<meter>`: one item per series (sort key: the series key) and
//! a `#COUNT` item holding how many there are.
//!
//! A registration is one `TransactWriteItems` of a put of the series item under
//! `attribute_not_exists` and an `ADD n :one` on the count under `n < :bound`, so the count
//! and the series are written together or not at all and the bound holds across any number
//! of ingest instances. The cancellation reasons say which condition failed: the put's means
//! the series is known, the count's alone that the meter is full.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use tally_core::ports::{
    MeterMonth, NewSeries, Registration, SeriesRegistry, StoreError, check_registration,
};
use tally_core::{MeterName, Month, OrgId};

use super::DynamoStore;
use super::codec::{corrupt, get_s, item, s};
use super::tx::{self, failed};

const SK: &str = "sk";
const COUNT_SK: &str = "#COUNT";

fn series_pk(org: &OrgId, month: Month, meter: &str) -> String {
    format!("ORG#{org}#SERIES#{month}#{meter}")
}

#[async_trait]
impl SeriesRegistry for DynamoStore {
    async fn register_series(&self, req: &NewSeries<'_>) -> Result<Registration, StoreError> {
        let (org, month, series, bound) = (req.org, req.month, req.series, req.bound);
        check_registration(series, bound)?;
        let pk = series_pk(org, month, series.base());
        let put = aws_sdk_dynamodb::types::Put::builder()
            .table_name(self.table())
            .set_item(Some(item([
                ("pk", s(pk.clone())),
                (SK, s(series.as_str())),
            ])))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk");
        let put = aws_sdk_dynamodb::types::TransactWriteItem::builder()
            .put(put.build().map_err(super::codec::build_error)?)
            .build();
        let count = tx::tx_update(
            self.table(),
            pk,
            COUNT_SK.to_owned(),
            "ADD #n :one",
            "attribute_not_exists(#n) OR #n < :bound",
            &[("#n", "n")],
            &[
                (":one", AttributeValue::N("1".into())),
                (":bound", AttributeValue::N(bound.to_string())),
            ],
        )?;
        match self.transact_tenant(vec![put, count]).await? {
            Ok(()) => Ok(Registration::New),
            Err(reasons) if failed(&reasons, 0) => Ok(Registration::Known),
            Err(reasons) if failed(&reasons, 1) => Ok(Registration::Full),
            Err(reasons) => Err(StoreError::Unavailable(format!(
                "series registration cancelled: {reasons:?}"
            ))),
        }
    }

    async fn list_series(&self, of: &MeterMonth<'_>) -> Result<Vec<MeterName>, StoreError> {
        let MeterMonth { org, meter, month } = *of;
        let items = self
            .query_prefix(
                series_pk(org, month, meter.as_str()),
                format!("{}{{", meter.as_str()),
            )
            .await?;
        items
            .iter()
            .map(|it| {
                let key = get_s(it, SK)?;
                MeterName::parse_key(key).map_err(|e| corrupt(format!("series {key}: {e}")))
            })
            .collect()
    }
}
