//! The command line of every floor proxy: `BIN LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS] [EXTRA]`.
//! `examples/floor_proxy.rs` and each experiment beside this file include it by `#[path]`: they
//! are separate Cargo projects, so it cannot be a module of a shared crate.

use std::net::SocketAddr;

/// What a floor proxy was asked to do.
pub struct FloorArgs {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The upstream base URL, without a trailing `/`.
    pub base: &'static str,
    /// Worker threads (default: one per CPU).
    pub workers: usize,
    /// What follows the worker count (the floor's `plain`).
    #[allow(dead_code)] // only the floor reads it
    pub extra: Option<String>,
}

/// The process's arguments; a usage line naming `bin` and exit 2 when they are missing.
pub fn floor_args(bin: &str) -> FloorArgs {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: {bin} LISTEN_ADDR UPSTREAM_BASE_URL [WORKERS]");
        std::process::exit(2);
    };
    let listen = listen.parse().unwrap_or_else(|e| panic!("listen address {listen:?}: {e}"));
    let workers = args.next().map_or_else(
        || std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        |w| w.parse().unwrap_or_else(|e| panic!("workers {w:?}: {e}")),
    );
    let base = Box::leak(upstream.trim_end_matches('/').to_string().into_boxed_str());
    FloorArgs { listen, base, workers, extra: args.next() }
}
