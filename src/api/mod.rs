//! The tollgate API: the custom resources users apply, group `tollgate.dev`, version `v1alpha1`.
//!
//! These types are the public contract. The CRD YAML in `crds/` is generated from them
//! (`tollgate crds`), and `validate` enforces the same schema and CEL rules outside the cluster.

pub mod model_route;
pub mod provider_budget;
pub mod shared;
pub mod validate;

pub use model_route::*;
pub use provider_budget::*;
pub use shared::*;

/// API group of every tollgate resource.
pub const GROUP: &str = "tollgate.dev";
/// API version of every tollgate resource.
pub const VERSION: &str = "v1alpha1";

/// Both CRDs, ModelRoute first.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![ModelRoute::crd(), ProviderBudget::crd()]
}

/// Both CRDs as one multi-document YAML stream (the content of `crds/`).
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
