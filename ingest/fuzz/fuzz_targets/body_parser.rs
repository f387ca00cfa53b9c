//! Fuzzes the `POST /v1/events` body parser: any bytes, in each of the three encodings, must
//! split into 1 to 1,000 candidates or a `400` naming `body` or `events`, and every
//! candidate must validate into an event or an error, never a panic.
//!
//! Run from `ingest/fuzz`: `cargo +nightly fuzz run body_parser`.

#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use tally_core::event::{Event, ValidationContext};
use tally_core::ids::OrgId;
use tally_core::meter::MeterCatalogue;
use tally_ingest::body::{BodyFormat, MAX_BATCH_EVENTS, split_body};

fuzz_target!(|data: &[u8]| {
    let Ok(org) = OrgId::parse("org_fuzz") else {
        return;
    };
    let catalogue = MeterCatalogue::default();
    let Some(now) = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).single() else {
        return;
    };
    let ctx = ValidationContext {
        org_id: &org,
        catalogue: &catalogue,
        now,
    };
    for format in [
        BodyFormat::Native,
        BodyFormat::CloudEvent,
        BodyFormat::CloudEventBatch,
    ] {
        match split_body(format, data) {
            Ok(candidates) => {
                assert!((1..=MAX_BATCH_EVENTS).contains(&candidates.len()));
                for candidate in candidates.iter().flatten() {
                    if let Err(e) = Event::validate(candidate, &ctx) {
                        assert!(!e.message.is_empty());
                    }
                }
            }
            Err(e) => assert!(e.field == "body" || e.field == "events"),
        }
    }
});
