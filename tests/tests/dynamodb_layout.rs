//! The DynamoDB table holds exactly the items its module doc describes.
//!
//! The test reads the item table out of `store/src/dynamodb.rs`'s own `//!` doc, exercises
//! every kind of write on a fresh table (user, org, project, key, events of every
//! aggregation, a closed period, a usage report, a Stripe sync step and customer, a catalogue version, an audit
//! record, an invitation, a plan-limit alert), scans the table as `aws dynamodb scan` would, and checks
//! that every item's `pk`/`sk` matches a documented row and that every documented row the
//! store writes appears. A new item type without a doc row, or a doc row that no longer
//! matches the code, fails here.
//!
//! Needs `TALLY_TEST_AWS_ENDPOINT` (the test command starts the emulator).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use tally_core::ids::InvitationId;
use tally_core::ports::{
    ApiKeyStore, AuditLog, InvitationStore, MemberStore, NewProjectMember, OrgStore, PlanMove,
    ProjectStore, ReportStore, StepKey, StoredReport, SyncLedger, UsageStore,
};
use tally_core::tenant::{AuditOutcome, AuditRecord, Invitation, KeyHash, KeyScope, Project, Role};
use tally_core::{Month, PlanId, ProjectId};
use tally_store::dynamodb::sdk::Client;
use tally_store::dynamodb::sdk::types::AttributeValue;
use tally_store::dynamodb::{DynamoStore, create_table};
use tally_tests::aws;
use tally_tests::conformance::fixtures::{api_key, create_owned_org, event, with_prop};

const MODULE_DOC: &str = include_str!("../../store/src/dynamodb.rs");

/// One documented item type: its name and the `pk`/`sk` patterns (`<…>` is a placeholder).
#[derive(Debug)]
struct Row {
    item: String,
    pks: Vec<String>,
    sks: Vec<String>,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The rows of the item table in the module doc.
fn documented_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for line in MODULE_DOC.lines().filter_map(|l| l.strip_prefix("//! |")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[0] == "item" || cells[0].starts_with("---") {
            continue;
        }
        let pks = backticked(cells[1]);
        let mut sks = backticked(cells[2]);
        // "`<counter sk>#V=<value>` or `#H=<sha256 hex>`": a bare suffix alternative shares
        // the first alternative's leading placeholder.
        let first = sks.first().cloned().unwrap_or_default();
        for sk in sks.iter_mut().skip(1) {
            if sk.starts_with('#')
                && let Some(end) = first.find('>')
            {
                *sk = format!("{}{sk}", &first[..=end]);
            }
        }
        if !pks.is_empty() && !sks.is_empty() {
            rows.push(Row {
                item: cells[0].to_owned(),
                pks,
                sks,
            });
        }
    }
    rows
}

/// Whether `s` matches `pattern`, where each `<…>` matches one or more characters.
fn matches(pattern: &str, s: &str) -> bool {
    match pattern.find('<') {
        None => pattern == s,
        Some(open) => {
            let Some(close) = pattern[open..].find('>').map(|c| open + c) else {
                return pattern == s;
            };
            let (lit, rest) = (&pattern[..open], &pattern[close + 1..]);
            let Some(tail) = s.strip_prefix(lit) else {
                return false;
            };
            (1..=tail.len())
                .filter(|&n| tail.is_char_boundary(n))
                .any(|n| matches(rest, &tail[n..]))
        }
    }
}

async fn scan_all(
    client: &Client,
    table: &str,
) -> Vec<(
    String,
    String,
    std::collections::HashMap<String, AttributeValue>,
)> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let get = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            out.push((get("pk"), get("sk"), item.clone()));
        }
        match page.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    out
}

#[tokio::test]
async fn table_items_are_laid_out_as_the_module_doc_says() {
    let rows = documented_rows();
    assert!(
        rows.len() >= 12,
        "could not read the item table from the module doc: {rows:?}"
    );

    let config = aws::sdk_config().await;
    let client = Client::new(&config);
    let table = aws::fresh_name("tally-layout");
    create_table(&client, &table).await.unwrap();
    // The chunked format writes the chunk markers; a slotted store below writes a slot.
    let store = DynamoStore::new(client.clone(), table.clone()).with_chunked_counters();

    let now = Utc::now();
    let org = create_owned_org(
        &store,
        (1, 2),
        "layout@example.com",
        "Layout",
        PlanId::Pro,
        now,
    )
    .await;
    let user = org.owner_id.clone();
    let project = Project {
        id: ProjectId::from_random([3; 16]),
        org_id: org.id.clone(),
        name: "P".into(),
        slug: "p".into(),
        created_at: now,
        archived_at: None,
    };
    store.create_project(&project).await.unwrap();
    store
        .change_plan(&PlanMove::new(
            &org.id,
            tally_core::plan::PlanId::Enterprise,
            now,
        ))
        .await
        .unwrap();
    let key = api_key(&org.id, "tk_test_layout", &[KeyScope::EventsWrite], now);
    store.create_api_key(&key).await.unwrap();
    let at = "2026-11-26T10:00:00Z";
    let events = vec![
        event(&org.id, &project.id, "e1", "api_calls", "3", at),
        event(&org.id, &project.id, "e2", "storage_bytes", "100", at),
        event(&org.id, &project.id, "e3", "temperature", "21.5", at),
        with_prop(
            event(&org.id, &project.id, "e4", "active_users", "1", at),
            "user",
            "u1",
        ),
    ];
    store.apply_batch(&events).await.unwrap();
    // The slotted format's writer slot (and its high-water marks on the same cells).
    let slotted = vec![event(&org.id, &project.id, "e5", "api_calls", "2", at)];
    let report = store
        .clone()
        .with_writer_slots(4)
        .apply_batch(&slotted)
        .await
        .unwrap();
    assert_eq!(
        report.outcomes,
        vec![tally_core::ports::ApplyOutcome::Applied]
    );
    // Ingest's shared rate allowance of the key (what every ingest instance takes from).
    let window = tally_core::ports::AllowanceWindow {
        scope: format!("RATE#{}", key.id),
        window: "1790000000".into(),
        expires_at: now + Duration::seconds(2),
    };
    let one = rust_decimal::Decimal::ONE;
    tally_core::ports::AllowanceStore::take_allowance(
        &store,
        &tally_core::ports::AllowanceRequest::new(&window, one + one, one, now),
    )
    .await
    .unwrap();
    store
        .close_period(Month::parse("2001-01").unwrap(), now)
        .await
        .unwrap();
    store
        .save_report(&StoredReport {
            org_id: org.id.clone(),
            period: Month::parse("2001-01").unwrap(),
            body: "{}".into(),
            created_at: now,
        })
        .await
        .unwrap();
    store
        .record_step(
            &StepKey::new(&org.id, Month::parse("2001-01").unwrap(), "invoice"),
            "in_layout",
        )
        .await
        .unwrap();
    store.record_customer(&org.id, "cus_layout").await.unwrap();
    // A negotiated price (`tally org override set`).
    tally_core::ports::OverrideStore::put_override(
        &store,
        &tally_core::overrides::PriceOverride {
            id: tally_core::overrides::OverrideId::from_random([7; 8]),
            org_id: org.id.clone(),
            plan: tally_core::PlanId::Pro,
            change: tally_core::overrides::OverrideChange::MonthlyFee {
                amount: tally_core::Money::new(rust_decimal::Decimal::from(99)),
            },
            start: Month::parse("2001-03").unwrap(),
            end: None,
            reason: None,
            created_by: "cli".into(),
            created_at: now,
        },
    )
    .await
    .unwrap();
    // The org's security policy (attributes of the org item) and a sign-in session.
    tally_core::ports::SecurityStore::put_security_policy(
        &store,
        &tally_core::security::OrgSecurityPolicy {
            org_id: org.id.clone(),
            policy: tally_core::security::SecurityPolicy::default(),
            updated_at: now,
        },
    )
    .await
    .unwrap();
    tally_core::ports::SecurityStore::create_session(
        &store,
        &tally_core::security::Session {
            id: tally_core::ids::SessionId::from_random([9; 16]),
            user_id: user.clone(),
            created_at: now,
            expires_at: now + Duration::hours(1),
            ip: None,
            user_agent: None,
            revoked_at: None,
        },
    )
    .await
    .unwrap();
    // A dimensioned meter's series, registered under its org's per-month bound.
    tally_core::ports::SeriesRegistry::register_series(
        &store,
        &tally_core::ports::NewSeries::new(
            &org.id,
            Month::parse("2001-02").unwrap(),
            &tally_core::MeterName::parse_key("llm_tokens{model=gpt-4}").unwrap(),
            10,
        ),
    )
    .await
    .unwrap();
    // A reading of a time-weighted meter (its hour cell).
    tally_core::ports::ReadingStore::put_readings(
        &store,
        &[tally_core::ports::Reading {
            org: org.id.clone(),
            project: project.id.clone(),
            meter: tally_core::MeterName::parse("disk_gb").unwrap(),
            at: now,
            value: rust_decimal::Decimal::TEN,
        }],
    )
    .await
    .unwrap();
    // A published catalogue version (`tally catalogue apply`).
    let body = tally_core::catalogue::BUILTIN_JSON.to_owned();
    tally_core::ports::CatalogueStore::put_catalogue_version(
        &store,
        &tally_core::ports::CatalogueVersion {
            version: 1,
            effective_from: Month::parse("2001-02").unwrap(),
            digest: tally_core::ports::catalogue_digest(&body),
            body,
            applied_by: "cli".into(),
            applied_at: now,
        },
    )
    .await
    .unwrap();
    store
        .record_audit(&AuditRecord {
            id: format!("aud_{}", "0".repeat(32)),
            org_id: org.id.clone(),
            actor: "cli".into(),
            action: "project.create".into(),
            resource: format!("project:{}", project.id),
            outcome: AuditOutcome::Allowed,
            reason: None,
            before: None,
            after: None,
            at: now,
            ip: None,
            user_agent: None,
        })
        .await
        .unwrap();

    store
        .create_invitation(&Invitation {
            id: InvitationId::from_random([5; 16]),
            org_id: org.id.clone(),
            email: "invitee@example.com".into(),
            role: Role::Member,
            hash: KeyHash::of_secret("tinv_layout"),
            invited_by: user.clone(),
            created_at: now,
            expires_at: now + Duration::days(7),
            accepted_at: None,
        })
        .await
        .unwrap();

    store
        .add_project_member(&NewProjectMember::new(&org.id, &project.id, &user, now))
        .await
        .unwrap();

    use tally_core::ports::{AlertKey, AlertLedger, StoredAlert, ThresholdPct};
    store
        .claim_alert(&StoredAlert {
            key: AlertKey {
                org: org.id.clone(),
                period: Month::of(now),
                meter: tally_core::MeterName::parse("compute_minutes").unwrap(),
                threshold: ThresholdPct::WARNING,
            },
            body: "{}".into(),
            claimed_at: now,
            lease_until: now + Duration::minutes(5),
            delivered_at: None,
        })
        .await
        .unwrap();

    let items = scan_all(&client, &table).await;
    let mut seen_rows = BTreeSet::new();
    for (pk, sk, item) in &items {
        let row = rows
            .iter()
            .find(|r| r.pks.iter().any(|p| matches(p, pk)) && r.sks.iter().any(|s| matches(s, sk)))
            .unwrap_or_else(|| {
                panic!("item pk={pk:?} sk={sk:?} matches no row of the module doc's item table")
            });
        seen_rows.insert(row.item.clone());
        if row.item.starts_with("ledger") {
            let ttl: i64 = item
                .get("ttl")
                .and_then(|v| v.as_n().ok())
                .expect("ledger ttl")
                .parse()
                .unwrap();
            assert!(
                ttl >= (now + Duration::days(40)).timestamp(),
                "ledger records must live at least 40 days"
            );
        }
    }
    // Every row the store writes (the Kinesis rows belong to the queue adapter) is there.
    for row in rows.iter().filter(|r| !r.item.contains("Kinesis")) {
        assert!(
            seen_rows.contains(&row.item),
            "documented item {:?} was never written; rows seen: {seen_rows:?}",
            row.item
        );
    }
}

#[test]
fn the_pattern_matcher_is_strict() {
    assert!(matches("ORG#<org>#CTR#<month>", "ORG#org_1#CTR#2026-11"));
    assert!(!matches("ORG#<org>", "ORGX#org_1"));
    assert!(!matches("ORG#<org>", "ORG#"));
    assert!(matches(
        "<scope>#<meter>#<g>#<start>",
        "ALL#api_calls#hour#001790000000"
    ));
    assert!(!matches("ORG", "ORG#x"));
}
