//! `tollgate gateway --allowances FILE`: the Hard budgets' grants from a file (the
//! mounted `tollgate-allowances` ConfigMap), polled; with `--from-configmap` and no
//! `--allowances`, from the allowances ConfigMap through the API instead
//! ([`watch_allowances_configmap`], same rules).
//!
//! Rules: the file is read once before [`watch_allowances_file`] returns (the gateway starts
//! serving after it, so a gateway whose file is in place enforces its grants from its first
//! request: a poll left to a task could come after the first answers, served while no Hard
//! budget was known, hence spent outside every grant), then every poll interval; a changed
//! content is parsed and validated whole ([`Allowances::from_json`]) and applied for this
//! gateway's `--instance` id. A missing, unreadable or invalid file keeps the grants last
//! applied (logged once per distinct error): a gateway that loses its source keeps spending
//! only what it was granted. Until a first valid document arrives the gateway knows no Hard
//! budget and enforces none (a file missing from the start, as in a namespace without Hard
//! budgets, is no error: said once at info).
//!
//! Through the API ([`watch_allowances_configmap`]) the same holds: it returns once the API
//! has answered the first time (a document, a refusal, or no ConfigMap), before serving.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

use futures::StreamExt;

use super::Gateway;
use crate::config::allowances::Allowances;

/// What the file watcher last saw.
struct AllowancesFile {
    path: PathBuf,
    instance: String,
    /// The bytes last applied.
    last: Option<Vec<u8>>,
    /// The error last logged (logged again only when it changes).
    last_error: Option<String>,
    announced_none: bool,
}

impl AllowancesFile {
    /// Reads the file and applies it when its content changed (a small file: read in place,
    /// as the config file is).
    fn check(&mut self, gw: &Gateway) {
        let path = &self.path;
        let result = match std::fs::read(path) {
            Ok(bytes) if self.last.as_deref() == Some(bytes.as_slice()) => Ok(()),
            Ok(bytes) => match Allowances::from_json(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|doc| gw.set_allowances(&self.instance, &doc).map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    tracing::info!(path = %path.display(), instance = %self.instance, "allowances applied");
                    self.last = Some(bytes);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            // No document yet (a namespace without Hard budgets has none): nothing to say.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.last.is_none() => {
                if !self.announced_none {
                    tracing::info!(path = %path.display(), "no allowances document yet: no Hard budget enforced");
                    self.announced_none = true;
                }
                Ok(())
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        };
        match result {
            Ok(()) => self.last_error = None,
            Err(e) if self.last_error.as_deref() != Some(e.as_str()) => {
                tracing::error!(error = %e, "allowances not updated; the grants last applied stay");
                self.last_error = Some(e);
            }
            Err(_) => {}
        }
    }
}

/// Applies `path` as instance `instance` at once (before returning), then polls it every
/// `poll` and applies each new valid document.
pub fn watch_allowances_file(gw: Gateway, path: PathBuf, instance: String, poll: Duration) -> JoinHandle<()> {
    let mut file = AllowancesFile { path, instance, last: None, last_error: None, announced_none: false };
    file.check(&gw);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once: the file was just read.
        tick.tick().await;
        loop {
            tick.tick().await;
            file.check(&gw);
        }
    })
}

/// Follows the allowances ConfigMap `namespace/name` through the API and applies each new
/// valid document as instance `instance`; a refused one keeps the grants last applied. Returns
/// once the API has answered the first time (a document applied, a refusal, or no ConfigMap),
/// so that a gateway serves nothing before it knows its grants (the API unreachable: it waits,
/// retrying with backoff, as for its config).
pub async fn watch_allowances_configmap(
    gw: Gateway,
    client: kube::Client,
    namespace: String,
    name: String,
    instance: String,
) -> JoinHandle<()> {
    let mut stream = Box::pin(crate::kube_source::allowance_updates(client, &namespace, &name));
    let apply = move |update: Result<Option<crate::config::allowances::Allowances>, String>| match update
        .and_then(|doc| doc.map(|doc| gw.set_allowances(&instance, &doc).map_err(|e| e.to_string())).transpose())
    {
        Ok(Some(())) => {
            tracing::info!(configmap = %format!("{namespace}/{name}"), instance = %instance, "allowances applied")
        }
        Ok(None) => {
            tracing::info!(configmap = %format!("{namespace}/{name}"), "no allowances ConfigMap: no Hard budget")
        }
        Err(e) => tracing::error!(error = %e, "allowances not updated; the grants last applied stay"),
    };
    if let Some(first) = stream.next().await {
        apply(first);
    }
    tokio::spawn(async move {
        while let Some(update) = stream.next().await {
            apply(update);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::allowances::HardBudgetGrants;
    use crate::gateway::GatewayOptions;
    use crate::policy::money::Money;

    fn doc(grant: &str) -> Vec<u8> {
        let a = Allowances {
            namespace: "team-a".into(),
            budgets: vec![HardBudgetGrants {
                name: "openai-hard".into(),
                provider: "openai".into(),
                models: vec![],
                limit: "0.10".into(),
                window_start: 0,
                grants: [("gw-0".to_string(), grant.to_string())].into(),
            }],
        };
        a.to_json().into_bytes()
    }

    /// The gateway starts serving right after the watcher is started: a file in place must be
    /// applied by then, or the first requests are served with no Hard budget known (metered,
    /// never reserved: spent outside every grant). On this current-thread runtime the polling
    /// task cannot run before the first `.await`, so this checks the read made in place.
    #[tokio::test]
    async fn a_file_in_place_is_applied_before_the_watcher_returns() {
        let dir = crate::test_dir("allowances-in-place");
        let path = dir.join("allowances.json");
        std::fs::write(&path, doc("0.04")).unwrap();
        let gw = Gateway::new(None, GatewayOptions::default()).unwrap();
        gw.set_allowances("gw-0", &Allowances::default()).unwrap();
        let task = watch_allowances_file(gw.clone(), path.clone(), "gw-0".into(), Duration::from_millis(50));
        let usage = gw.hard_usage();
        assert_eq!(usage.len(), 1, "the Hard budget is known before the watcher returns: {usage:?}");
        assert_eq!((usage[0].budget.as_str(), usage[0].granted), ("openai-hard", "0.04".parse::<Money>().unwrap()));
        // Later changes are still picked up by the polling task.
        std::fs::write(&path, doc("0.06")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gw.hard_usage()[0].granted != "0.06".parse::<Money>().unwrap() {
            assert!(tokio::time::Instant::now() < deadline, "the new grant was not applied within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
