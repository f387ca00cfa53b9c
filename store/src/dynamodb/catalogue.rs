//! [`CatalogueStore`](tally_core::ports::CatalogueStore) on DynamoDB: the catalogue versions
//! the operator publishes, one item each.
//!
//! All versions share the partition `CATALOGUE`, sorted by `V#<version, 10 digits>` (which
//! sorts like the number), so listing them is one query and reading one is one `GetItem`.
//! A version is written once: a put under `attribute_not_exists(pk)`, so of two applies
//! racing for one number, the first wins and the other sees `false`. A table without the
//! partition (every table before this item type) reads as "no version published". Listing
//! reads the bodies too (at most 256 KiB each) and drops them: versions are few and rarely
//! listed (at start and at month close), so a second item per version is not worth it.

use async_trait::async_trait;
use tally_core::period::Month;
use tally_core::ports::{
    CatalogueStore, CatalogueVersion, CatalogueVersionSummary, StoreError, check_catalogue_version,
};

use super::DynamoStore;
use super::codec::{Item, corrupt, get_s, item, n, parse_ts, s, ts_text};

const PK: &str = "pk";
const SK: &str = "sk";

/// The one partition of catalogue versions.
const CATALOGUE_PK: &str = "CATALOGUE";

/// A version's sort key.
fn version_sk(version: u32) -> String {
    format!("V#{version:010}")
}

fn version_of(it: &Item) -> Result<CatalogueVersion, StoreError> {
    let number = get_s(it, SK)?;
    let version = number
        .strip_prefix("V#")
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| corrupt(format!("catalogue version key {number:?}")))?;
    let from = get_s(it, "effective_from")?;
    Ok(CatalogueVersion {
        version,
        effective_from: Month::parse(from)
            .map_err(|e| corrupt(format!("catalogue version {version} effective_from: {e}")))?,
        body: get_s(it, "body")?.to_owned(),
        digest: get_s(it, "digest")?.to_owned(),
        applied_by: get_s(it, "applied_by")?.to_owned(),
        applied_at: parse_ts(get_s(it, "applied_at")?)?,
    })
}

#[async_trait]
impl CatalogueStore for DynamoStore {
    async fn put_catalogue_version(&self, v: &CatalogueVersion) -> Result<bool, StoreError> {
        check_catalogue_version(v)?;
        let record = item([
            (PK, s(CATALOGUE_PK)),
            (SK, s(version_sk(v.version))),
            ("version", n(v.version)),
            ("effective_from", s(v.effective_from.to_string())),
            ("body", s(v.body.clone())),
            ("digest", s(v.digest.clone())),
            ("applied_by", s(v.applied_by.clone())),
            ("applied_at", s(ts_text(v.applied_at))),
        ]);
        self.put_if_absent(record).await
    }

    async fn get_catalogue_version(
        &self,
        version: u32,
    ) -> Result<Option<CatalogueVersion>, StoreError> {
        self.get_as(CATALOGUE_PK.to_owned(), &version_sk(version), version_of)
            .await
    }

    async fn list_catalogue_versions(&self) -> Result<Vec<CatalogueVersionSummary>, StoreError> {
        let items = self.query_partition(None, CATALOGUE_PK).await?;
        // The sort key orders by number already.
        items
            .iter()
            .map(|it| version_of(it).map(|v| v.summary()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_number() {
        assert_eq!(version_sk(7), "V#0000000007");
        assert!(version_sk(9) < version_sk(10));
        assert!(version_sk(99_999) < version_sk(100_000));
    }
}
