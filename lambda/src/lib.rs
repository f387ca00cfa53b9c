//! Tally on AWS Lambda: what the five entry-point binaries (`src/bin/`) share, kept in a
//! library so the binaries stay a few lines each and tests reach the same code.
//!
//! - [`env`]: the environment variables each function reads, as one list per binary
//!   ([`env::INGEST`], [`env::API`], [`env::AGGREGATOR`], [`env::BILLING`]); the
//!   template-code agreement test checks every one is set on its function in
//!   `template.yaml`, and [`env::Env`] refuses to read a name its list does not hold.
//! - [`telemetry`]: JSON logs through `tracing` (with the Lambda request id and the
//!   request span's `request_id` and `org`) and the `metrics` recorder
//!   (`metrics_cloudwatch_embedded`) that prints CloudWatch embedded-metric-format lines
//!   after each invocation.
//! - [`catalogue`]: the catalogue the ingest and API functions serve by, the stored version
//!   in force, read at cold start and re-read on an interval and at each month turn.
//! - [`backends`]: the DynamoDB store and the SQS or Kinesis queue, from the environment.
//! - [`consumers`]: the aggregator's SQS and Kinesis consumers over Lambda's event shapes
//!   (partial batch responses, poison records to a dead-letter sink).
//! - [`sink`]: the aggregator's dead-letter sink, an SQS queue.
//! - [`handlers`]: the aggregator and billing invocations as plain async functions (tested
//!   without a Lambda runtime), and [`handlers::http`], which serves an axum router on
//!   `lambda_http`.
//! - [`secrets`]: the JWT, Stripe and alert secrets, read from Secrets Manager by the ARNs
//!   in the environment and refreshed on an interval, so a rotation needs no redeploy.
//! - [`fanout`]: the billing function's queue of per-org items (the SQS adapter, the
//!   consumer under a time budget) and how the billing binary tells a queue batch, the
//!   alert and catch-up jobs and the monthly schedule apart.
//! - [`alerts`]: the billing function's `{"job": "alerts"}` run, plan-limit alerts sent as
//!   signed webhooks.
//!
//! The Stripe webhook receiver (`src/bin/stripe_webhook.rs`) serves
//! `tally_billing::webhook::router`; the billing run's Stripe sync is
//! [`handlers::bill_and_sync`].

pub mod alerts;
pub mod backends;
pub mod catalogue;
pub mod consumers;
pub mod env;
pub mod fanout;
pub mod handlers;
pub mod secrets;
pub mod sink;
pub mod telemetry;
