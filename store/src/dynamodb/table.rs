//! Creating the table: keys, the GSI, on-demand billing and TTL, idempotently.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType,
    Projection, ProjectionType, ScalarAttributeType, TableDescription, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use tally_core::ports::StoreError;

use super::codec::{build_error, sdk_error};
use super::keys::{GSI1, GSI1_PROJECTED, GSI1PK, GSI1SK, PK, SK, TTL};

/// How long [`create_table`] waits for the table and its index to become `ACTIVE`.
const ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// Creates the table Tally keeps everything in, if it does not exist, and waits until it
/// and its index are `ACTIVE` with TTL enabled on `ttl`.
///
/// The table: partition key `pk` (S), sort key `sk` (S), on-demand billing, one global
/// secondary index `gsi1` on `gsi1pk` (S) / `gsi1sk` (S) projecting the keys and
/// [`GSI1_PROJECTED`] (what the index's queries read; `template.yaml` says the same), and
/// TTL on `ttl` (see the [module doc](super) for what lives where). Calling it again, or
/// from several processes at once, is fine; a table of that name with other keys is
/// refused with [`StoreError::Unavailable`] rather than used.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build_error)
    };
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_error)
    };
    let gsi = GlobalSecondaryIndex::builder()
        .index_name(GSI1)
        .key_schema(key(GSI1PK, KeyType::Hash)?)
        .key_schema(key(GSI1SK, KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::Include)
                .set_non_key_attributes(Some(
                    GSI1_PROJECTED.iter().map(|a| (*a).to_owned()).collect(),
                ))
                .build(),
        )
        .build()
        .map_err(build_error)?;
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(PK)?)
        .attribute_definitions(attr(SK)?)
        .attribute_definitions(attr(GSI1PK)?)
        .attribute_definitions(attr(GSI1SK)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .key_schema(key(SK, KeyType::Range)?)
        .global_secondary_indexes(gsi)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.as_service_error(),
                Some(CreateTableError::ResourceInUseException(_))
            ) => {}
        Err(e) => return Err(sdk_error("CreateTable", e)),
    }
    let description = wait_active(client, table).await?;
    check_schema(table, &description)?;
    enable_ttl(client, table).await
}

/// Polls `DescribeTable` until the table and every index are `ACTIVE`.
async fn wait_active(client: &Client, table: &str) -> Result<TableDescription, StoreError> {
    let deadline = Instant::now() + ACTIVE_TIMEOUT;
    let mut delay = Duration::from_millis(50);
    loop {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTable", e))?;
        if let Some(desc) = out.table {
            let table_active = desc.table_status() == Some(&TableStatus::Active);
            let indexes_active = desc
                .global_secondary_indexes()
                .iter()
                .all(|i| i.index_status().is_none_or(|s| *s == IndexStatus::Active));
            if table_active && indexes_active {
                return Ok(desc);
            }
        }
        if Instant::now() > deadline {
            return Err(StoreError::Unavailable(format!(
                "DynamoDB table {table} did not become ACTIVE within {}s",
                ACTIVE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Refuses a table whose keys or index are not the ones this adapter writes.
fn check_schema(table: &str, desc: &TableDescription) -> Result<(), StoreError> {
    let names = |keys: &[KeySchemaElement]| -> Vec<(String, KeyType)> {
        keys.iter()
            .map(|k| (k.attribute_name().to_owned(), k.key_type().clone()))
            .collect()
    };
    let want = |h: &str, r: &str| {
        vec![
            (h.to_owned(), KeyType::Hash),
            (r.to_owned(), KeyType::Range),
        ]
    };
    let table_ok = names(desc.key_schema()) == want(PK, SK);
    let gsi_ok = desc
        .global_secondary_indexes()
        .iter()
        .any(|i| i.index_name() == Some(GSI1) && names(i.key_schema()) == want(GSI1PK, GSI1SK));
    if table_ok && gsi_ok {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "DynamoDB table {table} exists but is not a Tally table (want keys {PK}/{SK} and \
             index {GSI1} on {GSI1PK}/{GSI1SK})"
        )))
    }
}

/// Enables TTL on `ttl` unless it already is (enabling twice is an error on DynamoDB).
async fn enable_ttl(client: &Client, table: &str) -> Result<(), StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| sdk_error("DescribeTimeToLive", e))?;
    if let Some(d) = current.time_to_live_description() {
        let on = matches!(
            d.time_to_live_status(),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if on && d.attribute_name() == Some(TTL) {
            return Ok(());
        }
        if on {
            return Err(StoreError::Unavailable(format!(
                "DynamoDB table {table} has TTL on attribute {:?}, not {TTL:?}",
                d.attribute_name().unwrap_or_default()
            )));
        }
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL)
        .build()
        .map_err(build_error)?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| sdk_error("UpdateTimeToLive", e))?;
    Ok(())
}
