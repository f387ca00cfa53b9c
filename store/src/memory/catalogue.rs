//! [`CatalogueStore`] in memory: the published catalogue versions by number, under the
//! store's one lock, so a put is first-write-wins as the other stores' conditional writes.

use async_trait::async_trait;
use tally_core::ports::{
    CatalogueStore, CatalogueVersion, CatalogueVersionSummary, StoreError, check_catalogue_version,
};

use super::MemoryStore;

#[async_trait]
impl CatalogueStore for MemoryStore {
    async fn put_catalogue_version(&self, version: &CatalogueVersion) -> Result<bool, StoreError> {
        check_catalogue_version(version)?;
        let mut st = self.lock();
        if st.catalogues.contains_key(&version.version) {
            return Ok(false);
        }
        st.catalogues.insert(version.version, version.clone());
        Ok(true)
    }

    async fn get_catalogue_version(
        &self,
        version: u32,
    ) -> Result<Option<CatalogueVersion>, StoreError> {
        Ok(self.lock().catalogues.get(&version).cloned())
    }

    async fn list_catalogue_versions(&self) -> Result<Vec<CatalogueVersionSummary>, StoreError> {
        Ok(self
            .lock()
            .catalogues
            .values()
            .map(CatalogueVersion::summary)
            .collect())
    }
}
