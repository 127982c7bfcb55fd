//! The leader's write fence: a pass writes only while this replica is known to hold the Lease.
//!
//! The lease manager learns that the lease was lost only when its next renewal fails. A replica
//! paused past its lease (SIGSTOP, a long GC-like stall, a frozen VM) wakes with its timers all
//! due at once: the engine's interval and the manager's renewal race, and a pass could write
//! statuses, the ConfigMap or Events from memory that is seconds or minutes old while another
//! replica leads. So every pass asks [`Fence::holds`] before its first write and before each
//! later group of writes:
//! - within `fresh` (a third of the lease duration) of the last confirmation, measured on the
//!   monotonic clock, which keeps running while the process is stopped, it answers at once;
//! - otherwise it reads the Lease: writes go on only if its holder is this replica and its
//!   renew time plus duration is still ahead. The confirmation counts from the instant before
//!   the read was sent, so a pause during the read only shortens it.
//!
//! A Lease held by another replica, or by nobody, is [`Held::Lost`]: the pass stops writing
//! and the runner exits so a replica takes over. A failed read is [`Held::Unknown`]: the pass
//! writes nothing more and is retried as any failed pass is.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::time::Instant;

/// What the fence knows of this replica's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Held {
    /// Held now: write.
    Yes,
    /// Held by another replica or by nobody: stop writing and step down.
    Lost(String),
    /// The Lease could not be read: write nothing until it can.
    Unknown(String),
}

/// The fence of one leading replica.
pub struct Fence {
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    fresh: Duration,
    confirmed: Mutex<Option<Instant>>,
}

impl Fence {
    /// The fence of `identity`, which holds Lease `name` (of `duration`) since `acquired`.
    pub fn new(leases: Api<Lease>, name: &str, identity: &str, duration: Duration, acquired: Instant) -> Fence {
        Fence {
            leases,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            fresh: duration / 3,
            confirmed: Mutex::new(Some(acquired)),
        }
    }

    /// Whether this replica may write now.
    pub async fn holds(&self) -> Held {
        let last = *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < self.fresh) {
            return Held::Yes;
        }
        let asked = Instant::now();
        let lease = match self.leases.get_opt(&self.name).await {
            Ok(l) => l,
            Err(e) => return Held::Unknown(format!("reading Lease {}: {e}", self.name)),
        };
        let held = decide(lease.as_ref(), &self.identity, self.duration, Timestamp::now());
        if held == Held::Yes {
            *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner) = Some(asked);
        }
        held
    }
}

/// Whether `lease` is held by `identity` at `now`.
pub fn decide(lease: Option<&Lease>, identity: &str, duration: Duration, now: Timestamp) -> Held {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Held::Lost("the Lease is gone".into());
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => {}
        Some(h) => return Held::Lost(format!("the Lease is held by {h}")),
        None => return Held::Lost("the Lease has no holder".into()),
    }
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let span = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(duration, Duration::from_secs)
        .min(duration);
    match renewed {
        Some(r) if r.as_millisecond().saturating_add(span.as_millis() as i64) > now.as_millisecond() => Held::Yes,
        Some(r) => Held::Lost(format!("this replica's lease ran out (renewed {r}, {} s)", span.as_secs())),
        None => Held::Lost("the Lease has no renew time".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed: Option<i64>, secs: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                renew_time: renewed.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
                lease_duration_seconds: Some(secs),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn only_a_live_lease_of_this_replica_allows_writes() {
        let now = Timestamp::from_second(1_000).unwrap();
        let d = Duration::from_secs(15);
        assert_eq!(decide(Some(&lease(Some("me"), Some(990), 15)), "me", d, now), Held::Yes);
        // Renewed 20 s ago with a 15 s lease: it ran out while this replica was paused.
        assert!(matches!(decide(Some(&lease(Some("me"), Some(980), 15)), "me", d, now), Held::Lost(_)));
        assert!(
            matches!(decide(Some(&lease(Some("other"), Some(999), 15)), "me", d, now), Held::Lost(m) if m.contains("other"))
        );
        assert!(matches!(decide(Some(&lease(None, Some(999), 15)), "me", d, now), Held::Lost(_)));
        assert!(matches!(decide(Some(&lease(Some("me"), None, 15)), "me", d, now), Held::Lost(_)));
        assert!(matches!(decide(None, "me", d, now), Held::Lost(_)));
        // A Lease claiming a longer duration than this replica's is held to its own.
        assert!(matches!(decide(Some(&lease(Some("me"), Some(980), 3600)), "me", d, now), Held::Lost(_)));
    }
}
