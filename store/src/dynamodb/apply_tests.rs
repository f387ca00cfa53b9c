//! Tests of `apply.rs`: the planner's ops, intent groups and packing, and the chunks.

#![allow(clippy::unwrap_used)]
use super::super::chunks::{MAX_ACTIONS, build_actions, org_of_pk};
use super::*;
use serde_json::Map;
use tally_core::event::Quantity;
use tally_core::ids::{EventId, MeterName, OrgId, ProjectId};
use tally_core::meter::Aggregation;

fn event(org: &str, project: &str, id: u32, meter: &str, agg: Aggregation, hour: i64) -> Event {
    let mut properties = Map::new();
    properties.insert("user".into(), format!("u{id}").into());
    Event {
        org_id: OrgId::parse(org).unwrap(),
        id: EventId::parse(&format!("e{id}")).unwrap(),
        project_id: ProjectId::parse(project).unwrap(),
        meter: MeterName::parse(meter).unwrap(),
        aggregation: agg,
        quantity: Quantity::ONE,
        timestamp: DateTime::from_timestamp(1_795_687_200 + hour * 3600, 0).unwrap(),
        properties,
    }
}

#[test]
fn one_cell_of_one_day_is_one_op_however_many_events_and_hours() {
    let events: Vec<Event> = (0..200)
        .map(|i| event("org_a", "prj_a", i, "m", Aggregation::Sum, i64::from(i % 3)))
        .collect();
    let all: Vec<usize> = (0..events.len()).collect();
    let ops = plan_ops(&events, &all);
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].1.len(), 1);
    let Op::Add(_, hours) = &ops[0].1[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(hours.len(), 3);
    let total: u32 = hours.iter().map(|(_, d)| d.parse::<u32>().unwrap()).sum();
    assert_eq!(total, 200);
}

#[test]
fn intents_stay_far_below_the_item_limit() {
    let sums: Vec<Event> = (0..1200)
        .map(|i| event("org_a", "prj_a", i, "m", Aggregation::Sum, 0))
        .collect();
    let all: Vec<usize> = (0..sums.len()).collect();
    let sizes: Vec<usize> = intent_groups(&sums, &all).iter().map(|g| g.len()).collect();
    assert_eq!(sizes, vec![1000, 200]);
    // Worst case: every event a new value of 128 bytes, a new hour, a new project.
    let uniques: Vec<Event> = (0..1000)
        .map(|i| {
            let mut e = event(
                "org_a",
                &format!("prj_{i}"),
                i,
                "m",
                Aggregation::UniqueCount {
                    property: "user".into(),
                },
                i64::from(i % 24),
            );
            e.properties
                .insert("user".into(), format!("{i:0>128}").into());
            e
        })
        .collect();
    let all: Vec<usize> = (0..uniques.len()).collect();
    let groups = intent_groups(&uniques, &all);
    assert!(groups.len() > 1);
    for g in groups {
        let text = serde_json::to_string(&plan_ops(&uniques, g)).unwrap();
        assert!(text.len() < 400 * 1024, "{} bytes", text.len());
    }
}

#[test]
fn packed_intents_read_back_equal_and_are_much_smaller() {
    let events: Vec<Event> = (0..1000)
        .map(|i| {
            let agg = if i % 4 == 0 {
                Aggregation::Max
            } else {
                Aggregation::Sum
            };
            event(
                "org_a",
                &format!("prj_{}", i % 37),
                i,
                "m",
                agg,
                i64::from(i % 3),
            )
        })
        .collect();
    let all: Vec<usize> = (0..events.len()).collect();
    let ops = plan_ops(&events, &all);
    let packed = pack_ops(&ops).unwrap();
    assert_eq!(unpack_ops(&packed).unwrap(), ops);
    let json = serde_json::to_vec(&ops).unwrap();
    assert!(
        packed.len() * 3 < json.len(),
        "{} of {} bytes",
        packed.len(),
        json.len()
    );
    assert!(matches!(
        unpack_ops(&packed[..packed.len() / 2]),
        Err(StoreError::Corrupt(_))
    ));
}

/// One hot org (ten projects, two meters: twenty day cells) among forty orgs with one
/// event each.
fn hot_and_cold() -> (Vec<Event>, Ops) {
    let mut events: Vec<Event> = (0..40)
        .map(|i| {
            event(
                "org_hot",
                &format!("prj_{}", i % 10),
                i,
                &format!("m{}", i % 2),
                Aggregation::Sum,
                0,
            )
        })
        .collect();
    events.extend((0..40).map(|i| {
        event(
            &format!("org_c{i:02}"),
            "prj_1",
            100 + i,
            "m0",
            Aggregation::Sum,
            0,
        )
    }));
    let all: Vec<usize> = (0..events.len()).collect();
    let ops = plan_ops(&events, &all);
    (events, ops)
}

#[test]
fn hot_orgs_get_chunks_of_their_own_and_everything_is_in_one_chunk() {
    let (_, ops) = hot_and_cold();
    let once = ops
        .iter()
        .flat_map(|(_, l)| l)
        .filter(|op| !op.is_idempotent())
        .count();
    for packing in [Packing::Mixed, Packing::HotApart] {
        let chunks = plan_chunks(&ops, packing);
        assert_eq!(
            chunks.iter().map(Vec::len).sum::<usize>(),
            once,
            "{packing:?}"
        );
    }
    let mixed = plan_chunks(&ops, Packing::Mixed);
    assert!(
        mixed.iter().any(|c| {
            let orgs: HashSet<&str> = c.iter().map(|(pk, _)| org_of_pk(pk)).collect();
            orgs.contains("org_hot") && orgs.len() > 1
        }),
        "the old packing mixes the hot org with others"
    );
    let apart = plan_chunks(&ops, Packing::HotApart);
    for chunk in &apart {
        let orgs: HashSet<&str> = chunk.iter().map(|(pk, _)| org_of_pk(pk)).collect();
        assert!(
            !orgs.contains("org_hot") || orgs.len() == 1,
            "a chunk mixes the hot org with {orgs:?}"
        );
    }
    assert_eq!(
        apart.len(),
        2,
        "one chunk for the hot org, one for the tail"
    );
}

/// An intent item holding nothing but the packed ops `packed` under attribute `attr`.
fn intent_with(attr: &str, packed: &[u8]) -> Item {
    let mut intent = Item::new();
    intent.insert(attr.into(), AttributeValue::B(Blob::new(packed)));
    intent
}

#[test]
fn an_intent_is_replayed_with_the_packing_it_was_written_with() {
    let (_, ops) = hot_and_cold();
    let packed = pack_ops(&ops).unwrap();
    let newest = intent_with(OPS_MARKERS_APART, &packed);
    assert_eq!(
        intent_ops(&newest).unwrap(),
        (ops.clone(), Packing::MarkersApart)
    );
    let new = intent_with(OPS_HOT_APART, &packed);
    assert_eq!(intent_ops(&new).unwrap(), (ops.clone(), Packing::HotApart));
    let old = intent_with(OPS_PACKED, &packed);
    assert_eq!(intent_ops(&old).unwrap(), (ops.clone(), Packing::Mixed));
    let mut older = Item::new();
    older.insert("ops".into(), s(serde_json::to_string(&ops).unwrap()));
    assert_eq!(intent_ops(&older).unwrap(), (ops.clone(), Packing::Mixed));
    // The two packings cut this intent differently: replaying one with the other would
    // apply some ops twice, which is why the packing travels with the intent.
    assert_ne!(
        plan_chunks(&ops, Packing::Mixed),
        plan_chunks(&ops, Packing::HotApart)
    );
}

#[test]
fn ops_and_chunks_do_not_depend_on_event_order() {
    let agg = |i: u32| match i % 4 {
        0 => Aggregation::Sum,
        1 => Aggregation::Max,
        2 => Aggregation::Latest,
        _ => Aggregation::UniqueCount {
            property: "user".into(),
        },
    };
    let events: Vec<Event> = (0..300)
        .map(|i| {
            event(
                &format!("org_{}", i % 4),
                &format!("prj_{}", i % 3),
                i,
                &format!("m{}", i % 4),
                agg(i),
                i64::from(i % 7),
            )
        })
        .collect();
    let fwd: Vec<usize> = (0..events.len()).collect();
    let rev: Vec<usize> = fwd.iter().rev().copied().collect();
    let ops = plan_ops(&events, &fwd);
    assert_eq!(ops, plan_ops(&events, &rev));
    // Every marker of every unique op, as if this batch owned them all.
    let all_markers: HashSet<(String, String)> = ops
        .iter()
        .flat_map(|(_, l)| l)
        .filter_map(|op| match op {
            Op::Unique(_, mpk, markers) => Some(markers.iter().map(|m| (mpk.clone(), m.clone()))),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(!all_markers.is_empty());
    for (packing, owned) in [
        (Packing::HotApart, None),
        (Packing::MarkersApart, Some(&all_markers)),
    ] {
        let chunks = plan_chunks(&ops, packing);
        // Every op that must apply once is in exactly one chunk; `max`/`latest` in none.
        let once = ops
            .iter()
            .flat_map(|(_, l)| l)
            .filter(|op| !op.is_idempotent());
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), once.count());
        assert!(chunks.iter().flatten().all(|(_, op)| !op.is_idempotent()));
        assert!(ops.iter().flat_map(|(_, l)| l).any(Op::is_idempotent));
        for chunk in &chunks {
            let items: HashSet<(&str, &str)> =
                chunk.iter().map(|(pk, op)| (*pk, op.item_sk())).collect();
            assert_eq!(items.len(), chunk.len(), "an item twice in one transaction");
            let skip = HashSet::new();
            let (actions, roles) = build_actions("t", "b", 0, chunk, &skip, owned, 0).unwrap();
            assert!(actions.len() <= MAX_ACTIONS, "{}", actions.len());
            assert_eq!(actions.len(), roles.len());
            if owned.is_some() {
                // Markers apart: the chunk marker and one update per op, no marker put.
                assert_eq!(actions.len(), chunk.len() + 1, "{packing:?}");
            }
        }
    }
    let text = serde_json::to_string(&ops).unwrap();
    assert_eq!(serde_json::from_str::<Ops>(&text).unwrap(), ops);
}

#[test]
fn a_slotted_intent_is_replayed_under_its_slot_and_number_or_not_at_all() {
    let (_, ops) = hot_and_cold();
    let packed = pack_ops(&ops).unwrap();
    let mut slotted = intent_with(OPS_SLOTTED, &packed);
    // Without its slot and number it cannot be replayed: corrupt, never chunked.
    assert!(matches!(intent_ops(&slotted), Err(StoreError::Corrupt(_))));
    slotted.insert(SLOT_ATTR.into(), n(7));
    slotted.insert(SEQ_ATTR.into(), n(12));
    assert_eq!(
        intent_ops(&slotted).unwrap(),
        (ops.clone(), Packing::Slotted { slot: 7, seq: 12 })
    );
    // A release that reads only the older attributes finds none of them here, so it fails
    // the batch (`ops` missing) instead of applying it in chunks.
    for older in [OPS_MARKERS_APART, OPS_HOT_APART, OPS_PACKED, "ops"] {
        assert!(!slotted.contains_key(older), "{older}");
    }
}
