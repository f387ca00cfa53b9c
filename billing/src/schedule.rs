//! The billing schedulers' plan: which months to close, oldest first, so that no month is
//! left open forever.
//!
//! `tally serve`'s scheduler and the billing Lambda used to close only the month before the
//! current one: a month whose month-end the scheduler missed (the process was down, the
//! Lambda failed its retries) stayed open for good. Both now ask [`months_to_bill`] which
//! months to run [`close_month`](crate::close_month) on, and run them in the order given,
//! each fully (close, reports, and whatever the scheduler does after a close, such as the
//! Stripe sync) before the next, stopping at the first that fails.
//!
//! # The policy
//!
//! - **Which months are due.** Every month that has ended and whose grace period has passed
//!   ([`crate::close::previous_month_if_due`] gives the newest), back to the month the
//!   earliest org was created in ([`earliest_org_month`]): before it there was nobody to
//!   bill, so a fresh install does not walk back through empty months.
//! - **The cap.** At most [`MAX_CATCH_UP_MONTHS`] months are looked at, the newest. A month
//!   older than that is never closed by a scheduler: if the month just beyond the cap is
//!   still open, the plan says so ([`MonthPlan::left_open_beyond_cap`]) and the scheduler
//!   logs it at error level on every run; an operator bills it (and any older one) with
//!   `tally bill --period YYYY-MM`. Two years of catch-up bounds what one run may cost.
//! - **The order.** Every month still open, oldest first, each preceded by the month before
//!   it when that one is closed: it is run again first (which changes nothing when its
//!   reports are stored), because month close closes a period before it bills its orgs, so
//!   a month whose run failed for some org is closed but not fully billed, and the month
//!   after it must not be closed while it is so. When no month is open, the plan is the
//!   newest due month alone, run again so a retried run finishes the orgs an earlier run
//!   failed (what the schedulers always did). A month already closed is never closed again.
//!
//! [`plan`] is the pure rule over a [`Window`] and the months' closed state;
//! [`months_to_bill`] reads that state from the [`UsageStore`] (at most
//! [`MAX_CATCH_UP_MONTHS`] + 1 reads).

use chrono::{DateTime, Duration, Utc};
use tally_core::Month;
use tally_core::ports::{OrgStore, StoreError, UsageStore};

use crate::close::previous_month_if_due;

/// How many months, counting back from the newest due one, a scheduler run looks at. Older
/// open months are logged and left to `tally bill --period`.
pub const MAX_CATCH_UP_MONTHS: u32 = 24;

/// The months a scheduler run looks at: `first..=last`, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The oldest month looked at: the earliest org's month, or the cap's.
    pub first: Month,
    /// The newest month due: the previous month once its grace period has passed.
    pub last: Month,
    /// The month just before `first` when the cap cut the window short (there were orgs
    /// then): whether it is still open is worth a loud log line.
    pub beyond_cap: Option<Month>,
}

impl Window {
    /// The window at `now`: from `earliest` (the month the earliest org was created in) to
    /// the previous month once `grace` has passed since it ended, at most
    /// [`MAX_CATCH_UP_MONTHS`] months. `None` when nothing is due: the previous month is
    /// inside its grace period, or every org was created after it.
    pub fn at(now: DateTime<Utc>, grace: Duration, earliest: Month) -> Option<Window> {
        let last = previous_month_if_due(now, grace)?;
        if earliest > last {
            return None;
        }
        let mut capped = last;
        for _ in 1..MAX_CATCH_UP_MONTHS {
            capped = capped.prev();
        }
        Some(if earliest >= capped {
            Window {
                first: earliest,
                last,
                beyond_cap: None,
            }
        } else {
            Window {
                first: capped,
                last,
                beyond_cap: Some(capped.prev()),
            }
        })
    }

    /// The months whose closed state [`plan`] asks for, oldest first.
    pub fn months(&self) -> impl Iterator<Item = Month> {
        let last = self.last;
        let first = self.beyond_cap.unwrap_or(self.first);
        std::iter::successors(Some(first), move |m| (*m < last).then(|| m.next()))
    }
}

/// What a scheduler run bills.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonthPlan {
    /// The months to run month close on, oldest first; each must succeed before the next
    /// is run. Empty when nothing is due.
    pub months: Vec<Month>,
    /// The month just beyond the cap, when it is still open: the scheduler will never
    /// close it (nor any older open month); an operator runs `tally bill --period` for it.
    pub left_open_beyond_cap: Option<Month>,
}

/// The plan for `window`, given which months are closed (see the [module doc](self)).
pub fn plan(window: &Window, is_closed: impl Fn(Month) -> bool) -> MonthPlan {
    let in_window =
        std::iter::successors(Some(window.first), |m| (*m < window.last).then(|| m.next()));
    let mut months: Vec<Month> = Vec::new();
    for month in in_window {
        if is_closed(month) {
            continue;
        }
        // The closed month before an open one is run again first, so the open one is
        // closed only once the one before it is fully billed.
        let before = month.prev();
        if month > window.first && months.last() != Some(&before) {
            months.push(before);
        }
        months.push(month);
    }
    if months.is_empty() {
        months.push(window.last);
    }
    MonthPlan {
        months,
        left_open_beyond_cap: window.beyond_cap.filter(|m| !is_closed(*m)),
    }
}

/// The month the earliest org was created in (deleted orgs included: they existed);
/// `None` when there is no org. Reads every org once.
pub async fn earliest_org_month(tenants: &dyn OrgStore) -> Result<Option<Month>, StoreError> {
    let mut earliest: Option<DateTime<Utc>> = None;
    for id in tenants.list_org_ids().await? {
        // An id listed but gone by now has nothing to say about the lower bound.
        if let Some(org) = tenants.get_org(&id).await? {
            earliest = Some(earliest.map_or(org.created_at, |e| e.min(org.created_at)));
        }
    }
    Ok(earliest.map(Month::of))
}

/// The plan at `now`: the [`Window`] from `earliest` ([`earliest_org_month`]; `None`, no
/// org: nothing to bill) with each of its months' closed state read from `usage`.
pub async fn months_to_bill(
    usage: &dyn UsageStore,
    now: DateTime<Utc>,
    grace: Duration,
    earliest: Option<Month>,
) -> Result<MonthPlan, StoreError> {
    let Some(window) = earliest.and_then(|e| Window::at(now, grace, e)) else {
        return Ok(MonthPlan::default());
    };
    let mut closed = std::collections::BTreeSet::new();
    for month in window.months() {
        if usage.is_period_closed(month).await? {
            closed.insert(month);
        }
    }
    Ok(plan(&window, |m| closed.contains(&m)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn m(s: &str) -> Month {
        Month::parse(s).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn months(list: &[&str]) -> Vec<Month> {
        list.iter().map(|s| m(s)).collect()
    }

    const GRACE: Duration = Duration::hours(1);

    #[test]
    fn nothing_is_due_inside_the_grace_period_or_before_the_first_org() {
        assert_eq!(
            Window::at(t("2026-12-01T00:30:00Z"), GRACE, m("2026-01")),
            None
        );
        assert_eq!(
            Window::at(t("2026-12-01T02:00:00Z"), GRACE, m("2026-12")),
            None
        );
        let w = Window::at(t("2026-12-01T02:00:00Z"), GRACE, m("2026-11")).unwrap();
        assert_eq!(
            (w.first, w.last, w.beyond_cap),
            (m("2026-11"), m("2026-11"), None)
        );
    }

    #[test]
    fn the_window_is_capped_and_says_which_month_it_left_out() {
        let w = Window::at(t("2026-12-10T00:00:00Z"), GRACE, m("2000-01")).unwrap();
        assert_eq!(w.last, m("2026-11"));
        assert_eq!(w.first, m("2024-12"));
        assert_eq!(w.beyond_cap, Some(m("2024-11")));
        assert_eq!(w.months().count(), MAX_CATCH_UP_MONTHS as usize + 1);
        // Exactly at the cap: nothing left out.
        let w = Window::at(t("2026-12-10T00:00:00Z"), GRACE, m("2024-12")).unwrap();
        assert_eq!((w.first, w.beyond_cap), (m("2024-12"), None));
        assert_eq!(w.months().count(), MAX_CATCH_UP_MONTHS as usize);
    }

    #[test]
    fn missed_months_are_billed_oldest_first_after_their_closed_predecessor() {
        let w = Window::at(t("2027-01-02T00:00:00Z"), GRACE, m("2026-06")).unwrap();
        // June to October closed; November and December missed.
        let closed = |x: Month| x <= m("2026-10");
        let p = plan(&w, closed);
        assert_eq!(p.months, months(&["2026-10", "2026-11", "2026-12"]));
        assert_eq!(p.left_open_beyond_cap, None);
        // Everything closed: the newest due month again, alone.
        assert_eq!(plan(&w, |_| true).months, months(&["2026-12"]));
        // Nothing closed: from the first org's month on, with no predecessor to recheck.
        let all = plan(&w, |_| false).months;
        assert_eq!(all.first(), Some(&m("2026-06")));
        assert_eq!(all.len(), 7);
        // A month closed by hand between open ones is run again before the next open one.
        let p = plan(&w, |x| x <= m("2026-08") || x == m("2026-10"));
        assert_eq!(
            p.months,
            months(&["2026-08", "2026-09", "2026-10", "2026-11", "2026-12"])
        );
        // Open months only after a closed stretch: each after its closed predecessor.
        let p = plan(&w, |x| x != m("2026-07") && x != m("2026-12"));
        assert_eq!(
            p.months,
            months(&["2026-06", "2026-07", "2026-11", "2026-12"])
        );
    }

    #[test]
    fn an_open_month_beyond_the_cap_is_reported_not_billed() {
        let w = Window::at(t("2026-12-10T00:00:00Z"), GRACE, m("2020-01")).unwrap();
        let p = plan(&w, |x| x >= m("2025-01"));
        assert_eq!(p.left_open_beyond_cap, Some(m("2024-11")));
        assert_eq!(p.months, months(&["2024-12"]));
        let p = plan(&w, |_| true);
        assert_eq!(p.left_open_beyond_cap, None);
    }
}
