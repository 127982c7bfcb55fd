//! Wiring: API client, CRD check, watchers and their stores, leader election, the interval
//! loop, SIGTERM, the HTTP endpoints.
//!
//! Secrets are watched with the label selector `tollgate.dev/provider-key=true` only:
//! other Secrets are never listed, watched or cached. A standby reads the Lease every
//! `STANDBY_POLL` so that a released lease is taken at once (see `lead`): a read that finds it
//! free ([`lease_is_free`]: no holder, or a holder whose lease expired) starts the election over,
//! the first read after the standby started included.

use std::fmt::Debug;
use std::hash::Hash;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Client, Resource};
use kube_lease_manager::LeaseManagerBuilder;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::engine::{Context, Engine, Settings, Snapshot};
use super::error::Error;
use super::http::{self, Health, Phase};
use super::metrics::ControllerMetrics;
use super::{ControllerArgs, LogFormat, SignalsSource};
use crate::api::{ModelRoute, ProviderBudget};
use crate::signals::Signals;
use crate::signals::prometheus::PrometheusSignals;
use crate::signals::scrape::ScrapeSignals;

/// Pause after a change event before the pass, so a burst (an `apply -f dir/`) is one pass.
const DEBOUNCE: Duration = Duration::from_millis(250);
/// First retry of a failed pass.
const RETRY_MIN: Duration = Duration::from_secs(1);
/// How often a standby reads the Lease to see it released (one GET each).
const STANDBY_POLL: Duration = Duration::from_millis(200);

/// `tollgate controller`: runs until SIGTERM, a lost lease or a fatal error.
pub fn run_controller(args: ControllerArgs) -> ExitCode {
    crate::cmd::init_tracing("info", args.log_format == LogFormat::Json);
    let rt = match crate::cmd::runtime(None) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(run(args));
    if let Err(e) = &result {
        error!(error = %e, kind = e.metric_label(), "controller stopped");
    }
    crate::cmd::exit_code(result, 1)
}

/// Exits early and clearly when the CRDs are not installed.
pub async fn check_crds(client: &Client, namespaces: &[String]) -> Result<(), Error> {
    let lp = ListParams::default().limit(1);
    let (routes, budgets): (Api<DeserializeGuard<ModelRoute>>, Api<DeserializeGuard<ProviderBudget>>) =
        match namespaces.first() {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let check = |crd: &str, r: Result<(), kube::Error>| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::CrdMissing(crd.to_string())),
        Err(e) => Err(Error::Startup { what: format!("list {crd}"), source: Box::new(e) }),
    };
    check("modelroutes.tollgate.dev", routes.list(&lp).await.map(|_| ()))?;
    check("providerbudgets.tollgate.dev", budgets.list(&lp).await.map(|_| ()))?;
    Ok(())
}

async fn run(args: ControllerArgs) -> Result<(), Error> {
    let shutdown = CancellationToken::new();
    crate::cmd::cancel_on_shutdown(shutdown.clone());
    let client = Client::try_default().await.map_err(|e| Error::Startup {
        source: Box::new(e),
        what: "connect to the Kubernetes API (kubeconfig or in-cluster)".into(),
    })?;
    check_crds(&client, &args.namespaces).await?;

    let metrics = Arc::new(ControllerMetrics::new());
    let health = Arc::new(Health::default());
    let server = http::bind(args.listen, metrics.clone(), health.clone(), shutdown.clone()).await?;
    info!(listen = %args.listen, "serving /healthz, /readyz and /metrics");

    let pod_name = args.pod_name.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "tollgate-controller".into())
    });
    let reporter = Reporter { controller: "tollgate-controller".into(), instance: Some(pod_name.clone()) };
    let settings = Settings {
        configmap_name: args.configmap_name.clone(),
        metrics_port_name: args.metrics_port_name.clone(),
        write_grace: args.signal_interval.saturating_mul(2),
        status_writes_per_second: args.status_writes_per_second,
        // The pace bounds the rate; a few in flight keep each write's round trip from bounding it.
        status_writes_in_flight: 8,
        // A pass waits for the pace at most half an interval: the next signal pass stays on time.
        status_write_window: (args.signal_interval / 2).min(Duration::from_secs(5)),
        allowances_configmap: args.allowances_configmap_name.clone(),
        hard_grant_floor: args.hard_grant_floor,
        ..Settings::default()
    };
    let ctx = Arc::new(Context { client: client.clone(), reporter, metrics, settings });
    let timeout = args.signal_interval.min(Duration::from_secs(10));
    let signals: Arc<dyn Signals> = match &args.signals {
        SignalsSource::Scrape => Arc::new(ScrapeSignals::new(timeout).map_err(|e| Error::Flag(e.to_string()))?),
        SignalsSource::Prometheus(url) => {
            Arc::new(PrometheusSignals::new(url, timeout).map_err(|e| Error::Flag(e.to_string()))?)
        }
    };
    info!(signals = %signals.describe(), interval = ?args.signal_interval, namespaces = ?args.namespaces, "starting");

    let result = if args.leader_election {
        lead(ctx, signals, &args, &pod_name, health.clone(), shutdown.clone()).await
    } else {
        health.set(Phase::Starting);
        run_engine(ctx, signals, &args, health.clone(), None, shutdown.clone()).await
    };
    health.set(Phase::Stopping);
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "HTTP server stopped with an error"),
        Err(_) => warn!("HTTP server did not stop in time"),
        _ => {}
    }
    if result.is_ok() {
        info!("stopped");
    }
    result
}

/// Waits for the lease, runs the engine while holding it, exits when it is lost.
///
/// Standby: kube-lease-manager alone sleeps until the holder's lease would expire, even after the
/// holder released it (a SIGTERM'd leader). Here the standby also reads the Lease every
/// [`STANDBY_POLL`]; whenever a read finds it free ([`lease_is_free`]) it starts over with a
/// fresh manager (whose first step reads the Lease and takes it), so a released lease is taken
/// within about `STANDBY_POLL` plus a few API calls. That holds for the first read too: in a
/// rolling update the new replica starts just before the old one's SIGTERM, so its manager may
/// have read the Lease still held (and gone to sleep) while its first poll finds it released.
/// Starting over while the manager is itself taking a free Lease is harmless: the identity is
/// kept, so the fresh manager finds the Lease already held by it, or takes it. A crashed
/// holder's lease is taken when it expires (plus up to `STANDBY_POLL`).
/// Each replica uses its own field manager (the crate's documented requirement), so that two
/// standbys taking a free lease at once conflict instead of both winning.
async fn lead(
    ctx: Arc<Context>,
    signals: Arc<dyn Signals>,
    args: &ControllerArgs,
    pod_name: &str,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let namespace = args.lease_namespace.clone().unwrap_or_else(|| ctx.client.default_namespace().to_string());
    let duration = args.lease_duration.as_secs().max(2);
    let identity = format!("{pod_name}-{:08x}", rand::random::<u32>());
    let lease = format!("{namespace}/{}", args.lease_name);
    let build = || async {
        LeaseManagerBuilder::new(ctx.client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace((duration / 3).max(1))
            .with_field_manager(format!("tollgate-controller-lease-{identity}"))
            .build()
            .await
            .map_err(|e| Error::Lease(format!("Lease {lease}: {e}")))
    };
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &namespace);
    health.set(Phase::Standby);
    info!(%lease, %identity, "waiting for the leader lease");
    enum Standby {
        Acquired,
        Free,
        Failed(kube_lease_manager::LeaseManagerError),
        Stop,
    }
    let manager = loop {
        let manager = build().await?;
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => Standby::Stop,
            r = manager.changed() => match r {
                Ok(true) => Standby::Acquired,
                Ok(false) => Standby::Free,
                Err(e) => Standby::Failed(e),
            },
            _ = lease_free(&leases, &args.lease_name, &identity) => Standby::Free,
        };
        match outcome {
            Standby::Acquired => break manager,
            Standby::Free => {}
            Standby::Failed(e) => {
                warn!(%lease, error = %e, "leader election step failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(RETRY_MIN) => {}
                }
            }
            Standby::Stop => {
                // A lock that completed as the signal came is given back.
                let _ = tokio::time::timeout(Duration::from_secs(5), manager.release()).await;
                return Ok(());
            }
        }
    };
    let (mut leader, task) = manager.watch().await;
    info!(%identity, "acquired the leader lease");
    let fence = Arc::new(super::fence::Fence::new(
        leases.clone(),
        &args.lease_name,
        &identity,
        Duration::from_secs(duration),
        tokio::time::Instant::now(),
    ));
    ctx.metrics.leader.set(1);
    let stop = shutdown.child_token();
    let mut engine: JoinHandle<Result<(), Error>> = {
        let (ctx, args, health, stop) = (ctx.clone(), args.clone(), health.clone(), stop.clone());
        tokio::spawn(async move { run_engine(ctx, signals, &args, health, Some(fence), stop).await })
    };
    let result = loop {
        tokio::select! {
            r = &mut engine => break r.unwrap_or_else(|e| Err(Error::Lease(format!("engine task failed: {e}")))),
            changed = leader.changed() => {
                if changed.is_err() || !*leader.borrow_and_update() {
                    stop.cancel();
                    let _ = engine.await;
                    ctx.metrics.leader.set(0);
                    return Err(Error::Lease("lost the leader lease; exiting so that a replica takes over".into()));
                }
            }
        }
    };
    ctx.metrics.leader.set(0);
    // Closing the channel releases the lease, so a replica takes over at once.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Ok(_))) => info!("released the leader lease"),
        Ok(Ok(Err(e))) => warn!(error = %e, "could not release the leader lease"),
        _ => warn!("could not release the leader lease in time"),
    }
    result
}

/// Resolves when a read (every [`STANDBY_POLL`], the first one included) finds the Lease free
/// for `identity` to take ([`lease_is_free`]). Errors keep it waiting.
async fn lease_free(leases: &Api<Lease>, name: &str, identity: &str) {
    loop {
        tokio::time::sleep(STANDBY_POLL).await;
        match leases.get_opt(name).await {
            Ok(lease) if lease_is_free(lease.as_ref(), identity, Timestamp::now()) => return,
            _ => {}
        }
    }
}

/// Whether a read of the Lease (`None`: there is none) at `now` finds it free to take: no Lease,
/// no holder (released), or held by another identity whose lease expired (`renewTime` plus
/// `leaseDurationSeconds` before `now`; a holder without both never expires here, as for
/// kube-lease-manager's own view of it, which then waits for it). Held by `identity`: not free
/// (the manager is taking it or has).
pub fn lease_is_free(lease: Option<&Lease>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => true,
        Some(h) if h == identity => false,
        Some(_) => match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renew), Some(secs)) => {
                let expiry = renew.0.checked_add(jiff::SignedDuration::from_secs(i64::from(secs)));
                expiry.is_ok_and(|e| e < now)
            }
            _ => false,
        },
    }
}

/// Reflector stores of one kind, one per watched scope.
struct Stores<K: Resource<DynamicType = ()> + Clone + 'static>(Vec<Store<K>>);

impl<K: Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    fn state(&self) -> Vec<Arc<K>> {
        self.0.iter().flat_map(|s| s.state()).collect()
    }

    async fn ready(&self) -> bool {
        for s in &self.0 {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}

fn watch<K>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
    notify: Option<Arc<Notify>>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Stores<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut stores = Vec::new();
    for api in apis {
        let (reader, writer) = reflector::store();
        let notify = notify.clone();
        let kind = K::kind(&()).to_string();
        let stream = reflector::reflector(writer, watcher::watcher(api, config.clone()).default_backoff());
        tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(WatchEvent::Apply(_) | WatchEvent::Delete(_) | WatchEvent::InitDone) => {
                        if let Some(n) = &notify {
                            n.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(kind = %kind, error = %e, "watch error (retrying with backoff)"),
                }
            }
        }));
        stores.push(reader);
    }
    Stores(stores)
}

fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
    }
}

/// Runs passes each interval and on every change until `stop`.
async fn run_engine(
    ctx: Arc<Context>,
    signals: Arc<dyn Signals>,
    args: &ControllerArgs,
    health: Arc<Health>,
    fence: Option<Arc<super::fence::Fence>>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let client = &ctx.client;
    let notify = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    let ns = &args.namespaces;
    let routes: Stores<DeserializeGuard<ModelRoute>> =
        watch(apis(client, ns), watcher::Config::default(), Some(notify.clone()), &mut tasks);
    let budgets: Stores<DeserializeGuard<ProviderBudget>> =
        watch(apis(client, ns), watcher::Config::default(), Some(notify.clone()), &mut tasks);
    // Only opted-in Secrets: the others are never listed, watched or cached.
    let secrets: Stores<Secret> = watch(
        apis(client, ns),
        watcher::Config::default().labels(crate::config::PROVIDER_KEY_SELECTOR),
        Some(notify.clone()),
        &mut tasks,
    );
    // The credentials Secret the controller itself writes (to skip writes that change nothing);
    // it carries no opt-in label, so the plan never reads it as a provider key.
    let own_secrets: Stores<Secret> = watch(
        apis(client, ns),
        watcher::Config::default().fields(&format!("metadata.name={}", ctx.settings.credentials_secret)),
        None,
        &mut tasks,
    );
    let configmaps: Stores<ConfigMap> = watch(
        apis(client, ns),
        watcher::Config::default().fields(&format!("metadata.name={}", args.configmap_name)),
        Some(notify.clone()),
        &mut tasks,
    );
    let pods: Stores<Pod> =
        watch(apis(client, ns), watcher::Config::default().labels(&args.gateway_selector), None, &mut tasks);

    let result = async {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            synced = async {
                routes.ready().await && budgets.ready().await && secrets.ready().await && own_secrets.ready().await
                    && configmaps.ready().await && pods.ready().await
            } => if !synced {
                return Err(Error::Io(std::io::Error::other("a watcher stopped before its cache synced")));
            },
        }
        info!("caches synced");
        health.set(Phase::Leading);
        let mut engine = Engine::new(ctx.clone(), signals);
        if let Some(fence) = fence {
            engine.set_fence(fence);
        }
        let mut tick = tokio::time::interval(args.signal_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry: Option<tokio::time::Instant> = None;
        let mut backoff = RETRY_MIN;
        loop {
            let collect = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => true,
                _ = notify.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    false
                }
                _ = async {
                    match retry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => false,
            };
            let snap = Snapshot {
                routes: routes.state(),
                budgets: budgets.state(),
                secrets: secrets.state().into_iter().chain(own_secrets.state()).collect(),
                pods: pods.state(),
                configmaps: configmaps.state(),
            };
            let report = engine.pass(&snap, Timestamp::now(), collect).await;
            if let Some(why) = report.lost_lease {
                return Err(Error::Lease(format!(
                    "lost the leader lease ({why}); exiting so that a replica takes over"
                )));
            }
            if report.errors.is_empty() {
                // Status writes left past the window: the next pass writes them, at once (the
                // pace, not a timer, spaces them).
                retry = (report.statuses_deferred > 0).then(tokio::time::Instant::now);
                backoff = RETRY_MIN;
            } else {
                retry = Some(tokio::time::Instant::now() + backoff);
                backoff = backoff.saturating_mul(2).min(args.signal_interval);
            }
        }
        Ok(())
    }
    .await;
    for t in tasks {
        t.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::lease_is_free;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn lease(holder: Option<&str>, renewed: Option<&str>, secs: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(|r| MicroTime(t(r))),
                lease_duration_seconds: secs,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    /// The rolling-update order: the standby's first read comes after the leader released the
    /// Lease (holder cleared) and must take it at once, without having seen it held before.
    #[test]
    fn a_lease_released_before_the_first_read_is_free() {
        let now = t("2025-05-14T10:00:00Z");
        let released = lease(None, Some("2025-05-14T09:59:59.9Z"), Some(4));
        assert!(lease_is_free(Some(&released), "b-1", now));
        assert!(lease_is_free(Some(&lease(Some(""), None, None)), "b-1", now));
        assert!(lease_is_free(Some(&Lease::default()), "b-1", now), "no spec");
        assert!(lease_is_free(None, "b-1", now), "no Lease");
    }

    #[test]
    fn a_lease_held_by_another_is_free_only_once_expired() {
        let now = t("2025-05-14T10:00:00Z");
        let held = lease(Some("a-1"), Some("2025-05-14T09:59:58Z"), Some(4));
        assert!(!lease_is_free(Some(&held), "b-1", now));
        let expired = lease(Some("a-1"), Some("2025-05-14T09:59:55Z"), Some(4));
        assert!(lease_is_free(Some(&expired), "b-1", now));
        let unknown = lease(Some("a-1"), None, Some(4));
        assert!(!lease_is_free(Some(&unknown), "b-1", now), "a holder without renewTime is waited for");
    }

    #[test]
    fn a_lease_held_by_this_replica_is_not_free() {
        let now = t("2025-05-14T10:00:00Z");
        assert!(!lease_is_free(Some(&lease(Some("b-1"), Some("2025-05-14T09:00:00Z"), Some(4))), "b-1", now));
    }
}
