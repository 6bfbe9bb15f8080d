//! Requests keyward makes to servers its admins name (webhook endpoints, KV delivery targets):
//! never to internal addresses unless an operator allowed them, never through a proxy taken from
//! the environment, never following a redirect.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keyward_core::CidrSet;

use crate::ServiceError;

/// Whether an address is one keyward may not reach without an operator's leave: loopback,
/// private, link-local, shared, benchmarking, reserved, multicast, and the IPv6 forms that
/// embed an IPv4 address (mapped, NAT64, 6to4).
pub(crate) fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                // 100.64.0.0/10 shared (carrier-grade NAT), 198.18.0.0/15 benchmarking,
                // 192.0.0.0/24 protocol assignments, 240.0.0.0/4 reserved.
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0)
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                let [h1, h2] = hi.to_be_bytes();
                let [l1, l2] = lo.to_be_bytes();
                internal(IpAddr::V4(std::net::Ipv4Addr::new(h1, h2, l1, l2)))
            };
            // 64:ff9b::/96 and 64:ff9b:1::/48 (NAT64), 2002::/16 (6to4): what they embed.
            if s[0] == 0x64 && s[1] == 0xff9b {
                return s[2] == 1 || embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            // ::a.b.c.d (IPv4-compatible, ::1 included) and ::ffff:0:a.b.c.d (SIIT).
            if s[..6] == [0; 6] || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) {
                return v6.is_unspecified() || v6.is_loopback() || embedded(s[6], s[7]);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // fec0::/10 site-local (deprecated, still routed inside some networks),
                // 100::/64 discard.
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x100 && s[1..4] == [0; 3])
        }
    }
}

/// The URL's host, if it is an address rather than a name.
pub(crate) fn literal_host(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Whether `url` names an internal address outright (or `localhost`) that is not allowed.
pub(crate) fn refused_literal(url: &reqwest::Url, allowed: &CidrSet) -> bool {
    let name = url
        .host_str()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ip = literal_host(url).or_else(|| {
        (name == "localhost" || name.ends_with(".localhost"))
            .then_some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
    });
    ip.is_some_and(|ip| internal(ip) && !allowed.contains(ip))
}

/// Resolves names for sends, refusing any answer with an internal address not allowed: a name
/// that resolved to a public address when registered cannot be pointed inside later.
#[derive(Debug, Clone)]
struct CheckedResolver {
    allowed: CidrSet,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?
                .collect();
            if let Some(bad) = found
                .iter()
                .find(|a| internal(a.ip()) && !allowed.contains(a.ip()))
            {
                let message = format!("{host} resolves to the internal address {}", bad.ip());
                return Err(message.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// A client for such requests: the checking resolver, no proxy from the environment (a proxy
/// would resolve names itself, past the check), no redirects, bounded in time.
pub(crate) fn client(
    allowed: &CidrSet,
    timeout: Duration,
) -> Result<reqwest::Client, ServiceError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .dns_resolver(Arc::new(CheckedResolver {
            allowed: allowed.clone(),
        }))
        .user_agent(concat!("keyward/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(ServiceError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_in_every_spelling_are_refused() {
        let none = CidrSet::default();
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://017700000001/",
            "http://[::1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/",
            "http://100.64.0.1/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://localhost:8200/",
            "http://vault.localhost/",
            "http://localhost./",
            "http://[::127.0.0.2]/",
            "http://[::ffff:0:127.0.0.2]/",
            "http://[fec0::1]/",
            "http://[100::1]/",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert!(refused_literal(&parsed, &none), "{url}");
        }
        for url in [
            "https://93.184.215.14/",
            "https://vault.example.com/",
            "http://[2606:4700::1]/",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert!(!refused_literal(&parsed, &none), "{url}");
        }
        let allowed = CidrSet::parse(&["10.0.0.0/8"]).unwrap();
        let inside = reqwest::Url::parse("http://10.1.2.3:8200/").unwrap();
        assert!(!refused_literal(&inside, &allowed));
    }
}
