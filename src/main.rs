//! The `tollgate` binary: CLI dispatch only, one subcommand per job (each job's `run_*` lives
//! in the library).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: fewer instructions per allocation than glibc's malloc on the request path
/// (bench/instructions.sh); the floor proxy uses it too, so it stays the gateway's exact stack.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kubernetes-native LLM routing: budget- and health-driven rotation of model routes.
#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions generated from the Rust types (the content of crds/).
    Crds {
        /// Print the Helm chart's CRD template instead (charts/tollgate/templates/crds.yaml).
        #[arg(long)]
        helm: bool,
    },
    /// Read ModelRoute and ProviderBudget manifests and print the gateway config document the
    /// controller would write (no cluster needed).
    Render {
        /// Directory of *.yaml / *.yml manifests (multi-document files are fine).
        #[arg(short = 'f', long = "filename")]
        dir: PathBuf,
        /// Namespace to render (needed when the manifests span several).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Also write the files the controller's ConfigMaps would hold into this directory, as
        /// a projected volume holds them (compact, gzip-compressed, or an index and shards).
        #[arg(long, value_name = "DIR")]
        stored_dir: Option<PathBuf>,
    },
    /// Run the OpenAI-compatible gateway: serve the config document FILE (hot-reloaded),
    /// route, fail over and meter spend; `/metrics` on its own listener.
    Gateway(Box<tollgate::gateway::GatewayArgs>),
    /// Run the gateway and the policy loop in one process from manifest files (no cluster):
    /// spend persists to a state file, edits to the manifests apply live.
    Local(Box<tollgate::local::LocalArgs>),
    /// Print the status table of a running `tollgate local`.
    Status(tollgate::local::StatusArgs),
    /// Send chat-completion traffic at a fixed rate for a fixed time (demos, quick start).
    Load(tollgate::local::load::LoadArgs),
    /// Run the operator: watch ModelRoutes, ProviderBudgets, their Secrets and the gateway pods;
    /// write each namespace's gateway ConfigMap and credentials Secret; read the gateways'
    /// signals, rotate on spend and error rate, and report in status and Events.
    Controller(Box<tollgate::controller::ControllerArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Gateway(args) => tollgate::gateway::run_gateway(*args),
        Command::Local(args) => tollgate::local::run_local(*args),
        Command::Status(args) => tollgate::local::run_status(args),
        Command::Load(args) => tollgate::local::load::run_load(args),
        Command::Controller(args) => tollgate::controller::run_controller(*args),
        Command::Crds { helm } => tollgate::cmd::run_crds(helm),
        Command::Render { dir, namespace, stored_dir } => tollgate::render::run_render(dir, namespace, stored_dir),
    }
}
