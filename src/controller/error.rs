//! One error type for the controller, with a metric label per kind.

/// Everything that can go wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Server-side apply of a gateway ConfigMap failed.
    #[error("apply ConfigMap {namespace}/{name}: {source}")]
    ApplyConfigMap {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The namespace's config document does not fit in a ConfigMap, even compressed.
    #[error("ConfigMap {namespace}/{name}: {source}")]
    ConfigTooLarge {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Sizes and ceiling.
        #[source]
        source: crate::config::TooLarge,
    },
    /// Server-side apply of a credentials Secret failed.
    #[error("apply Secret {namespace}/{name}: {source}")]
    ApplySecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The allowances ConfigMap (Hard budgets' grants) could not be read back.
    #[error("read ConfigMap {namespace}/{name} (Hard budget grants): {source}")]
    ReadAllowances {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// Server-side apply of the allowances ConfigMap failed.
    #[error("apply ConfigMap {namespace}/{name} (Hard budget grants): {source}")]
    ApplyAllowances {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// A status write failed.
    #[error("write status of {kind} {namespace}/{name}: {source}")]
    ApplyStatus {
        /// Kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// An Event could not be published.
    #[error("publish event {reason} on {object}: {source}")]
    PublishEvent {
        /// Event reason.
        reason: String,
        /// `Kind namespace/name`.
        object: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The config document of a namespace could not be built.
    #[error("build the gateway config of namespace {namespace}: {source}")]
    BuildConfig {
        /// Namespace.
        namespace: String,
        /// Cause.
        #[source]
        source: crate::config::ConfigError,
    },
    /// A document could not be serialized.
    #[error("serialize {what}: {source}")]
    Serialize {
        /// What.
        what: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// The CRDs are not installed.
    #[error(
        "the CustomResourceDefinition {0} is not installed: apply crds/ first (`tollgate crds | kubectl apply -f -`, or helm install with crds.enabled=true)"
    )]
    CrdMissing(String),
    /// The API server could not be reached or refused a startup request.
    #[error("{what}: {source}")]
    Startup {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(String),
    /// A listener or the runtime failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An invalid flag.
    #[error("{0}")]
    Flag(String),
}

impl Error {
    /// Label of the failure counter (`tollgate_controller_reconcile_failures_total{kind}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::ApplyConfigMap { .. } => "apply_configmap",
            Error::ConfigTooLarge { .. } => "config_too_large",
            Error::ApplySecret { .. } => "apply_secret",
            Error::ReadAllowances { .. } => "read_allowances",
            Error::ApplyAllowances { .. } => "apply_allowances",
            Error::ApplyStatus { .. } => "apply_status",
            Error::PublishEvent { .. } => "publish_event",
            Error::BuildConfig { .. } => "build_config",
            Error::Serialize { .. } => "serialize",
            Error::CrdMissing(_) => "crd_missing",
            Error::Startup { .. } => "startup",
            Error::Lease(_) => "lease",
            Error::Io(_) => "io",
            Error::Flag(_) => "flag",
        }
    }
}

impl Error {
    /// Why the namespace's config did not reach the cluster, as the `Ready` reason and message
    /// of its routes (the API server's own message, clipped), when this error says so.
    pub fn config_not_applied(&self) -> Option<(&'static str, String)> {
        match self {
            Error::ApplyConfigMap { namespace, name, source } => {
                let why = match source.as_ref() {
                    kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
                    other => other.to_string(),
                };
                Some((
                    "ConfigNotApplied",
                    crate::plan::clip_note(&format!(
                        "the gateway config of namespace {namespace} could not be written to ConfigMap {namespace}/{name}; gateways keep serving the last config written: {why}"
                    )),
                ))
            }
            Error::ConfigTooLarge { namespace, name, source } => Some((
                "ConfigTooLarge",
                crate::plan::clip_note(&format!(
                    "the gateway config of namespace {namespace} is not written to ConfigMap {namespace}/{name}: {source}; gateways keep serving the last config written"
                )),
            )),
            _ => None,
        }
    }
}

/// Whether an API error is worth retrying at once (conflict, throttling, server errors,
/// transport failures) rather than at the next pass only.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}
