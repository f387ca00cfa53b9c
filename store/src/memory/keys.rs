//! API keys, invitations and the audit trail in memory: [`ApiKeyStore`], [`InvitationStore`]
//! and [`AuditLog`], with the semantics of `sqlite/keys.rs`, `sqlite/invitations.rs` and
//! `sqlite/audit.rs`.
//!
//! Keys and invitations are found by the hash of their secret through a map from hash to
//! (org, id), as the other stores find them through an index. Expired invitations and audit
//! records are pruned by writes, as SQLite does (DynamoDB's TTL), and never returned by
//! reads whether or not they were pruned.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_core::ids::{ApiKeyId, InvitationId, OrgId};
use tally_core::ports::{
    Acceptance, ApiKeyStore, AuditLog, InvitationStore, KeyRotation, Revocation, StoreError,
};
use tally_core::tenant::{
    ApiKey, AuditPage, AuditQuery, AuditRecord, Invitation, KeyHash, KeyUse, MAX_AUDIT_PAGE,
    MAX_KEY_USES_PER_CALL, Membership, audit_instant_key, rules,
};

use super::{MemoryStore, Op, State, list_of_org, micros};

impl State {
    /// `Conflict` if a key with this hash, or this id in its org, is stored.
    fn check_new_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        if self.key_hashes.contains_key(&key.hash)
            || self
                .keys
                .contains_key(&(key.org_id.clone(), key.id.clone()))
        {
            return Err(StoreError::Conflict {
                what: format!("api key {}", key.id),
            });
        }
        Ok(())
    }

    /// Stores a key checked by [`check_new_key`](Self::check_new_key). It has not been
    /// used yet, whatever `last_used_at` says (only `touch_api_keys` records uses).
    fn insert_key(&mut self, key: &ApiKey) {
        let id = (key.org_id.clone(), key.id.clone());
        self.key_hashes.insert(key.hash.clone(), id.clone());
        self.keys.insert(
            id,
            ApiKey {
                last_used_at: None,
                ..key.clone()
            },
        );
    }

    fn invitation_by_hash(&self, hash: &KeyHash) -> Option<&Invitation> {
        self.invitation_hashes
            .get(hash)
            .and_then(|id| self.invitations.get(id))
    }
}

#[async_trait]
impl ApiKeyStore for MemoryStore {
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.require_live_org(&key.org_id)?;
        st.check_new_key(key)?;
        st.insert_key(key);
        Ok(())
    }

    async fn find_api_key(&self, hash: &KeyHash) -> Result<Option<ApiKey>, StoreError> {
        let mut st = self.lock();
        st.observe(Op::FindApiKey)?;
        Ok(st
            .key_hashes
            .get(hash)
            .and_then(|id| st.keys.get(id))
            .cloned())
    }

    async fn list_api_keys(&self, org: &OrgId) -> Result<Vec<ApiKey>, StoreError> {
        Ok(list_of_org(&self.lock().keys, org, |k| k.created_at))
    }

    async fn revoke_api_key(
        &self,
        r: &Revocation<'_, ApiKeyId>,
    ) -> Result<Option<ApiKey>, StoreError> {
        let (org, id, at) = (r.org, r.id, r.at);
        let mut st = self.lock();
        let Some(key) = st.keys.get_mut(&(org.clone(), id.clone())) else {
            return Ok(None);
        };
        key.revoked_at = Some(rules::revocation_time(key.revoked_at, at));
        Ok(Some(key.clone()))
    }

    async fn rotate_api_key(&self, r: &KeyRotation<'_>) -> Result<Option<ApiKey>, StoreError> {
        let (old, new, old_expires_at) = (r.old, r.new, r.old_expires_at);
        let mut st = self.lock();
        let id = (new.org_id.clone(), old.clone());
        let Some(current) = st.keys.get(&id).cloned() else {
            return Ok(None);
        };
        let expires = rules::rotated_expiry(old, &current, old_expires_at)?;
        st.check_new_key(new)?;
        st.insert_key(new);
        let rotated = ApiKey {
            expires_at: Some(expires),
            ..current
        };
        st.keys.insert(id, rotated.clone());
        Ok(Some(rotated))
    }

    async fn touch_api_keys(&self, uses: &[KeyUse]) -> Result<(), StoreError> {
        if uses.len() > MAX_KEY_USES_PER_CALL {
            return Err(StoreError::Unavailable(format!(
                "at most {MAX_KEY_USES_PER_CALL} key uses per call, got {}",
                uses.len()
            )));
        }
        let mut st = self.lock();
        for u in uses {
            let Some(id) = st.key_hashes.get(&u.hash).cloned() else {
                continue;
            };
            if id.0 != u.org_id {
                continue;
            }
            if let Some(key) = st.keys.get_mut(&id) {
                key.last_used_at = Some(rules::last_used_after(key.last_used_at, micros(u.at)));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl InvitationStore for MemoryStore {
    async fn create_invitation(&self, invitation: &Invitation) -> Result<(), StoreError> {
        rules::check_new_member(invitation.role)?;
        let mut st = self.lock();
        st.require_live_org(&invitation.org_id)?;
        // Expired invitations are gone for every reader; drop them here.
        let now = invitation.created_at;
        let expired: Vec<_> = st
            .invitations
            .iter()
            .filter(|(_, inv)| inv.expires_at <= now)
            .map(|(id, inv)| (id.clone(), inv.hash.clone()))
            .collect();
        for (id, hash) in expired {
            st.invitations.remove(&id);
            st.invitation_hashes.remove(&hash);
        }
        let id = (invitation.org_id.clone(), invitation.id.clone());
        if st.invitations.contains_key(&id) || st.invitation_hashes.contains_key(&invitation.hash) {
            return Err(StoreError::Conflict {
                what: format!("invitation {}", invitation.id),
            });
        }
        st.invitation_hashes
            .insert(invitation.hash.clone(), id.clone());
        st.invitations.insert(
            id,
            Invitation {
                email: invitation.email.to_lowercase(),
                ..invitation.clone()
            },
        );
        Ok(())
    }

    async fn list_invitations(
        &self,
        org: &OrgId,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>, StoreError> {
        let mut out = list_of_org(&self.lock().invitations, org, |inv| inv.created_at);
        out.retain(|inv| inv.is_pending(now));
        Ok(out)
    }

    async fn find_invitation(
        &self,
        hash: &KeyHash,
        now: DateTime<Utc>,
    ) -> Result<Option<Invitation>, StoreError> {
        Ok(self
            .lock()
            .invitation_by_hash(hash)
            .filter(|inv| inv.expires_at > now)
            .cloned())
    }

    async fn revoke_invitation(
        &self,
        r: &Revocation<'_, InvitationId>,
    ) -> Result<Option<Invitation>, StoreError> {
        let (org, id, now) = (r.org, r.id, r.at);
        let mut st = self.lock();
        let key = (org.clone(), id.clone());
        let Some(inv) = st
            .invitations
            .get(&key)
            .filter(|inv| inv.is_pending(now))
            .cloned()
        else {
            return Ok(None);
        };
        st.invitations.remove(&key);
        st.invitation_hashes.remove(&inv.hash);
        Ok(Some(inv))
    }

    async fn accept_invitation(&self, a: &Acceptance<'_>) -> Result<Membership, StoreError> {
        let (hash, user, at) = (a.hash, a.user, a.at);
        let mut st = self.lock();
        let found = st.invitation_by_hash(hash).cloned();
        let (inv, m) = rules::accepted_membership(found, user, at)?;
        st.insert_member(&m)?;
        if let Some(stored) = st.invitations.get_mut(&(inv.org_id, inv.id)) {
            stored.accepted_at = Some(at);
        }
        Ok(m)
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn record_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut st = self.lock();
        // Records expired as of this one are gone for every reader; drop them here.
        let now = record.at.timestamp();
        while let Some((expires, org, sk)) = st.audit_expiry.first().cloned() {
            if expires > now {
                break;
            }
            st.audit_expiry.pop_first();
            if let Some(trail) = st.audit.get_mut(&org) {
                trail.remove(&sk);
            }
        }
        let sk = record.sort_key();
        let trail = st.audit.entry(record.org_id.clone()).or_default();
        if trail.contains_key(&sk) {
            return Ok(());
        }
        trail.insert(sk.clone(), record.clone());
        st.audit_expiry
            .insert((record.expires_at().timestamp(), record.org_id.clone(), sk));
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let limit = q.limit.clamp(1, MAX_AUDIT_PAGE);
        // Sort keys in [lower, upper): the cursor (or `to`, whichever is lower) bounds them
        // above, `from` below, compared as text as the other stores compare them.
        let to = q.to.map(audit_instant_key);
        let upper = match (&q.cursor, &to) {
            (Some(c), Some(t)) => Some(c.min(t).clone()),
            (Some(c), None) => Some(c.clone()),
            (None, t) => t.clone(),
        };
        let lower = q.from.map(audit_instant_key).unwrap_or_default();
        let now = q.now.timestamp();
        let st = self.lock();
        let Some(trail) = st.audit.get(&q.org) else {
            return Ok(AuditPage::default());
        };
        let records: Vec<AuditRecord> = trail
            .iter()
            .rev()
            .filter(|(sk, _)| upper.as_ref().is_none_or(|u| *sk < u))
            .take_while(|(sk, _)| **sk >= lower)
            .map(|(_, r)| r)
            .filter(|r| {
                r.expires_at().timestamp() > now
                    && q.actor.as_ref().is_none_or(|a| r.actor == *a)
                    && q.action.as_ref().is_none_or(|a| r.action == *a)
                    && q.resource.as_ref().is_none_or(|x| r.resource == *x)
            })
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(AuditPage::from_one_extra(records, limit))
    }
}
