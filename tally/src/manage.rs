//! The operator's management commands beyond creation: reading and changing orgs, projects,
//! keys, members and invitations, the audit trail, usage and stored reports.
//!
//! The operator acts outside the role table (whoever can run `tally` against the store owns
//! the deployment), so nothing here authorizes; everything else is the management API's own
//! code, called rather than copied: the same store ports, the same rules
//! (`tally_api::keys::rotate`, `tally_api::projects::change_project`,
//! `tally_api::usage::UsageRequest`, ...) and so the same refusals, which the CLI prints as
//! the API's message with its code and field. Every change writes one audit record with
//! actor `cli`, allowed with before and after, or refused with the error code, as the API
//! records its routes'.

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use tally_api::ApiError;
use tally_api::mgmt::MgmtError;
use tally_core::OrgId;
use tally_core::tenant::{AuditOutcome, AuditRecord, Org};

use crate::backend::Stores;
use crate::settings::Common;

/// The API's refusal as one line for stderr: its message, then its code and the field to
/// blame, so a script can tell refusals apart as it would over HTTP.
pub(crate) fn refusal(e: MgmtError) -> anyhow::Error {
    match e.field() {
        Some(field) => anyhow::anyhow!("{e} (code {}, field {field})", e.code()),
        None => anyhow::anyhow!("{e} (code {})", e.code()),
    }
}

/// [`refusal`] of a bare [`ApiError`].
pub(crate) fn api_refusal(e: ApiError) -> anyhow::Error {
    refusal(MgmtError::Api(e))
}

/// `--org`, parsed: a malformed id is refused naming the flag.
pub(crate) fn org_id(org: &str) -> anyhow::Result<OrgId> {
    OrgId::parse(org).context("--org")
}

/// The org `id` whatever its state (deleted orgs included, for reading), or the API's
/// `404`.
pub(crate) async fn any_org(store: &Stores, id: &OrgId) -> anyhow::Result<Org> {
    store
        .tenants
        .get_org(id)
        .await
        .map_err(|e| refusal(e.into()))?
        .ok_or_else(|| api_refusal(no_org(id)))
}

/// The org `id` if it exists and is not deleted (the orgs a change may touch), or the API's
/// `404`.
pub(crate) async fn live_org(store: &Stores, id: &OrgId) -> anyhow::Result<Org> {
    alive(any_org(store, id).await?)
}

/// `org`, refused as not found when it is deleted.
fn alive(org: Org) -> anyhow::Result<Org> {
    if org.deleted_at.is_some() {
        return Err(api_refusal(no_org(&org.id)));
    }
    Ok(org)
}

/// The API's `404` for an org, naming the id the operator gave (the operator may see it).
fn no_org(id: &OrgId) -> ApiError {
    ApiError::not_found("org_id", format!("no such organization {id}"))
}

/// What a successful operator change answers and records.
pub(crate) struct Change<T> {
    /// What the command prints.
    pub answer: T,
    /// The resource before, if it had one.
    pub before: Option<Value>,
    /// The resource after, if it still has one.
    pub after: Option<Value>,
}

impl<T: Serialize> Change<T> {
    /// A change from `before` to `after`, which is also the answer.
    pub fn updated(before: &impl Serialize, after: T) -> Self {
        Change {
            before: serde_json::to_value(before).ok(),
            after: serde_json::to_value(&after).ok(),
            answer: after,
        }
    }

    /// The removal of `gone`, which is also the answer: a change with no after.
    pub fn removed(gone: T) -> Self {
        Change {
            before: serde_json::to_value(&gone).ok(),
            after: None,
            answer: gone,
        }
    }
}

/// Writes the audit record of the operator's `action` on `resource` in `org`, allowed or
/// refused as `result` says, and returns the answer or the refusal. A record that cannot be
/// written is logged on stderr but does not undo the change, as in the API.
pub(crate) async fn audited<T>(
    store: &Stores,
    org: &OrgId,
    action: &str,
    resource: String,
    result: Result<Change<T>, MgmtError>,
) -> anyhow::Result<T> {
    let (outcome, reason, before, after) = match &result {
        Ok(c) => (
            AuditOutcome::Allowed,
            None,
            c.before.clone(),
            c.after.clone(),
        ),
        Err(e) => (AuditOutcome::Refused, Some(e.code()), None, None),
    };
    record(store, org, action, resource, outcome, reason, before, after).await;
    result.map(|c| c.answer).map_err(refusal)
}

/// One operator change to audit: the `action` on `resource` in `org`, recorded in `store`.
pub(crate) struct Audit<'a> {
    store: &'a Stores,
    org: &'a OrgId,
    action: &'a str,
    resource: String,
}

impl<'a> Audit<'a> {
    /// The change `action` (`member.update`, ...) on `resource` (`member:usr_…`) in `org`.
    pub fn new(store: &'a Stores, org: &'a OrgId, action: &'a str, resource: String) -> Self {
        Audit {
            store,
            org,
            action,
            resource,
        }
    }

    /// Records the change with [`audited`] (refused or allowed), then prints the answer: as
    /// JSON with `--json`, else the line `human` makes of it. The member and invitation
    /// commands end with it; the inventory commands call [`audited`] and print themselves.
    pub async fn record_and_print<T: Serialize>(
        self,
        common: &Common,
        result: Result<Change<T>, MgmtError>,
        human: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let answer = audited(self.store, self.org, self.action, self.resource, result).await?;
        crate::output::print(common.json, &answer, human)
    }
}

/// Writes one audit record with actor `cli` (the operator); a failure to write it is
/// logged, not fatal.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record(
    store: &Stores,
    org: &OrgId,
    action: &str,
    resource: String,
    outcome: AuditOutcome,
    reason: Option<String>,
    before: Option<Value>,
    after: Option<Value>,
) {
    let record = AuditRecord {
        id: format!("aud_{}", hex::encode(random::<16>())),
        org_id: org.clone(),
        actor: OPERATOR.into(),
        action: action.to_owned(),
        resource,
        outcome,
        reason,
        before,
        after,
        at: Utc::now(),
        ip: None,
        user_agent: Some(format!("tally-cli/{}", env!("CARGO_PKG_VERSION"))),
    };
    if let Err(e) = store.tenants.record_audit(&record).await {
        tracing::error!(error = %e, action, "cannot write the audit record");
    }
}

/// Writes an allowed audit record with actor `cli`; a failure to write it is logged, not
/// fatal (the change itself is done).
pub(crate) async fn audit_record(
    store: &Stores,
    org: &OrgId,
    action: &str,
    resource: String,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) {
    record(
        store,
        org,
        action,
        resource,
        AuditOutcome::Allowed,
        None,
        before,
        after,
    )
    .await;
}

/// The actor of the operator's audit records.
pub(crate) const OPERATOR: &str = "cli";

/// The process clock (`TALLY_NOW` shifts it), for the times the commands write.
pub(crate) fn now() -> anyhow::Result<chrono::DateTime<Utc>> {
    Ok(crate::clock::from_env()?.now())
}

/// Opens the store named by the global flags.
pub(crate) async fn open(common: &Common) -> anyhow::Result<Stores> {
    crate::backend::open_store(common).await
}

/// Parses `--org`, opens the store and finds the org, deleted or not ([`any_org`]): the
/// store, the org's id and the org.
pub(crate) async fn open_any_org(
    common: &Common,
    org: &str,
) -> anyhow::Result<(Stores, OrgId, Org)> {
    let id = org_id(org)?;
    let store = open(common).await?;
    let org = any_org(&store, &id).await?;
    Ok((store, id, org))
}

/// [`open_any_org`] of an org that must not be deleted ([`live_org`]).
pub(crate) async fn open_live_org(
    common: &Common,
    org: &str,
) -> anyhow::Result<(Stores, OrgId, Org)> {
    let (store, id, org) = open_any_org(common, org).await?;
    Ok((store, id, alive(org)?))
}

/// `N` random bytes, for ids, secrets and audit record ids.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}
