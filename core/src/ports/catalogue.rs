//! [`CatalogueStore`]: the catalogue versions the operator publishes (`tally catalogue
//! apply`), so plans and prices change without a release and every month is priced with the
//! version that was in force for it.
//!
//! A version is immutable once stored: its number, the catalogue text as applied, the first
//! month it applies to (`effective_from`), who applied it and when. Numbers count up from 1
//! and a put is conditional (first write wins), so two operators applying at once cannot both
//! become version N+1: one gets [`false`] back and reruns. Which version prices a month is
//! [`effective_version`]: the highest-numbered version whose `effective_from` is not after
//! the month. A store with no version (every store before this port) means "the catalogue
//! file or the built-in one", so old stores keep working with no operator action.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::period::Month;

/// Largest catalogue text a version holds, in bytes: well under a DynamoDB item's 400 KB
/// with the other attributes (the built-in catalogue is about 5 KB).
pub const MAX_CATALOGUE_BYTES: usize = 256 * 1024;

/// Highest version number a store accepts.
pub const MAX_CATALOGUE_VERSION: u32 = 999_999;

/// Longest [`CatalogueVersion::applied_by`], in bytes.
pub const MAX_APPLIED_BY_BYTES: usize = 128;

/// One published catalogue version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogueVersion {
    /// The version's number, 1 to [`MAX_CATALOGUE_VERSION`].
    pub version: u32,
    /// The first month this version prices (and ingest enforces).
    pub effective_from: Month,
    /// The catalogue JSON exactly as applied (at most [`MAX_CATALOGUE_BYTES`]); it was
    /// valid when applied, and is validated again when read.
    pub body: String,
    /// `sha256:<hex>` of `body`, to tell versions apart at a glance.
    pub digest: String,
    /// Who applied it (`cli`, or a user id), at most [`MAX_APPLIED_BY_BYTES`].
    pub applied_by: String,
    /// When it was applied.
    pub applied_at: DateTime<Utc>,
}

impl CatalogueVersion {
    /// What listing shows of it: everything but the body.
    pub fn summary(&self) -> CatalogueVersionSummary {
        CatalogueVersionSummary {
            version: self.version,
            effective_from: self.effective_from,
            digest: self.digest.clone(),
            applied_by: self.applied_by.clone(),
            applied_at: self.applied_at,
        }
    }
}

/// A version without its body: what [`CatalogueStore::list_catalogue_versions`] returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CatalogueVersionSummary {
    /// The version's number.
    pub version: u32,
    /// The first month it prices.
    pub effective_from: Month,
    /// `sha256:<hex>` of its body.
    pub digest: String,
    /// Who applied it.
    pub applied_by: String,
    /// When it was applied.
    pub applied_at: DateTime<Utc>,
}

/// The `sha256:<hex>` digest of a catalogue text.
pub fn catalogue_digest(body: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    )
}

/// Checks a version's bounds, as every store does before it writes: a caller's bug is
/// [`StoreError::Corrupt`] (`500`) naming the field.
pub fn check_catalogue_version(v: &CatalogueVersion) -> Result<(), StoreError> {
    let bad = |what: String| Err(StoreError::Corrupt(format!("catalogue version: {what}")));
    if v.version == 0 || v.version > MAX_CATALOGUE_VERSION {
        return bad(format!(
            "version {} is outside 1 to {MAX_CATALOGUE_VERSION}",
            v.version
        ));
    }
    if v.body.is_empty() || v.body.len() > MAX_CATALOGUE_BYTES {
        return bad(format!(
            "body is {} bytes; it must be 1 to {MAX_CATALOGUE_BYTES}",
            v.body.len()
        ));
    }
    if v.applied_by.is_empty()
        || v.applied_by.len() > MAX_APPLIED_BY_BYTES
        || v.applied_by.chars().any(char::is_control)
    {
        return bad(format!(
            "applied_by must be 1 to {MAX_APPLIED_BY_BYTES} bytes without control characters"
        ));
    }
    if v.digest != catalogue_digest(&v.body) {
        return bad("digest does not match the body".to_owned());
    }
    Ok(())
}

/// The version that prices `month`: the highest-numbered version whose `effective_from` is
/// not after `month`; `None` when every version starts later (or there is none), which means
/// the catalogue file or the built-in one.
pub fn effective_version(versions: &[CatalogueVersionSummary], month: Month) -> Option<u32> {
    versions
        .iter()
        .filter(|v| v.effective_from <= month)
        .map(|v| v.version)
        .max()
}

/// Published catalogue versions. See the [module docs](self).
#[async_trait]
pub trait CatalogueStore: Send + Sync {
    /// Stores `version` under its number unless that number is taken: `true` if this call
    /// stored it, `false` if a version with the number exists (whoever wrote first wins; the
    /// stored one is left as it was). Bounds as [`check_catalogue_version`].
    async fn put_catalogue_version(&self, version: &CatalogueVersion) -> Result<bool, StoreError>;

    /// One version by number.
    async fn get_catalogue_version(
        &self,
        version: u32,
    ) -> Result<Option<CatalogueVersion>, StoreError>;

    /// Every version, oldest (lowest number) first, without bodies.
    async fn list_catalogue_versions(&self) -> Result<Vec<CatalogueVersionSummary>, StoreError>;

    /// The highest-numbered version, if any.
    async fn latest_catalogue_version(&self) -> Result<Option<CatalogueVersion>, StoreError> {
        match self.list_catalogue_versions().await?.last() {
            Some(last) => self.get_catalogue_version(last.version).await,
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn summary(version: u32, from: &str) -> CatalogueVersionSummary {
        CatalogueVersionSummary {
            version,
            effective_from: Month::parse(from).unwrap(),
            digest: catalogue_digest("{}"),
            applied_by: "cli".into(),
            applied_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_highest_version_started_by_the_month_prices_it() {
        let m = |s| Month::parse(s).unwrap();
        let versions = [
            summary(1, "2026-10"),
            summary(2, "2027-01"),
            summary(3, "2026-12"),
        ];
        assert_eq!(effective_version(&versions, m("2026-09")), None);
        assert_eq!(effective_version(&versions, m("2026-10")), Some(1));
        assert_eq!(effective_version(&versions, m("2026-11")), Some(1));
        // Version 3 was applied after 2 and starts earlier: it supersedes 2 from December.
        assert_eq!(effective_version(&versions, m("2026-12")), Some(3));
        assert_eq!(effective_version(&versions, m("2027-02")), Some(3));
        assert_eq!(effective_version(&[], m("2027-02")), None);
    }

    #[test]
    fn bounds_are_checked_naming_the_field() {
        let good = CatalogueVersion {
            version: 1,
            effective_from: Month::parse("2026-12").unwrap(),
            body: "{}".into(),
            digest: catalogue_digest("{}"),
            applied_by: "cli".into(),
            applied_at: DateTime::UNIX_EPOCH,
        };
        assert!(check_catalogue_version(&good).is_ok());
        let cases: [(CatalogueVersion, &str); 4] = [
            (
                CatalogueVersion {
                    version: 0,
                    ..good.clone()
                },
                "version",
            ),
            (
                CatalogueVersion {
                    body: "x".repeat(MAX_CATALOGUE_BYTES + 1),
                    ..good.clone()
                },
                "body",
            ),
            (
                CatalogueVersion {
                    applied_by: String::new(),
                    ..good.clone()
                },
                "applied_by",
            ),
            (
                CatalogueVersion {
                    digest: catalogue_digest("other"),
                    ..good.clone()
                },
                "digest",
            ),
        ];
        for (bad, field) in cases {
            let e = check_catalogue_version(&bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
