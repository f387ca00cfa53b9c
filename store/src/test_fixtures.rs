//! What the store's unit tests share: the ids they use (`org_a`, `prj_b`, `api_calls`), the
//! day their cells and counters fall on, one stored cell, and a file in a fresh directory,
//! built here once rather than in each test module.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use rust_decimal::Decimal;
use tally_core::fold::Delta;
use tally_core::ids::{MeterName, OrgId, ProjectId};

use crate::derive::StoredCell;

/// 2026-11-26T00:00:00Z, in Unix seconds.
pub(crate) const DAY: i64 = 1_795_651_200;

/// The org `org_a`.
pub(crate) fn org_a() -> OrgId {
    OrgId::parse("org_a").unwrap()
}

/// The project `prj_b`.
pub(crate) fn prj_b() -> ProjectId {
    ProjectId::parse("prj_b").unwrap()
}

/// The meter `api_calls`.
pub(crate) fn api_calls() -> MeterName {
    MeterName::parse("api_calls").unwrap()
}

/// `prj_b`'s `api_calls` cell of [`DAY`]: 3 at 05:00 and 1.5 at 07:00 (4.5 for the day).
pub(crate) fn two_hour_cell() -> StoredCell {
    StoredCell {
        project: prj_b(),
        meter: api_calls(),
        hours: vec![
            (DAY + 5 * 3600, Delta::Add(Decimal::from(3))),
            (DAY + 7 * 3600, Delta::Add(Decimal::new(15, 1))),
        ],
    }
}

/// A fresh directory (removed when the first half drops) and the path of a file `name` in
/// it, not created yet: where a test opens its database or queue file.
pub(crate) fn temp_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}
