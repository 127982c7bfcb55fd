//! The `key=value` command line both tools read, and the one way they stop on a bad one.

/// The value of `key=` in `args`, else `default`; stops with exit 2 when it is missing with no
/// default, or does not parse.
pub fn arg<T: std::str::FromStr>(args: &[String], key: &str, default: Option<T>) -> T {
    let prefix = format!("{key}=");
    match args.iter().find_map(|a| a.strip_prefix(&prefix)) {
        Some(v) => v.parse().unwrap_or_else(|_| die(&format!("bad value for {key}: {v}"))),
        None => default.unwrap_or_else(|| die(&format!("missing {key}="))),
    }
}

/// Prints `msg` after the tool's name and exits 2.
pub fn die(msg: &str) -> ! {
    eprintln!("{}: {msg}", env!("CARGO_BIN_NAME"));
    std::process::exit(2)
}
