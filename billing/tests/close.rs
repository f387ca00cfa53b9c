//! Month close against a real store (SQLite in a temporary directory) with a pinned clock:
//! refusals, closing, storing once, reruns, dry runs, late events becoming adjustments, and
//! one org's failure not stopping the others.
//!
//! The worked figures use the built-in starter plan: $29.00 a month, 1,000 compute minutes
//! included, then $0.10 a minute, 10 % off usage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use serde_json::Map;
use tally_billing::close::{
    CloseError, CloseOutcome, check_billable, close_previous_month_if_due, existed_in,
};
use tally_billing::schedule::{MAX_CATCH_UP_MONTHS, earliest_org_month, months_to_bill};
use tally_billing::{
    AdjustmentLine, Catalogue, ClosePorts, CloseRequest, NoProgress, UsageReport, close_month,
};
use tally_core::ports::{
    FixedClock, OrgStore, PlanMove, ProjectStore, ReportStore, StoredReport, UsageStore, UserStore,
};
use tally_core::tenant::{Org, Project, User};
use tally_core::{
    Aggregation, Event, EventId, MeterName, Month, OrgId, PlanId, ProjectId, Quantity, UserId,
};
use tally_store::SqliteStore;

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn month(s: &str) -> Month {
    Month::parse(s).unwrap()
}

struct World {
    dir: tempfile::TempDir,
    store: SqliteStore,
    clock: FixedClock,
    catalogue: Catalogue,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("tally.db")).unwrap();
        World {
            dir,
            store,
            clock: FixedClock::at(ts("2026-12-15T00:00:00Z")),
            catalogue: Catalogue::builtin().unwrap(),
        }
    }

    fn ports(&self) -> ClosePorts<'_> {
        ClosePorts::of(&self.store, &self.clock)
    }

    /// A new world (see [`World::new`]) with one org on `plan` (see [`World::org`]) that
    /// used `q` compute minutes at `at` (RFC 3339), as event `id`: how most tests begin.
    async fn with_minutes(
        slug: &str,
        plan: PlanId,
        id: &str,
        q: &str,
        at: &str,
    ) -> (World, OrgId, ProjectId) {
        let w = World::new();
        let (org, project) = w.org(slug, plan).await;
        w.minutes(&org, &project, id, q, at).await;
        (w, org, project)
    }

    async fn org(&self, slug: &str, plan: PlanId) -> (OrgId, ProjectId) {
        self.org_created(slug, plan, "2026-01-01T00:00:00Z").await
    }

    /// An org on `plan` created at `created` (RFC 3339), with one project.
    async fn org_created(&self, slug: &str, plan: PlanId, created: &str) -> (OrgId, ProjectId) {
        let org = create_org(&self.store, slug, plan, created).await;
        let project = Project {
            id: ProjectId::from_random(rand_bytes()),
            org_id: org.id.clone(),
            name: "Web".into(),
            slug: "web".into(),
            created_at: ts(created),
            archived_at: None,
        };
        self.store.create_project(&project).await.unwrap();
        (org.id, project.id)
    }

    /// Applies `q` compute minutes of `project` at `at`, as event `id`.
    async fn minutes(&self, org: &OrgId, project: &ProjectId, id: &str, q: &str, at: &str) {
        self.usage(org, project, id, "compute_minutes", q, at).await;
    }

    /// Applies one compute minute of `project` on each of `days` (events `{prefix}0`,
    /// `{prefix}1`), then plants a value past what a decimal sums in every counter cell of
    /// `org` in the store file, as months of the largest quantities would leave them.
    async fn overflow(&self, org: &OrgId, project: &ProjectId, prefix: &str, days: [&str; 2]) {
        for (i, day) in days.iter().enumerate() {
            let at = format!("{day}T00:00:00Z");
            self.minutes(org, project, &format!("{prefix}{i}"), "1", &at)
                .await;
        }
        let conn = rusqlite::Connection::open(self.dir.path().join("tally.db")).unwrap();
        let planted = conn
            .execute(
                "UPDATE cells SET value = '50000000000000000000000000000' WHERE org = ?1",
                [org.as_str()],
            )
            .unwrap();
        assert!(planted >= 2, "{planted}");
    }

    /// The report stored for `org`'s `period`, if any.
    async fn stored(&self, org: &OrgId, period: &str) -> Option<StoredReport> {
        self.store.get_report(org, month(period)).await.unwrap()
    }

    /// Moves `org` to `plan` at `at` (RFC 3339).
    async fn change_plan(&self, org: &OrgId, plan: PlanId, at: &str) {
        self.store
            .change_plan(&PlanMove::new(org, plan, ts(at)))
            .await
            .unwrap();
    }

    async fn usage(
        &self,
        org: &OrgId,
        project: &ProjectId,
        id: &str,
        meter: &str,
        q: &str,
        at: &str,
    ) {
        let event = Event {
            org_id: org.clone(),
            id: EventId::parse(id).unwrap(),
            project_id: project.clone(),
            // A series key (`meter{dim=value}`) is what ingest queues for a meter with
            // dimensions.
            meter: MeterName::parse_key(meter).unwrap(),
            aggregation: Aggregation::Sum,
            quantity: Quantity::parse(q).unwrap(),
            timestamp: ts(at),
            properties: Map::new(),
        };
        let report = self.store.apply_batch(&[event]).await.unwrap();
        assert_eq!(report.applied(), 1);
    }

    async fn bill(&self, period: &str) -> Result<Vec<UsageReport>, CloseError> {
        let request = CloseRequest::new(month(period));
        self.close(&request).await.map(|o| o.reports)
    }

    /// Closes a month as `request` says.
    async fn close(&self, request: &CloseRequest) -> Result<CloseOutcome, CloseError> {
        close_month(self.ports(), &self.catalogue, request, &NoProgress).await
    }
}

/// The one adjustment on `report`.
fn the_adjustment(report: &UsageReport) -> &AdjustmentLine {
    assert_eq!(report.adjustments.len(), 1, "{:?}", report.adjustments);
    &report.adjustments[0]
}

/// What an adjustment corrects: the period, the quantity invoiced and the corrected one,
/// and the amount added.
fn correction(adj: &AdjustmentLine) -> [String; 4] {
    [
        adj.period.to_string(),
        adj.invoiced_quantity.to_string(),
        adj.corrected_quantity.to_string(),
        adj.amount.to_string(),
    ]
}

fn rand_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(1u8).to_le_bytes();
    let b = RandomState::new().hash_one(2u8).to_le_bytes();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

fn line<'a>(r: &'a UsageReport, meter: &str) -> &'a tally_billing::ReportLine {
    r.lines.iter().find(|l| l.meter.as_str() == meter).unwrap()
}

/// Asserts `r`'s compute_minutes quantity, billable quantity and amount, then its total.
fn assert_minutes_and_total(r: &UsageReport, [quantity, billable, amount, total]: [&str; 4]) {
    let cm = line(r, "compute_minutes");
    assert_eq!(cm.quantity.to_string(), quantity);
    assert_eq!(cm.billable.to_string(), billable);
    assert_eq!(cm.amount.to_string(), amount);
    assert_eq!(r.total.to_string(), total);
}

#[test]
fn the_current_month_and_the_grace_period_are_refused() {
    let nov = month("2026-11");
    let grace = Duration::hours(1);
    for now in ["2026-11-15T00:00:00Z", "2026-10-31T23:00:00Z"] {
        assert!(matches!(
            check_billable(nov, ts(now), grace),
            Err(CloseError::NotEnded { .. })
        ));
    }
    for now in ["2026-12-01T00:00:00Z", "2026-12-01T00:59:59.999Z"] {
        let err = check_billable(nov, ts(now), grace).unwrap_err();
        assert!(matches!(err, CloseError::InGracePeriod { .. }), "{err}");
        assert!(err.to_string().contains("2026-12-01T01:00:00Z"), "{err}");
    }
    check_billable(nov, ts("2026-12-01T01:00:00Z"), grace).unwrap();
    check_billable(nov, ts("2026-12-01T00:00:00Z"), Duration::zero()).unwrap();
    let err = check_billable(nov, ts("2027-01-01T00:00:00Z"), Duration::days(8)).unwrap_err();
    assert!(err.to_string().starts_with("grace_period:"), "{err}");
    assert!(check_billable(nov, ts("2027-01-01T00:00:00Z"), Duration::seconds(-1)).is_err());
}

#[tokio::test]
async fn a_refused_run_closes_and_stores_nothing() {
    let w = World::new();
    let (org, _) = w.org("acme", PlanId::Starter).await;
    w.clock.set(ts("2026-12-01T00:30:00Z"));
    assert!(matches!(
        w.bill("2026-11").await,
        Err(CloseError::InGracePeriod { .. })
    ));
    assert!(matches!(
        w.bill("2026-12").await,
        Err(CloseError::NotEnded { .. })
    ));
    assert!(!w.store.is_period_closed(month("2026-11")).await.unwrap());
    assert!(w.store.list_reports(&org).await.unwrap().is_empty());
}

/// A meter with dimensions is billed on its total over its series: no series escapes the
/// bill, and the line's ledger digest counts the events of every series.
#[tokio::test]
async fn a_bill_over_two_series_equals_the_hand_worked_total() {
    let w = World::new();
    let (a, pa) = w.org("series", PlanId::Starter).await;
    let gpt = "compute_minutes{model=gpt-4}";
    let claude = "compute_minutes{model=claude}";
    w.usage(&a, &pa, "s1", gpt, "700", "2026-11-03T10:00:00Z")
        .await;
    w.usage(&a, &pa, "s2", claude, "450", "2026-11-10T10:00:00Z")
        .await;
    w.usage(&a, &pa, "s3", claude, "50.5", "2026-11-30T23:00:00Z")
        .await;
    let reports = w.bill("2026-11").await.unwrap();
    let r = reports.iter().find(|r| r.org_id == a).unwrap();
    r.check().unwrap();
    // Starter: 700 + 450 + 50.5 = 1,200.5 minutes, 1,000 included: 200.5 × $0.10 = $20.05,
    // 10 % off: 20.05 × 0.9 = 18.045 → $18.05 (half away from zero); + $29.00 = $47.05.
    assert_minutes_and_total(r, ["1200.5", "200.5", "18.05", "47.05"]);
    assert_eq!(line(r, "compute_minutes").event_count, Some(3));
}

#[tokio::test]
async fn closing_stores_one_report_per_org_and_a_rerun_returns_the_same() {
    let (w, a, pa) = World::with_minutes(
        "acme",
        PlanId::Starter,
        "e1",
        "1200",
        "2026-11-03T10:00:00Z",
    )
    .await;
    let (b, _) = w.org("bolt", PlanId::Pro).await;
    // Another month's usage is not this month's.
    w.minutes(&a, &pa, "e2", "7", "2026-12-01T00:00:00Z").await;

    // A dry run computes without closing or storing.
    let dry = w
        .close(&CloseRequest {
            dry_run: true,
            ..CloseRequest::new(month("2026-11"))
        })
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.stored_now, 0);
    assert_eq!(dry.reports.len(), 2);
    assert!(!w.store.is_period_closed(month("2026-11")).await.unwrap());
    assert!(w.store.list_reports(&a).await.unwrap().is_empty());

    let first = w.close(&CloseRequest::new(month("2026-11"))).await.unwrap();
    assert_eq!(first.stored_now, 2);
    assert_eq!(first.reports, dry.reports, "a dry run shows what is stored");
    assert!(w.store.is_period_closed(month("2026-11")).await.unwrap());
    let acme = first.reports.iter().find(|r| r.org_id == a).unwrap();
    acme.check().unwrap();
    // 1,200 minutes, 1,000 included: 200 × $0.10 = $20.00, 10 % off = $18.00, + $29.00.
    assert_minutes_and_total(acme, ["1200", "200", "18.00", "47.00"]);
    assert_eq!(acme.projects.len(), 1);
    assert_eq!(acme.projects[0].project_id, pa);
    let bolt = first.reports.iter().find(|r| r.org_id == b).unwrap();
    assert_eq!(bolt.total.to_string(), "99.00");

    // Twice: the same reports, nothing stored.
    let second = w.close(&CloseRequest::new(month("2026-11"))).await.unwrap();
    assert_eq!(second.stored_now, 0);
    assert_eq!(second.reports, first.reports);
    // Even after usage lands in the closed month: the stored report stands.
    w.minutes(&a, &pa, "late", "50", "2026-11-30T23:59:59Z")
        .await;
    assert_eq!(w.bill("2026-11").await.unwrap(), first.reports);

    // One org only.
    let mut only = CloseRequest::new(month("2026-11"));
    only.org = Some(b.clone());
    let out = w.close(&only).await.unwrap();
    assert_eq!(out.reports.len(), 1);
    assert_eq!(out.reports[0].org_id, b);
    only.org = Some(OrgId::parse("org_nobody").unwrap());
    assert!(matches!(
        w.close(&only).await,
        Err(CloseError::UnknownOrg(_))
    ));
}

#[tokio::test]
async fn late_events_become_adjustments_on_the_next_reports_exactly_once() {
    let (w, a, pa) = World::with_minutes(
        "acme",
        PlanId::Starter,
        "oct",
        "1200",
        "2026-10-10T00:00:00Z",
    )
    .await;
    w.clock.set(ts("2026-11-01T02:00:00Z"));
    let oct = w.bill("2026-10").await.unwrap().remove(0);
    assert_eq!(oct.total.to_string(), "47.00");
    assert!(oct.adjustments.is_empty());

    // In flight at the close: applied after October's report was stored.
    w.minutes(&a, &pa, "late1", "50", "2026-10-31T23:59:00Z")
        .await;
    w.minutes(&a, &pa, "nov", "500", "2026-11-05T00:00:00Z")
        .await;
    w.clock.set(ts("2026-12-01T02:00:00Z"));
    let nov = w.bill("2026-11").await.unwrap().remove(0);
    nov.check().unwrap();
    let adj = the_adjustment(&nov);
    // 50 more billable minutes: $5.00 list, $0.50 off, $4.50 added.
    assert_eq!(correction(adj), ["2026-10", "1200", "1250", "4.50"]);
    assert_eq!(adj.meter.as_str(), "compute_minutes");
    assert_eq!(adj.list_amount.to_string(), "5.00");
    assert_eq!(adj.discount.to_string(), "0.50");
    // November itself: 500 minutes, all included; $29.00 + $4.50.
    assert_eq!(line(&nov, "compute_minutes").amount.to_string(), "0.00");
    assert_eq!(nov.subtotal.to_string(), "34.00");
    assert_eq!(nov.discount.to_string(), "0.50");
    assert_eq!(nov.total.to_string(), "33.50");
    // The adjustment is on the report as stored, and a rerun keeps it once.
    assert_eq!(w.bill("2026-11").await.unwrap(), vec![nov.clone()]);

    // More October usage after November's report: December adjusts from 1,250, not 1,200,
    // so nothing is billed twice.
    w.minutes(&a, &pa, "late2", "30", "2026-10-31T23:59:30Z")
        .await;
    w.clock.set(ts("2027-01-01T02:00:00Z"));
    let dec = w.bill("2026-12").await.unwrap().remove(0);
    let adj = the_adjustment(&dec);
    assert_eq!(correction(adj), ["2026-10", "1250", "1280", "2.70"]);
    assert_eq!(dec.total.to_string(), "31.70");
    // In all, October was billed what 1,280 minutes cost: 280 × $0.10 × 0.9 = $25.20.
    let billed = line(&oct, "compute_minutes").amount.amount()
        + nov.adjustments[0].amount.amount()
        + dec.adjustments[0].amount.amount();
    assert_eq!(billed.to_string(), "25.20");

    // Nothing late since: January has no adjustments.
    w.clock.set(ts("2027-02-01T02:00:00Z"));
    let jan = w.bill("2027-01").await.unwrap().remove(0);
    assert!(jan.adjustments.is_empty(), "{:?}", jan.adjustments);
}

#[tokio::test]
async fn one_org_failing_does_not_stop_the_others() {
    let (w, good, _) =
        World::with_minutes("good", PlanId::Starter, "g", "1", "2026-11-02T00:00:00Z").await;
    let (bad, pb) = w.org("bad", PlanId::Starter).await;
    // A meter no plan prices: billing refuses to drop it.
    w.usage(&bad, &pb, "b", "gpu_hours", "3", "2026-11-02T00:00:00Z")
        .await;
    let err = w.bill("2026-11").await.unwrap_err();
    let CloseError::OrgsFailed { failed, total, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(*total, 2);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, bad);
    assert!(err.to_string().contains("gpu_hours"), "{err}");
    assert!(w.stored(&good, "2026-11").await.is_some());
    assert!(w.stored(&bad, "2026-11").await.is_none());
}

#[tokio::test]
async fn the_scheduler_rule_closes_the_previous_month_once_after_its_grace() {
    let w = World::new();
    let grace = Duration::hours(1);
    assert_eq!(
        close_previous_month_if_due(&w.store, ts("2026-12-01T00:59:00Z"), grace)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        close_previous_month_if_due(&w.store, ts("2026-12-01T01:00:00Z"), grace)
            .await
            .unwrap(),
        Some(month("2026-11"))
    );
    assert_eq!(
        close_previous_month_if_due(&w.store, ts("2026-12-01T01:01:00Z"), grace)
            .await
            .unwrap(),
        None
    );
    assert!(w.store.is_period_closed(month("2026-11")).await.unwrap());
}

/// A tenant whose counters are past what a decimal sums (planted in the store file, as
/// months of the largest quantities would leave them): its report and its alerts fail
/// alone, with an error saying so, and every other org is billed and alerted as usual.
/// Before, `Decimal`'s `+` and `*` panicked and took the whole run down.
#[tokio::test]
async fn an_overflowing_tenant_fails_alone() {
    let (w, good, pg) =
        World::with_minutes("good", PlanId::Starter, "g", "1200", "2026-11-02T00:00:00Z").await;
    let (huge, ph) = w.org("huge", PlanId::Starter).await;
    w.overflow(&huge, &ph, "h", ["2026-11-02", "2026-11-03"])
        .await;
    let err = w.bill("2026-11").await.unwrap_err();
    let CloseError::OrgsFailed { failed, total, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!((*total, failed.len()), (2, 1));
    assert_eq!(failed[0].0, huge);
    assert!(err.to_string().contains("too large to sum"), "{err}");
    let report = w.stored(&good, "2026-11").await;
    assert_eq!(
        line(&decode_report(report), "compute_minutes")
            .quantity
            .to_string(),
        "1200"
    );

    // Alerts for the current month: the same planted counters in December.
    w.clock.set(ts("2026-12-20T00:00:00Z"));
    w.minutes(&good, &pg, "g2", "900", "2026-12-02T00:00:00Z")
        .await;
    w.overflow(&huge, &ph, "d", ["2026-12-02", "2026-12-03"])
        .await;
    let sent = Recorder::default();
    let outcome = tally_billing::alerts::check_alerts(
        tally_billing::alerts::AlertPorts {
            tenants: &w.store,
            usage: &w.store,
            alerts: &w.store,
            clock: &w.clock,
        },
        &w.catalogue,
        &sent,
        Duration::minutes(5),
    )
    .await
    .unwrap();
    assert_eq!(outcome.orgs, 2);
    assert_eq!(outcome.problems.len(), 1, "{:?}", outcome.problems);
    assert_eq!(outcome.problems[0].0, huge);
    assert!(
        outcome.problems[0]
            .2
            .to_string()
            .contains("too large to sum")
    );
    // The good org used 900 of 1,000 included minutes: its 80 % alert went out.
    let sent = sent.0.lock().unwrap();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains(good.as_str()) && sent[0].contains("\"threshold_percent\":80"));
}

fn decode_report(r: Option<tally_core::ports::StoredReport>) -> UsageReport {
    serde_json::from_str(&r.unwrap().body).unwrap()
}

/// Keeps every alert body it is given.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl tally_billing::alerts::AlertSender for Recorder {
    async fn send(&self, _id: &str, body: &str) -> Result<(), tally_billing::alerts::SendError> {
        self.0.lock().unwrap().push(body.to_owned());
        Ok(())
    }
}

/// An org on `from` with `minutes` compute minutes on November 5th (event `n1`), moved to
/// `to` at `at` (RFC 3339): the world, the org, its project and November's one report.
async fn november_across_a_plan_change(
    from: PlanId,
    minutes: &str,
    to: PlanId,
    at: &str,
) -> (World, OrgId, ProjectId, UsageReport) {
    let (w, org, p) =
        World::with_minutes("mover", from, "n1", minutes, "2026-11-05T00:00:00Z").await;
    w.change_plan(&org, to, at).await;
    let mut november = w.bill("2026-11").await.unwrap();
    assert_eq!(november.len(), 1, "{november:?}");
    let report = november.remove(0);
    (w, org, p, report)
}

/// Hand-worked: an org on pro (\$99, 10,000 minutes included, 20 % off) moved down to
/// starter (\$29, 1,000 included, \$0.10 a minute, 10 % off) on the 28th keeps pro for that
/// month: 1,200 minutes are \$99.00, not starter's \$29 + 200 × \$0.10 − 10 % = \$47.00.
/// The next month is starter's.
#[tokio::test]
async fn a_downgrade_applies_from_the_next_month() {
    let (w, org, p, november) =
        november_across_a_plan_change(PlanId::Pro, "1200", PlanId::Starter, "2026-11-28T23:00:00Z")
            .await;
    assert_eq!(november.plan, PlanId::Pro);
    assert_eq!(november.total.to_string(), "99.00");
    w.clock.set(ts("2027-01-15T00:00:00Z"));
    w.minutes(&org, &p, "d1", "1200", "2026-12-05T00:00:00Z")
        .await;
    let december = w.bill("2026-12").await.unwrap();
    assert_eq!(december[0].plan, PlanId::Starter);
    assert_eq!(
        line(&december[0], "compute_minutes").amount.to_string(),
        "18.00"
    );
    assert_eq!(december[0].total.to_string(), "47.00");
}

/// Hand-worked: an org on starter upgraded to pro on the 20th is billed on pro for that
/// month: 12,000 minutes are \$99 + 2,000 × \$0.10 − 20 % = \$259.00 (on starter they would
/// be \$29 + 11,000 × \$0.10 − 10 % = \$1,019.00), and the month before stays starter.
#[tokio::test]
async fn an_upgrade_applies_at_once() {
    let (w, _, _, november) = november_across_a_plan_change(
        PlanId::Starter,
        "12000",
        PlanId::Pro,
        "2026-11-20T00:00:00Z",
    )
    .await;
    assert_eq!(november.plan, PlanId::Pro);
    assert_eq!(november.total.to_string(), "259.00");
    let october = w.bill("2026-10").await.unwrap();
    assert_eq!(october[0].plan, PlanId::Starter);
    assert_eq!(october[0].total.to_string(), "29.00");
}

/// A month bills only the orgs that existed in it: one created the next month gets no
/// report (before, it got a $0-usage report and its plan's flat fee) and `--org` for it is
/// refused; one deleted before the month began is not billed either; one deleted during
/// the month is billed for it.
#[tokio::test]
async fn a_month_bills_only_the_orgs_that_existed_in_it() {
    let (w, old, _) =
        World::with_minutes("old", PlanId::Starter, "o", "10", "2026-11-02T00:00:00Z").await;
    // Created in December (M + 1), on a paid plan: nothing to bill for November.
    let (new, _) = w
        .org_created("new", PlanId::Pro, "2026-12-03T00:00:00Z")
        .await;
    // Created at the very end of November: it existed in it.
    let (last_second, _) = w
        .org_created("edge", PlanId::Starter, "2026-11-30T23:59:59Z")
        .await;
    // Deleted on November's first instant: not in November. Deleted mid-November: billed.
    let (gone, _) = w.org("gone", PlanId::Pro).await;
    w.store
        .delete_org(&gone, ts("2026-11-01T00:00:00Z"))
        .await
        .unwrap();
    let (leaving, _) = w.org("leaving", PlanId::Starter).await;
    w.store
        .delete_org(&leaving, ts("2026-11-20T00:00:00Z"))
        .await
        .unwrap();

    w.clock.set(ts("2026-12-15T00:00:00Z"));
    let out = w.close(&CloseRequest::new(month("2026-11"))).await.unwrap();
    let mut billed: Vec<&OrgId> = out.reports.iter().map(|r| &r.org_id).collect();
    billed.sort();
    let mut expected = vec![&old, &last_second, &leaving];
    expected.sort();
    assert_eq!(billed, expected);
    assert_eq!((out.stored_now, out.not_in_period), (3, 2));
    assert!(w.stored(&new, "2026-11").await.is_none());
    assert!(w.stored(&gone, "2026-11").await.is_none());

    // `tally bill --org` for the org created after November: refused, nothing stored.
    let mut only = CloseRequest::new(month("2026-11"));
    only.org = Some(new.clone());
    let err = w.close(&only).await.unwrap_err();
    assert!(matches!(err, CloseError::OrgNotInPeriod { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(new.as_str())
            && message.contains("2026-11")
            && message.contains("created 2026-12-03T00:00:00Z"),
        "{message}"
    );
    only.org = Some(gone.clone());
    let err = w.close(&only).await.unwrap_err();
    assert!(
        err.to_string().contains("deleted 2026-11-01T00:00:00Z"),
        "{err}"
    );
    // Refused before anything is closed: October is still open.
    only.period = month("2026-10");
    only.org = Some(new.clone());
    assert!(matches!(
        w.close(&only).await,
        Err(CloseError::OrgNotInPeriod { .. })
    ));
    assert!(!w.store.is_period_closed(month("2026-10")).await.unwrap());
    assert!(w.store.list_reports(&new).await.unwrap().is_empty());

    // December is the new org's first month.
    w.clock.set(ts("2027-01-02T00:00:00Z"));
    let dec = w.bill("2026-12").await.unwrap();
    assert!(
        dec.iter()
            .any(|r| r.org_id == new && r.total.to_string() == "99.00")
    );
    assert!(!dec.iter().any(|r| r.org_id == gone || r.org_id == leaving));
}

#[tokio::test]
async fn existence_in_a_month_is_decided_by_creation_and_deletion_instants() {
    let w = World::new();
    let (id, _) = w.org("x", PlanId::Free).await;
    let mut org = w.store.get_org(&id).await.unwrap().unwrap();
    let nov = month("2026-11");
    org.created_at = ts("2026-12-01T00:00:00Z");
    assert!(!existed_in(&org, nov), "created as November ended");
    org.created_at = ts("2026-11-30T23:59:59.999Z");
    assert!(existed_in(&org, nov));
    org.deleted_at = Some(ts("2026-11-01T00:00:00.001Z"));
    assert!(existed_in(&org, nov));
    org.deleted_at = Some(ts("2026-11-01T00:00:00Z"));
    assert!(!existed_in(&org, nov), "deleted as November began");
}

/// The scheduler's plan over a store: a scheduler down across two month-ends (November and
/// December) finds both missed months, oldest first, after October (closed, run again to
/// see it fully billed); once they are closed, only the newest due month is run again. On
/// SQLite and in memory.
#[tokio::test]
async fn the_schedulers_plan_catches_up_missed_months_oldest_first() {
    let sqlite = World::new();
    catch_up(&sqlite.store, &sqlite.store).await;
    let memory = tally_store::MemoryStore::new();
    catch_up(&memory, &memory).await;
}

async fn catch_up(tenants: &dyn TenantsForTest, usage: &dyn UsageStore) {
    let grace = Duration::hours(1);
    assert_eq!(earliest_org_month(tenants).await.unwrap(), None);
    // No org: nothing to bill, however long ago.
    let none = months_to_bill(usage, ts("2027-01-02T00:00:00Z"), grace, None)
        .await
        .unwrap();
    assert!(none.months.is_empty());

    for (slug, created) in [
        ("late", "2026-09-20T00:00:00Z"),
        ("early", "2026-06-10T00:00:00Z"),
    ] {
        create_org(tenants, slug, PlanId::Free, created).await;
    }
    let earliest = earliest_org_month(tenants).await.unwrap();
    assert_eq!(earliest, Some(month("2026-06")));
    for m in ["2026-06", "2026-07", "2026-08", "2026-09", "2026-10"] {
        usage
            .close_period(month(m), ts("2026-11-01T00:00:00Z"))
            .await
            .unwrap();
    }
    let now = ts("2027-01-02T00:00:00Z");
    let plan = months_to_bill(usage, now, grace, earliest).await.unwrap();
    let months: Vec<String> = plan.months.iter().map(Month::to_string).collect();
    assert_eq!(months, ["2026-10", "2026-11", "2026-12"]);
    assert_eq!(plan.left_open_beyond_cap, None);

    usage.close_period(month("2026-11"), now).await.unwrap();
    usage.close_period(month("2026-12"), now).await.unwrap();
    let plan = months_to_bill(usage, now, grace, earliest).await.unwrap();
    assert_eq!(plan.months, vec![month("2026-12")]);

    // Years later, with everything since left open: the cap bounds the walk, and the open
    // month beyond it is reported.
    let later = ts("2029-03-05T00:00:00Z");
    let plan = months_to_bill(usage, later, grace, earliest).await.unwrap();
    assert_eq!(plan.months.len(), MAX_CATCH_UP_MONTHS as usize);
    assert_eq!(plan.months.first(), Some(&month("2027-03")));
    assert_eq!(plan.months.last(), Some(&month("2029-02")));
    assert_eq!(plan.left_open_beyond_cap, Some(month("2027-02")));
}

/// Creates an org named and slugged `slug` on `plan`, created at `created` (RFC 3339), with
/// its own owner (`{slug}@example.com`, created at the same instant).
async fn create_org(tenants: &dyn TenantsForTest, slug: &str, plan: PlanId, created: &str) -> Org {
    let owner = tenants
        .ensure_user(&User {
            id: UserId::from_random(rand_bytes()),
            email: format!("{slug}@example.com"),
            created_at: ts(created),
        })
        .await
        .unwrap();
    let org = Org {
        id: OrgId::from_random(rand_bytes()),
        name: slug.into(),
        slug: slug.into(),
        plan,
        owner_id: owner.id,
        created_at: ts(created),
        deleted_at: None,
    };
    tenants.create_org(&org).await.unwrap();
    org
}

/// The tenant roles the plan test creates orgs through.
trait TenantsForTest: OrgStore + UserStore {}
impl<T: OrgStore + UserStore> TenantsForTest for T {}

/// The same rule on the in-memory store: November bills the org that existed in it, not
/// the one created in December nor the one deleted before November began; `--org` for the
/// December org is refused.
#[tokio::test]
async fn a_month_bills_only_the_orgs_that_existed_in_it_in_memory() {
    let store = tally_store::MemoryStore::new();
    let mut ids = Vec::new();
    for (slug, created, deleted) in [
        ("old", "2026-01-01T00:00:00Z", None),
        ("new", "2026-12-03T00:00:00Z", None),
        ("gone", "2026-01-01T00:00:00Z", Some("2026-10-31T23:00:00Z")),
    ] {
        let org = create_org(&store, slug, PlanId::Starter, created).await;
        if let Some(at) = deleted {
            store.delete_org(&org.id, ts(at)).await.unwrap();
        }
        ids.push(org.id);
    }
    let clock = FixedClock::at(ts("2026-12-15T00:00:00Z"));
    let ports = ClosePorts::of(&store, &clock);
    let catalogue = Catalogue::builtin().unwrap();
    let mut request = CloseRequest::new(month("2026-11"));
    let out = close_month(ports, &catalogue, &request, &NoProgress)
        .await
        .unwrap();
    let billed: Vec<&OrgId> = out.reports.iter().map(|r| &r.org_id).collect();
    assert_eq!(billed, [&ids[0]]);
    assert_eq!(out.not_in_period, 2);
    for id in &ids[1..] {
        assert!(store.list_reports(id).await.unwrap().is_empty());
    }
    request.org = Some(ids[1].clone());
    assert!(matches!(
        close_month(ports, &catalogue, &request, &NoProgress).await,
        Err(CloseError::OrgNotInPeriod { .. })
    ));
}

/// The upcoming invoice and month close are one engine: the preview of November computed at
/// its last instant (over the counters as they stand, on the plan month close bills) has
/// the total of the report month close then stores. Starter: 1,500 minutes = 500 over the
/// 1,000 included at $0.10 = $50.00, 10 % off = $45.00, plus $29.00 = $74.00; and 40,000 API
/// calls, under the 100,000 included.
#[tokio::test]
async fn the_closed_total_is_the_upcoming_total_at_the_months_last_instant() {
    let (w, org, project) = World::with_minutes(
        "preview",
        PlanId::Starter,
        "m1",
        "1000",
        "2026-11-03T10:00:00Z",
    )
    .await;
    w.minutes(&org, &project, "m2", "500", "2026-11-29T10:00:00Z")
        .await;
    w.usage(
        &org,
        &project,
        "c1",
        "api_calls",
        "40000",
        "2026-11-10T00:00:00Z",
    )
    .await;
    let last_instant = month("2026-11").end() - Duration::nanoseconds(1);
    assert_eq!(Month::of(last_instant), month("2026-11"));
    let period = Month::of(last_instant);
    let history = w.store.plan_history(&org).await.unwrap();
    let plan = tally_core::plan::billed_plan(PlanId::Starter, &history, period);
    let usage = tally_core::report::MonthUsage::from_counters(
        w.store.stored_counters(&org, period).await.unwrap(),
        period,
    )
    .unwrap();
    let preview = tally_core::upcoming::upcoming_invoice(
        &org,
        w.catalogue.plan(plan),
        &w.catalogue.meter_catalogue(),
        &usage,
        last_instant,
    )
    .unwrap();
    assert_eq!(preview.total, "74.00");

    let reports = w.bill("2026-11").await.unwrap();
    let closed = reports.iter().find(|r| r.org_id == org).unwrap();
    assert_eq!(closed.total.to_string(), preview.total);
    assert_eq!(closed.subtotal.to_string(), preview.subtotal);
    assert_eq!(closed.discount.to_string(), preview.discount);
    for (line, shown) in closed.lines.iter().zip(&preview.lines) {
        assert_eq!(line.meter.to_string(), shown.meter);
        assert_eq!(line.amount.to_string(), shown.amount);
    }
}
