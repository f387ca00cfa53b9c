//! What the benchmarks that start `tally serve` share: workload tenants written straight
//! into its SQLite file before it starts, and stopping it the way an operator would.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tally_core::ids::{ApiKeyId, OrgId, ProjectId, UserId};
use tally_core::plan::PlanId;
use tally_core::ports::{ApiKeyStore, OrgStore, ProjectStore, UserStore};
use tally_core::tenant::{ApiKey, KeyScope, Org, Project, User};
use tally_store::SqliteStore;

use crate::workload::Tenants;

/// Project `j` of a benchmark org: `Project {j}`, slug `p{j}`, created at `now`.
pub fn bench_project(org: &OrgId, id: ProjectId, j: usize, now: DateTime<Utc>) -> Project {
    Project {
        id,
        org_id: org.clone(),
        name: format!("Project {j}"),
        slug: format!("p{j}"),
        created_at: now,
        archived_at: None,
    }
}

/// Creates `t`'s orgs (on the `enterprise` plan: no hard limits), their projects and one
/// live key per org directly in the SQLite store at `db`; returns the keys' secrets, in
/// org order.
pub async fn create_tenants(db: &Path, t: &Tenants) -> anyhow::Result<Vec<String>> {
    let store = SqliteStore::open(db)?;
    let now = Utc::now();
    let user = User {
        id: UserId::from_random(rand::random()),
        email: "bench@example.com".into(),
        created_at: now,
    };
    let user = store.ensure_user(&user).await?;
    let mut secrets = Vec::with_capacity(t.orgs.len());
    for (i, org) in t.orgs.iter().enumerate() {
        store
            .create_org(&Org {
                id: org.clone(),
                name: format!("Bench org {i}"),
                slug: format!("bench-{i}"),
                plan: PlanId::Enterprise,
                owner_id: user.id.clone(),
                created_at: now,
                deleted_at: None,
            })
            .await?;
        for (j, p) in t.projects[i].iter().enumerate() {
            store
                .create_project(&bench_project(org, p.clone(), j, now))
                .await?;
        }
        // A live key: a test key's events are held to the free plan's hard limits, which
        // the workload's storage_bytes readings exceed at once.
        let secret = format!("tk_live_{:064x}", rand::random::<u128>());
        let id = ApiKeyId::from_random(rand::random());
        store
            .create_api_key(&ApiKey {
                name: "bench".into(),
                scopes: vec![KeyScope::EventsWrite, KeyScope::UsageRead],
                ..ApiKey::new(id, org.clone(), &secret, now)
            })
            .await?;
        secrets.push(secret);
    }
    Ok(secrets)
}

/// SIGTERM through `kill`, so the process drains; after `grace`, `Child::kill` (SIGKILL to
/// this PID only).
pub fn stop(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
