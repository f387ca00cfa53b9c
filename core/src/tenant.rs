//! Tenant records: organizations, users, projects, API keys and invitations.
//!
//! These are plain data; the storage port persists them and the management API (its own
//! issue) grows them. API key secrets never live here: only their SHA-256 hash, which is
//! also how a key is found (one lookup by hash, never a scan). Invitation tokens are kept
//! the same way. The rules about them that every backend enforces (owner guards, key
//! rotation) are in [`rules`].

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{ApiKeyId, InvitationId, OrgId, ProjectId, UserId};
/// Defined beside [`crate::plan::billed_plan`], which reads it, so `plan` need not import
/// this module.
pub use crate::plan::PlanChange;
use crate::plan::PlanId;

pub mod rules;

/// Longest organization or project name.
pub const MAX_NAME_LEN: usize = 200;
/// Longest slug.
pub const MAX_SLUG_LEN: usize = 64;
/// Longest email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// Why a tenant field was refused; the message names the field (a `400` at the HTTP edge, a
/// one-line error in the CLI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// Checks a display name: 1–200 characters, no control characters.
pub fn check_name(field: &'static str, name: &str) -> Result<(), FieldError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_LEN || name.trim().is_empty() {
        return Err(FieldError {
            field,
            message: format!("must be 1 to {MAX_NAME_LEN} characters"),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(FieldError {
            field,
            message: "must not contain control characters".into(),
        });
    }
    Ok(())
}

/// Checks a slug: 1–64 characters of lowercase letters, digits and `-`, not starting or
/// ending with `-`.
pub fn check_slug(field: &'static str, slug: &str) -> Result<(), FieldError> {
    let ok = !slug.is_empty()
        && slug.len() <= MAX_SLUG_LEN
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(FieldError {
            field,
            message: format!(
                "must be 1 to {MAX_SLUG_LEN} lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        })
    }
}

/// Checks an email address loosely (one `@`, something on each side, no spaces); the real
/// proof is the invitation mail, not a regex.
pub fn check_email(field: &'static str, email: &str) -> Result<(), FieldError> {
    let ok = email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty()
                && d.contains('.')
                && !d.contains('@')
                && !d.starts_with('.')
                && !d.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError {
            field,
            message: "must be an email address like ada@example.com".into(),
        })
    }
}

/// An organization: the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Org {
    /// Its id.
    pub id: OrgId,
    /// Display name.
    pub name: String,
    /// Unique, URL-safe handle.
    pub slug: String,
    /// The plan it is on.
    pub plan: PlanId,
    /// The user who owns it.
    pub owner_id: UserId,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was deleted (soft: its data stays for billing, but nobody acts in it any
    /// more and its API keys are revoked). `None` while it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Email address, stored lowercased so lookups are case-insensitive.
    pub email: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A user's role in one org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including billing and ownership transfer.
    Owner,
    /// Everything but ownership.
    Admin,
    /// Works in the projects they are on.
    Member,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A project inside an org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Its id.
    pub id: ProjectId,
    /// The org it belongs to.
    pub org_id: OrgId,
    /// Display name.
    pub name: String,
    /// Unique within the org.
    pub slug: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was archived: ingest refuses its events from then on, and it no longer
    /// counts against the plan's project limit. `None` while it is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
}

/// A change to a project: each field set is written, the others are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectChanges {
    /// A new display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Archive it at this instant (a project archived before keeps its first time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_at: Option<DateTime<Utc>>,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyScope {
    /// Send usage events.
    #[serde(rename = "events:write")]
    EventsWrite,
    /// Read usage counters.
    #[serde(rename = "usage:read")]
    UsageRead,
}

impl KeyScope {
    /// Every scope, for error messages.
    pub const ALL: [KeyScope; 2] = [KeyScope::EventsWrite, KeyScope::UsageRead];

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::EventsWrite => "events:write",
            KeyScope::UsageRead => "usage:read",
        }
    }

    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<KeyScope> {
        KeyScope::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of an API key's secret, hex-encoded: what is stored and looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyHash(String);

impl KeyHash {
    /// Hashes a presented secret.
    pub fn of_secret(secret: &str) -> KeyHash {
        KeyHash(hex::encode(Sha256::digest(secret.as_bytes())))
    }

    /// Wraps a stored hash (64 lowercase hex characters).
    pub fn from_hex(hex: &str) -> Option<KeyHash> {
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| KeyHash(hex.to_owned()))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a key is for live traffic or for testing (visible in its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyMode {
    /// `tk_live_…`
    Live,
    /// `tk_test_…`
    Test,
}

impl KeyMode {
    /// The secret's prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            KeyMode::Live => "tk_live_",
            KeyMode::Test => "tk_test_",
        }
    }
}

impl KeyMode {
    /// The org id under which usage of this mode is kept: the org itself for live keys, its
    /// [test twin](OrgId::test_twin) for test keys.
    pub fn usage_org(self, org: &OrgId) -> OrgId {
        match self {
            KeyMode::Live => org.clone(),
            KeyMode::Test => org.test_twin(),
        }
    }

    /// `live` or `test`, as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Live => "live",
            KeyMode::Test => "test",
        }
    }

    /// Reads `live` or `test`.
    pub fn parse(s: &str) -> Option<KeyMode> {
        match s {
            "live" => Some(KeyMode::Live),
            "test" => Some(KeyMode::Test),
            _ => None,
        }
    }
}

/// Builds an API key secret from 32 random bytes (256 bits) supplied by the caller.
pub fn api_key_secret(mode: KeyMode, random: [u8; 32]) -> String {
    format!("{}{}", mode.prefix(), hex::encode(random))
}

/// Whether `secret` has the shape of a key [`api_key_secret`] makes: a mode prefix and 64
/// lowercase hex digits. Checked before any lookup, so an invented credential costs no
/// store read and no cache slot.
pub fn looks_like_key(secret: &str) -> bool {
    [KeyMode::Live, KeyMode::Test].iter().any(|m| {
        secret.strip_prefix(m.prefix()).is_some_and(|rest| {
            rest.len() == 64
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    })
}

/// Longest secret accepted in an `Authorization` header; anything longer cannot be a key and
/// is refused before hashing.
pub const MAX_KEY_SECRET_LEN: usize = 128;

/// An API key as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id, shown in lists and audit records.
    pub id: ApiKeyId,
    /// The org whose events the key sends; the org of every event it posts.
    pub org_id: OrgId,
    /// Display name.
    pub name: String,
    /// SHA-256 of the secret.
    pub hash: KeyHash,
    /// The first characters of the secret (`tk_live_ab12`), so people can tell keys apart.
    pub display_prefix: String,
    /// What the key may do.
    pub scopes: Vec<KeyScope>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// After this instant the key is refused.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When ingest last accepted it, to the microsecond, as of the last flush of ingest's
    /// in-memory record (`tally serve` flushes every few seconds); `None` if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// How many leading characters of a key's secret it keeps as its
/// [`display_prefix`](ApiKey::display_prefix): the mode prefix and four more (`tk_live_ab12`),
/// enough to tell a person's keys apart, far too few to guess the rest from.
pub const DISPLAY_PREFIX_LEN: usize = 12;

impl ApiKey {
    /// The key `id` of `org_id` for `secret`, created at `created_at`: it keeps only the
    /// secret's SHA-256 ([`KeyHash::of_secret`]) and its first [`DISPLAY_PREFIX_LEN`]
    /// characters, never the secret. It is active, never used and never expires, with no
    /// name and no scopes: the caller sets those (and any expiry) with struct update syntax,
    /// `ApiKey { name, scopes, ..ApiKey::new(id, org_id, &secret, now) }`.
    pub fn new(id: ApiKeyId, org_id: OrgId, secret: &str, created_at: DateTime<Utc>) -> ApiKey {
        ApiKey {
            id,
            org_id,
            name: String::new(),
            hash: KeyHash::of_secret(secret),
            display_prefix: secret.chars().take(DISPLAY_PREFIX_LEN).collect(),
            scopes: Vec::new(),
            created_at,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        }
    }

    /// Live or test, read from the secret's prefix as kept in
    /// [`display_prefix`](Self::display_prefix).
    pub fn mode(&self) -> KeyMode {
        if self.display_prefix.starts_with(KeyMode::Test.prefix()) {
            KeyMode::Test
        } else {
            KeyMode::Live
        }
    }
}

/// One API key's latest use, recorded in memory by ingest and written in bulk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyUse {
    /// The key's id.
    pub key_id: ApiKeyId,
    /// Its org.
    pub org_id: OrgId,
    /// Its hash (how the store finds it in one lookup).
    pub hash: KeyHash,
    /// When it was last used.
    pub at: DateTime<Utc>,
}

/// Most key uses one `touch_api_keys` call takes; callers write more in chunks.
pub const MAX_KEY_USES_PER_CALL: usize = 500;

/// A last-used time as stored: RFC 3339 with exactly six fractional digits, so stored
/// times compare as text in time order (both backends keep the later of two writes by
/// comparing them).
pub fn last_used_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

impl ApiKey {
    /// Whether the key may be used at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none_or(|r| r > now) && self.expires_at.is_none_or(|e| e > now)
    }

    /// Whether the key carries a scope.
    pub fn has_scope(&self, scope: KeyScope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// A change to an org's settings: each field set is written, the others are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgChanges {
    /// A new display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A user's membership of one org: who, with which role, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The org.
    pub org_id: OrgId,
    /// The member.
    pub user_id: UserId,
    /// What the member may do in the org (see the role table of the management API).
    pub role: Role,
    /// When the membership began.
    pub created_at: DateTime<Utc>,
}

/// How long an invitation can be accepted: 7 days (a `ttl` on DynamoDB; both backends also
/// check it on read, since TTL deletion is lazy).
pub const INVITATION_TTL_DAYS: i64 = 7;

/// Prefix of invitation tokens, so one pasted where an API key belongs is told apart.
pub const INVITATION_TOKEN_PREFIX: &str = "tinv_";

/// Longest invitation token accepted in a body; anything longer cannot be one and is
/// refused before hashing.
pub const MAX_INVITATION_TOKEN_LEN: usize = 128;

/// Builds an invitation token from 32 random bytes (256 bits) supplied by the caller. Like
/// an API key's secret it is shown once and only its SHA-256 ([`KeyHash::of_secret`]) is
/// stored.
pub fn invitation_token(random: [u8; 32]) -> String {
    format!("{INVITATION_TOKEN_PREFIX}{}", hex::encode(random))
}

/// An invitation to join an org with a role, as stored: never the token, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// Public id, shown in lists and audit records.
    pub id: InvitationId,
    /// The org to join.
    pub org_id: OrgId,
    /// Who may accept it: a user with this email (lowercased).
    pub email: String,
    /// The role the membership gets (never owner).
    pub role: Role,
    /// SHA-256 of the token: what is stored and looked up.
    pub hash: KeyHash,
    /// Who sent it.
    pub invited_by: UserId,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
    /// When it stops being acceptable ([`INVITATION_TTL_DAYS`] after it was sent).
    pub expires_at: DateTime<Utc>,
    /// When it was accepted, if it was (a second accept is refused).
    pub accepted_at: Option<DateTime<Utc>>,
}

impl Invitation {
    /// Whether it is still waiting to be accepted at `now`: not accepted and not expired.
    /// Pending invitations count against the plan's user limit.
    pub fn is_pending(&self, now: DateTime<Utc>) -> bool {
        self.accepted_at.is_none() && self.expires_at > now
    }
}

/// How long audit records are kept (by TTL on DynamoDB, by `expires_at` on SQLite).
pub const AUDIT_RETENTION_DAYS: i64 = 90;

/// Whether an audited mutation went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// The mutation was carried out.
    Allowed,
    /// The mutation was refused (role, plan limit, validation, conflict).
    Refused,
}

/// One entry of an org's audit trail: every mutation, allowed or refused, writes one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique id, `aud_` + 32 hex digits; breaks ties between records of the same instant.
    pub id: String,
    /// The org the mutation concerned.
    pub org_id: OrgId,
    /// Who did it: a user id, `apikey:<id>`, or `cli`.
    pub actor: String,
    /// What was attempted, `<resource type>.<verb>`: `org.create`, `project.create`, ...
    pub action: String,
    /// What it concerned, `<type>:<id>` (`project:prj_…`), or the collection for a refused
    /// create (`projects`).
    pub resource: String,
    /// Whether it went through.
    pub outcome: AuditOutcome,
    /// Why it was refused (the error code), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The resource before the change (JSON), if it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    /// The resource after the change (JSON), if the change went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The caller's IP address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The caller's `User-Agent`, when sent (at most 256 characters kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl AuditRecord {
    /// When the record expires: [`AUDIT_RETENTION_DAYS`] after it was written.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.at + chrono::TimeDelta::days(AUDIT_RETENTION_DAYS)
    }

    /// The key records sort by, newest last: the instant as 20 zero-padded digits of Unix
    /// microseconds, then the id. Cursors are these keys.
    pub fn sort_key(&self) -> String {
        format!("{}#{}", audit_instant_key(self.at), self.id)
    }
}

/// An instant as 20 zero-padded digits of Unix microseconds (sorts like the instant for
/// every instant after 1970).
pub fn audit_instant_key(t: DateTime<Utc>) -> String {
    format!("{:020}", t.timestamp_micros().max(0))
}

/// A page request of an org's audit trail, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// The org.
    pub org: OrgId,
    /// Only records at or after this instant.
    pub from: Option<DateTime<Utc>>,
    /// Only records before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Only records of this actor.
    pub actor: Option<String>,
    /// Only records of this action.
    pub action: Option<String>,
    /// Only records about this resource.
    pub resource: Option<String>,
    /// At most this many records (1..=[`MAX_AUDIT_PAGE`]).
    pub limit: usize,
    /// Continue after this sort key (the `next` of the previous page).
    pub cursor: Option<String>,
    /// Records that expired before this instant are not returned.
    pub now: DateTime<Utc>,
}

/// Most audit records one page holds.
pub const MAX_AUDIT_PAGE: usize = 200;

/// A page of audit records, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPage {
    /// The records.
    pub records: Vec<AuditRecord>,
    /// The cursor of the next page; `None` when this is the last.
    pub next: Option<String>,
}

impl AuditPage {
    /// The page of `records`, fetched in page order one past `limit`: a record past the
    /// limit only says another page exists, and the last one kept is its cursor. Every
    /// store pages its audit log this way.
    pub fn from_one_extra(mut records: Vec<AuditRecord>, limit: usize) -> Self {
        let next = if records.len() > limit {
            records.truncate(limit);
            records.last().map(AuditRecord::sort_key)
        } else {
            None
        };
        AuditPage { records, next }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_key_shaped_secrets_are_looked_up() {
        let live = api_key_secret(KeyMode::Live, [7; 32]);
        let test = api_key_secret(KeyMode::Test, [255; 32]);
        assert!(looks_like_key(&live) && looks_like_key(&test));
        for bad in [
            "",
            "tk_live_",
            "nonsense",
            &live[..live.len() - 1],
            &format!("{live}0"),
            &live.to_uppercase(),
            &live.replace("tk_live_", "tk_prod_"),
        ] {
            assert!(!looks_like_key(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn key_hashes_are_sha256_hex() {
        let h = KeyHash::of_secret("tk_live_abc");
        assert_eq!(h.as_str().len(), 64);
        assert_eq!(KeyHash::from_hex(h.as_str()), Some(h));
        assert!(KeyHash::from_hex("xyz").is_none());
        let secret = api_key_secret(KeyMode::Test, [1; 32]);
        assert!(secret.starts_with("tk_test_") && secret.len() == 8 + 64);
    }

    #[test]
    fn a_new_key_keeps_the_secrets_hash_and_first_twelve_characters_only() {
        let secret = api_key_secret(KeyMode::Test, [0xab; 32]);
        let id = ApiKeyId::parse("key_one").unwrap();
        let org = OrgId::parse("org_a").unwrap();
        let at: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let key = ApiKey::new(id.clone(), org.clone(), &secret, at);
        // "tk_test_" (8 characters) and the first four hex digits of 0xab 0xab.
        assert_eq!(key.display_prefix, "tk_test_abab");
        assert_eq!(key.hash, KeyHash::of_secret(&secret));
        assert_ne!(key.hash.as_str(), secret);
        assert_eq!((&key.id, &key.org_id, key.created_at), (&id, &org, at));
        assert_eq!(key.mode(), KeyMode::Test);
        assert!(key.name.is_empty() && key.scopes.is_empty());
        assert_eq!(
            (key.expires_at, key.revoked_at, key.last_used_at),
            (None, None, None)
        );
        assert!(key.is_active(at));
        // Counted in characters, never splitting one: a short secret is kept whole.
        let short = ApiKey::new(id, org, "tk_live_é", at);
        assert_eq!(short.display_prefix, "tk_live_é");
        assert_eq!(short.mode(), KeyMode::Live);
    }

    #[test]
    fn field_checks() {
        assert!(check_slug("slug", "acme-co").is_ok());
        assert!(check_slug("slug", "-acme").is_err());
        assert!(check_slug("slug", "Acme").is_err());
        assert!(check_name("name", "Acme Inc.").is_ok());
        assert!(check_name("name", " ").is_err());
        assert!(check_name("name", "a\nb").is_err());
        assert!(check_email("owner_email", "ada@example.com").is_ok());
        assert!(check_email("owner_email", "ada@example").is_err());
        assert!(check_email("owner_email", "a b@example.com").is_err());
    }
}
