//! The `portcullis` command line: `serve`, `config`, `gc`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

use portcullis::config::Config;
use portcullis::server::{shutdown_signal, Server};
use portcullis::storage::{Storage, StorageSettings};

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A self-hosted OCI registry")]
struct Cli {
    /// Log format: human-readable lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration, or why it is invalid.
    Config {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove blobs no manifest references and abandoned uploads.
    Gc {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Report what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let server = Server::bind(config.clone()).await.map_err(|e| e.to_string())?;
            tracing::info!(
                addr = %server.local_addr(),
                storage = %config.storage.root.display(),
                "portcullis listening"
            );
            server
                .run(shutdown_signal())
                .await
                .map_err(|e| format!("server failed: {e}"))
        }
        Command::Config { config } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Gc { config, dry_run } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let storage = Storage::open(
                &config.storage.root,
                StorageSettings {
                    upload_max_age: config.storage.upload_max_age,
                },
            )
            .map_err(|e| e.to_string())?;
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len}") {
                bar.set_style(style);
            }
            let report = storage
                .collect_garbage(dry_run, bar)
                .await
                .map_err(|e| e.to_string())?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for removal in &report.removed {
                println!("{verb} {removal}");
            }
            println!(
                "{} manifests scanned, {} blobs kept, {} items {verb}, {} bytes {}",
                report.manifests_scanned,
                report.kept_blobs,
                report.removed.len(),
                report.freed_bytes(),
                if dry_run { "would be freed" } else { "freed" },
            );
            Ok(())
        }
    }
}
