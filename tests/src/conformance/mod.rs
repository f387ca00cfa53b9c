//! Backend-agnostic conformance suites for the ports in [`tally_core::ports`].
//!
//! - [`storage`]: [`TenantStore`](tally_core::ports::TenantStore) and
//!   [`UsageStore`](tally_core::ports::UsageStore), through a [`storage::StoreFactory`].
//! - [`security`]: [`SecurityStore`](tally_core::ports::SecurityStore), org security
//!   policies and sign-in sessions, through the same [`storage::StoreFactory`].
//! - [`allowance`]: [`AllowanceStore`](tally_core::ports::AllowanceStore), the shared
//!   limits of ingest instances, on handles onto one store.
//! - [`overrides`]: [`OverrideStore`](tally_core::ports::OverrideStore), each org's price
//!   overrides, through a [`storage::StoreFactory`].
//! - [`dimensions`]: [`SeriesRegistry`](tally_core::ports::SeriesRegistry), the series
//!   of dimensioned meters and their cardinality bound, through a [`storage::StoreFactory`].
//! - [`readings`]: [`ReadingStore`](tally_core::ports::ReadingStore), the hour cells of
//!   time-weighted meters, through a [`storage::StoreFactory`].
//! - [`queue`]: [`EventQueue`](tally_core::ports::EventQueue), through a
//!   [`queue::QueueFactory`].
//! - [`replay`]: replaying dead letters
//!   ([`DeadLetterReplay`](tally_store::replay::DeadLetterReplay)) on the queues that keep
//!   them whole (local, SQS), through the same factory.
//!
//! The suites never assume empty tables: every test makes fresh org ids (and slugs, emails,
//! months where a value is global), so a backend may share one table or server between tests
//! and between runs. Queues are the exception: a queue is one pipe, so each queue factory owns
//! a queue of its own.

// This module is test code that lives in a library so every backend's test file can run it;
// a failed unwrap here is a failed test, as in any #[test].
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod allowance;
pub mod dimensions;
pub mod fixtures;
pub mod overrides;
pub mod queue;
pub mod readings;
pub mod replay;
pub mod security;
pub mod storage;

/// What every suite macro ([`queue_conformance!`](crate::queue_conformance),
/// [`storage_conformance!`](crate::storage_conformance), ...) expands to: one
/// `#[tokio::test]` per test of the `suite` module, each building its factory with `factory`.
///
/// The suites' test lists live here, one arm each, so that a suite's macro is one line and
/// a test is added to a suite by adding its name to the suite's arm.
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_tests {
    (storage, $factory:expr) => {
        $crate::conformance_tests!(@each storage, $factory;
            users_are_unique_by_lowercased_email,
            orgs_have_an_owner_and_unique_slugs,
            projects_are_scoped_to_their_org,
            api_keys_are_found_by_hash,
            roles_are_looked_up_per_org_and_members_listed,
            orgs_are_updated_in_place,
            plan_changes_are_kept_in_order,
            members_are_added_changed_and_removed_but_never_the_owner,
            ownership_moves_only_by_transfer_to_a_member,
            api_keys_are_listed_and_revoked_by_id,
            api_keys_rotate_with_an_overlap,
            audit_records_page_newest_first_with_filters,
            invitations_are_found_by_hash_accepted_once_and_revoked,
            orgs_are_soft_deleted_with_their_keys_revoked,
            projects_are_renamed_and_archived_in_their_org,
            api_keys_remember_their_latest_use,
            members_are_put_on_projects_of_their_org,
            apply_batch_counts_each_event_once,
            a_store_applies_again_after_releasing_its_writers,
            resends_with_other_contents_are_reported_as_conflicts,
            event_ids_are_unique_per_org_not_globally,
            concurrent_overlapping_batches_count_once,
            events_past_the_counter_limit_are_refused_one_by_one,
            racing_handles_never_take_a_total_past_the_counter_limit,
            sum_and_count_arithmetic,
            max_arithmetic,
            latest_arithmetic,
            unique_count_arithmetic,
            counter_series_range_semantics,
            ledger_pages_cover_each_event_once,
            stored_counters_agree_with_a_fold_of_the_ledger,
            report_lines_tally_from_the_ledger_as_the_counters_say,
            periods_close_idempotently,
            reports_are_written_once_and_listed_per_org,
            racing_report_writes_keep_one,
            oversized_reports_are_refused,
            sync_steps_are_recorded_once_per_org_period_and_step,
            racing_sync_step_writes_keep_one,
            sync_customers_are_recorded_once_per_org,
            alerts_are_claimed_once_and_pending_until_delivered,
            racing_alert_claims_have_one_winner,
            alert_leases_are_taken_over_once,
            catalogue_versions_are_numbered_once_and_listed_in_order,
        );
    };
    (overrides, $factory:expr) => {
        $crate::conformance_tests!(@each overrides, $factory;
            overrides_are_written_once_and_listed_oldest_first,
            an_end_only_moves_earlier,
            bounds_are_enforced_by_the_store,
        );
    };
    (dimensions, $factory:expr) => {
        $crate::conformance_tests!(@each dimensions, $factory;
            series_are_registered_once_and_bounded,
            the_bound_is_exact_under_concurrent_registrations,
            a_meters_total_is_over_its_series,
            the_counter_limit_holds_for_a_meters_total_over_its_series,
        );
    };
    (readings, $factory:expr) => {
        $crate::conformance_tests!(@each readings, $factory;
            readings_in_any_order_and_replayed_give_the_hand_worked_day,
            cells_are_kept_per_org_meter_project_and_month,
            a_period_carries_in_the_last_earlier_reading,
            concurrent_writers_of_one_second_keep_the_larger,
            a_store_refuses_readings_it_must_never_write,
            a_storage_meter_is_priced_per_gb_hour_over_two_months,
            a_crash_between_apply_and_readings_is_repaired_by_redelivery,
            a_conflicting_resend_writes_no_reading,
        );
    };
    (security, $factory:expr) => {
        $crate::conformance_tests!(@each security, $factory;
            policies_are_replaced_whole_and_the_old_one_returned,
            policies_need_a_live_org,
            sessions_are_found_by_user_and_id,
            sessions_are_listed_while_active,
            sessions_are_revoked_once,
        );
    };
    (queue, $factory:expr) => {
        $crate::conformance_tests!(@each queue, $factory;
            published_events_are_received_and_acked_once,
            nothing_is_lost_across_reopen,
            unacked_messages_come_back_after_the_visibility_timeout,
            receive_respects_max_events,
            malformed_messages_are_dead_lettered,
            an_unreadable_event_is_set_aside_alone,
            a_waiting_receive_wakes_on_publish,
            a_publish_from_another_handle_is_received,
            an_empty_receive_returns_after_its_wait,
        );
    };
    (replay, $factory:expr) => {
        $crate::conformance_tests!(@each replay, $factory;
            replayed_dead_letters_are_counted_exactly_once,
            a_letter_still_unreadable_after_replay_comes_back_with_its_reason,
            letters_are_selected_by_id_reason_and_limit_and_undecodable_ones_are_left,
        );
    };
    (@each $suite:ident, $factory:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let factory = $factory;
                $crate::conformance::$suite::$test(&factory).await;
            }
        )*
    };
}

/// Every suite a [`storage::StoreFactory`] runs (storage, overrides, dimensions, readings,
/// security), each in a module named after it, building the factory with `factory`: what a
/// storage backend's test file registers, so that a suite is added to every backend in one
/// place. The invoking module's items are in scope of each suite's module (`use super::*`).
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        mod storage {
            use super::*;
            $crate::storage_conformance!($factory);
        }
        mod overrides {
            use super::*;
            $crate::override_conformance!($factory);
        }
        mod dimensions {
            use super::*;
            $crate::dimensions_conformance!($factory);
        }
        mod readings {
            use super::*;
            $crate::readings_conformance!($factory);
        }
        mod security {
            use super::*;
            $crate::security_conformance!($factory);
        }
    };
}
