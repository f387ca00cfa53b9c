//! The transaction actions the tenant adapters build (checks, puts, updates) and how a
//! cancelled transaction says which of them failed: shared by users and orgs, members, API
//! keys and invitations, each of which writes its records and their guards in one
//! `TransactWriteItems`.

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem, Update};
use tally_core::ids::OrgId;
use tally_core::ports::StoreError;

use super::codec::{Item, build_error, s};
use super::keys::{self, ORG_SK, PK, SK};

pub(super) const CONDITIONAL: &str = "ConditionalCheckFailed";

/// Whether the action at `i` failed its condition.
pub(super) fn failed(reasons: &[String], i: usize) -> bool {
    reasons.get(i).is_some_and(|c| c == CONDITIONAL)
}

/// The error a cancelled tenant transaction answers: that of the first `(action, error)` of
/// `checks` whose action failed its condition (a parent missing, a slug taken), else
/// `otherwise` (the write's own condition: what it writes exists already).
pub(super) fn refusal<const N: usize>(
    reasons: &[String],
    checks: [(usize, StoreError); N],
    otherwise: StoreError,
) -> StoreError {
    checks
        .into_iter()
        .find(|(i, _)| failed(reasons, *i))
        .map_or(otherwise, |(_, e)| e)
}

/// `NotFound` of `what` (`404`): a parent a write checks is missing.
pub(super) fn not_found(what: String) -> StoreError {
    StoreError::NotFound { what }
}

/// `Conflict` of `what` (`409`): what a write puts exists already, or changed meanwhile.
pub(super) fn conflict(what: String) -> StoreError {
    StoreError::Conflict { what }
}

/// A check that an item exists, inside a transaction.
pub(super) fn must_exist(
    table: &str,
    pk: String,
    sk: &str,
) -> Result<TransactWriteItem, StoreError> {
    check(table, pk, sk, "attribute_exists(#pk)")
}

/// A check that the org exists and is not deleted, inside a transaction: what adding a
/// member, project, key or invitation to it needs.
pub(super) fn org_must_be_live(table: &str, org: &OrgId) -> Result<TransactWriteItem, StoreError> {
    let live = "attribute_exists(#pk) AND attribute_not_exists(deleted_at)";
    check(table, keys::org_pk(org), ORG_SK, live)
}

/// A `ConditionCheck` of the item `pk`/`sk` inside a transaction (`#pk` names the
/// partition key in `condition`).
fn check(
    table: &str,
    pk: String,
    sk: &str,
    condition: &str,
) -> Result<TransactWriteItem, StoreError> {
    let check = ConditionCheck::builder()
        .table_name(table)
        .key(PK, s(pk))
        .key(SK, s(sk))
        .condition_expression(condition)
        .expression_attribute_names("#pk", PK)
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// A plain put inside a transaction.
pub(super) fn put(table: &str, record: Item) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(record))
        .build()
        .map_err(build_error)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// An `Update` inside a transaction.
pub(super) fn tx_update(
    table: &str,
    pk: String,
    sk: String,
    expression: &str,
    condition: &str,
    names: &[(&str, &str)],
    values: &[(&str, AttributeValue)],
) -> Result<TransactWriteItem, StoreError> {
    update_action(
        table,
        pk,
        sk,
        expression,
        Some(condition),
        names
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        values.iter().map(|(k, v)| ((*k).to_owned(), v.clone())),
    )
}

/// An `Update` of the item `pk`/`sk` inside a transaction, with its placeholders' names
/// and values: what tenant writes ([`tx_update`]) and counter writes both send.
pub(super) fn update_action(
    table: &str,
    pk: String,
    sk: String,
    expression: &str,
    condition: Option<&str>,
    names: impl IntoIterator<Item = (String, String)>,
    values: impl IntoIterator<Item = (String, AttributeValue)>,
) -> Result<TransactWriteItem, StoreError> {
    let mut b = Update::builder()
        .table_name(table)
        .key(PK, s(pk))
        .key(SK, s(sk))
        .update_expression(expression)
        .set_condition_expression(condition.map(str::to_owned));
    for (k, v) in names {
        b = b.expression_attribute_names(k, v);
    }
    for (k, v) in values {
        b = b.expression_attribute_values(k, v);
    }
    Ok(TransactWriteItem::builder()
        .update(b.build().map_err(build_error)?)
        .build())
}
