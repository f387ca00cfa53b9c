//! `tally org list|show|update|transfer|delete`, `tally project list|show|rename|archive`
//! and `tally key list|revoke|rotate`: the operator's view and changes of what a tenant
//! owns.
//!
//! Listings print aligned tables, or the API's answer shapes with `--json` (`{"keys":
//! [...]}` as `GET /v1/orgs/{org_id}/keys` answers, and so on), so a script can move between
//! the two. Changes go through the management API's own functions (see [`crate::manage`])
//! and are audited with actor `cli`.

use anyhow::bail;
use serde::Serialize;
use tally_api::keys::{KeyView, KeysResponse, RotatedKey};
use tally_api::mgmt::MgmtError;
use tally_api::projects::ProjectsResponse;
use tally_core::ports::StoreError;
use tally_core::tenant::{Org, OrgChanges, PlanChange, Project, ProjectChanges, check_name};

use crate::manage::{
    Change, audited, live_org, now, open, open_any_org, open_live_org, org_id, refusal,
};
use crate::output::{print, table, table_of, when};
use crate::settings::Common;

/// What `tally org list --json` prints.
#[derive(Serialize)]
struct OrgsOut {
    orgs: Vec<Org>,
}

/// `tally org list`: every org by id; deleted ones only with `all`.
pub async fn org_list(common: &Common, all: bool) -> anyhow::Result<()> {
    let store = open(common).await?;
    let mut orgs = Vec::new();
    for id in store.tenants.list_org_ids().await? {
        if let Some(org) = store.tenants.get_org(&id).await?
            && (all || org.deleted_at.is_none())
        {
            orgs.push(org);
        }
    }
    orgs.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    print(common.json, &OrgsOut { orgs }, |o| {
        table_of(
            &["ID", "SLUG", "NAME", "PLAN", "OWNER", "CREATED", "DELETED"],
            &o.orgs,
            "no organizations",
            org_row,
        )
    })
}

/// A row of `tally org list`.
fn org_row(org: &Org) -> Vec<String> {
    vec![
        org.id.to_string(),
        org.slug.clone(),
        org.name.clone(),
        org.plan.to_string(),
        org.owner_id.to_string(),
        when(Some(org.created_at)),
        when(org.deleted_at),
    ]
}

/// What `tally org show` prints.
#[derive(Serialize)]
struct OrgShow {
    #[serde(flatten)]
    org: Org,
    owner_email: Option<String>,
    members: usize,
    projects: usize,
    active_projects: usize,
    keys: usize,
    active_keys: usize,
    plan_history: Vec<PlanChange>,
}

/// `tally org show`: the org (deleted or not), its owner's email, how many members,
/// projects and keys it has, and its plan history.
pub async fn org_show(common: &Common, org: &str) -> anyhow::Result<()> {
    let (store, id, org) = open_any_org(common, org).await?;
    let owner_email = store
        .tenants
        .get_user(&org.owner_id)
        .await?
        .map(|u| u.email);
    let members = store.tenants.list_members(&id).await?.len();
    let projects = store.tenants.list_projects(&id).await?;
    let keys = store.tenants.list_api_keys(&id).await?;
    let now = now()?;
    let show = OrgShow {
        owner_email,
        members,
        projects: projects.len(),
        active_projects: projects.iter().filter(|p| p.archived_at.is_none()).count(),
        keys: keys.len(),
        active_keys: keys
            .iter()
            .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|e| e > now))
            .count(),
        plan_history: store.tenants.plan_history(&id).await?,
        org,
    };
    print(common.json, &show, |s| {
        let mut lines = vec![
            format!("id:         {}", s.org.id),
            format!("name:       {}", s.org.name),
            format!("slug:       {}", s.org.slug),
            format!("plan:       {}", s.org.plan),
            format!(
                "owner:      {} ({})",
                s.org.owner_id,
                s.owner_email.as_deref().unwrap_or("unknown user")
            ),
            format!("created:    {}", when(Some(s.org.created_at))),
            format!("deleted:    {}", when(s.org.deleted_at)),
            format!("members:    {}", s.members),
            format!("projects:   {} ({} active)", s.projects, s.active_projects),
            format!("keys:       {} ({} active)", s.keys, s.active_keys),
        ];
        if !s.plan_history.is_empty() {
            lines.push("plan history:".to_owned());
            let history = table_of(&["AT", "FROM", "TO"], &s.plan_history, "", |c| {
                vec![when(Some(c.at)), c.from.to_string(), c.to.to_string()]
            });
            for l in history.lines() {
                lines.push(format!("  {l}"));
            }
        }
        lines.join("\n")
    })
}

/// What a store's change of the org `before` came to, for [`audited`]: the change, or the
/// API's `404` when the org was gone by then.
fn org_changed(
    before: &Org,
    changed: Result<Option<Org>, StoreError>,
) -> Result<Change<Org>, MgmtError> {
    match changed {
        Ok(Some(after)) => Ok(Change::updated(before, after)),
        Ok(None) => Err(tally_api::auth::org_not_found().into()),
        Err(e) => Err(e.into()),
    }
}

/// `tally org update`: renames the org, audited as `org.update`. The plan is not changed
/// here but by `tally org set-plan`, which checks the new plan's limits.
pub async fn org_update(common: &Common, org: &str, name: &str) -> anyhow::Result<()> {
    let id = org_id(org)?;
    check_name("name", name).map_err(|e| anyhow::anyhow!("--{}: {}", e.field, e.message))?;
    let store = open(common).await?;
    let before = live_org(&store, &id).await?;
    let changes = OrgChanges {
        name: Some(name.to_owned()),
    };
    let result = org_changed(&before, store.tenants.update_org(&id, &changes).await);
    let after = audited(&store, &id, "org.update", format!("org:{id}"), result).await?;
    print(common.json, &after, |o| {
        format!(
            "org {} renamed from {:?} to {:?}",
            o.id, before.name, o.name
        )
    })
}

/// `tally org delete`: soft-deletes the org and revokes every key, as `DELETE
/// /v1/orgs/{org_id}` does; audited as `org.delete`.
pub async fn org_delete(common: &Common, org: &str, yes: bool) -> anyhow::Result<()> {
    let id = org_id(org)?;
    if !yes {
        bail!(
            "deleting {id} revokes all its API keys and closes it to everyone; \
             pass --yes to confirm"
        );
    }
    let store = open(common).await?;
    let before = live_org(&store, &id).await?;
    let result = org_changed(&before, store.tenants.delete_org(&id, now()?).await);
    let after = audited(&store, &id, "org.delete", format!("org:{id}"), result).await?;
    print(common.json, &after, |o| {
        format!(
            "deleted org {} ({}); its API keys are revoked, its usage and reports are kept",
            o.id, o.slug
        )
    })
}

/// `tally org transfer`: makes the member `to` the owner in place of the current owner, who
/// becomes an admin; audited as `org.transfer`.
pub async fn org_transfer(common: &Common, org: &str, to: &str) -> anyhow::Result<()> {
    let (store, id, current) = open_live_org(common, org).await?;
    let result = tally_api::orgs::transfer(&*store.tenants, &id, &current.owner_id, to)
        .await
        .map(|(before, after)| Change::updated(&before, after));
    let after = audited(&store, &id, "org.transfer", format!("org:{id}"), result).await?;
    print(common.json, &after, |o| {
        format!(
            "{} is now the owner of {}; {} is an admin",
            o.owner_id, o.id, current.owner_id
        )
    })
}

/// `tally project list`: the org's projects, archived ones included.
pub async fn project_list(common: &Common, org: &str) -> anyhow::Result<()> {
    let (store, id, _) = open_any_org(common, org).await?;
    let projects = store.tenants.list_projects(&id).await?;
    print(common.json, &ProjectsResponse { projects }, |r| {
        table_of(
            &["ID", "SLUG", "NAME", "CREATED", "ARCHIVED"],
            &r.projects,
            "no projects",
            project_row,
        )
    })
}

fn project_row(p: &Project) -> Vec<String> {
    vec![
        p.id.to_string(),
        p.slug.clone(),
        p.name.clone(),
        when(Some(p.created_at)),
        when(p.archived_at),
    ]
}

/// `tally project show`: one project of the org.
pub async fn project_show(common: &Common, org: &str, project: &str) -> anyhow::Result<()> {
    let (store, id, _) = open_any_org(common, org).await?;
    // A malformed id is answered like an unknown one, as the API does.
    let found = match tally_core::ProjectId::parse(project) {
        Ok(p) => store.tenants.get_project(&id, &p).await?,
        Err(_) => None,
    };
    let project = found.ok_or_else(|| refusal(tally_api::projects::project_not_found().into()))?;
    print_project(common, &project)
}

fn print_project(common: &Common, project: &Project) -> anyhow::Result<()> {
    print(common.json, project, |p| {
        table(
            &["ID", "SLUG", "NAME", "CREATED", "ARCHIVED"],
            &[project_row(p)],
            "",
        )
    })
}

/// `tally project rename` and `tally project archive`: `changes` through the API's own
/// project change, audited as `action`.
pub async fn project_change(
    common: &Common,
    org: &str,
    project: &str,
    action: &str,
    changes: ProjectChanges,
) -> anyhow::Result<()> {
    let id = org_id(org)?;
    if let Some(name) = &changes.name {
        check_name("name", name).map_err(|e| anyhow::anyhow!("--{}: {}", e.field, e.message))?;
    }
    let store = open(common).await?;
    live_org(&store, &id).await?;
    let result = tally_api::projects::change_project(&*store.tenants, &id, project, &changes)
        .await
        .map(|(before, after)| Change::updated(&before, after));
    let after = audited(&store, &id, action, format!("project:{project}"), result).await?;
    print_project(common, &after)
}

/// `tally key list`: the org's keys (never a secret or a hash), with their state.
pub async fn key_list(common: &Common, org: &str) -> anyhow::Result<()> {
    let (store, id, _) = open_any_org(common, org).await?;
    let keys = store.tenants.list_api_keys(&id).await?;
    let now = now()?;
    let answer = KeysResponse {
        keys: keys.iter().map(KeyView::from).collect(),
    };
    print(common.json, &answer, |r| {
        table_of(
            &[
                "ID",
                "NAME",
                "PREFIX",
                "SCOPES",
                "STATE",
                "CREATED",
                "EXPIRES",
                "LAST USED",
            ],
            &r.keys,
            "no API keys",
            |k| key_row(k, now),
        )
    })
}

/// A row of `tally key list`, the key's state as of `now`.
fn key_row(k: &KeyView, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    vec![
        k.id.to_string(),
        k.name.clone(),
        k.display_prefix.clone(),
        k.scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        key_state(k, now).to_owned(),
        when(Some(k.created_at)),
        when(k.expires_at),
        when(k.last_used_at),
    ]
}

/// `active`, `revoked` or `expired`, as of `now`.
fn key_state(k: &KeyView, now: chrono::DateTime<chrono::Utc>) -> &'static str {
    if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

/// `tally key revoke`: revokes the key, audited as `key.revoke`.
pub async fn key_revoke(common: &Common, org: &str, key: &str) -> anyhow::Result<()> {
    let (store, id, _) = open_live_org(common, org).await?;
    let result = tally_api::keys::revoke(&*store.tenants, &id, key, now()?)
        .await
        .map(|(before, after)| Change::updated(&before, after));
    let after = audited(&store, &id, "key.revoke", format!("key:{key}"), result).await?;
    print(common.json, &after, |k| {
        format!(
            "revoked key {} ({}) of {}; ingest refuses it once its key cache entry expires",
            k.id, k.name, k.org_id
        )
    })
}

/// `tally key rotate`: a new key with the same name and scopes, the old one expiring after
/// `overlap`; audited as `key.rotate`, never with the secret.
pub async fn key_rotate(
    common: &Common,
    org: &str,
    key: &str,
    overlap: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let id = org_id(org)?;
    // Past u32 the API's own bound (30 days) refuses it, naming the field.
    let overlap = overlap.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    let store = open(common).await?;
    live_org(&store, &id).await?;
    let result = tally_api::keys::rotate(&*store.tenants, &id, key, overlap, now()?)
        .await
        .map(|(old, rotated)| Change {
            before: serde_json::to_value(&old).ok(),
            after: Some(tally_api::keys::json_pair(&rotated.previous, &rotated.new)),
            answer: rotated,
        });
    let rotated: RotatedKey =
        audited(&store, &id, "key.rotate", format!("key:{key}"), result).await?;
    print(common.json, &rotated, |r| {
        format!(
            "rotated key {} to {}; the old key works until {}; new secret (shown once): {}",
            r.previous.id,
            r.new.id,
            when(r.previous.expires_at),
            r.key
        )
    })
}
