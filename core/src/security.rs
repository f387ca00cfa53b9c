//! Org security policies and sign-in sessions: the records and the pure checks on them.
//!
//! An org's [`SecurityPolicy`] says whether its users must have signed in with more than one
//! factor ([`shows_mfa`] reads the token's `amr`), which client addresses may act for the
//! org ([`SecurityPolicy::permits_ip`], for users on the management API and for API keys on
//! ingest), and how long a sign-in [`Session`] of its members may live. The bounds are
//! here, next to the record, so every edge that parses a policy refuses alike
//! ([`SecurityPolicy::check`]); the stores keep what passed.
//!
//! No I/O lives here: the API and ingest carry the policy to these functions.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ids::{OrgId, SessionId, UserId};
use crate::tenant::FieldError;

/// Most CIDR blocks an allowlist holds: an allowlist is a handful of offices and VPN exits,
/// and every check walks it.
pub const MAX_ALLOWLIST: usize = 50;
/// Longest text of one CIDR block accepted (an IPv6 address with its prefix fits).
pub const MAX_CIDR_LEN: usize = 64;
/// Shortest session lifetime a policy may set: five minutes.
pub const MIN_SESSION_LIFETIME_SECS: u32 = 5 * 60;
/// Longest session lifetime a policy may set: thirty days.
pub const MAX_SESSION_LIFETIME_SECS: u32 = 30 * 24 * 3600;
/// The session lifetime of an org that set none: twelve hours, a working day.
pub const DEFAULT_SESSION_LIFETIME_SECS: u32 = 12 * 3600;
/// Longest `User-Agent` a session keeps, in characters (the rest is cut off).
pub const MAX_SESSION_USER_AGENT: usize = 256;
/// Most live sessions one user may hold at once; signing in again past it is refused until
/// one is revoked or expires, so a script cannot fill the store with sessions.
pub const MAX_SESSIONS_PER_USER: usize = 50;

/// The `amr` (authentication methods reference, RFC 8176) values that show a second
/// factor: `mfa` (multiple factors), `otp` (a one-time code), `hwk` (a hardware key),
/// `swk` (a software key, such as a passkey). Cognito's ID tokens carry e.g.
/// `["pwd", "otp", "mfa"]` after a sign-in with a TOTP or SMS code; `pwd` alone is one
/// factor.
pub const MFA_METHODS: [&str; 4] = ["mfa", "otp", "hwk", "swk"];

/// Whether a token's `amr` shows a second factor: any of [`MFA_METHODS`], compared exactly
/// (the values are lowercase by RFC 8176).
pub fn shows_mfa(amr: &[String]) -> bool {
    amr.iter().any(|m| MFA_METHODS.contains(&m.as_str()))
}

/// One allowlist entry: an IPv4 or IPv6 network in CIDR notation (`203.0.113.0/24`,
/// `2001:db8::/32`), or a bare address (a single host, `/32` or `/128`). Kept as written
/// in canonical form; host bits below the prefix are refused (`10.0.0.1/8`), since such an
/// entry says two things at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses one entry; the error names `ip_allowlist`.
    pub fn parse(text: &str) -> Result<Cidr, FieldError> {
        let bad = |message: String| FieldError {
            field: "ip_allowlist",
            message,
        };
        if text.is_empty() || text.len() > MAX_CIDR_LEN {
            return Err(bad(format!(
                "each entry is 1 to {MAX_CIDR_LEN} characters of CIDR notation"
            )));
        }
        let net = match IpNet::from_str(text) {
            Ok(net) => net,
            Err(_) => match IpAddr::from_str(text) {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(bad(format!(
                        "{text:?} is not an IPv4 or IPv6 network in CIDR notation (e.g. 203.0.113.0/24)"
                    )));
                }
            },
        };
        if net.trunc() != net {
            return Err(bad(format!(
                "{text:?} has bits set below its prefix; did you mean {}?",
                net.trunc()
            )));
        }
        Ok(Cidr(net))
    }

    /// Whether `ip` is inside the network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
    /// what a dual-stack listener reports for an IPv4 client) is compared as the IPv4
    /// address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_conversions!(Cidr, FieldError, Cidr::parse, |c: Cidr| c.to_string());

/// What an org requires of whoever acts for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityPolicy {
    /// Users' tokens must show a second factor ([`shows_mfa`]); else `403 mfa_required` on
    /// the org's routes.
    pub require_mfa: bool,
    /// The client addresses that may act for the org (users on its management routes, its
    /// API keys on ingest); empty: any address. At most [`MAX_ALLOWLIST`] entries.
    pub ip_allowlist: Vec<Cidr>,
    /// How long a sign-in session of the org's members may live, in seconds
    /// ([`MIN_SESSION_LIFETIME_SECS`] to [`MAX_SESSION_LIFETIME_SECS`]).
    pub session_lifetime_seconds: u32,
}

impl Default for SecurityPolicy {
    /// No MFA, any address, [`DEFAULT_SESSION_LIFETIME_SECS`]: what an org that never set a
    /// policy has.
    fn default() -> Self {
        SecurityPolicy {
            require_mfa: false,
            ip_allowlist: Vec::new(),
            session_lifetime_seconds: DEFAULT_SESSION_LIFETIME_SECS,
        }
    }
}

impl SecurityPolicy {
    /// The bound on `ip_allowlist`'s length (at most [`MAX_ALLOWLIST`] entries), naming the
    /// field: the first of [`Self::check`]'s checks, and one a caller can make on the raw
    /// entries before parsing any of them.
    pub fn check_allowlist_len(len: usize) -> Result<(), FieldError> {
        if len > MAX_ALLOWLIST {
            return Err(FieldError {
                field: "ip_allowlist",
                message: format!("at most {MAX_ALLOWLIST} entries (got {len})"),
            });
        }
        Ok(())
    }

    /// Checks the bounds, naming the field: at most [`MAX_ALLOWLIST`] entries, no entry
    /// twice, a lifetime in range.
    pub fn check(&self) -> Result<(), FieldError> {
        Self::check_allowlist_len(self.ip_allowlist.len())?;
        for (i, c) in self.ip_allowlist.iter().enumerate() {
            if self.ip_allowlist[..i].contains(c) {
                return Err(FieldError {
                    field: "ip_allowlist",
                    message: format!("{c} is listed twice"),
                });
            }
        }
        if !(MIN_SESSION_LIFETIME_SECS..=MAX_SESSION_LIFETIME_SECS)
            .contains(&self.session_lifetime_seconds)
        {
            return Err(FieldError {
                field: "session_lifetime_seconds",
                message: format!(
                    "must be {MIN_SESSION_LIFETIME_SECS} to {MAX_SESSION_LIFETIME_SECS} seconds (5 minutes to 30 days)"
                ),
            });
        }
        Ok(())
    }

    /// Whether a client at `ip` may act for the org: any address when the allowlist is
    /// empty; otherwise only an address inside one of its entries. An unknown address
    /// (`None`) is refused by a non-empty allowlist: an allowlist never fails open.
    pub fn permits_ip(&self, ip: Option<IpAddr>) -> bool {
        if self.ip_allowlist.is_empty() {
            return true;
        }
        ip.is_some_and(|ip| self.ip_allowlist.iter().any(|c| c.contains(ip)))
    }

    /// Whether a token with these `amr` values may act for the org.
    pub fn permits_amr(&self, amr: &[String]) -> bool {
        !self.require_mfa || shows_mfa(amr)
    }
}

/// An org's policy as stored: the policy, whose org it is and when it was last set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgSecurityPolicy {
    /// The org.
    pub org_id: OrgId,
    /// The policy.
    #[serde(flatten)]
    pub policy: SecurityPolicy,
    /// When it was last set.
    pub updated_at: DateTime<Utc>,
}

/// A sign-in session: what a session token (`sid`) points at, so a user or an org admin can
/// end it before its token expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The id (the token's `sid`).
    pub id: SessionId,
    /// Whose session it is.
    pub user_id: UserId,
    /// When it began.
    pub created_at: DateTime<Utc>,
    /// When it ends by itself (the token's `exp`).
    pub expires_at: DateTime<Utc>,
    /// The client address it was opened from, as the server saw it.
    pub ip: Option<String>,
    /// The `User-Agent` it was opened with, cut to [`MAX_SESSION_USER_AGENT`] characters.
    pub user_agent: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Session {
    /// Whether the session still admits requests at `now`: not revoked, not expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none_or(|r| r > now) && self.expires_at > now
    }
}

/// The `User-Agent` as a session keeps it: at most [`MAX_SESSION_USER_AGENT`] characters.
pub fn clip_user_agent(ua: &str) -> String {
    ua.chars().take(MAX_SESSION_USER_AGENT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn policy(list: &[&str]) -> SecurityPolicy {
        SecurityPolicy {
            ip_allowlist: list.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            ..SecurityPolicy::default()
        }
    }

    /// The allowlist cases every checker must get right; a checker that lets everything
    /// through, or shuts everyone out, fails them.
    fn allowlist_cases(permits: impl Fn(&SecurityPolicy, Option<IpAddr>) -> bool) {
        let office = policy(&["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]);
        assert!(permits(&office, ip("203.0.113.9")));
        assert!(permits(&office, ip("198.51.100.7")));
        assert!(permits(&office, ip("2001:db8:1::5")));
        // A dual-stack listener's view of an IPv4 client.
        assert!(permits(&office, ip("::ffff:203.0.113.9")));
        assert!(!permits(&office, ip("203.0.114.1")), "outside every block");
        assert!(
            !permits(&office, ip("198.51.100.8")),
            "next to the one host"
        );
        assert!(!permits(&office, ip("2001:db9::1")));
        assert!(!permits(&office, None), "an unknown address fails closed");
        let open = SecurityPolicy::default();
        assert!(
            permits(&open, ip("192.0.2.1")),
            "empty list: no restriction"
        );
        assert!(permits(&open, None));
    }

    #[test]
    fn the_allowlist_admits_its_networks_only() {
        allowlist_cases(SecurityPolicy::permits_ip);
    }

    #[test]
    fn an_allowlist_check_that_lets_everything_through_is_caught() {
        let planted = std::panic::catch_unwind(|| allowlist_cases(|_, _| true));
        assert!(
            planted.is_err(),
            "a check admitting everyone passed the cases"
        );
        let planted = std::panic::catch_unwind(|| {
            allowlist_cases(|p, ip| p.ip_allowlist.is_empty() || ip.is_some())
        });
        assert!(planted.is_err(), "a check ignoring the networks passed");
    }

    fn mfa_cases(shows: impl Fn(&[String]) -> bool) {
        let amr = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(
            shows(&amr(&["pwd", "otp", "mfa"])),
            "Cognito after a TOTP code"
        );
        assert!(shows(&amr(&["hwk"])));
        assert!(shows(&amr(&["swk", "user"])));
        assert!(!shows(&amr(&["pwd"])), "a password alone is one factor");
        assert!(!shows(&amr(&[])));
        assert!(!shows(&amr(&["MFA-ish", "pwd mfa"])), "exact values only");
    }

    #[test]
    fn mfa_is_shown_only_by_second_factor_methods() {
        mfa_cases(shows_mfa);
        let required = SecurityPolicy {
            require_mfa: true,
            ..SecurityPolicy::default()
        };
        assert!(!required.permits_amr(&["pwd".into()]));
        assert!(required.permits_amr(&["mfa".into()]));
        assert!(SecurityPolicy::default().permits_amr(&[]));
    }

    #[test]
    fn an_mfa_check_that_accepts_any_token_is_caught() {
        assert!(std::panic::catch_unwind(|| mfa_cases(|_| true)).is_err());
        assert!(std::panic::catch_unwind(|| mfa_cases(|a| !a.is_empty())).is_err());
    }

    #[test]
    fn cidrs_parse_strictly_and_name_the_field() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            Cidr::parse("192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            Cidr::parse("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        for bad in [
            "",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "example.com",
            "1.2.3.4/",
            "::/129",
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert_eq!(e.field, "ip_allowlist", "{bad}");
        }
        assert!(Cidr::parse(&"1".repeat(65)).is_err());
    }

    #[test]
    fn policies_are_bounded() {
        assert!(SecurityPolicy::default().check().is_ok());
        let many = SecurityPolicy {
            ip_allowlist: (0..=MAX_ALLOWLIST)
                .map(|i| Cidr::parse(&format!("10.0.{i}.0/24")).unwrap())
                .collect(),
            ..SecurityPolicy::default()
        };
        assert_eq!(many.check().unwrap_err().field, "ip_allowlist");
        let twice = policy(&["10.0.0.0/8", "10.0.0.0/8"]);
        assert_eq!(twice.check().unwrap_err().field, "ip_allowlist");
        for secs in [
            0,
            MIN_SESSION_LIFETIME_SECS - 1,
            MAX_SESSION_LIFETIME_SECS + 1,
        ] {
            let p = SecurityPolicy {
                session_lifetime_seconds: secs,
                ..SecurityPolicy::default()
            };
            assert_eq!(p.check().unwrap_err().field, "session_lifetime_seconds");
        }
    }

    #[test]
    fn sessions_end_at_expiry_or_revocation() {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let mut s = Session {
            id: SessionId::parse("ses_1").unwrap(),
            user_id: UserId::parse("usr_1").unwrap(),
            created_at: t(0),
            expires_at: t(100),
            ip: None,
            user_agent: None,
            revoked_at: None,
        };
        assert!(s.is_active(t(99)));
        assert!(!s.is_active(t(100)));
        s.revoked_at = Some(t(50));
        assert!(s.is_active(t(49)));
        assert!(!s.is_active(t(50)));
    }
}
