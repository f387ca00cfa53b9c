//! `tally serve` as a real process, for the few tests that need one (signals, SIGKILL; see
//! `tests/process.rs`). It listens on `127.0.0.1:0` and the test reads the bound address
//! from the server's "listening on" log line, so no port is picked before the process
//! binds it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Endpoint, Env, bin};

/// A running `tally serve` process; dropping it kills it.
pub struct Server {
    /// The process.
    pub child: Child,
    /// The address it listens on.
    pub addr: String,
}

/// What the server logs once it listens, followed by its address.
const LISTENING: &str = "listening on http://";

impl Server {
    /// Starts `tally serve` on a free port and waits until it listens.
    pub fn start(env: &Env) -> Server {
        Server::start_with(env, &[])
    }

    /// [`Server::start`] with `vars` added to the process's environment (e.g. `TALLY_NOW`).
    pub fn start_with(env: &Env, vars: &[(&str, &str)]) -> Server {
        let mut child = Command::new(bin())
            .envs(vars.iter().copied())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(env.flags())
            .arg("--data")
            .arg(env.data())
            // Warnings, plus the serve module's own lines (the address among them).
            .env("TALLY_LOG", "warn,tally::serve=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        // Reads the log for the address, then passes every line on to the test's stderr
        // (and keeps the pipe drained, so the server never blocks on a full pipe).
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(LISTENING).nth(1)
                    && let Some(tx) = tx.take()
                {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = tx.send(addr);
                }
                eprintln!("[tally serve] {line}");
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    panic!("tally serve exited with {status} before listening");
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tally serve exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "tally serve did not listen within 30 s"
            );
        };
        Server { child, addr }
    }

    /// SIGKILL: no chance to drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`TERM`, `INT`), then waits for the process to exit.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
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
                "tally serve did not stop within 60 s of SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM")
    }
}

impl Endpoint for Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
