//! The gateway pods whose signals are read: ready, not terminating, with an IP; the metrics
//! port found by name (a pod without it is still a target, reported unreadable). Every pod's
//! UID counts as existing (for forgetting the counters of pods that are gone).

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::signals::GatewayTarget;

/// Gateway pods that can be read, and the UIDs of every gateway pod that exists.
pub fn gateway_targets(pods: &[Arc<Pod>], port_name: &str) -> (Vec<GatewayTarget>, BTreeSet<String>) {
    let mut targets = Vec::new();
    let mut existing = BTreeSet::new();
    for pod in pods {
        let Some(uid) = pod.metadata.uid.clone() else { continue };
        existing.insert(uid.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let Some(ip) = status.and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else { continue };
        if !ready {
            continue;
        }
        let port = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(port_name))
            .map(|p| p.container_port);
        targets.push(GatewayTarget {
            uid,
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            address: port.map(|p| crate::signals::scrape::socket_address(&ip, p)),
        });
    }
    targets.sort();
    (targets, existing)
}
