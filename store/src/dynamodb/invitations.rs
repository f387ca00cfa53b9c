//! Invitations on DynamoDB, mirroring the API key layout: the invitation item is keyed by
//! the SHA-256 of its token (`INVITE#<hash>` / `INVITE`, so accepting finds it with one
//! `GetItem`), and an id guard in the org partition (`ORG#<org>` / `INVITE#<id>`, holding the
//! hash) lists an org's invitations with a strongly consistent query. Both carry `ttl` =
//! the expiry, and every read checks the expiry itself, because TTL deletion is lazy.
//!
//! Accepting is one transaction: the invitation's `accepted_at` (conditioned on not being
//! accepted and not expired), checks that the org and the user exist, and the membership
//! put under `attribute_not_exists`. So a second accept, or a member already, is refused
//! and nothing is half done.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Delete, TransactWriteItem};
use chrono::{DateTime, Utc};
use tally_core::ids::{InvitationId, OrgId, UserId};
use tally_core::ports::{Acceptance, InvitationStore, Revocation, StoreError};
use tally_core::tenant::rules;
use tally_core::tenant::{Invitation, KeyHash, Membership, Role};

use super::DynamoStore;
use super::chunks::put_if_absent;
use super::codec::hash_of;
use super::codec::{
    Item, build_error, corrupt, get_opt_s, get_s, item, n, parse_id, parse_ts, s, ts_text,
};
use super::keys::{self, PK, SK, TTL, USER_SK};
use super::members::{member_taken, membership_put};
use super::tx::{conflict, must_exist, not_found, org_must_be_live, refusal, tx_update};

/// Sort key of an invitation item.
pub const INVITE_SK: &str = "INVITE";
/// Sort key prefix of invitation id guards inside the org partition.
pub const INVITE_PREFIX: &str = "INVITE#";

/// `INVITE#<sha256 hex of the token>`: an invitation, found by the hash of its token.
pub fn invite_pk(hash: &KeyHash) -> String {
    format!("INVITE#{}", hash.as_str())
}

/// `INVITE#<invitation id>`: the invitation id guard's sort key in the org partition.
pub fn invite_id_sk(id: &InvitationId) -> String {
    format!("{INVITE_PREFIX}{id}")
}

/// Unix seconds of `t`, rounded up: the `ttl` of an item that expires at `t`.
fn ttl_of(t: DateTime<Utc>) -> i64 {
    let secs = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

fn invitation_of(it: &Item) -> Result<Invitation, StoreError> {
    let role = get_s(it, "role")?;
    Ok(Invitation {
        id: parse_id(get_s(it, "id")?, InvitationId::parse)?,
        org_id: parse_id(get_s(it, "org_id")?, OrgId::parse)?,
        email: get_s(it, "email")?.to_owned(),
        role: Role::parse(role).ok_or_else(|| corrupt(format!("invitation role {role:?}")))?,
        hash: hash_of(it, "invitation hash")?,
        invited_by: parse_id(get_s(it, "invited_by")?, UserId::parse)?,
        created_at: parse_ts(get_s(it, "created_at")?)?,
        expires_at: parse_ts(get_s(it, "expires_at")?)?,
        accepted_at: get_opt_s(it, "accepted_at")?.map(parse_ts).transpose()?,
    })
}

/// A delete inside a transaction; with `pending_in`, only of a pending invitation of that
/// org (the item exists, is the org's and is not accepted).
fn tx_delete(
    table: &str,
    pk: String,
    sk: String,
    pending_in: Option<&OrgId>,
) -> Result<TransactWriteItem, StoreError> {
    let mut b = Delete::builder()
        .table_name(table)
        .key(PK, s(pk))
        .key(SK, s(sk));
    if let Some(org) = pending_in {
        b = b
            .condition_expression(
                "attribute_exists(#pk) AND org_id = :org AND attribute_not_exists(accepted_at)",
            )
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":org", s(org.as_str()));
    }
    Ok(TransactWriteItem::builder()
        .delete(b.build().map_err(build_error)?)
        .build())
}

#[async_trait]
impl InvitationStore for DynamoStore {
    /// The invitation item and its id guard, put under `attribute_not_exists`, with a check
    /// that the org exists, in one transaction.
    async fn create_invitation(&self, inv: &Invitation) -> Result<(), StoreError> {
        rules::check_new_member(inv.role)?;
        let table = self.table();
        let ttl = ttl_of(inv.expires_at);
        let mut record = item([
            (PK, s(invite_pk(&inv.hash))),
            (SK, s(INVITE_SK)),
            ("id", s(inv.id.as_str())),
            ("org_id", s(inv.org_id.as_str())),
            ("email", s(inv.email.to_lowercase())),
            ("role", s(inv.role.as_str())),
            ("hash", s(inv.hash.as_str())),
            ("invited_by", s(inv.invited_by.as_str())),
            ("created_at", s(ts_text(inv.created_at))),
            ("expires_at", s(ts_text(inv.expires_at))),
            (TTL, n(ttl)),
        ]);
        if let Some(t) = inv.accepted_at {
            record.insert("accepted_at".into(), s(ts_text(t)));
        }
        let actions = vec![
            org_must_be_live(table, &inv.org_id)?,
            put_if_absent(table, record)?,
            put_if_absent(
                table,
                item([
                    (PK, s(keys::org_pk(&inv.org_id))),
                    (SK, s(invite_id_sk(&inv.id))),
                    ("hash", s(inv.hash.as_str())),
                    (TTL, n(ttl)),
                ]),
            )?,
        ];
        let org = rules::org_not_live(&inv.org_id);
        let taken = conflict(format!("invitation {}", inv.id));
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, [(0, org)], taken))
    }

    /// One `GetItem` by hash; an item past its expiry (TTL deletion lags) is `None`.
    async fn find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        let found = self
            .get(invite_pk(hash), INVITE_SK)
            .await?
            .as_ref()
            .map(invitation_of)
            .transpose()?;
        Ok(found.filter(|inv| inv.expires_at > now))
    }

    /// The org's id guards (one strongly consistent query), then each invitation by hash;
    /// only pending ones, in creation order (then id).
    async fn list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        let guards = self.query_prefix(keys::org_pk(org), INVITE_PREFIX).await?;
        let mut out = Vec::with_capacity(guards.len());
        for g in &guards {
            let hash = hash_of(g, "invitation id guard hash")?;
            if let Some(inv) = self.find_invitation(&hash, now).await?
                && &inv.org_id == org
                && inv.is_pending(now)
            {
                out.push(inv);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// The id guard gives the hash; one transaction deletes the invitation (conditioned on its
    /// org and on not being accepted) and its guard.
    async fn revoke_invitation(
        &self,
        r: &Revocation<'_, InvitationId>,
    ) -> Result<Option<Invitation>, StoreError> {
        let (org, id, now) = (r.org, r.id, r.at);
        let sk = invite_id_sk(id);
        let Some(hash) = self
            .guarded_hash(org, &sk, "invitation id guard hash")
            .await?
        else {
            return Ok(None);
        };
        let Some(inv) = self
            .find_invitation(&hash, now)
            .await?
            .filter(|inv| &inv.org_id == org && inv.is_pending(now))
        else {
            return Ok(None);
        };
        let table = self.table();
        let actions = vec![
            tx_delete(table, invite_pk(&hash), INVITE_SK.into(), Some(org))?,
            tx_delete(table, keys::org_pk(org), invite_id_sk(id), None)?,
        ];
        match self.transact_tenant(actions).await? {
            Ok(()) => Ok(Some(inv)),
            // Accepted or revoked meanwhile: no longer pending.
            Err(_) => Ok(None),
        }
    }

    /// One transaction: `accepted_at` on the invitation (not accepted, not expired), the org
    /// and the user exist, and the membership is new.
    async fn accept_invitation(&self, a: &Acceptance<'_>) -> Result<Membership, StoreError> {
        let (hash, user, at) = (a.hash, a.user, a.at);
        let found = self.find_invitation(hash, at).await?;
        let (inv, m) = rules::accepted_membership(found, user, at)?;
        rules::check_new_member(m.role)?;
        let table = self.table();
        let actions = vec![
            tx_update(
                table,
                invite_pk(hash),
                INVITE_SK.into(),
                "SET accepted_at = :at",
                "attribute_exists(#pk) AND attribute_not_exists(accepted_at) AND #ttl > :now",
                &[("#pk", PK), ("#ttl", TTL)],
                &[(":at", s(ts_text(at))), (":now", n(at.timestamp()))],
            )?,
            org_must_be_live(table, &m.org_id)?,
            must_exist(table, keys::user_pk(&m.user_id), USER_SK)?,
            membership_put(table, &m)?,
        ];
        let checks = [
            (0, conflict(format!("acceptance of invitation {}", inv.id))),
            (1, rules::org_not_live(&m.org_id)),
            (2, not_found(format!("user {}", m.user_id))),
        ];
        let taken = member_taken(&m);
        self.transact_tenant(actions)
            .await?
            .map_err(|r| refusal(&r, checks, taken))?;
        Ok(m)
    }
}
