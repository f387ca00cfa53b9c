//! Security policies and sessions on DynamoDB: [`SecurityStore`].
//!
//! An org's policy lives on the org item itself (`ORG#<org>` / `ORG`), as the attributes
//! `security_policy` (the policy as JSON) and `security_policy_at`: setting it is one
//! conditional `UpdateItem` (the org exists and is not deleted) that hands back the old
//! attributes, so the audit trail's before and after come from one atomic write, and reading
//! it is the `GetItem` of the org.
//!
//! A session is an item in its user's partition (`USER#<user>` / `SESSION#<id>`): the check
//! a session token costs is one `GetItem`, and a user's sessions are one query. It carries
//! `ttl` = its expiry, so DynamoDB deletes ended sessions; reads check the expiry
//! themselves, because TTL deletion is lazy.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};
use tally_core::ids::{OrgId, SessionId, UserId};
use tally_core::ports::{RevokeSession, SecurityStore, StoreError};
use tally_core::security::{OrgSecurityPolicy, SecurityPolicy, Session};
use tally_core::tenant::rules;

use super::DynamoStore;
use super::codec::{
    Item, corrupt, get_opt_s, get_s, item, n, parse_id, parse_ts, s, ts_text,
    unless_condition_failed,
};
use super::keys::{self, ORG_SK, PK, SK, TTL};
use super::tenants::{revoke_existing, update_request};

/// Sort key prefix of session items inside a user's partition.
pub const SESSION_PREFIX: &str = "SESSION#";
/// The org item's attribute holding its policy as JSON.
const POLICY_ATTR: &str = "security_policy";
/// The org item's attribute holding when the policy was set.
const POLICY_AT_ATTR: &str = "security_policy_at";

fn session_sk(id: &SessionId) -> String {
    format!("{SESSION_PREFIX}{id}")
}

/// The policy the org item's attributes hold, if it has one.
fn policy_of(org: &OrgId, it: &Item) -> Result<Option<OrgSecurityPolicy>, StoreError> {
    let Some(body) = get_opt_s(it, POLICY_ATTR)? else {
        return Ok(None);
    };
    let policy: SecurityPolicy = serde_json::from_str(body)
        .map_err(|e| corrupt(format!("security policy of {org}: {e}")))?;
    Ok(Some(OrgSecurityPolicy {
        org_id: org.clone(),
        policy,
        updated_at: parse_ts(get_s(it, POLICY_AT_ATTR)?)?,
    }))
}

fn session_of(it: &Item) -> Result<Session, StoreError> {
    Ok(Session {
        id: parse_id(get_s(it, "id")?, SessionId::parse)?,
        user_id: parse_id(get_s(it, "user_id")?, UserId::parse)?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
        expires_at: parse_ts(get_s(it, "expires_at")?)?,
        ip: get_opt_s(it, "ip")?.map(str::to_owned),
        user_agent: get_opt_s(it, "user_agent")?.map(str::to_owned),
        revoked_at: get_opt_s(it, "revoked_at")?.map(parse_ts).transpose()?,
    })
}

#[async_trait]
impl SecurityStore for DynamoStore {
    async fn get_security_policy(
        &self,
        org: &OrgId,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        match self.get(keys::org_pk(org), ORG_SK).await? {
            Some(it) => policy_of(org, &it),
            None => Ok(None),
        }
    }

    /// One conditional `UpdateItem` of the org item, returning the attributes it replaced.
    async fn put_security_policy(
        &self,
        policy: &OrgSecurityPolicy,
    ) -> Result<Option<OrgSecurityPolicy>, StoreError> {
        let body = serde_json::to_string(&policy.policy)
            .map_err(|e| StoreError::Unavailable(format!("encoding a policy: {e}")))?;
        let updated = self
            .update_item_at(keys::org_pk(&policy.org_id), ORG_SK)
            .update_expression("SET #p = :p, #at = :at")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(deleted_at)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#p", POLICY_ATTR)
            .expression_attribute_names("#at", POLICY_AT_ATTR)
            .expression_attribute_values(":p", s(body))
            .expression_attribute_values(":at", s(ts_text(policy.updated_at)))
            .return_values(ReturnValue::UpdatedOld)
            .send()
            .await;
        match unless_condition_failed("UpdateItem", updated)? {
            None => Err(rules::org_not_live(&policy.org_id)),
            Some(out) => match out.attributes {
                Some(old) => policy_of(&policy.org_id, &old),
                None => Ok(None),
            },
        }
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let mut record = item([
            (PK, s(keys::user_pk(&session.user_id))),
            (SK, s(session_sk(&session.id))),
            ("id", s(session.id.as_str())),
            ("user_id", s(session.user_id.as_str())),
            ("created_at", s(ts_text(session.created_at))),
            ("expires_at", s(ts_text(session.expires_at))),
            (TTL, n(crate::secs::ceil_secs(session.expires_at))),
        ]);
        let optional = [
            ("ip", session.ip.clone()),
            ("user_agent", session.user_agent.clone()),
            ("revoked_at", session.revoked_at.map(ts_text)),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                record.insert(name.into(), s(v));
            }
        }
        if self.put_if_absent(record).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                what: format!("session {}", session.id),
            })
        }
    }

    async fn get_session(
        &self,
        user: &UserId,
        id: &SessionId,
    ) -> Result<Option<Session>, StoreError> {
        self.get_as(keys::user_pk(user), &session_sk(id), session_of)
            .await
    }

    async fn list_sessions(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Session>, StoreError> {
        let items = self
            .query_prefix(keys::user_pk(user), SESSION_PREFIX)
            .await?;
        let mut out = Vec::with_capacity(items.len());
        for it in &items {
            let session = session_of(it)?;
            if session.is_active(now) {
                out.push(session);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// One conditional `UpdateItem`: `revoked_at` unless set, returning the session as it
    /// is now.
    async fn revoke_session(&self, r: &RevokeSession<'_>) -> Result<Option<Session>, StoreError> {
        let (user, id, at) = (r.user, r.id, r.at);
        let req = update_request(self, keys::user_pk(user), &session_sk(id));
        revoke_existing(req, at, session_of).await
    }
}
