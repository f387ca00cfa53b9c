//! Every key the DynamoDB adapter writes, built in one place so the layout documented in the
//! module doc of [`super`] is the layout in the table.
//!
//! Separators are `#`. Every part that is not the last part of a key comes from a value that
//! cannot contain `#` (org, user, project and key ids, meter names, hex hashes, months,
//! granularity names, zero-padded numbers); the free-form parts (event ids, emails, slugs,
//! unique values) only ever come last, so keys never collide and always parse back.

use chrono::{DateTime, Utc};
use tally_core::counter::{CounterKey, CounterScope, OwnedCounterKey};
use tally_core::ids::{ApiKeyId, EventId, MeterName, OrgId, ProjectId, UserId};
use tally_core::period::{Granularity, Month};
use tally_core::tenant::KeyHash;

use tally_core::ports::StoreError;

/// Partition key attribute.
pub const PK: &str = "pk";
/// Sort key attribute.
pub const SK: &str = "sk";
/// Partition key of the one global secondary index.
pub const GSI1PK: &str = "gsi1pk";
/// Sort key of the one global secondary index.
pub const GSI1SK: &str = "gsi1sk";
/// Name of the global secondary index.
pub const GSI1: &str = "gsi1";
/// The attributes besides the keys the index projects: exactly what its queries read. A
/// user's memberships (`list_user_memberships`) read `user_id`, `role` and `created_at`
/// (and the org from `gsi1sk`); every org's id (`list_org_ids`) reads only `gsi1sk`.
/// Projecting nothing else means an update of any other attribute of an indexed item (an
/// API key's `last_used_at`, written every few seconds) costs no index write.
pub const GSI1_PROJECTED: &[&str] = &["user_id", "role", "created_at"];
/// The TTL attribute (epoch seconds).
pub const TTL: &str = "ttl";

/// How many partitions one org's ledger is spread over.
pub const LEDGER_SHARDS: u8 = 16;

/// Unique values longer than this (bytes) are stored in marker keys as their SHA-256.
pub const MAX_LITERAL_UNIQUE_VALUE: usize = 128;

/// Sort key of an org item.
pub const ORG_SK: &str = "ORG";
/// Sort key of an org slug guard.
pub const SLUG_SK: &str = "SLUG";
/// Sort key of a user item.
pub const USER_SK: &str = "USER";
/// Sort key of an email guard.
pub const EMAIL_SK: &str = "EMAIL";
/// Sort key of an API key item.
pub const KEY_SK: &str = "KEY";
/// Sort key of a closed period.
pub const PERIOD_SK: &str = "PERIOD";
/// `gsi1pk` of every org item: the list of all orgs.
pub const ALL_ORGS: &str = "ORGS";
/// Sort key prefix of projects inside the org partition.
pub const PROJECT_PREFIX: &str = "PROJECT#";
/// Sort key prefix of ledger records.
pub const EVENT_PREFIX: &str = "EVT#";

/// `ORG#<org>`: the org partition (org, memberships, projects, key id guards).
pub fn org_pk(org: &OrgId) -> String {
    format!("ORG#{org}")
}

/// `ORG#<org>` as a `gsi1sk` (list of all orgs, a user's orgs).
pub fn org_gsi_sk(org: &OrgId) -> String {
    org_pk(org)
}

/// Parses `ORG#<org>`.
pub fn parse_org_gsi_sk(s: &str) -> Result<OrgId, StoreError> {
    let id = s
        .strip_prefix("ORG#")
        .ok_or_else(|| bad_key("org index key", s))?;
    OrgId::parse(id).map_err(|e| bad_key(&format!("org index key ({e})"), s))
}

/// `SLUG#<slug>`: the guard that makes org slugs unique.
pub fn slug_pk(slug: &str) -> String {
    format!("SLUG#{slug}")
}

/// `MEMBER#<user>` inside the org partition.
pub fn member_sk(user: &UserId) -> String {
    format!("MEMBER#{user}")
}

/// `USER#<user>`: the user item's partition, and the `gsi1pk` of the user's memberships.
pub fn user_pk(user: &UserId) -> String {
    format!("USER#{user}")
}

/// `EMAIL#<lowercased email>`: the guard that makes emails unique.
pub fn email_pk(email: &str) -> String {
    format!("EMAIL#{email}")
}

/// `PROJECT#<id>` inside the org partition.
pub fn project_sk(id: &ProjectId) -> String {
    format!("{PROJECT_PREFIX}{id}")
}

/// `PROJECTSLUG#<slug>` inside the org partition: makes project slugs unique per org.
pub fn project_slug_sk(slug: &str) -> String {
    format!("PROJECTSLUG#{slug}")
}

/// `KEYHASH#<sha256 hex>`: an API key, found by the hash of its secret.
pub fn key_pk(hash: &KeyHash) -> String {
    format!("KEYHASH#{}", hash.as_str())
}

/// `APIKEY#<key id>`: the key id guard's sort key in the org partition, and the key item's
/// `gsi1sk` (an org's keys).
pub fn key_id_sk(id: &ApiKeyId) -> String {
    format!("APIKEY#{id}")
}

/// Sort key prefix of memberships inside the org partition.
pub const MEMBER_PREFIX: &str = "MEMBER#";
/// Sort key prefix of API key id guards inside the org partition.
pub const APIKEY_PREFIX: &str = "APIKEY#";

/// `ORG#<org>#AUDIT`: the org's audit trail, sorted by [`AuditRecord::sort_key`]
/// (tally_core::tenant::AuditRecord::sort_key).
pub fn audit_pk(org: &OrgId) -> String {
    format!("ORG#{org}#AUDIT")
}

/// `PERIOD#<YYYY-MM>`: a closed billing period.
pub fn period_pk(month: Month) -> String {
    format!("PERIOD#{month}")
}

/// The ledger shard of an event id: FNV-1a (64 bit) of its bytes, mod [`LEDGER_SHARDS`].
/// Stable across builds and platforms (it decides where a record lives).
pub fn ledger_shard(id: &EventId) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_str().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(LEDGER_SHARDS)) as u8
}

/// `BATCH#<id>`: a batch's state items (`INTENT`, `CHUNK#<n>`, `DONE`).
pub fn batch_pk(id: &str) -> String {
    format!("BATCH#{id}")
}

/// `ORG#<org>#LEDGER#<shard, two digits>`.
pub fn ledger_pk(org: &OrgId, shard: u8) -> String {
    format!("ORG#{org}#LEDGER#{shard:02}")
}

/// `EVT#<event id>`.
pub fn ledger_sk(id: &EventId) -> String {
    format!("{EVENT_PREFIX}{id}")
}

/// Parses `EVT#<event id>`.
pub fn parse_ledger_sk(s: &str) -> Result<EventId, StoreError> {
    let id = s
        .strip_prefix(EVENT_PREFIX)
        .ok_or_else(|| bad_key("ledger sort key", s))?;
    EventId::parse(id).map_err(|e| bad_key(&format!("ledger sort key ({e})"), s))
}

/// `ORG#<org>#CTR#<YYYY-MM>`: the counters whose bucket starts in `month`.
pub fn counter_pk(org: &OrgId, month: Month) -> String {
    format!("ORG#{org}#CTR#{month}")
}

/// `ORG#<org>#UNQ#<YYYY-MM>`: `unique_count` markers of the counters of `month`.
pub fn unique_pk(org: &OrgId, month: Month) -> String {
    format!("ORG#{org}#UNQ#{month}")
}

/// The month partition a counter lives in (the month its bucket starts in).
pub fn counter_month(key: &CounterKey<'_>) -> Month {
    Month::of(key.start)
}

/// `<scope>#<meter>#<granularity>#` : what all buckets of one series share.
pub fn series_prefix(project: Option<&ProjectId>, meter: &MeterName, g: Granularity) -> String {
    let scope = project.map_or("ALL", |p| p.as_str());
    format!("{scope}#{meter}#{}#", g.as_str())
}

/// A bucket start as 12 zero-padded digits of Unix seconds, so keys sort in time order.
pub fn start_text(secs: i64) -> String {
    format!("{secs:012}")
}

/// `<scope>#<meter>#<granularity>#<start>`, scope being `ALL` or the project id.
pub fn counter_sk(key: &CounterKey<'_>) -> String {
    let project = match key.scope {
        CounterScope::Org => None,
        CounterScope::Project(p) => Some(p),
    };
    format!(
        "{}{}",
        series_prefix(project, key.meter, key.granularity),
        start_text(key.start.timestamp())
    )
}

/// Parses a counter sort key back into its key (the org comes from the partition).
pub fn parse_counter_sk(org: &OrgId, sk: &str) -> Result<OwnedCounterKey, StoreError> {
    let bad = |why: &str| bad_key(&format!("counter sort key ({why})"), sk);
    let mut parts = sk.split('#');
    let (Some(scope), Some(meter), Some(gran), Some(start), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("expected 4 parts"));
    };
    let project = match scope {
        "ALL" => None,
        p => Some(ProjectId::parse(p).map_err(|e| bad(&e.to_string()))?),
    };
    let meter = MeterName::parse_key(meter).map_err(|e| bad(&e.to_string()))?;
    let granularity = Granularity::parse(gran).ok_or_else(|| bad("granularity"))?;
    let secs: i64 = start.parse().map_err(|_| bad("bucket start"))?;
    let start: DateTime<Utc> =
        DateTime::from_timestamp(secs, 0).ok_or_else(|| bad("bucket start"))?;
    Ok(OwnedCounterKey {
        org: org.clone(),
        project,
        meter,
        granularity,
        start,
    })
}

/// `<counter sort key>#V=<value>` for values up to [`MAX_LITERAL_UNIQUE_VALUE`] bytes,
/// `<counter sort key>#H=<sha256 hex of the value>` beyond (a sort key holds 1 KiB).
pub fn marker_sk(counter_sk: &str, value: &str) -> String {
    if value.len() <= MAX_LITERAL_UNIQUE_VALUE {
        format!("{counter_sk}#V={value}")
    } else {
        // The SHA-256 hex of the value; `KeyHash::of_secret` is exactly that function.
        format!("{counter_sk}#H={}", KeyHash::of_secret(value).as_str())
    }
}

fn bad_key(what: &str, key: &str) -> StoreError {
    StoreError::Corrupt(format!("{what}: {key:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::test_fixtures::{api_calls, org_a, prj_b};

    #[test]
    fn counter_keys_round_trip_and_sort_by_time() {
        let (org, p, m) = (org_a(), prj_b(), api_calls());
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let k = |scope, start| CounterKey {
            org: &org,
            scope,
            meter: &m,
            granularity: Granularity::Hour,
            start,
        };
        let a = k(CounterScope::Project(&p), t("2026-11-26T10:00:00Z"));
        let b = k(CounterScope::Project(&p), t("2026-11-26T11:00:00Z"));
        assert_eq!(counter_sk(&a), "prj_b#api_calls#hour#001795687200");
        assert!(counter_sk(&a) < counter_sk(&b));
        assert_eq!(
            parse_counter_sk(&org, &counter_sk(&a)).unwrap(),
            a.to_owned_key()
        );
        let o = k(CounterScope::Org, t("2026-11-26T10:00:00Z"));
        assert_eq!(
            parse_counter_sk(&org, &counter_sk(&o)).unwrap(),
            o.to_owned_key()
        );
        assert!(parse_counter_sk(&org, "ALL#api_calls#hour").is_err());
        assert!(parse_counter_sk(&org, "ALL#api_calls#week#0").is_err());
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let id = EventId::parse("evt-1").unwrap();
        assert_eq!(ledger_shard(&id), ledger_shard(&id.clone()));
        let mut seen = [0u32; LEDGER_SHARDS as usize];
        for i in 0..1600 {
            seen[ledger_shard(&EventId::parse(&format!("e{i}")).unwrap()) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(ledger_pk(&org_a(), 3), "ORG#org_a#LEDGER#03");
    }

    #[test]
    fn long_unique_values_are_hashed() {
        assert_eq!(marker_sk("x", "ann"), "x#V=ann");
        let long = "u".repeat(500);
        let sk = marker_sk("x", &long);
        assert!(sk.starts_with("x#H=") && sk.len() == 4 + 64, "{sk}");
    }
}
