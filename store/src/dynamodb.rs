//! [`DynamoStore`]: the AWS backend of [`TenantStore`](tally_core::ports::TenantStore),
//! [`UsageStore`](tally_core::ports::UsageStore) and
//! [`ReportStore`](tally_core::ports::ReportStore), one DynamoDB table. Each port is
//! implemented in its own file (`dynamodb/tenants.rs`, `dynamodb/members.rs`, ...).
//!
//! It mirrors [`SqliteStore`](crate::sqlite::SqliteStore) exactly (same errors, same
//! arithmetic, same ledger body), and the same conformance suite checks both. The table is
//! made by [`create_table`]; every item type it holds is listed below, and nothing else is
//! written to it.
//!
//! # The table
//!
//! Partition key `pk` (S), sort key `sk` (S), on-demand billing. One global secondary index,
//! `gsi1`, on `gsi1pk` (S) / `gsi1sk` (S), projecting the keys and [`GSI1_PROJECTED`]
//! (only what its queries read, so updating anything else costs no index write); it is
//! sparse (only items that carry `gsi1pk` are in it). TTL is on `ttl` (N, Unix seconds).
//! Every tenant item's key starts with its org where the item belongs to one org; the
//! exceptions are global by nature (users, emails, org slugs, key hashes, periods) and each
//! is found by one `GetItem`, never a scan.
//!
//! | item | `pk` | `sk` | other attributes | `gsi1pk` / `gsi1sk` | serves |
//! |---|---|---|---|---|---|
//! | org | `ORG#<org>` | `ORG` | `id`, `name`, `slug`, `plan`, `owner_id`, `created_at`, `deleted_at`?, `plan_changed_at`?, `security_policy`? (JSON), `security_policy_at`? | `ORGS` / `ORG#<org>` | `get_org`; `update_org` (conditional `UpdateItem` of `name`); `change_plan` (see plan change); `delete_org` (each key revoked, then `SET deleted_at = if_not_exists(...)`, then keys made meanwhile revoked, so a deletion cut short leaves the org live and can be retried; `get_role` reads the org with the membership and answers `None` once it is set, and adding anything to the org checks `attribute_not_exists(deleted_at)`); `transfer_ownership` (one transaction: `owner_id` conditioned on the old owner, the two memberships' roles conditioned on owner / existing); the index lists all orgs (`list_org_ids`) |
//! | org slug guard | `SLUG#<slug>` | `SLUG` | `org_id` | | unique org slugs (put with the org, `attribute_not_exists`) |
//! | membership | `ORG#<org>` | `MEMBER#<user>` | `user_id`, `role`, `created_at` | `USER#<user>` / `ORG#<org>` | `get_role` (one `GetItem`, with the org's at once); `list_members` (query `begins_with MEMBER#`); `add_member` (put under `attribute_not_exists`, with checks of the org and the user); `set_member_role`/`remove_member` (conditional on not being the owner); `list_user_memberships` (the index, eventually consistent) |
//! | user | `USER#<user>` | `USER` | `id`, `email` (lowercased), `created_at` | | `get_user` |
//! | email guard | `EMAIL#<email>` | `EMAIL` | `user_id` | | unique emails; `ensure_user` finds the user by email |
//! | plan change | `ORG#<org>` | `PLAN#<at>#<plan>` | `from`, `to`, `at` | | `change_plan` (one transaction: the org's `plan` and `plan_changed_at` conditioned on the plan read, on not deleted and on no later change, and this item put if absent); `plan_history` (query `begins_with PLAN#`, oldest first) |
//! | project | `ORG#<org>` | `PROJECT#<project>` | `id`, `org_id`, `name`, `slug`, `created_at`, `archived_at`? | | `get_project`; `list_projects` (query `begins_with PROJECT#`); `update_project` (conditional `UpdateItem` of `name`, `archived_at` by `if_not_exists`) |
//! | project member | `ORG#<org>` | `PROJECTMEMBER#<user>#<project>` | `user_id`, `project_id`, `created_at` | | `add_project_member` (one transaction: checks of the project and the membership, the put under `attribute_not_exists`); `remove_project_member` (`DeleteItem`); `list_user_projects` (query `begins_with PROJECTMEMBER#<user>#`) |
//! | project slug guard | `ORG#<org>` | `PROJECTSLUG#<slug>` | `project_id` | | unique project slugs per org |
//! | API key | `KEYHASH#<sha256 hex>` | `KEY` | `id`, `org_id`, `name`, `hash`, `display_prefix`, `scopes` (JSON), `created_at`, `expires_at`?, `revoked_at`?, `last_used_at`? (fixed-width µs text) | `ORG#<org>` / `APIKEY#<key>` | `find_api_key` (one `GetItem` by hash); `touch_api_keys` (a conditional `UpdateItem` per key, by hash, keeping the later time); the index lists an org's keys |
//! | API key id guard | `ORG#<org>` | `APIKEY#<key>` | `hash` | | unique key ids per org; from key id to hash: `list_api_keys` (query `begins_with APIKEY#`, then `GetItem` by hash: consistent, unlike the index), `revoke_api_key` (`GetItem` of the guard, then a conditional `UpdateItem` `SET revoked_at = if_not_exists(...)` of the key); `rotate_api_key` (one transaction: the new key and guard, and the old key's `expires_at` conditioned on its org and no revocation) |
//! | invitation | `INVITE#<sha256 hex of the token>` | `INVITE` | `id`, `org_id`, `email` (lowercased), `role`, `hash`, `invited_by`, `created_at`, `expires_at`, `accepted_at`?, `ttl` (7 days) | | `find_invitation` (one `GetItem` by hash, expiry checked on read); `accept_invitation` (one transaction: `accepted_at` conditioned on not accepted and `ttl` not passed, org and user checks, the membership put under `attribute_not_exists`); `dynamodb/invitations.rs` |
//! | invitation id guard | `ORG#<org>` | `INVITE#<invitation>` | `hash`, `ttl` | | `list_invitations` (query `begins_with INVITE#`, then `GetItem` by hash); `revoke_invitation` (one transaction deleting both, conditioned on not accepted) |
//! | audit record | `ORG#<org>#AUDIT` | `<20-digit Unix µs>#<record id>` | `actor`, `action`, `resource`, `body` (the record, JSON), `ttl` (90 days) | | `record_audit` (conditional put); `list_audit` (backward query, filters on actor/action/resource/`ttl`) |
//! | ledger record | `ORG#<org>#LEDGER#<shard>` | `EVT#<event id>` | `month` (`YYYY-MM`), `body` (compact JSON), `ttl`, `owner` (batch id), `claimed` (N, Unix s) | | exactly once (conditional put, returning the old record on failure); `ledger_page` |
//! | day cell | `ORG#<org>#CTR#<YYYY-MM>` | `DAY#<meter>#<project>#<day start>` | `k` (`add`/`max`/`latest`), `h00`…`h23` (N, the hours), `a00`…`a23` (N, `latest` reading times), `w<k>` (N, slotted format: the last batch number of writer slot `k` applied here; readers ignore it) | | `sum`/`count`/`max`/`latest` counters: hour, day, month and org-wide values are derived from it (`dynamodb/cells.rs`) by `counter_series` and `stored_counters` |
//! | counter | `ORG#<org>#CTR#<YYYY-MM>` | `<scope>#<meter>#<granularity>#<start>` | `v` (N), `w<k>` (N, as on day cells) | | `unique_count` counters, which cannot be derived from cells |
//! | counter guard | `ORG#<org>#GUARD#<YYYY-MM>` | `*` | `r#<meter>` per `sum`/`count` meter (N: room reserved under the 10^19 limit for its month total over all its series; builds before that kept `r#<meter>{dim=value}` per series, carried into `r#<meter>` when it is created), `ttl` (90 days after the month) | | one conditional `ADD` to every meter a batch needs room for, before its intent, holds each month total under `COUNTER_LIMIT`; events that do not fit are refused as `counter_overflow` (`dynamodb/guard.rs`). Releases before issue 16 kept one item per meter (sort key `<meter>`, attribute `r`): no longer written, read once when a meter's `r#<meter>` is created and carried over into it |
//! | unique marker | `ORG#<org>#UNQ#<YYYY-MM>` | `<counter sk>#V=<value>` or `#H=<sha256 hex>` | | | `unique_count`: one per (counter, value) |
//! | batch intent | `BATCH#<batch id>` | `INTENT` | `opsu` (B: the batch's counter writes as deflated JSON; `opsh`, `opsz` and `ops`, plain JSON, from older builds are still read) or, slotted, `opss` with `slot` and `seq` (N), or `aborted` (BOOL), `ttl` | | what a batch will write, for anyone to finish it; an abort fences a dead batch off |
//! | batch chunk marker | `BATCH#<batch id>` | `CHUNK#<n>` | `ttl` | | chunk `n` of the intent was applied (put in its transaction) |
//! | batch done | `BATCH#<batch id>` | `DONE` | `ttl` | | every chunk was applied: a resend of its events is a duplicate |
//! | writer slot | `SLOT#<k>` | `SLOT` | `owner` (a store's random id), `epoch` (N), `expires` (N, Unix ms), `seq` (N, the last batch number begun), `batch` (its id); no TTL, never deleted | | the slotted format (`with_writer_slots`): one lease per apply running at once; `dynamodb/slots.rs` |
//! | closed period | `PERIOD#<YYYY-MM>` | `PERIOD` | `closed_at` | | `is_period_closed`, `close_period` |
//! | usage report | `ORG#<org>#REPORT` | `<YYYY-MM>` | `org_id`, `period`, `body` (the report, JSON, at most 350 KB), `created_at` | | `save_report` (put under `attribute_not_exists`, then a consistent read: the first write wins); `get_report`; `list_reports` (query the partition) |
//! | sync step | `ORG#<org>#SYNC#<YYYY-MM>` | `STEP#<step>` | `result` (the provider id or value the step produced) | | the Stripe sync's ledger: `record_step` (put under `attribute_not_exists`, then a consistent read: the first write wins); `get_step`; `list_steps` (query the partition); `dynamodb/sync_ledger.rs` |
//! | plan-limit alert | `ORG#<org>#ALERT` | `<YYYY-MM>#<meter>#<threshold, 3 digits>` | `body` (the webhook JSON), `claimed_at`, `lease_until`, `delivered_at`? (N, Unix µs) | | the alert outbox: `claim_alert` (put under `attribute_not_exists`: the first claim wins); `pending_alerts` (query `sk >= <YYYY-MM>`, filter `attribute_not_exists(delivered_at)`); `renew_alert_lease` (`UpdateItem` conditioned on the lease seen and no delivery); `mark_alert_delivered` (`if_not_exists`); `dynamodb/alerts.rs` |
//! | shared allowance | `LIMIT#<scope>` (`RATE#<api key id>`, `PLAN#<org>#<meter>`) | `<window>` (start in Unix seconds, or `YYYY-MM`) | `t` (N: units taken by every ingest instance), `ttl` (the window's end + 1 day) | | ingest's rate and hard plan limits shared across instances: `take_allowance`, one conditional `UpdateItem` (`ADD t` if `t <= cap − want`) per block of units (`dynamodb/limiter.rs`) |
//! | catalogue version | `CATALOGUE` | `V#<version, 10 digits>` | `version` (N), `effective_from` (`YYYY-MM`), `body` (the catalogue JSON, at most 256 KiB), `digest`, `applied_by`, `applied_at` | | `put_catalogue_version` (put under `attribute_not_exists`: the first write wins); `get_catalogue_version`; `list_catalogue_versions` (query the partition); `dynamodb/catalogue.rs` |
//! | session | `USER#<user>` | `SESSION#<session id>` | `id`, `user_id`, `created_at`, `expires_at`, `ip`?, `user_agent`?, `revoked_at`?, `ttl` (its expiry) | | a session token's session (`sid`): `create_session` (put under `attribute_not_exists`), `get_session` (one `GetItem`), `list_sessions` (query `begins_with SESSION#`), `revoke_session` (`UpdateItem` keeping the first revocation); `dynamodb/security.rs` (the org's security policy is attributes of the org item, set by one conditional `UpdateItem` returning the old value) |
//! | price override | `ORG#<org>#OVERRIDE` | `<override id>` | `body` (the override as set, JSON), `end` (`YYYY-MM`, exclusive; absent: open-ended), `created_at` | | `put_override` (query for the per-org bound, then put under `attribute_not_exists`: the first write wins); `list_overrides` (query the partition); `end_override` (`UpdateItem` conditioned on no end or a later one); `dynamodb/overrides.rs` |
//! | meter series | `ORG#<org>#SERIES#<YYYY-MM>#<meter>` | `#COUNT`; `<series key>` (`meter{dim=value,...}`) | `n` (N, on `#COUNT`: the series registered) | | `register_series` (one `TransactWriteItems`: put the series under `attribute_not_exists`, `ADD n :one` on `#COUNT` under `n < :bound`); `list_series` (query the series keys, `begins_with <meter>{`); `dynamodb/series.rs` |
//! | time-weighted readings | `ORG#<org>#TWS#<YYYY-MM>` | `TWS#<meter>#<project>#<hour start>` | `s0000`…`s3599` (N, the reading of each second of the hour that has one) | | `time_weighted_sum` meters' hour cells: `put_readings` (one `UpdateItem` per second, `SET #s = :v` on `attribute_not_exists(#s) OR #s < :v`, outside the batch transactions); `month_readings` (query `begins_with TWS#<meter>#`); `dynamodb/readings.rs` |
//! | sync customer | `ORG#<org>` | `SYNCCUSTOMER` | `customer` (the Stripe customer id) | | `record_customer` (first write wins, as steps), `get_customer` |
//! | Kinesis checkpoint (reserved: written by [`KinesisQueue`](crate::kinesis::KinesisQueue)) | `CHECKPOINT#<stream>#<consumer>` | `SHARD#<shard id>` | `seq`, `seq_order`, `updated_at` | | where each consumer is in each shard |
//! | Kinesis dead letter (reserved: written by the Kinesis adapter) | `DEADLETTER#<stream>#<consumer>` | `<shard id>#<seq_order>` | reason, record data and position | | records that did not decode |
//!
//! Details:
//!
//! - `<shard>` is two digits, `00`–`15`: a stable hash (FNV-1a) of the event id mod 16, so a
//!   big org's ledger writes spread over 16 partitions instead of one hot one. The ledger is
//!   keyed by (org, event id) alone (not by month), because a resent event must find its
//!   first copy whatever timestamp it now carries.
//! - Ledger `ttl` is the write time plus [`LEDGER_TTL_DAYS`] (45) days, the retention every
//!   ledger has (`tally_core::period::LEDGER_RETENTION`, where why forgetting is safe is
//!   written; the SQLite ledger is pruned after the same time). The body is the event
//!   minus its org and id (the key holds them), the same JSON the SQLite ledger stores.
//! - Counter `<scope>` is `ALL` (org-wide) or the project id; `<granularity>` is `hour`,
//!   `day` or `month`; `<start>` (and a cell's `<day start>`) is Unix seconds, zero-padded
//!   to 12 digits so sort keys order by time. Cells and counters live in the partition of
//!   the month they start in, so a month of an org is one partition (what reconcile and
//!   billing read), and a series over a range is two `Query`s per month touched (the
//!   meter's cells, `begins_with`; its explicit counters, `BETWEEN`).
//! - Values are DynamoDB numbers (38 significant digits, so every `rust_decimal` value
//!   round-trips exactly); they are read back from their text, never through a float.
//!   `at` is the reading's time in Unix nanoseconds, so `latest` compares exactly,
//!   sub-second included.
//! - Markers keep values up to 128 bytes literally and longer ones as their SHA-256. They
//!   have no TTL: a counter's markers must live as long as late events for its month may
//!   arrive; pruning those of closed periods is a maintenance job for later.
//! - Reads of the table are strongly consistent (a second process sees a write at once).
//!   Reads of `gsi1` cannot be: `list_org_ids` may miss an org created a moment ago.
//!
//! # Applying a batch
//!
//! The ledger is what makes a count exactly once; counters are derived from what the
//! ledger accepted. Putting both in one `TransactWriteItems` is simple but costs twice:
//! transactional writes bill 2 units per KB, so the ledger alone would cost 2 WCU per event.
//! [`UsageStore::apply_batch`](tally_core::ports::UsageStore::apply_batch) instead claims
//! events with plain conditional puts and makes the counter writes that follow idempotent
//! and recoverable through a per-batch intent:
//!
//! 1. `dedupe_in_batch`: repeats of an (org, event id) inside the batch are `Duplicate`.
//!    The rest is applied in groups of at most 1,000 events (fewer when `unique_count`
//!    values would make the intent big), each under a fresh random batch id.
//! 2. **Claim.** Each event's ledger record is put (32 at a time) under
//!    `attribute_not_exists`, with `owner` = the batch id and `claimed` = now. A put that
//!    lands makes the event this batch's to count. A put that fails returns the existing
//!    record (`ReturnValuesOnConditionCheckFailure`), whose `owner` says who counts it.
//!    **Guard.** The owned events of `sum`/`count` meters are held under the 10^19 limit
//!    of their org's month total: room is reserved in a guard item per (org, meter, month)
//!    with a conditional `ADD`, mostly from an allowance reserved earlier
//!    ([`guard`](self::guard) says why that costs about one write per (org, meter, month)
//!    per process). Events that do not fit lose their claim (a `DeleteItem` conditioned on
//!    the owner) and are `Overflow`; if a guard or a release fails, the batch aborts itself
//!    and all its events are `Failed`, so nothing uncounted stays claimed.
//! 3. **Intent.** The owned events are folded into per-hour cells
//!    ([`tally_core::fold::fold_cells`]) and turned into ops: one `ADD` per day cell for
//!    `sum`/`count` (all its hours), one conditional `SET` per hour for `max`/`latest`, and
//!    marker puts plus an `ADD` per `unique_count` counter. The ops are sorted and put as
//!    the batch's intent under `attribute_not_exists`.
//! 4. **Apply.** First the `unique_count` markers: each is a plain conditional `PutItem`
//!    that records the batch owning it (`attribute_not_exists` or already this batch's);
//!    a marker another batch owns was counted by that batch
//!    ([`markers`](self::markers) says why ownership, which never moves, keeps this
//!    exactly once). Then the ops that must apply once (day cell `ADD`s, and per unique
//!    counter one `ADD` of the markers this batch owns) are packed first-fit into chunks of
//!    at most 99 actions with no item twice, a pure function of the intent; an org with 8
//!    or more such ops in the intent (a hot org) gets chunks of its own, so a
//!    `TransactionConflict` on its cells, which every concurrent batch writes, cancels only
//!    its own actions and never the tail's (the packing is stored with the intent, see
//!    `chunks::Packing`; intents of older releases, whose markers rode inside the chunks,
//!    are replayed their way). Each chunk is one `TransactWriteItems` with a chunk marker
//!    put under `attribute_not_exists`: a marker that exists means the chunk was applied,
//!    by this call or anyone else. `TransactionConflict`, throttling, 5xx and network
//!    failures are retried with jittered exponential backoff ([`RetryPolicy`]).
//! 5. **Raise.** `max`/`latest` ops are idempotent (a value that does not beat the stored
//!    one changes nothing, however often it is sent), so they need neither a transaction
//!    nor a marker: each is one plain conditional `UpdateItem`, 16 at a time. A failed
//!    condition means the stored value wins and returns it (`ALL_OLD`); the process keeps
//!    such values as lower bounds (stored values only rise) and does not send an op that
//!    cannot win. Inside the chunk transactions these ops cost 2 units each and a lost
//!    condition cancelled the whole chunk, billing all its actions: on workload W that
//!    was a third of all write units.
//! 6. **Done.** A `DONE` item ends the batch.
//!
//! Records another batch owns (a resend, a redelivery, a second aggregator) are settled
//! after this call's own intent is written, so two calls never wait on each other: if the
//! owner is done, the event is a `Duplicate`; if it wrote an intent but is not done, this
//! call finishes it (replaying its chunks, which the markers make safe) and the event is a
//! `Duplicate`; if it has neither, it is either still claiming (it is waited for, up to
//! 5 s) or dead: once its claim lease ([`DynamoStore::with_claim_lease`], 30 s) is over it
//! is fenced off by putting an aborted intent under `attribute_not_exists` (so it can never
//! write its own), and its records are taken over with a conditional `UpdateItem` of
//! `owner` under a second fresh batch id, which also writes the taker's `body` and `month`
//! (the aborted copy was never counted; the ledger must hold the one that is, even when an
//! id was resent with other contents). A batch whose intent put finds an abort reports
//! its events `Failed`; they come back and are taken over. Events not settled within the
//! call are `Failed` and not acknowledged, so they come back.
//!
//! Why it is exactly once: an event is counted only through the intent of the batch that
//! owns its ledger record; ownership moves only away from an aborted batch, which has no
//! intent and never will; an intent's chunks apply at most once each (their markers) and at
//! least once (anyone who meets an unfinished intent finishes it, and the events it covers
//! keep coming back until it is done). Nothing rests on `ClientRequestToken` (moto applies
//! a repeated token twice). A timeout after DynamoDB applied a put or a chunk is retried
//! like any failure and finds its own owner, or its own marker.
//!
//! **The slotted format (the default since issue 16; [`DynamoStore::with_writer_slots`],
//! `TALLY_DYNAMODB_WRITER_SLOTS`, 0 for the chunked format above):** the chunk transactions
//! are the largest write cost after the ledger (each `ADD` 2 units, plus a chunk marker per
//! chunk). They are replaced by plain conditional `UpdateItem`s (1 unit, in no transaction)
//! made idempotent by
//! *writer slots*: K slot items `SLOT#<k>` leased to stores, each numbering its batches
//! `seq` = 1, 2, ... and starting batch n + 1 only after batch n is done; the intent records
//! (k, n), and each cell's `ADD` also sets a flat high-water attribute `w<k>` = n under
//! `attribute_not_exists(w<k>) OR w<k> < n`. A cell then applies (k, n) at most once, and a
//! write of (k, n) that finds `w<k>` >= n lands where n is already applied (every op of n
//! lands before n + 1 starts). The items, the protocol, the full exactly-once argument, the
//! item-size bound and the tests it needs are in `docs/dynamodb-writer-slots.md`.
//!
//! ## What it costs
//!
//! On-demand DynamoDB bills a standard write 1 WCU per KB (rounded up) and a transactional
//! write 2 per KB; a failed condition still bills the write. Per batch of distinct events:
//!
//! - **Ledger:** 1 WCU per event (records stay under 1 KB unless an event carries big
//!   properties; validation bounds them at 4 KB).
//! - **Counters:** 2 WCU per distinct `sum`/`count` day cell of the batch
//!   (transactional), plus 2 per chunk marker per 99 ops; 1 WCU per `max`/`latest` hour
//!   sent (plain conditional write), none for one known not to win. Org-wide, day and month values are not written at all: they
//!   are derived at read time from the cells, so one event is one hour attribute of one
//!   item, and events of one (project, meter, day) in a batch share it.
//! - **Intent and done:** the intent is ~70 bytes of JSON per op, deflated to about a
//!   ninth, so under 0.01 WCU per event; `DONE` is 1 WCU per batch.
//! - A resend costs its failed ledger put (1 WCU) and, the first time a process sees its
//!   owner, one strongly consistent `GetItem` (1 RCU).
//!
//! So an event that shares nothing with its batch costs about 1 + 2 + 0.01 ≈ 3 WCU and
//! one whose cell is shared by many costs just over 1. On workload W the write-cost
//! benchmark (`bench/`, see `bench/RESULTS.md`) measures the mix: 1.97 WCU per record
//! (ledger 0.99, `sum` cells 0.87, `max` hours 0.09, chunk markers 0.01, intents and
//! `DONE` 0.01). The naive alternative,
//! one `UpdateItem ADD` per event for each of six counters, costs 6 WCU per event and is
//! neither exactly once nor safe to retry. `unique_count` is the exception: it keeps six
//! explicit counters and a marker per (counter, value), as distinct values cannot be
//! derived from hours. A marker is a plain conditional put (1 WCU, none for a value this
//! process knows is counted); the counters' `ADD`s ride in the chunks. With a `latest` and
//! a `unique_count` meter added to W (six meters, 4 aggregators, 1 % injected conflicts),
//! 4.17 WCU per record, where markers inside the transactions cost 5.84 (they were 2 units
//! each, and a value counted before cancelled its chunk: 28 cancelled transactions of 29).
//! In the slotted format (writer slots, the default) each day-cell and unique-counter `ADD`
//! is 1 unit and there are no chunk markers: on the same runs 1.771 WCU per record with four
//! meters (from 2.295) and 3.144 with six (from 4.169), no transaction cancelled.
//!
//! Reads: a project's series is one query per month over at most 31 cells (a few KB, so
//! 1–3 RCU); an org-wide series reads the meter's cells of every project in the month;
//! `stored_counters` reads the month partition once. `ledger_page` reads the 16 shards of
//! an org with a filter on `month`, so it reads (and pays for) the org's other month still
//! in the ledger as well, which suits a rare reconcile job.

mod alerts;
mod api_keys;
mod apply;
mod audit;
mod catalogue;
mod cells;
mod chunks;
mod codec;
mod guard;
mod invitations;
mod keys;
mod limiter;
mod markers;
mod members;
mod ops;
mod overrides;
mod raise;
mod readings;
mod reports;
mod security;
mod series;
mod slots;
mod slotted;
mod sync_ledger;
mod table;
mod tenants;
mod tx;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::delete_item::builders::DeleteItemFluentBuilder;
use aws_sdk_dynamodb::operation::get_item::builders::GetItemFluentBuilder;
use aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use tally_core::backoff::Backoff;
use tally_core::ids::OrgId;
use tally_core::ports::StoreError;
use tally_core::tenant::KeyHash;

use codec::{Item, describe_sdk_error, hash_of, is_retryable, sdk_error, unless_condition_failed};

pub use apply::LEDGER_TTL_DAYS;
pub use audit::{AUDIT_QUERY_PAGE_ITEMS, AUDIT_QUERY_PAGES};
/// The AWS SDK for DynamoDB this adapter is built on, re-exported so callers (the binary,
/// tests) build the [`Client`] with the same version without depending on it themselves.
pub use aws_sdk_dynamodb as sdk;
/// The table's key, index and TTL attribute names (what `template.yaml` must declare; its
/// agreement test reads them from here).
pub use keys::{GSI1, GSI1_PROJECTED, GSI1PK, GSI1SK, PK, SK, TTL};
pub use slots::{DEFAULT_WRITER_SLOTS, MAX_WRITER_SLOTS, Slot, SlotFault};
pub use table::create_table;
pub use usage::MAX_LEDGER_PAGE;

/// How [`DynamoStore`] retries what may succeed later: throttling, transaction conflicts,
/// 5xx answers and network failures. Conditional-check failures are not retried this way;
/// they are answers (see the [module doc](self)). It is the one retry policy of the
/// workspace, [`Backoff`], under the name this module has always used; the store's default
/// is [`DEFAULT_RETRY`] (not `Backoff::default()`, which suits slower remote APIs).
pub type RetryPolicy = Backoff;

/// The store's default [`RetryPolicy`]: 8 attempts of one transaction before its events are
/// reported `Failed` (or the call fails `Unavailable`), 25 ms doubling, at most 1 s apart,
/// jittered so that retrying writers spread out.
pub const DEFAULT_RETRY: RetryPolicy =
    Backoff::new(8, Duration::from_millis(25), Duration::from_secs(1));

/// Tenants, the event ledger and the counters in one DynamoDB table (see the
/// [module doc](self) for its items). Cheap to clone: clones share the SDK client.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: Arc<str>,
    retry: RetryPolicy,
    /// How long a ledger claim by a batch that wrote no intent yet is left alone before
    /// another batch may fence that batch off and take its events over.
    claim_lease: Duration,
    /// How long one call waits for another batch's intent before failing the events it
    /// shares with that batch (they are retried later).
    owner_wait: Duration,
    /// Batches known to be done, so resends of their events cost no read.
    done_batches: Arc<DoneBatches>,
    /// Lower bounds of stored `max`/`latest` hours, so a value that cannot win costs no
    /// write (see [`raise::KnownHours`]).
    known_hours: Arc<raise::KnownHours>,
    /// Owners of `unique_count` markers this process has learned ([`markers`]).
    marker_owners: Arc<markers::MarkerOwners>,
    /// Room reserved under the counter guards and not yet spent (see [`guard`]).
    allowances: Arc<guard::Allowances>,
    /// The writer slots of the slotted counter format, `None` while it is off (the
    /// default: batches are applied in chunk transactions).
    slots: Option<Arc<slots::Slots>>,
}

/// A bounded set of batch ids known to be done (forgotten wholesale when full: it only
/// saves reads).
#[derive(Debug, Default)]
struct DoneBatches(std::sync::Mutex<std::collections::HashSet<String>>);

impl DoneBatches {
    const CAPACITY: usize = 100_000;

    fn contains(&self, id: &str) -> bool {
        self.0.lock().map(|set| set.contains(id)).unwrap_or(false)
    }

    fn insert(&self, id: &str) {
        if let Ok(mut set) = self.0.lock() {
            if set.len() >= Self::CAPACITY {
                set.clear();
            }
            set.insert(id.to_owned());
        }
    }
}

/// Default of [`DynamoStore::with_claim_lease`].
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .field("retry", &self.retry)
            .field("claim_lease", &self.claim_lease)
            .finish_non_exhaustive()
    }
}

/// Why a `TransactWriteItems` did not go through.
#[derive(Debug)]
enum TxFailure {
    /// Cancelled: one (code, message) per action, in request order; code `None` for an
    /// action that was fine.
    Cancelled(Vec<(String, Option<String>)>),
    /// Throttled, 5xx or a network failure: retrying may help.
    Retryable(String),
    /// Anything else (validation, a missing table): retrying will not help.
    Fatal(String),
}

/// One `Query`'s parameters. The key condition names the keys `#pk` and `#sk`.
struct QuerySpec<'a> {
    /// `None` for the table (strongly consistent), or the index name.
    index: Option<&'a str>,
    key_condition: &'a str,
    filter: Option<&'a str>,
    /// Extra expression attribute names.
    names: &'a [(&'a str, &'a str)],
    values: Vec<(&'a str, AttributeValue)>,
}

// The SDK's fluent builders share no trait a generic function could take, so the same
// method is written once here for each item operation.
macro_rules! item_request_at {
    ($(#[$doc:meta])* $name:ident, $call:ident, $builder:ty) => {
        $(#[$doc])*
        fn $name(&self, pk: impl Into<String>, sk: impl Into<String>) -> $builder {
            self.client
                .$call()
                .table_name(&*self.table)
                .key(keys::PK, codec::s(pk))
                .key(keys::SK, codec::s(sk))
        }
    };
}

/// Requests on one item of the store's table, for the caller to finish and send: every
/// read and write of a single item starts from its table and key this way.
impl DynamoStore {
    item_request_at!(
        /// A `GetItem` of the item at (`pk`, `sk`).
        get_item_at,
        get_item,
        GetItemFluentBuilder
    );
    item_request_at!(
        /// An `UpdateItem` of the item at (`pk`, `sk`).
        update_item_at,
        update_item,
        UpdateItemFluentBuilder
    );
    item_request_at!(
        /// A `DeleteItem` of the item at (`pk`, `sk`).
        delete_item_at,
        delete_item,
        DeleteItemFluentBuilder
    );

    /// A `PutItem` of `record` into the store's table.
    fn put_item_of(&self, record: Item) -> PutItemFluentBuilder {
        self.client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(record))
    }
}

impl DynamoStore {
    /// A store on `table` (made by [`create_table`]) through `client`, with the default
    /// [`RetryPolicy`] ([`DEFAULT_RETRY`]).
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore {
            client,
            table: Arc::from(table.into()),
            retry: DEFAULT_RETRY,
            claim_lease: DEFAULT_CLAIM_LEASE,
            owner_wait: Duration::from_secs(5),
            done_batches: Arc::default(),
            known_hours: Arc::default(),
            marker_owners: Arc::default(),
            allowances: Arc::default(),
            slots: Some(Arc::new(slots::Slots::new(DEFAULT_WRITER_SLOTS))),
        }
    }

    /// The same store writing new batches in the slotted counter format with `count` writer
    /// slots (at most [`MAX_WRITER_SLOTS`]; [`new`](Self::new) starts with
    /// [`DEFAULT_WRITER_SLOTS`]; `TALLY_DYNAMODB_WRITER_SLOTS`): each day-cell and
    /// unique-counter `ADD` a plain conditional `UpdateItem` instead of a transactional
    /// write (see `docs/dynamodb-writer-slots.md`). `count` must exceed the number of
    /// batches applied at once by every aggregator of the table together. `0` is the
    /// chunked format ([`with_chunked_counters`](Self::with_chunked_counters)). Batches of
    /// either format are finished by a store of either setting.
    pub fn with_writer_slots(mut self, count: u32) -> Self {
        self.slots = (count > 0).then(|| Arc::new(slots::Slots::new(count)));
        self
    }

    /// The same store writing new batches in the chunked format of releases before the
    /// writer slots: day-cell and unique-counter `ADD`s in `TransactWriteItems` chunks
    /// guarded by chunk markers (2 write units an `ADD`; `TALLY_DYNAMODB_WRITER_SLOTS=0`).
    /// For a table still written by aggregators of an older release that must not meet
    /// slotted intents they cannot read, and for the tests of that format.
    pub fn with_chunked_counters(self) -> Self {
        self.with_writer_slots(0)
    }

    /// Plants a fault in the slotted format, for tests that show they catch it. Only on a
    /// store made by [`with_writer_slots`](Self::with_writer_slots).
    #[doc(hidden)]
    pub fn with_planted_slot_fault(mut self, fault: SlotFault) -> Self {
        if let Some(slots) = &self.slots {
            let mut planted = slots::Slots::new(slots.count);
            planted.fault = Some(fault);
            self.slots = Some(Arc::new(planted));
        }
        self
    }

    /// The same store with another claim lease: how long events claimed by a batch that has
    /// not written its intent are left to it before another aggregator fences it off and
    /// takes them over (see the [module doc](self)). Shorter recovers a crashed batch's
    /// events sooner; too short makes live batches lose races to resends and retry.
    pub fn with_claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = lease;
        self
    }

    /// The same store with another owner wait: how long one `apply_batch` call waits for a
    /// batch that claimed some of its events, inside that batch's claim lease, to write its
    /// intent before reporting those events `Failed` for a later delivery (default 5 s).
    /// Zero fails them at once (tests of the lease use it, so nothing waits on a clock).
    pub fn with_owner_wait(mut self, wait: Duration) -> Self {
        self.owner_wait = wait;
        self
    }

    /// The same store with another retry policy.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client (for tools and tests that inspect the table).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One item by key ([`Self::get`]) decoded by `decode`; `None` when there is none.
    async fn get_as<T>(
        &self,
        pk: String,
        sk: &str,
        decode: impl FnOnce(&Item) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        self.get(pk, sk).await?.as_ref().map(decode).transpose()
    }

    /// One item by key, strongly consistent, retried under [`RetryPolicy`] while retrying
    /// may help: `apply_batch` reads other batches' state with it, and one throttled read
    /// there would otherwise fail every event those batches share with this call.
    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let sent = codec::send_retrying(&self.retry, || {
            self.get_item_at(pk.clone(), sk.to_owned())
                .consistent_read(true)
                .send()
        })
        .await;
        sent.map(|out| out.item)
            .map_err(|e| sdk_error("GetItem", e))
    }

    /// The hash the org's id guard `sk` (of a key or an invitation) holds; `None` if the org
    /// has no such guard. One strongly consistent `GetItem`.
    pub(super) async fn guarded_hash(
        &self,
        org: &OrgId,
        sk: &str,
        what: &'static str,
    ) -> Result<Option<KeyHash>, StoreError> {
        let guard = self.get(keys::org_pk(org), sk).await?;
        guard.map(|g| hash_of(&g, what)).transpose()
    }

    /// Puts an item unless one with its key exists; `false` if one did.
    async fn put_if_absent(&self, record: Item) -> Result<bool, StoreError> {
        let put = self
            .put_item_of(record)
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", keys::PK)
            .send()
            .await;
        Ok(unless_condition_failed("PutItem", put)?.is_some())
    }

    /// One page of a query: its items and where the next page starts.
    async fn query_page(
        &self,
        q: &QuerySpec<'_>,
        limit: Option<i32>,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), StoreError> {
        let mut req = self
            .client
            .query()
            .table_name(&*self.table)
            .key_condition_expression(q.key_condition)
            .set_filter_expression(q.filter.map(str::to_owned))
            .set_limit(limit)
            .set_exclusive_start_key(start);
        let (pk, sk) = match q.index {
            Some(index) => {
                req = req.index_name(index);
                (keys::GSI1PK, keys::GSI1SK)
            }
            None => {
                req = req.consistent_read(true);
                (keys::PK, keys::SK)
            }
        };
        // DynamoDB refuses names the expressions do not use.
        req = req.expression_attribute_names("#pk", pk);
        if q.key_condition.contains("#sk") {
            req = req.expression_attribute_names("#sk", sk);
        }
        for (name, attr) in q.names {
            req = req.expression_attribute_names(*name, *attr);
        }
        for (name, value) in &q.values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        // Retried like `get`: a reader (usage series, reconcile, another batch's state) should
        // not fail on one throttle or 5xx.
        let mut attempt = 0;
        let out = loop {
            attempt += 1;
            match req.clone().send().await {
                Ok(out) => break out,
                Err(e) if attempt < self.retry.max_attempts && is_retryable(&e) => {
                    crate::aws::sleep_before_retry(&self.retry, attempt).await;
                }
                Err(e) => return Err(sdk_error("Query", e)),
            }
        };
        Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
    }

    /// Every item a query matches, page after page.
    async fn query_all(&self, q: &QuerySpec<'_>) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.query_page(q, None, start).await?;
            items.extend(page);
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Every item of partition `pk` of `index` (`None`: the table, strongly consistent), in
    /// sort-key order: the whole-partition listing most readers share.
    async fn query_partition(
        &self,
        index: Option<&str>,
        pk: impl Into<String>,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_all(&QuerySpec {
            index,
            key_condition: "#pk = :pk",
            filter: None,
            names: &[],
            values: vec![(":pk", AttributeValue::S(pk.into()))],
        })
        .await
    }

    /// Every item of the table's partition `pk` whose sort key begins with `prefix`, in
    /// sort-key order (strongly consistent): one kind of item out of a shared partition.
    async fn query_prefix(
        &self,
        pk: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_all(&QuerySpec {
            index: None,
            key_condition: "#pk = :pk AND begins_with(#sk, :prefix)",
            filter: None,
            names: &[],
            values: vec![
                (":pk", AttributeValue::S(pk.into())),
                (":prefix", AttributeValue::S(prefix.into())),
            ],
        })
        .await
    }

    /// One `TransactWriteItems` attempt (never with a `ClientRequestToken`: exactly-once
    /// rests on conditions, see the module doc).
    async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<(), TxFailure> {
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    // Labelled with the first reason that is not `None`: conflicts with
                    // another writer, a failed condition (a marker: the chunk was applied
                    // before), throttling. The `TransactionConflict` count is what the
                    // template's alarm watches.
                    let reason = c
                        .cancellation_reasons()
                        .iter()
                        .filter_map(|r| r.code())
                        .find(|code| *code != "None")
                        .unwrap_or("None")
                        .to_owned();
                    metrics::counter!("tally_dynamodb_transactions_cancelled_total", "reason" => reason)
                        .increment(1);
                    return Err(TxFailure::Cancelled(
                        c.cancellation_reasons()
                            .iter()
                            .map(|r| {
                                (
                                    r.code().unwrap_or("None").to_owned(),
                                    r.message().map(str::to_owned),
                                )
                            })
                            .collect(),
                    ));
                }
                let why = describe_sdk_error("TransactWriteItems", &e);
                Err(if is_retryable(&e) {
                    TxFailure::Retryable(why)
                } else {
                    TxFailure::Fatal(why)
                })
            }
        }
    }

    /// A tenant transaction: retried on throttling and conflicts like a chunk, and on a
    /// cancellation returns the reason codes (one per action) for the caller to interpret.
    async fn transact_tenant(
        &self,
        actions: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<String>>, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let why = match self.transact(actions.clone()).await {
                Ok(()) => return Ok(Ok(())),
                Err(TxFailure::Cancelled(reasons)) => {
                    let conditional = reasons.iter().any(|(c, _)| c == "ConditionalCheckFailed");
                    let retryable = reasons
                        .iter()
                        .find(|(c, _)| codec::RETRYABLE_REASONS.contains(&c.as_str()));
                    match (conditional, retryable) {
                        (true, _) => return Ok(Err(reasons.into_iter().map(|(c, _)| c).collect())),
                        (false, Some((code, _))) => format!("transaction cancelled: {code}"),
                        (false, None) => {
                            let codes: Vec<&str> =
                                reasons.iter().map(|(c, _)| c.as_str()).collect();
                            return Err(StoreError::Unavailable(format!(
                                "DynamoDB TransactWriteItems cancelled: {codes:?}"
                            )));
                        }
                    }
                }
                Err(TxFailure::Retryable(why)) => why,
                Err(TxFailure::Fatal(why)) => return Err(StoreError::Unavailable(why)),
            };
            if attempt >= self.retry.max_attempts {
                return Err(StoreError::Unavailable(format!(
                    "gave up after {attempt} attempts: {why}"
                )));
            }
            crate::aws::sleep_before_retry(&self.retry, attempt).await;
        }
    }
}
