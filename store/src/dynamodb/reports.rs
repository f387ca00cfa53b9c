//! [`ReportStore`](tally_core::ports::ReportStore) on DynamoDB: billing's monthly usage
//! reports, one item each.
//!
//! An org's reports share the partition `ORG#<org>#REPORT`, sorted by `<YYYY-MM>` (which
//! sorts like time), so listing them is one query and reading one is one `GetItem`. A
//! report is written once: a put under `attribute_not_exists(pk)`, then a strongly
//! consistent read, so whoever wrote first (a rerun, or a second process) is what every
//! caller gets back. The key helpers live here rather than in `keys.rs` so that this item
//! type is self-contained.

use async_trait::async_trait;
use tally_core::ids::OrgId;
use tally_core::period::Month;
use tally_core::ports::{ReportStore, StoreError, StoredReport, check_report_body};

use super::DynamoStore;
use super::codec::{Item, corrupt, get_s, item, parse_id, parse_ts, s, ts_text};

/// The table's partition key attribute.
const PK: &str = "pk";
/// The table's sort key attribute.
const SK: &str = "sk";

/// The partition of an org's reports.
fn report_pk(org: &OrgId) -> String {
    format!("ORG#{}#REPORT", org.as_str())
}

/// A report's sort key: its period.
fn report_sk(period: Month) -> String {
    period.to_string()
}

fn report_of(item: &Item) -> Result<StoredReport, StoreError> {
    let period = get_s(item, "period")?;
    Ok(StoredReport {
        org_id: parse_id(get_s(item, "org_id")?, OrgId::parse)?,
        period: Month::parse(period).map_err(|e| corrupt(format!("report period: {e}")))?,
        body: get_s(item, "body")?.to_owned(),
        created_at: parse_ts(get_s(item, "created_at")?)?,
    })
}

#[async_trait]
impl ReportStore for DynamoStore {
    async fn save_report(&self, report: &StoredReport) -> Result<StoredReport, StoreError> {
        check_report_body(&report.body)?;
        let record = item([
            (PK, s(report_pk(&report.org_id))),
            (SK, s(report_sk(report.period))),
            ("org_id", s(report.org_id.as_str())),
            ("period", s(report.period.to_string())),
            ("body", s(report.body.clone())),
            ("created_at", s(ts_text(report.created_at))),
        ]);
        if self.put_if_absent(record).await? {
            return Ok(report.clone());
        }
        self.get_report(&report.org_id, report.period)
            .await?
            .ok_or_else(|| {
                corrupt(format!(
                    "report {}/{} was refused as existing but cannot be read",
                    report.org_id, report.period
                ))
            })
    }

    async fn get_report(
        &self,
        org: &OrgId,
        period: Month,
    ) -> Result<Option<StoredReport>, StoreError> {
        self.get_as(report_pk(org), &report_sk(period), report_of)
            .await
    }

    async fn list_reports(&self, org: &OrgId) -> Result<Vec<StoredReport>, StoreError> {
        let items = self.query_partition(None, report_pk(org)).await?;
        // The sort key orders by period already; the query returns them in that order.
        items.iter().map(report_of).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_sort_by_period() {
        let org = OrgId::parse("org_acme").unwrap();
        assert_eq!(report_pk(&org), "ORG#org_acme#REPORT");
        let (a, b) = (
            Month::parse("2026-09").unwrap(),
            Month::parse("2026-10").unwrap(),
        );
        assert_eq!(report_sk(a), "2026-09");
        assert!(report_sk(a) < report_sk(b));
    }
}
