//! Helpers for black-box tests of the `tally` binary: run CLI commands, start and stop
//! `tally serve` on a free loopback port, and talk to it over HTTP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tally")
}

/// Runs `tally ARGS --data DATA --json` and returns the parsed stdout, panicking with the
/// stderr if it failed.
pub fn cli(data: &Path, args: &[&str]) -> Value {
    let out = cli_raw(data, args);
    assert!(
        out.status.success(),
        "tally {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tally {args:?} printed non-JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs `tally ARGS --data DATA --json` and returns the raw output.
pub fn cli_raw(data: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .env("TALLY_LOG", "warn")
        .output()
        .expect("run tally")
}

/// An org with two projects and an API key, made through the CLI.
pub struct Tenant {
    pub org: String,
    pub projects: Vec<String>,
    pub key: String,
}

pub fn make_tenant(data: &Path, slug: &str) -> Tenant {
    let org = cli(
        data,
        &[
            "org",
            "create",
            "--name",
            "Acme",
            "--slug",
            slug,
            "--owner-email",
            "ada@example.com",
            "--plan",
            "pro",
        ],
    );
    let org = org["id"].as_str().expect("org id").to_owned();
    let projects = (0..2)
        .map(|i| {
            let p = cli(
                data,
                &[
                    "project",
                    "create",
                    "--org",
                    &org,
                    "--name",
                    &format!("P{i}"),
                    "--slug",
                    &format!("p{i}"),
                ],
            );
            p["id"].as_str().expect("project id").to_owned()
        })
        .collect();
    let key = cli(data, &["key", "create", "--org", &org, "--name", "ci"]);
    let key = key["key"].as_str().expect("key secret").to_owned();
    Tenant { org, projects, key }
}

/// A running `tally serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub data: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Server {
    /// Starts `tally serve` on a free port and waits until it answers.
    pub async fn start(data: &Path) -> Server {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin())
            .args(["serve", "--addr", &addr, "--data"])
            .arg(data)
            .env("TALLY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tally serve");
        let mut server = Server {
            child,
            addr,
            data: data.to_owned(),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tally serve exited early with {status}");
            }
            if let Ok(r) = client.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tally serve did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no chance to drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tally serve did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /v1/usage and return the series as (start, value) strings.
pub async fn usage(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    query: &str,
) -> Vec<(String, String)> {
    let r = client
        .get(server.url(&format!("/v1/usage?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .expect("usage request");
    let status = r.status();
    let body: Value = r.json().await.expect("usage json");
    assert_eq!(status, 200, "usage {query}: {body}");
    body["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|p| {
            (
                p["start"].as_str().expect("start").to_owned(),
                p["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}
