//! Cross-crate and end-to-end tests for Tally live in `tests/tests/`; this library holds
//! what they share.
//!
//! [`conformance`] holds the backend-agnostic suites every storage and queue adapter must
//! pass: each test is a function taking a factory of backend handles, and the macros
//! [`storage_conformance!`] and [`queue_conformance!`] turn a factory into one `#[tokio::test]`
//! per suite test. `tests/tests/sqlite_conformance.rs` runs them against the embedded
//! backend; the AWS adapters plug their own factories into the same macros, with the
//! emulator helpers in [`aws`] (and [`cognito`] for the emulator's user pools). [`fault_proxy`] stands between the SDK and the emulator and
//! answers DynamoDB calls the way DynamoDB does under load (throttles, conflicts, cancelled
//! transactions, 500s, lost answers), kills or pauses a client at a chosen request (crashes
//! inside a protocol), and fails some entries of SQS and Kinesis batch sends. [`stripe_double`] is the stateful Stripe double the invoice
//! sync's tests run against, and [`serve_local`] serves a test's own endpoint (a webhook
//! receiver). [`oracle`] is the plain-map counting oracle the crash and chaos tests judge stored
//! counters by. [`catalogues`] holds stored catalogue versions for the tests of processes
//! that pick a new version up while they run.

pub mod aws;
pub mod catalogues;
pub mod cognito;
pub mod conformance;
pub mod fault_proxy;
pub mod faults;
pub mod oracle;
pub mod stripe_double;
pub mod stripe_sync;

/// Serves `app` in the background on a free loopback port: its address. The server lives
/// as long as the test's runtime.
pub async fn serve_local(app: axum::Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
