//! Which backends a budget covers: the one definition of budget coverage.
//!
//! Rule: a budget covers a backend when the backend's provider equals the budget's `provider`
//! and the budget's `models` is empty (every model of the provider) or contains the backend's
//! upstream model exactly (no prefix or case folding). Namespaces are the caller's concern:
//! a budget only ever applies to routes and spend of its own namespace.

/// Whether a budget of `provider` limited to `models` (empty = all) covers a backend (or a
/// spend series) of `backend_provider` / `backend_model`.
pub fn covers(provider: &str, models: &[String], backend_provider: &str, backend_model: &str) -> bool {
    provider == backend_provider && (models.is_empty() || models.iter().any(|m| m == backend_model))
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn provider_and_models_decide() {
        let none: Vec<String> = Vec::new();
        let some = vec!["gpt-4o".to_string()];
        assert!(covers("openai", &none, "openai", "anything"));
        assert!(!covers("openai", &none, "anthropic", "anything"));
        assert!(covers("openai", &some, "openai", "gpt-4o"));
        assert!(!covers("openai", &some, "openai", "gpt-4o-mini"));
        assert!(!covers("openai", &some, "deepseek", "gpt-4o"));
    }
}
