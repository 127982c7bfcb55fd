//! What every job of the binary repeats, in one room: the tokio runtime, tracing (text or
//! JSON lines on stderr, filtered by `RUST_LOG` with a per-job default), the wait for SIGTERM
//! or Ctrl-C, the exit code of a job, duration flags, and the smallest job (`crds`).
//!
//! Duration flags take the same text everywhere (`250ms`, `5s`, `10m`, `1h`, Go-style
//! compounds), parsed by the policy's one parser; a flag with bounds says them in its error
//! (`"50ms": at least 100ms`). Negative durations are always refused.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A duration flag (non-negative).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_duration_in::<0, { u64::MAX }>(s)
}

/// A duration flag of at least `MIN_MS` and at most `MAX_MS` milliseconds (`u64::MAX`: no
/// upper bound), for clap's `value_parser = cmd::parse_duration_in::<100, { u64::MAX }>`.
pub fn parse_duration_in<const MIN_MS: u64, const MAX_MS: u64>(s: &str) -> Result<Duration, String> {
    let ms = crate::policy::money::parse_duration_ms(s)?;
    let ms = u64::try_from(ms).map_err(|_| format!("{s:?}: negative"))?;
    if (MIN_MS..=MAX_MS).contains(&ms) {
        return Ok(Duration::from_millis(ms));
    }
    Err(match MAX_MS {
        u64::MAX => format!("{s:?}: at least {}", human_ms(MIN_MS)),
        _ => format!("{s:?}: between {} and {}", human_ms(MIN_MS), human_ms(MAX_MS)),
    })
}

/// `3600000` → `1h`, `1500` → `1500ms`.
fn human_ms(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Installs the tracing subscriber: `RUST_LOG` if set, else `default_filter`; JSON lines (one
/// object per event, fields flattened) or text (colours only on a terminal); stderr.
pub fn init_tracing(default_filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}

/// A multi-threaded runtime (`worker_threads`: `None` for one per CPU). Its error is printed,
/// and the exit code to return comes back instead.
pub fn runtime(worker_threads: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Exit 0 on success; otherwise the error on stderr and `error_code`.
pub fn exit_code<E: Display>(result: Result<(), E>, error_code: u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(error_code)
        }
    }
}

/// Runs a CLI job on a multi-threaded runtime: exit 0 on success, `error_code` with the error
/// on stderr otherwise.
pub fn block_on_cli<E: Display>(job: impl Future<Output = Result<(), E>>, error_code: u8) -> ExitCode {
    match runtime(None) {
        Ok(rt) => exit_code(rt.block_on(job), error_code),
        Err(code) => code,
    }
}

/// Resolves on SIGTERM or Ctrl-C (only Ctrl-C off Unix), naming which came.
pub async fn shutdown_signal() -> &'static str {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => "interrupt",
                    _ = term.recv() => "SIGTERM",
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
                "interrupt"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        "interrupt"
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C (spawned on the current runtime).
pub fn cancel_on_shutdown(token: CancellationToken) {
    tokio::spawn(async move {
        let which = shutdown_signal().await;
        tracing::info!("{which}: shutting down");
        token.cancel();
    });
}

/// `tollgate crds [--helm]`: the CRDs generated from the Rust types (or the chart's template).
pub fn run_crds(helm: bool) -> ExitCode {
    let yaml = if helm { crate::api::crds_helm_template() } else { crate::api::crds_yaml() };
    match yaml {
        Ok(y) => {
            print!("{y}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot serialize the CRDs: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_their_bounds() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration_in::<1, { u64::MAX }>("0s"), Err("\"0s\": at least 1ms".into()));
        assert_eq!(parse_duration_in::<100, { u64::MAX }>("50ms"), Err("\"50ms\": at least 100ms".into()));
        assert_eq!(parse_duration_in::<100, { u64::MAX }>("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration_in::<1, 3_600_000>("2h"), Err("\"2h\": between 1ms and 1h".into()));
        assert_eq!(parse_duration_in::<1, 3_600_000>("1h"), Ok(Duration::from_secs(3600)));
    }
}
