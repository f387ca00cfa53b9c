//! The one-shot administration commands: `org`, `project`, `key`, `token` and `reconcile`.
//!
//! The `org`, `project` and `key` command lines are declared here; creation and `org
//! set-plan` run here, the rest (list, show, update, delete, rename, archive, revoke,
//! rotate) in [`crate::inventory`] over the management API's own functions. `org create`,
//! `org set-plan`, `project create` and `key create` write an audit record each (actor
//! `cli`, through [`crate::manage::record`]), like the management API's routes do. `org set-plan` is the only way
//! an org's plan changes: the management API refuses it to every tenant role. `token
//! create` and `tally serve` share the JWT configuration of
//! [`crate::settings::jwt_config`].

use std::fmt;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tally_core::ports::{PlanMove, StoreError};
use tally_core::tenant::{
    ApiKey, KeyMode, KeyScope, Org, Project, ProjectChanges, User, api_key_secret, check_email,
    check_name, check_slug,
};
use tally_core::{ApiKeyId, Month, OrgId, PlanId, ProjectId, UserId};

use crate::manage::random;
use crate::output::print;
use crate::settings::{Common, jwt_config, parse_duration};
use crate::{backend, inventory};

/// `tally org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization and its owner user.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Unique handle: lowercase letters, digits and '-'.
        #[arg(long)]
        slug: String,
        /// The owner's email; the user is created if it does not exist yet.
        #[arg(long)]
        owner_email: String,
        /// free, starter, pro or enterprise.
        #[arg(long, default_value = "free")]
        plan: String,
    },
    /// Move an organization to another plan, from now on. Only the operator can: a plan
    /// decides the bill, so the management API refuses plan changes from every tenant role.
    /// The change is kept in the org's plan history, and month close prices each month on
    /// the highest plan in force during it (an upgrade counts at once, a downgrade from the
    /// next month). Audited as `org.update` by `cli`. A plan whose project limit the org
    /// already exceeds is refused; the limit is the one of the catalogue version in force
    /// now (`tally catalogue versions`), the `--catalogue` file only when none is.
    SetPlan {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// free, starter, pro or enterprise.
        #[arg(long)]
        plan: String,
    },
    /// An org's negotiated prices (price overrides): set, list, end. Operator only.
    #[command(subcommand)]
    Override(crate::overrides::OverrideCommand),
    /// List the organizations as a table (or `{"orgs": [...]}` with --json), by id.
    List {
        /// Include deleted organizations.
        #[arg(long)]
        all: bool,
    },
    /// Show an organization (deleted ones too): its owner, how many members, projects and
    /// keys it has, and its plan history.
    Show {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// Make a member the organization's owner, as `POST /v1/orgs/{org_id}/transfer` does:
    /// the owner until now becomes an admin. Audited as `org.transfer`.
    Transfer {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The member who becomes the owner (usr_…).
        #[arg(long)]
        to: String,
    },
    /// Rename an organization, as `PATCH /v1/orgs/{org_id}` does; audited as `org.update`.
    /// Its plan is changed by `tally org set-plan` instead.
    Update {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The new display name.
        #[arg(long)]
        name: String,
    },
    /// Delete an organization, as `DELETE /v1/orgs/{org_id}` does: it is soft-deleted, every
    /// API key is revoked, and its usage and reports are kept for billing. Audited as
    /// `org.delete`.
    Delete {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// Confirm the deletion; without it nothing is changed.
        #[arg(long)]
        yes: bool,
    },
}

/// `tally project …`
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project in an organization.
    Create {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Handle, unique in the org.
        #[arg(long)]
        slug: String,
    },
    /// List an organization's projects, archived ones included.
    List {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// Show one project of an organization.
    Show {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The project's id (prj_…).
        #[arg(long)]
        project: String,
    },
    /// Rename a project (its slug stays); audited as `project.update`.
    Rename {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The project's id (prj_…).
        #[arg(long)]
        project: String,
        /// The new display name.
        #[arg(long)]
        name: String,
    },
    /// Archive a project: ingest refuses its events once its cache entry expires, and it no
    /// longer counts against the plan's project limit. Audited as `project.archive`.
    Archive {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The project's id (prj_…).
        #[arg(long)]
        project: String,
    },
}

/// `tally key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key; its secret is printed once and never stored.
    Create {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: events:write, usage:read.
        #[arg(long, default_value = "events:write,usage:read", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Make a test key (tk_test_…) instead of a live one.
        #[arg(long)]
        test: bool,
        /// Expiry as RFC 3339 (never by default).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List an organization's API keys with their state; never a secret or a hash.
    List {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
    },
    /// Revoke an API key; ingest refuses it once its key cache entry expires. Audited as
    /// `key.revoke`.
    Revoke {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The key's id (key_…).
        #[arg(long)]
        key: String,
    },
    /// Rotate an API key: a new key with the same name and scopes is made and its secret
    /// printed once, while the old key keeps working for the overlap. Audited as
    /// `key.rotate`.
    Rotate {
        /// The organization's id (org_…).
        #[arg(long)]
        org: String,
        /// The key's id (key_…).
        #[arg(long)]
        key: String,
        /// How long the old key keeps working (e.g. 1h, 2d), at most 30 days; a day by
        /// default.
        #[arg(long, value_parser = parse_duration)]
        overlap: Option<std::time::Duration>,
    },
}

/// `tally token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a JWT for a user (local use and tests); prints `{"token": "…"}`.
    Create {
        /// The user's id (usr_…).
        #[arg(long)]
        user: String,
        /// How long the token is valid (e.g. 90s, 30m, 1h), at most a day.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: std::time::Duration,
        /// Authentication methods to put in the token's `amr` claim, comma-separated (e.g.
        /// `pwd,otp`): an org that requires MFA accepts a token showing `mfa`, `otp`,
        /// `hwk` or `swk`. At most 16 values of at most 32 characters.
        #[arg(long, value_delimiter = ',')]
        amr: Vec<String>,
    },
}

#[derive(Serialize)]
struct TokenOut {
    token: String,
    user_id: UserId,
    expires_at: DateTime<Utc>,
}

/// Runs a `token` command.
pub async fn token(common: &Common, cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { user, ttl, amr } = cmd;
    let user = UserId::parse(&user).context("--user")?;
    if amr.len() > tally_api::jwt::MAX_AMR_VALUES
        || amr
            .iter()
            .any(|m| m.is_empty() || m.len() > tally_api::jwt::MAX_AMR_LEN)
    {
        bail!(
            "--amr: at most {} values of 1 to {} characters",
            tally_api::jwt::MAX_AMR_VALUES,
            tally_api::jwt::MAX_AMR_LEN
        );
    }
    let ttl = chrono::Duration::from_std(ttl).context("--ttl is too long")?;
    let jwt = jwt_config(common)?;
    let store = backend::open_store(common).await?;
    if store.tenants.get_user(&user).await?.is_none() {
        bail!("no user {user}");
    }
    let now = Utc::now();
    let token = jwt
        .mint_with(
            &user,
            now,
            ttl,
            &tally_api::jwt::TokenFacts { amr, session: None },
        )
        .context("cannot mint a token (token create needs an HS256 secret)")?;
    print(
        common.json,
        &TokenOut {
            token,
            user_id: user,
            expires_at: now + ttl,
        },
        |t| t.token.clone(),
    )
}

/// Finishes the CLI (actor `cli`) creating `what` (`org`, `project`, `key`) `id` in `org`:
/// the store's answer `created` (a refusal ends the command, naming `what`), then the audit
/// record, with `after` as it shows the new thing. A failure to write the record is
/// reported on stderr but does not undo the command.
async fn audit_created(
    store: &backend::Stores,
    org: &OrgId,
    what: &str,
    id: &impl fmt::Display,
    after: &impl Serialize,
    created: Result<(), StoreError>,
) -> anyhow::Result<()> {
    created.with_context(|| format!("cannot create the {what}"))?;
    crate::manage::audit_record(
        store,
        org,
        &format!("{what}.create"),
        format!("{what}:{id}"),
        None,
        serde_json::to_value(after).ok(),
    )
    .await;
    Ok(())
}

/// `tally reconcile …`
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The month to check, YYYY-MM.
    #[arg(long)]
    period: String,
    /// Only this organization (all by default).
    #[arg(long)]
    org: Option<String>,
}

#[derive(Serialize)]
struct OrgOut {
    #[serde(flatten)]
    org: Org,
    owner_email: String,
}

/// Runs an `org` command.
pub async fn org(common: &Common, cmd: OrgCommand) -> anyhow::Result<()> {
    let (name, slug, owner_email, plan) = match cmd {
        OrgCommand::Create {
            name,
            slug,
            owner_email,
            plan,
        } => (name, slug, owner_email, plan),
        OrgCommand::SetPlan { org, plan } => return set_plan(common, &org, &plan).await,
        OrgCommand::Override(cmd) => return crate::overrides::run(common, cmd).await,
        OrgCommand::List { all } => return inventory::org_list(common, all).await,
        OrgCommand::Show { org } => return inventory::org_show(common, &org).await,
        OrgCommand::Update { org, name } => {
            return inventory::org_update(common, &org, &name).await;
        }
        OrgCommand::Delete { org, yes } => return inventory::org_delete(common, &org, yes).await,
        OrgCommand::Transfer { org, to } => {
            return inventory::org_transfer(common, &org, &to).await;
        }
    };
    check_name("name", &name)?;
    check_slug("slug", &slug)?;
    check_email("owner_email", &owner_email)?;
    let plan = PlanId::parse(&plan).with_context(|| {
        format!("--plan must be free, starter, pro or enterprise, got {plan:?}")
    })?;
    let store = backend::open_store(common).await?;
    // The process clock (`TALLY_NOW` shifts it, as for `org set-plan`): an org is billed
    // only for the months it existed in, so its creation time is billing's business.
    let now = crate::clock::from_env()?.now();
    let owner = store
        .tenants
        .ensure_user(&User {
            id: UserId::from_random(random()),
            email: owner_email.to_lowercase(),
            created_at: now,
        })
        .await?;
    let org = Org {
        id: OrgId::from_random(random()),
        name,
        slug,
        plan,
        owner_id: owner.id.clone(),
        created_at: now,
        deleted_at: None,
    };
    let created = store.tenants.create_org(&org).await;
    audit_created(&store, &org.id, "org", &org.id, &org, created).await?;
    print(
        common.json,
        &OrgOut {
            org,
            owner_email: owner.email,
        },
        |o| {
            format!(
                "created org {} ({}) on plan {}, owner {} ({})",
                o.org.id, o.org.slug, o.org.plan, o.owner_email, o.org.owner_id
            )
        },
    )
}

/// `tally org set-plan`: the operator's plan change (see [`OrgCommand::SetPlan`]).
async fn set_plan(common: &Common, org: &str, plan: &str) -> anyhow::Result<()> {
    let org_id = OrgId::parse(org).context("--org")?;
    let plan = PlanId::parse(plan).with_context(|| {
        format!("--plan must be free, starter, pro or enterprise, got {plan:?}")
    })?;
    let store = backend::open_store(common).await?;
    // The change takes effect now (by the process clock, `TALLY_NOW`): the plan's limits
    // are those of the catalogue version in force then (what `catalogue apply` published),
    // not of the `--catalogue` file, which only stands in when no version is in force.
    let at = crate::clock::from_env()?.now();
    let in_force = crate::catalogue::for_period(common, &store, Month::of(at)).await?;
    let before = store
        .tenants
        .get_org(&org_id)
        .await?
        .filter(|o| o.deleted_at.is_none())
        .with_context(|| format!("no organization {org_id}"))?;
    if let Some(limit) = in_force
        .catalogue
        .core_plans()
        .get(&plan)
        .and_then(|p| p.limits.projects)
    {
        let active = store
            .tenants
            .list_projects(&org_id)
            .await?
            .iter()
            .filter(|p| p.archived_at.is_none())
            .count();
        if active > usize::try_from(limit).unwrap_or(usize::MAX) {
            bail!(
                "the {plan} plan allows {limit} projects (catalogue {}); {org_id} has {active} \
                 active ones (archive some first)",
                crate::catalogue::describe_version(in_force.version)
            );
        }
    }
    let after = store
        .tenants
        .change_plan(&PlanMove::new(&org_id, plan, at))
        .await?
        .with_context(|| format!("no organization {org_id}"))?;
    crate::manage::audit_record(
        &store,
        &org_id,
        "org.update",
        format!("org:{org_id}"),
        serde_json::to_value(&before).ok(),
        serde_json::to_value(&after).ok(),
    )
    .await;
    print(common.json, &after, |o| {
        format!("org {} moved from plan {} to {}", o.id, before.plan, o.plan)
    })
}

/// Runs a `project` command.
pub async fn project(common: &Common, cmd: ProjectCommand) -> anyhow::Result<()> {
    let (org, name, slug) = match cmd {
        ProjectCommand::Create { org, name, slug } => (org, name, slug),
        ProjectCommand::List { org } => return inventory::project_list(common, &org).await,
        ProjectCommand::Show { org, project } => {
            return inventory::project_show(common, &org, &project).await;
        }
        ProjectCommand::Rename { org, project, name } => {
            let changes = ProjectChanges {
                name: Some(name),
                archive_at: None,
            };
            return inventory::project_change(common, &org, &project, "project.update", changes)
                .await;
        }
        ProjectCommand::Archive { org, project } => {
            let changes = ProjectChanges {
                name: None,
                archive_at: Some(crate::manage::now()?),
            };
            return inventory::project_change(common, &org, &project, "project.archive", changes)
                .await;
        }
    };
    let org_id = OrgId::parse(&org).context("--org")?;
    check_name("name", &name)?;
    check_slug("slug", &slug)?;
    let store = backend::open_store(common).await?;
    // The operator creates projects as the API does, within the org's plan as the
    // catalogue version in force now has it: an org that is gone or at its plan's project
    // limit is refused with the API's error.
    let catalogue = crate::catalogue::in_force(common, &store).await?.catalogue;
    let org = crate::manage::live_org(&store, &org_id).await?;
    let limit = catalogue.core().plan(org.plan).projects;
    tally_api::projects::check_project_room(&*store.tenants, &org, limit)
        .await
        .map_err(crate::manage::refusal)?;
    let project = Project {
        id: ProjectId::from_random(random()),
        org_id,
        name,
        slug,
        created_at: Utc::now(),
        archived_at: None,
    };
    let created = store.tenants.create_project(&project).await;
    let org = &project.org_id;
    audit_created(&store, org, "project", &project.id, &project, created).await?;
    print(common.json, &project, |p| {
        format!("created project {} ({}) in {}", p.id, p.slug, p.org_id)
    })
}

#[derive(Serialize)]
struct KeyOut {
    id: ApiKeyId,
    org_id: OrgId,
    name: String,
    /// The secret, shown this once.
    key: String,
    scopes: Vec<KeyScope>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// Runs a `key` command.
pub async fn key(common: &Common, cmd: KeyCommand) -> anyhow::Result<()> {
    let (org, name, scopes, test, expires_at) = match cmd {
        KeyCommand::Create {
            org,
            name,
            scopes,
            test,
            expires_at,
        } => (org, name, scopes, test, expires_at),
        KeyCommand::List { org } => return inventory::key_list(common, &org).await,
        KeyCommand::Revoke { org, key } => return inventory::key_revoke(common, &org, &key).await,
        KeyCommand::Rotate { org, key, overlap } => {
            return inventory::key_rotate(common, &org, &key, overlap).await;
        }
    };
    let org_id = OrgId::parse(&org).context("--org")?;
    check_name("name", &name)?;
    let mut parsed = Vec::new();
    for s in scopes.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let scope = KeyScope::parse(s).with_context(|| {
            format!("--scopes: unknown scope {s:?}; known scopes are events:write, usage:read")
        })?;
        if !parsed.contains(&scope) {
            parsed.push(scope);
        }
    }
    if parsed.is_empty() {
        bail!("--scopes must name at least one scope (events:write, usage:read)");
    }
    let expires_at = expires_at
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .with_context(|| format!("--expires-at must be RFC 3339, got {s:?}"))
        })
        .transpose()?;
    tally_core::tenant::rules::check_new_key_expiry(expires_at, Utc::now())
        .map_err(|m| anyhow::anyhow!("--expires-at: {m}"))?;
    let secret = api_key_secret(if test { KeyMode::Test } else { KeyMode::Live }, random());
    let key = ApiKey {
        name,
        scopes: parsed,
        expires_at,
        ..ApiKey::new(ApiKeyId::from_random(random()), org_id, &secret, Utc::now())
    };
    let store = backend::open_store(common).await?;
    let created = store.tenants.create_api_key(&key).await;
    let view = tally_api::keys::KeyView::from(&key);
    audit_created(&store, &key.org_id, "key", &key.id, &view, created).await?;
    let out = KeyOut {
        id: key.id,
        org_id: key.org_id,
        name: key.name,
        key: secret,
        scopes: key.scopes,
        created_at: key.created_at,
        expires_at: key.expires_at,
    };
    print(common.json, &out, |k| {
        format!(
            "created key {} for {}; secret (shown once): {}",
            k.id, k.org_id, k.key
        )
    })
}

#[derive(Serialize)]
struct ReconcileOut {
    period: Month,
    orgs_checked: usize,
    drift: Vec<tally_aggregator::Drift>,
}

/// Runs `reconcile`; returns whether drift was found.
pub async fn reconcile(common: &Common, args: ReconcileArgs) -> anyhow::Result<bool> {
    let month = Month::parse(&args.period).context("--period")?;
    let now = crate::clock::from_env()?.now();
    let store = backend::open_store(common).await?;
    let orgs = match args.org {
        Some(o) => vec![OrgId::parse(&o).context("--org")?],
        None => store.tenants.list_org_ids().await?,
    };
    let mut drift = Vec::new();
    let bar = crate::output::orgs_bar(
        common.json,
        format!("reconciling {month}"),
        orgs.len() as u64,
    );
    for org in &orgs {
        // Each org's test-mode usage is kept under its test twin: checked the same way.
        for org in [org.clone(), org.test_twin()] {
            drift.extend(
                tally_aggregator::reconcile(store.usage.as_ref(), &org, month, now)
                    .await
                    .with_context(|| format!("cannot reconcile {org}"))?,
            );
        }
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let found = !drift.is_empty();
    let out = ReconcileOut {
        period: month,
        orgs_checked: orgs.len(),
        drift,
    };
    print(common.json, &out, |o| {
        if o.drift.is_empty() {
            format!("{}: {} org(s) checked, no drift", o.period, o.orgs_checked)
        } else {
            let mut lines = vec![format!(
                "{}: {} org(s) checked, {} counter(s) drifted:",
                o.period,
                o.orgs_checked,
                o.drift.len()
            )];
            for d in &o.drift {
                let c = &d.counter;
                lines.push(format!(
                    "  {} {} {} {} {}: expected {}, stored {}",
                    c.org,
                    c.project.as_ref().map_or("(all projects)", |p| p.as_str()),
                    c.meter,
                    c.granularity,
                    c.start.to_rfc3339(),
                    d.expected,
                    d.stored.map_or("nothing".to_string(), |v| v.to_string())
                ));
            }
            lines.join("\n")
        }
    })?;
    Ok(found)
}
