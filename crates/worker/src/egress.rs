//! Outbound HTTP to addresses someone else chose — users' webhooks, the result URLs fal answers
//! with — guarded against SSRF (only public addresses; in development also local ones, never
//! link-local): every address a name resolves to is checked at connect time (so
//! DNS rebinding cannot slip past an earlier check), literal IPs and the scheme are checked
//! before sending, redirects are never followed and no proxy is used.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use jewelshot_domain::{edit::WebhookPolicy, net::is_forbidden_ip};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

/// What the resolver says when a name resolves only inward (looked for in error chains).
const REFUSED: &str = "resolves only to forbidden addresses";

/// Whether `ip` may be reached: public addresses always; with `allow_insecure` (development: the
/// emulator on loopback or on a container network) any address but link-local, where the cloud
/// metadata service lives.
fn allowed(ip: IpAddr, policy: WebhookPolicy) -> bool {
    if !is_forbidden_ip(ip) {
        return true;
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.to_ipv4_mapped().is_some_and(|v| v.is_link_local())
        }
    };
    policy.allow_insecure && !link_local
}

/// Resolves names and drops every address the policy forbids; none left → connect refused.
#[derive(Debug, Clone, Copy)]
struct GuardedResolver {
    policy: WebhookPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| allowed(a.ip(), policy)).collect();
            if allowed.is_empty() {
                return Err(format!("{host} {REFUSED}").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// An HTTP client that only reaches public addresses (loopback and `http` too when the policy
/// allows them, for development). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Egress {
    http: reqwest::Client,
    policy: WebhookPolicy,
}

impl Egress {
    pub fn new(policy: WebhookPolicy, timeout: Duration, user_agent: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(user_agent)
            .build()?;
        Ok(Self { http, policy })
    }

    /// `url` parsed, if its scheme and any literal address are allowed (names are checked when
    /// connecting); otherwise why not.
    pub fn target(&self, url: &str) -> Result<Url, String> {
        let url = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let scheme_ok = url.scheme() == "https" || (self.policy.allow_insecure && url.scheme() == "http");
        if !scheme_ok {
            return Err(format!("scheme {} is not allowed", url.scheme()));
        }
        let ip: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(v4.into()),
            Some(url::Host::Ipv6(v6)) => Some(v6.into()),
            Some(url::Host::Domain(_)) => None,
            None => return Err("the URL has no host".into()),
        };
        match ip {
            Some(ip) if !allowed(ip, self.policy) => Err(format!("{ip} is not a public address")),
            _ => Ok(url),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The resolver's refusal, if that is what ended a request (it surfaces as a connect error).
    pub fn refused(e: &reqwest::Error) -> Option<String> {
        let chain = error_chain(e);
        chain.contains(REFUSED).then_some(chain)
    }
}

/// An error with every cause after it (reqwest's own text omits them).
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    for cause in std::iter::successors(std::error::Error::source(e), |s| s.source()) {
        out += ": ";
        out += &cause.to_string();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_targets_are_checked_before_sending() {
        let strict = Egress::new(WebhookPolicy { allow_insecure: false }, Duration::from_secs(1), "t").expect("client");
        for bad in
            ["http://example.com/x", "https://127.0.0.1/x", "https://[::1]/x", "https://169.254.169.254/x", "ftp://x"]
        {
            assert!(strict.target(bad).is_err(), "{bad}");
        }
        assert!(strict.target("https://fal.media/files/x.png").is_ok());
        let dev = Egress::new(WebhookPolicy { allow_insecure: true }, Duration::from_secs(1), "t").expect("client");
        assert!(dev.target("http://127.0.0.1:9000/x").is_ok());
        assert!(dev.target("http://172.18.0.5:8090/x").is_ok(), "a container network in development");
        assert!(dev.target("https://169.254.169.254/x").is_err(), "metadata stays forbidden");
    }
}
