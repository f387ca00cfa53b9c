//! `GET /v1/usage` of a `time_weighted_sum` meter over the memory store (the readings
//! primitives it uses are held to the same answers on SQLite and DynamoDB by the readings
//! conformance suite), at a fixed now, every figure worked out by hand.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Map;
use tally_core::event::{Event, Quantity};
use tally_core::ids::{EventId, MeterName, ProjectId};
use tally_core::meter::{Aggregation, Meter, MeterCatalogue};
use tally_core::ports::put_batch_readings;
use tally_core::tenant::KeyMode;
use tally_store::MemoryStore;

use super::*;
use crate::tests::{pairs, t as ts};
use crate::usage::{UsageParams, UsageRequest};

/// The time the request is made: the clock's now in the handler.
const NOW: &str = "2026-11-26T12:00:00Z";

fn catalogue() -> MeterCatalogue {
    let mut meters: Vec<Meter> = MeterCatalogue::default().meters().cloned().collect();
    meters.push(Meter {
        name: MeterName::parse("storage_gb").unwrap(),
        unit: "GB".into(),
        aggregation: Aggregation::TimeWeightedSum,
        default_quantity: None,
        value: Default::default(),
        dimensions: Default::default(),
    });
    MeterCatalogue::new(meters)
}

/// On 26 November 2026: prj_1 reads 10 GB at 00:00 and 30 GB at 06:00, prj_2 4 GB at
/// 03:00, the batch applied and its readings written.
async fn world() -> (MemoryStore, OrgId) {
    let store = MemoryStore::new();
    let org = OrgId::parse("org_tws").unwrap();
    let rows = [
        ("r1", "prj_1", "10", "2026-11-26T00:00:00Z"),
        ("r2", "prj_1", "30", "2026-11-26T06:00:00Z"),
        ("r3", "prj_2", "4", "2026-11-26T03:00:00Z"),
    ];
    let events: Vec<Event> = rows
        .into_iter()
        .map(|(id, p, q, at)| Event {
            org_id: org.clone(),
            id: EventId::parse(id).unwrap(),
            project_id: ProjectId::parse(p).unwrap(),
            meter: MeterName::parse("storage_gb").unwrap(),
            aggregation: Aggregation::TimeWeightedSum,
            quantity: Quantity::parse(q).unwrap(),
            timestamp: ts(at),
            properties: Map::new(),
        })
        .collect();
    put_batch_readings(&store, &events).await.unwrap();
    store.apply_batch(&events).await.unwrap();
    (store, org)
}

/// (bucket start, value) of `GET /v1/usage?meter=storage_gb&…` at [`NOW`].
async fn series(query: &[(&str, &str)]) -> Vec<(String, String)> {
    let (store, org) = world().await;
    let mut p = UsageParams {
        meter: Some("storage_gb".into()),
        ..UsageParams::default()
    };
    for (k, v) in query {
        let v = Some((*v).to_owned());
        match *k {
            "granularity" => p.granularity = v,
            "from" => p.from = v,
            "to" => p.to = v,
            "project_id" => p.project_id = v,
            other => panic!("{other}"),
        }
    }
    let req = UsageRequest::parse(&p, &catalogue(), ts(NOW)).unwrap();
    let r = crate::usage::read(&store, None, &org, KeyMode::Live, req)
        .await
        .unwrap();
    r.series.into_iter().map(|s| (s.start, s.value)).collect()
}

/// The day so far, clamped to 12:00: prj_1 10 × 6 h + 30 × 6 h = 240 GB-hours, prj_2
/// 4 × 9 h = 36, the org 276; the month so far (no from/to) is the same one bucket. Not
/// the whole day: without the clamp, prj_1 would be 10 × 6 + 30 × 18 = 600 and the org
/// 684, charging hours that have not happened yet.
#[tokio::test]
async fn a_day_bucket_integrates_up_to_now() {
    let day = [
        ("granularity", "day"),
        ("from", "2026-11-26"),
        ("to", "2026-11-27"),
    ];
    assert_eq!(
        series(&day).await,
        pairs(&[("2026-11-26T00:00:00Z", "276")])
    );
    let mut one = day.to_vec();
    one.push(("project_id", "prj_1"));
    assert_eq!(
        series(&one).await,
        pairs(&[("2026-11-26T00:00:00Z", "240")])
    );
    assert_eq!(series(&[]).await, pairs(&[("2026-11-26T00:00:00Z", "276")]));
    let month = [("granularity", "month")];
    assert_eq!(
        series(&month).await,
        pairs(&[("2026-11-01T00:00:00Z", "276")])
    );

    // The planted fault: the same buckets integrated to their ends, not to now.
    let (store, org) = world().await;
    let unclamped = tally_core::ports::period_usage(
        &store,
        &org,
        &MeterName::parse("storage_gb").unwrap(),
        Month::parse("2026-11").unwrap(),
        None,
        &Default::default(),
        &[(ts("2026-11-26T00:00:00Z"), ts("2026-11-27T00:00:00Z"))],
    )
    .await
    .unwrap();
    assert_eq!(unclamped, [Decimal::from(684)]);
}

/// Hour buckets: 00:00–02:00 prj_1's 10 GB alone (10 each), 03:00–05:00 10 + 4 = 14,
/// 06:00–11:00 30 + 4 = 34, and nothing from 12:00 (now) on: 3 × 10 + 3 × 14 + 6 × 34 =
/// 276, the day's figure. A bucket cut by `to` integrates up to `to`: 06:00–06:30 is
/// 34 × 0.5 = 17.
#[tokio::test]
async fn hour_buckets_stop_at_now() {
    let hours = [
        ("granularity", "hour"),
        ("from", "2026-11-26T00:00:00Z"),
        ("to", "2026-11-27T00:00:00Z"),
    ];
    let got = series(&hours).await;
    let want: Vec<(String, String)> = (0..12)
        .map(|h| {
            let v = match h {
                0..=2 => "10",
                3..=5 => "14",
                _ => "34",
            };
            (format!("2026-11-26T{h:02}:00:00Z"), v.to_owned())
        })
        .collect();
    assert_eq!(got, want);
    let total: Decimal = got.iter().map(|(_, v)| Decimal::from_str(v).unwrap()).sum();
    assert_eq!(total, Decimal::from(276));
    let cut = [
        ("granularity", "hour"),
        ("from", "2026-11-26T06:00:00Z"),
        ("to", "2026-11-26T06:30:00Z"),
    ];
    assert_eq!(series(&cut).await, pairs(&[("2026-11-26T06:00:00Z", "17")]));
}

#[test]
fn a_bucket_wholly_in_the_future_integrates_nothing() {
    let (start, end) = (ts("2026-11-27T00:00:00Z"), ts("2026-11-28T00:00:00Z"));
    assert_eq!(clamp(end, end, ts(NOW), start), start);
    assert_eq!(clamp(end, end, end, start), end);
}
