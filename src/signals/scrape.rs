//! The default signal source: scrape each ready gateway pod's `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::{GatewayReading, GatewayTarget, ReadingResult, Signals};

/// Concurrent scrapes.
const CONCURRENCY: usize = 16;
/// Largest `/metrics` body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Scrapes `http://<pod IP>:<metrics port>/metrics`.
#[derive(Clone, Debug)]
pub struct ScrapeSignals {
    client: reqwest::Client,
    path: String,
}

impl ScrapeSignals {
    /// A scraper whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).no_proxy().build()?;
        Ok(Self { client, path: "/metrics".into() })
    }

    async fn scrape_target(&self, t: &GatewayTarget) -> (String, ReadingResult) {
        let r = match &t.address {
            Some(a) => self.scrape(a).await,
            None => Err(format!("pod {}/{} has no IP or no port named metrics", t.namespace, t.name)),
        };
        (t.uid.clone(), r)
    }

    async fn scrape(&self, address: &str) -> ReadingResult {
        let url = format!("http://{address}{}", self.path);
        let resp = self.client.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > MAX_BODY {
            return Err(format!("GET {url}: body larger than {MAX_BODY} bytes"));
        }
        Ok(GatewayReading::from_text(&String::from_utf8_lossy(&body)))
    }
}

impl Signals for ScrapeSignals {
    fn describe(&self) -> String {
        "scrape".into()
    }

    fn collect<'a>(&'a self, targets: &'a [GatewayTarget]) -> BoxFuture<'a, BTreeMap<String, ReadingResult>> {
        let scrapes: Vec<_> = targets.iter().map(|t| self.scrape_target(t)).collect();
        async move { futures::stream::iter(scrapes).buffer_unordered(CONCURRENCY).collect::<BTreeMap<_, _>>().await }
            .boxed()
    }
}

/// `ip:port`, with brackets around an IPv6 address.
pub fn socket_address(ip: &str, port: i32) -> String {
    if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(socket_address("10.0.0.1", 9090), "10.0.0.1:9090");
        assert_eq!(socket_address("fd00::1", 9090), "[fd00::1]:9090");
    }
}
