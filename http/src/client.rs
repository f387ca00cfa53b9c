//! The client's address, found the one way every Tally API finds it: the connection's peer,
//! or, behind trusted proxies, the `X-Forwarded-For` entry the outermost of them appended.
//!
//! Audit records show it, and org IP allowlists are checked against it (users on the
//! management API, API keys on ingest), so both APIs must agree on it: this module is the
//! one place it is computed. Any client can write `X-Forwarded-For`, so the header is read
//! only when the deployment says how many proxies in front append to it (`tally serve
//! --trusted-proxies`, 1 behind API Gateway); entries left of the trusted ones are the
//! client's own words and never believed.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;

/// The client's address: with `trusted` proxies in front, the `X-Forwarded-For` entry the
/// outermost of them appended (the `trusted`-th from the right); with none, the peer. An
/// entry that is not an IP address is not believed (the peer is used). IPv4-mapped IPv6
/// addresses are reported as the IPv4 address they carry.
pub fn client_ip(forwarded: &[&str], peer: Option<IpAddr>, trusted: usize) -> Option<IpAddr> {
    let found = if trusted == 0 {
        peer
    } else {
        let at = forwarded.len().saturating_sub(trusted);
        forwarded
            .get(at)
            .and_then(|v| v.parse::<IpAddr>().ok())
            .or(peer)
    };
    found.map(|ip| ip.to_canonical())
}

/// [`client_ip`] of a request: its `X-Forwarded-For` headers (all of them, comma lists
/// split) and the peer `axum::serve` recorded (`into_make_service_with_connect_info`; on
/// Lambda there is none, and the trusted proxy's entry is the answer).
pub fn client_ip_of(parts: &Parts, trusted: usize) -> Option<IpAddr> {
    let forwarded: Vec<&str> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    client_ip(&forwarded, peer, trusted)
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use std::net::IpAddr;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn only_trusted_proxies_entries_are_believed() {
        let peer = || ip("10.0.0.9");
        let xff = ["6.6.6.6", "1.2.3.4", "10.0.0.2"];
        assert_eq!(client_ip(&xff, peer(), 0), ip("10.0.0.9"));
        assert_eq!(client_ip(&xff, peer(), 1), ip("10.0.0.2"));
        assert_eq!(client_ip(&xff, peer(), 2), ip("1.2.3.4"));
        assert_eq!(client_ip(&xff, peer(), 5), ip("6.6.6.6"));
        assert_eq!(client_ip(&["not an ip"], peer(), 1), ip("10.0.0.9"));
        assert_eq!(client_ip(&[], None, 1), None);
        assert_eq!(client_ip(&[], ip("::ffff:1.2.3.4"), 0), ip("1.2.3.4"));
    }
}
