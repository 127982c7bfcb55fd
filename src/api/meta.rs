//! Status building blocks with no Kubernetes dependency: a [`Condition`] and a [`Time`].
//!
//! Rules: both have the exact wire shape of their `metav1` namesakes, so the CRD schema and the
//! objects the API server stores do not change. A `Condition` serializes `lastTransitionTime`,
//! `message`, `observedGeneration` (only when set), `reason`, `status`, `type`; its schema
//! requires every field but `observedGeneration`. A `Time` is RFC 3339 in UTC with whole
//! seconds (`2025-05-14T10:00:00Z`): sub-seconds are dropped when written, as Kubernetes does,
//! and any RFC 3339 instant is accepted when read. This file must not import `kube` or
//! `k8s_openapi` (the policy core builds these types; `tests/layering.rs` checks the core).

use std::borrow::Cow;
use std::fmt;

use jiff::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, RFC 3339 in UTC, written with whole seconds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub Timestamp);

impl From<Timestamp> for Time {
    fn from(t: Timestamp) -> Self {
        Time(t)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.strftime("%Y-%m-%dT%H:%M:%SZ"))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse::<Timestamp>()
            .map(Time)
            .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not an RFC 3339 time: {e}")))
    }
}

impl JsonSchema for Time {
    fn schema_name() -> Cow<'static, str> {
        "Time".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An RFC 3339 time in UTC, in whole seconds.",
            "type": "string",
            "format": "date-time",
        })
    }
}

/// One aspect of a resource's state, in the shape of the standard Kubernetes condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type in CamelCase (`Ready`, `Degraded`...).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The `metadata.generation` the condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// CamelCase identifier of the cause.
    pub reason: String,
    /// Human-readable details (for people only: nothing reads it back).
    pub message: String,
}

impl JsonSchema for Condition {
    fn schema_name() -> Cow<'static, str> {
        "Condition".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut time = generator.subschema_for::<Time>();
        time.insert("description".into(), "When the condition last changed from one status to another.".into());
        json_schema!({
            "description": "One aspect of the resource's current state.",
            "type": "object",
            "properties": {
                "lastTransitionTime": time,
                "message": {
                    "description": "Human-readable details of the last transition; may be empty.",
                    "type": "string",
                },
                "observedGeneration": {
                    "description": "The metadata.generation the condition was computed for.",
                    "type": "integer",
                    "format": "int64",
                },
                "reason": {
                    "description": "CamelCase identifier of the cause of the last transition.",
                    "type": "string",
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string",
                },
                "type": {
                    "description": "Condition type in CamelCase.",
                    "type": "string",
                },
            },
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_has_the_kubernetes_wire_shape() {
        let c = Condition {
            type_: "Ready".into(),
            status: "True".into(),
            observed_generation: Some(3),
            last_transition_time: Time("2025-05-14T10:00:00.750Z".parse().unwrap()),
            reason: "Enforced".into(),
            message: "ok".into(),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "Ready", "status": "True", "observedGeneration": 3,
                "lastTransitionTime": "2025-05-14T10:00:00Z", "reason": "Enforced", "message": "ok"})
        );
        let back: Condition = serde_json::from_value(v).unwrap();
        assert_eq!(back.last_transition_time.0, "2025-05-14T10:00:00Z".parse::<Timestamp>().unwrap());
        let none = Condition { observed_generation: None, ..back };
        assert!(serde_json::to_value(&none).unwrap().get("observedGeneration").is_none());
        assert!(serde_json::from_value::<Time>(serde_json::json!("yesterday")).is_err());
    }

    #[test]
    fn condition_schema_requires_what_kubernetes_requires() {
        let mut settings = schemars::generate::SchemaSettings::default();
        settings.inline_subschemas = true;
        let v = serde_json::to_value(settings.into_generator().into_root_schema_for::<Condition>()).unwrap();
        assert_eq!(v["required"], serde_json::json!(["lastTransitionTime", "message", "reason", "status", "type"]));
        assert_eq!(v["properties"]["lastTransitionTime"]["format"], "date-time");
        assert_eq!(v["properties"]["observedGeneration"]["format"], "int64");
    }
}
