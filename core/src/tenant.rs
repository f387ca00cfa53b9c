//! Tenant records: organizations, users, projects and API keys.
//!
//! These are plain data; the storage port persists them and the management API (its own
//! issue) grows them. API key secrets never live here: only their SHA-256 hash, which is
//! also how a key is found (one lookup by hash, never a scan).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use crate::plan::PlanId;

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

/// Builds an API key secret from 32 random bytes (256 bits) supplied by the caller.
pub fn api_key_secret(mode: KeyMode, random: [u8; 32]) -> String {
    format!("{}{}", mode.prefix(), hex::encode(random))
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

#[cfg(test)]
mod tests {
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
