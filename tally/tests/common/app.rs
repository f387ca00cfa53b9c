//! The whole app in process (zero-to-production's `spawn_app()`): [`spawn_app`] binds
//! `127.0.0.1:0`, opens the backends of an [`Env`] and runs [`tally::serve::run`] (the code
//! `tally serve` runs) in a task on the test's runtime. The listener is bound before the
//! app starts, so there is no port to race for and no readiness to poll: connections wait
//! in the backlog until the server accepts them.
//!
//! Settings the binary reads from the environment (`TALLY_NOW`, Stripe, alerts) are set on
//! the [`App`] instead ([`spawn_app_with`]), because tests in one process cannot each have
//! their own environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tally::serve::{App, Settings};
use tally_core::ports::Clock;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Endpoint, Env};

/// A running in-process app. [`TestApp::stop`] shuts it down and waits for the drain;
/// dropping it only asks it to stop (the runtime ends its tasks with the test), so a test
/// that goes on using the data directory stops it first.
pub struct TestApp {
    /// Where it listens.
    pub address: SocketAddr,
    /// `http://ADDRESS`.
    pub base_url: String,
    /// The backends it runs on; CLI commands run against the same data directory.
    pub env: Env,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// The data directory it serves.
    pub fn data(&self) -> PathBuf {
        self.env.data()
    }

    /// Stops taking requests, finishes the ones in flight, drains the queue and waits for
    /// [`tally::serve::run`] to return, with what it returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Endpoint for TestApp {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The app on a fresh embedded data directory with `tally serve`'s default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_in(&Env::embedded()).await
}

/// The app on `env` with `tally serve`'s default settings.
pub async fn spawn_app_in(env: &Env) -> TestApp {
    spawn_app_with(env, |_| {}).await
}

/// The app on `env`, after `configure` changed what the flags and the environment would
/// (e.g. `app.settings.billing_scheduler = false`, `app.clock = clock_at(..)`).
pub async fn spawn_app_with(env: &Env, configure: impl FnOnce(&mut App)) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral loopback port");
    let address = listener.local_addr().expect("the listener's address");
    let mut app = App::open(&env.common(), Settings::default())
        .await
        .expect("open the app's backends");
    configure(&mut app);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(tally::serve::run(app, listener, async move {
        // A dropped sender (the handle dropped) stops the app too.
        let _ = rx.await;
    }));
    TestApp {
        address,
        base_url: format!("http://{address}"),
        env: env.clone(),
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// The app without the billing scheduler, its clock starting at `at`: what `tally serve
/// --no-billing-scheduler` gives with `TALLY_NOW=at`.
pub async fn serve_at(env: &Env, at: &str) -> TestApp {
    spawn_app_with(env, |app| {
        app.settings.billing_scheduler = false;
        app.clock = clock_at(at);
    })
    .await
}

/// A clock that reads `at` (RFC 3339) now and runs on: what `TALLY_NOW=at` gives a process.
pub fn clock_at(at: &str) -> Arc<dyn Clock> {
    let start: DateTime<Utc> = at.parse().expect("an RFC 3339 instant");
    tally::clock::starting_at(start)
}

/// A GET with `bearer`: the status and the JSON answer.
pub async fn get_json(
    client: &reqwest::Client,
    url: String,
    bearer: &str,
) -> (u16, serde_json::Value) {
    let r = client.get(url).bearer_auth(bearer).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A GET of `path` on `server` with `bearer` whose answer must be a `200`: the JSON answer.
pub async fn get_ok(
    client: &reqwest::Client,
    server: &impl Endpoint,
    path: &str,
    bearer: &str,
) -> serde_json::Value {
    let (status, body) = get_json(client, server.url(path), bearer).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits (up to 30 s) until `ready` holds for the answer of GET `path` on `app`, returning
/// it: how a test sees a catalogue refresh land or the aggregator count its events.
pub async fn wait_for_answer(
    client: &reqwest::Client,
    app: &TestApp,
    path: &str,
    bearer: &str,
    what: &str,
    ready: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = get_json(client, app.url(path), bearer).await;
        if ready(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
