//! Users, orgs, memberships and projects in memory: [`UserStore`], [`OrgStore`],
//! [`MemberStore`] and [`ProjectStore`], with the semantics of `sqlite/tenants.rs` and
//! `sqlite/members.rs` and the owner guards of [`rules`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tally_core::ids::{OrgId, ProjectId, UserId};
use tally_core::ports::{
    MemberStore, NewProjectMember, OrgMember, OrgStore, OwnerTransfer, PlanMove, ProjectMember,
    ProjectStore, ProjectUpdate, RoleChange, StoreError, UserStore,
};
use tally_core::tenant::{Membership, Org, OrgChanges, PlanChange, Project, Role, User, rules};

use super::{MemoryStore, Op, State, insert_new, list_of_org};

impl State {
    /// Adds a membership: `Conflict` for an owner or a member already, `NotFound` for a
    /// missing (or deleted) org or a missing user. Writes nothing unless it succeeds.
    pub(super) fn insert_member(&mut self, m: &Membership) -> Result<(), StoreError> {
        rules::check_new_member(m.role)?;
        self.require_live_org(&m.org_id)?;
        if !self.users.contains_key(&m.user_id) {
            return Err(StoreError::NotFound {
                what: format!("user {}", m.user_id),
            });
        }
        let key = (m.org_id.clone(), m.user_id.clone());
        insert_new(&mut self.members, key, m.clone(), || {
            format!("membership of user {} in org {}", m.user_id, m.org_id)
        })
    }

    /// A membership about to change or go, refusing the owner's; `None` if the user is not
    /// a member.
    fn member_for_change(
        &self,
        org: &OrgId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let Some(m) = self.members.get(&(org.clone(), user.clone())) else {
            return Ok(None);
        };
        rules::check_member_change(m.role)?;
        Ok(Some(m.clone()))
    }

    fn role_in(&self, org: &OrgId, user: &UserId) -> Option<Role> {
        self.members
            .get(&(org.clone(), user.clone()))
            .map(|m| m.role)
    }

    fn set_role(&mut self, org: &OrgId, user: &UserId, role: Role) {
        if let Some(m) = self.members.get_mut(&(org.clone(), user.clone())) {
            m.role = role;
        }
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn ensure_user(&self, candidate: &User) -> Result<User, StoreError> {
        let email = candidate.email.to_lowercase();
        let mut st = self.lock();
        if let Some(user) = st.emails.get(&email).and_then(|id| st.users.get(id)) {
            return Ok(user.clone());
        }
        if st.users.contains_key(&candidate.id) {
            return Err(StoreError::Conflict {
                what: format!("user id {:?}", candidate.id.as_str()),
            });
        }
        let user = User {
            email: email.clone(),
            ..candidate.clone()
        };
        st.emails.insert(email, user.id.clone());
        st.users.insert(user.id.clone(), user.clone());
        Ok(user)
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<User>, StoreError> {
        Ok(self.lock().users.get(id).cloned())
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let st = self.lock();
        Ok(st
            .emails
            .get(&email.to_lowercase())
            .and_then(|id| st.users.get(id))
            .cloned())
    }

    async fn list_user_memberships(&self, user: &UserId) -> Result<Vec<Membership>, StoreError> {
        // By org id: the map is ordered by (org, user).
        Ok(self
            .lock()
            .members
            .values()
            .filter(|m| m.user_id == *user)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl OrgStore for MemoryStore {
    async fn create_org(&self, org: &Org) -> Result<(), StoreError> {
        let mut st = self.lock();
        if !st.users.contains_key(&org.owner_id) {
            return Err(StoreError::NotFound {
                what: format!("user {}", org.owner_id),
            });
        }
        if st.slugs.contains_key(&org.slug) {
            return Err(StoreError::Conflict {
                what: format!("org slug {:?}", org.slug),
            });
        }
        if st.orgs.contains_key(&org.id) {
            return Err(StoreError::Conflict {
                what: format!("org {}", org.id),
            });
        }
        st.slugs.insert(org.slug.clone(), org.id.clone());
        st.orgs.insert(org.id.clone(), org.clone());
        st.members.insert(
            (org.id.clone(), org.owner_id.clone()),
            Membership {
                org_id: org.id.clone(),
                user_id: org.owner_id.clone(),
                role: Role::Owner,
                created_at: org.created_at,
            },
        );
        Ok(())
    }

    async fn get_org(&self, id: &OrgId) -> Result<Option<Org>, StoreError> {
        let mut st = self.lock();
        st.observe(Op::GetOrg)?;
        Ok(st.orgs.get(id).cloned())
    }

    async fn list_org_ids(&self) -> Result<Vec<OrgId>, StoreError> {
        Ok(self.lock().orgs.keys().cloned().collect())
    }

    async fn update_org(
        &self,
        id: &OrgId,
        changes: &OrgChanges,
    ) -> Result<Option<Org>, StoreError> {
        let mut st = self.lock();
        let Some(org) = st.orgs.get_mut(id) else {
            return Ok(None);
        };
        if let Some(name) = &changes.name {
            org.name = name.clone();
        }
        Ok(Some(org.clone()))
    }

    async fn change_plan(&self, m: &PlanMove<'_>) -> Result<Option<Org>, StoreError> {
        let (id, plan, at) = (m.org, m.plan, m.at);
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(org) = st.orgs.get_mut(id).filter(|o| o.deleted_at.is_none()) else {
            return Ok(None);
        };
        if org.plan == plan {
            return Ok(Some(org.clone()));
        }
        let changes = st.plan_changes.entry(id.clone()).or_default();
        if let Some(last) = changes.last()
            && last.at > at
        {
            return Err(StoreError::Conflict {
                what: format!("the plan of org {id} (it changed later, at {})", last.at),
            });
        }
        changes.push(PlanChange {
            org_id: id.clone(),
            from: org.plan,
            to: plan,
            at,
        });
        org.plan = plan;
        Ok(Some(org.clone()))
    }

    async fn plan_history(&self, id: &OrgId) -> Result<Vec<PlanChange>, StoreError> {
        let mut changes = self
            .lock()
            .plan_changes
            .get(id)
            .cloned()
            .unwrap_or_default();
        changes.sort_by_key(|c| c.at);
        Ok(changes)
    }

    async fn delete_org(&self, id: &OrgId, at: DateTime<Utc>) -> Result<Option<Org>, StoreError> {
        let mut st = self.lock();
        let Some(org) = st.orgs.get_mut(id) else {
            return Ok(None);
        };
        org.deleted_at = Some(org.deleted_at.unwrap_or(at));
        let org = org.clone();
        for ((key_org, _), key) in st.keys.iter_mut() {
            if key_org == id {
                key.revoked_at = Some(rules::revocation_time(key.revoked_at, at));
            }
        }
        Ok(Some(org))
    }
}

#[async_trait]
impl MemberStore for MemoryStore {
    async fn get_role(&self, org: &OrgId, user: &UserId) -> Result<Option<Role>, StoreError> {
        let st = self.lock();
        Ok(if st.org_is_live(org) {
            st.role_in(org, user)
        } else {
            None
        })
    }

    async fn list_members(&self, org: &OrgId) -> Result<Vec<Membership>, StoreError> {
        Ok(list_of_org(&self.lock().members, org, |m| m.created_at))
    }

    async fn add_member(&self, member: &Membership) -> Result<(), StoreError> {
        self.lock().insert_member(member)
    }

    async fn set_member_role(&self, c: &RoleChange<'_>) -> Result<Option<Membership>, StoreError> {
        let (org, user, role) = (c.org, c.user, c.role);
        rules::check_new_member(role)?;
        let mut st = self.lock();
        let Some(before) = st.member_for_change(org, user)? else {
            return Ok(None);
        };
        st.set_role(org, user, role);
        Ok(Some(before))
    }

    async fn remove_member(&self, m: &OrgMember<'_>) -> Result<Option<Membership>, StoreError> {
        let (org, user) = (m.org, m.user);
        let mut st = self.lock();
        let Some(before) = st.member_for_change(org, user)? else {
            return Ok(None);
        };
        st.members.remove(&(org.clone(), user.clone()));
        Ok(Some(before))
    }

    async fn transfer_ownership(&self, t: &OwnerTransfer<'_>) -> Result<Option<Org>, StoreError> {
        let (org, from, to) = (t.org, t.from, t.to);
        let mut st = self.lock();
        let Some(owner) = st.orgs.get(org).map(|o| o.owner_id.clone()) else {
            return Ok(None);
        };
        let (from_role, to_role) = (st.role_in(org, from), st.role_in(org, to));
        if rules::check_transfer(org, &owner, from, from_role, to, to_role)? {
            st.set_role(org, from, Role::Admin);
            st.set_role(org, to, Role::Owner);
            if let Some(o) = st.orgs.get_mut(org) {
                o.owner_id = to.clone();
            }
        }
        Ok(st.orgs.get(org).cloned())
    }

    async fn add_project_member(&self, m: &NewProjectMember<'_>) -> Result<(), StoreError> {
        let (org, project, user, at) = (m.org, m.project, m.user, m.at);
        let mut st = self.lock();
        if !st.projects.contains_key(&(org.clone(), project.clone())) {
            return Err(StoreError::NotFound {
                what: format!("project {project} in org {org}"),
            });
        }
        if st.role_in(org, user).is_none() {
            return Err(StoreError::NotFound {
                what: format!("member {user} of org {org}"),
            });
        }
        let key = (org.clone(), user.clone(), project.clone());
        insert_new(&mut st.project_members, key, at, || {
            format!("user {user} on project {project}")
        })
    }

    async fn remove_project_member(&self, m: &ProjectMember<'_>) -> Result<bool, StoreError> {
        let (org, project, user) = (m.org, m.project, m.user);
        Ok(self
            .lock()
            .project_members
            .remove(&(org.clone(), user.clone(), project.clone()))
            .is_some())
    }

    async fn list_user_projects(&self, m: &OrgMember<'_>) -> Result<Vec<ProjectId>, StoreError> {
        let (org, user) = (m.org, m.user);
        // In project id order: the map is ordered by (org, user, project).
        Ok(self
            .lock()
            .project_members
            .keys()
            .filter(|(o, u, _)| o == org && u == user)
            .map(|(_, _, p)| p.clone())
            .collect())
    }
}

#[async_trait]
impl ProjectStore for MemoryStore {
    async fn create_project(&self, project: &Project) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.require_live_org(&project.org_id)?;
        let slug_taken = st
            .projects
            .values()
            .any(|p| p.org_id == project.org_id && p.slug == project.slug);
        if slug_taken {
            return Err(StoreError::Conflict {
                what: format!("project slug {:?} in org {}", project.slug, project.org_id),
            });
        }
        let key = (project.org_id.clone(), project.id.clone());
        insert_new(&mut st.projects, key, project.clone(), || {
            format!("project {}", project.id)
        })
    }

    async fn get_project(
        &self,
        org: &OrgId,
        id: &ProjectId,
    ) -> Result<Option<Project>, StoreError> {
        let mut st = self.lock();
        st.observe(Op::GetProject)?;
        Ok(st.projects.get(&(org.clone(), id.clone())).cloned())
    }

    async fn list_projects(&self, org: &OrgId) -> Result<Vec<Project>, StoreError> {
        Ok(list_of_org(&self.lock().projects, org, |p| p.created_at))
    }

    async fn update_project(&self, u: &ProjectUpdate<'_>) -> Result<Option<Project>, StoreError> {
        let (org, id, changes) = (u.org, u.id, u.changes);
        let mut st = self.lock();
        let Some(p) = st.projects.get_mut(&(org.clone(), id.clone())) else {
            return Ok(None);
        };
        if let Some(name) = &changes.name {
            p.name = name.clone();
        }
        p.archived_at = p.archived_at.or(changes.archive_at);
        Ok(Some(p.clone()))
    }
}
