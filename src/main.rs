//! The `portcullis` command line: `serve`, `config`, `policy check|test`, `token create|list|revoke`, `gc`, `retention`, `fsck`, `tls generate`.
//! Only `serve` creates a missing storage root; every other command that
//! opens the store says it is missing (`storage::OpenMode`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

use portcullis::config::Config;
use portcullis::maintenance::{ChainSource, Maintenance, RunOptions};
use portcullis::policy::{authoring, scaffold};
use portcullis::policy::{PolicyChain, PolicyEngine};
use portcullis::server::{shutdown_signal, Server};
use portcullis::storage::{OpenMode, Storage};

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
    /// Re-hash every blob and check every link and manifest reference.
    Fsck {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Quarantine corrupt blobs and remove links and tags that point at nothing.
        #[arg(long, conflicts_with = "fix_permissions")]
        repair: bool,
        /// Only this: give every file and directory of the store
        /// storage.file_mode, storage.dir_mode and storage.group (a
        /// `registry:2` directory taken over by a registry running as
        /// another user); symbolic links are reported, never followed.
        #[arg(long)]
        fix_permissions: bool,
        /// With --fix-permissions: also make this user (a name or a uid)
        /// the owner of everything (run as root), e.g. the uid a non-root
        /// pod runs as.
        #[arg(long, requires = "fix_permissions")]
        owner: Option<String>,
        /// With --fix-permissions: report what would change, change nothing.
        #[arg(long, requires = "fix_permissions")]
        dry_run: bool,
    },
    /// Certificates for TLS without a proxy.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Check and try out policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Robot and personal tokens: long-lived passwords for CI and people.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Remove blobs no manifest references, abandoned uploads, and
    /// repositories left with no manifest, tag or upload; list what is kept
    /// as younger than storage.upload_max_age.
    Gc {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Report what would be removed without removing it (nothing at all
        /// is written).
        #[arg(long)]
        dry_run: bool,
        /// Apply the [[retention]] rules first (what the server's schedule does).
        #[arg(long)]
        retention: bool,
    },
    /// Apply the [[retention]] rules: delete the tags they drop (through the
    /// policy chain, as gc.identity) and the manifests only those tags kept.
    /// `portcullis gc` then frees their blobs.
    Retention {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print per repository which tags would go and which rule decided
        /// each; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make a local CA (reused if DIR has one) and a server certificate.
    Generate {
        /// Host name(s) clients use, e.g. cr.local.example.com.
        #[arg(long = "host", required = true, value_parser = portcullis::tls::parse_host)]
        hosts: Vec<String>,
        /// IP address(es) clients may use instead.
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Where to write ca.crt, ca.key, tls.crt, tls.key.
        #[arg(long, default_value = "./tls")]
        out: PathBuf,
        /// The port clients use, for the instructions printed (443 is left
        /// out of registry names, as clients leave it out).
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// How long the server certificate is valid, in days (at most 825;
        /// never past the CA's end).
        #[arg(long, default_value_t = portcullis::tls::DEFAULT_SERVER_DAYS,
              value_parser = portcullis::tls::parse_days, allow_negative_numbers = true)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print its secret (once; only a hash is stored).
    Create {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The user the token acts as (policies see it as the subject).
        #[arg(long)]
        user: String,
        /// The groups it acts with (default: the user's, from [groups]).
        #[arg(long, value_delimiter = ',')]
        groups: Option<Vec<String>>,
        /// How long it is valid, e.g. 90d (default: until revoked).
        #[arg(long)]
        expires: Option<humantime::Duration>,
        /// What it is for, shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke a token by its id; every replica refuses it within auth.robot_token_refresh.
    Revoke {
        #[arg(long, short)]
        config: Option<PathBuf>,
        id: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Write a new policy project (a starter policy, the contract's WIT,
    /// build.sh, test.sh, cases.json and a README) into DIR/NAME.
    New {
        /// The project's name: its directory and package, and the component
        /// `build/NAME.wasm` (lowercase letters, digits and `-`).
        name: String,
        /// The language to write the policy in.
        #[arg(long, value_enum)]
        lang: scaffold::Lang,
        /// Where the project's directory is created.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Load the config's policy chain (compile, validate settings) and report.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Compile a component read from stdin into a cache file (used by
    /// `serve` to compile policies in a child process).
    #[command(hide = true)]
    Precompile {
        #[arg(long)]
        output: PathBuf,
    },
    /// Decide requests with one policy: one `--request` (exit 0 allowed, 1
    /// denied or failed), or a table of `--cases` with their expected
    /// decisions (exit 0 when every case matches, 1 otherwise). Exit 2: the
    /// policy or the input could not be loaded.
    Test {
        /// The policy component (.wasm).
        #[arg(long)]
        policy: PathBuf,
        /// The policy's settings as JSON, or @FILE.
        #[arg(long, default_value = "{}")]
        settings: String,
        /// One request as JSON (WIT field names), or @FILE.
        #[arg(long, conflicts_with = "cases", required_unless_present = "cases")]
        request: Option<String>,
        /// A JSON file of cases: `[{"name": ..., "request": {...}, "expect":
        /// "allow" | "deny" | "failed", "reason": "substring"}]`.
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Fuel for each evaluation.
        #[arg(long, default_value_t = 10_000_000)]
        fuel: u64,
        /// Where compiled components are cached (default: the user's cache
        /// directory, `$XDG_CACHE_HOME/portcullis`); `--no-cache` compiles anew.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        #[arg(long)]
        no_cache: bool,
    },
    /// Decide the requests of a decision log again under another config's
    /// chain, and print every decision that would change (exit 1 if any).
    Replay {
        /// A decision log (`policy.decision_log.path`), JSON lines.
        #[arg(long)]
        log: PathBuf,
        /// The config whose chain decides.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Store a policy component as an OCI artifact (one `application/wasm`
    /// layer), for `module = "oci://HOST/REPOSITORY:TAG"` in a chain entry.
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// Where to: `HOST/REPOSITORY:TAG` (plain HTTP for loopback hosts).
        reference: String,
        /// Log in as this user; the password is read from
        /// `PORTCULLIS_PUSH_PASSWORD` (never a command-line argument).
        #[arg(long)]
        username: Option<String>,
    },
    /// Run every stored tag through a config's chain as a push by a named
    /// identity, and list what it would refuse (exit 1 if anything).
    Audit {
        /// The config whose chain decides, and whose storage is scanned.
        #[arg(long, short)]
        config: PathBuf,
        /// The user the pushes are decided for (groups from the config's
        /// `[groups]`); anonymous when absent.
        #[arg(long = "as")]
        user: Option<String>,
    },
}

/// Logs go to stderr through a writer thread: request handlers only queue
/// their line (an access log written under stderr's lock, one `write` per
/// request, cost the busy server about 8% of its throughput). Nothing is
/// dropped: when the queue is full the request waits, as it did before.
/// The returned guard flushes what is queued when `main` returns.
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // The queue's slots are allocated up front: the default 128,000 lines
        // cost 5 MiB of resident memory; 8,192 lines are seconds of logs.
        .buffered_lines_limit(8192)
        .thread_name("portcullis-log")
        .finish(std::io::stderr());
    // Colour only for a person at a terminal: a journal, a file or a log
    // collector gets no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
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

/// Ends the process with an authoring command's exit code (0 all as
/// expected, 1 a denial or mismatch, 2 could not run), after its output.
fn exit_with(code: Result<u8, String>) -> Result<(), String> {
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(i32::from(code)),
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2)
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => {
            let config_path = config;
            let config = Config::load(config_path.as_deref()).map_err(|e| e.to_string())?;
            // Policies missing from the compile cache are compiled by a child
            // process, so the server never holds the compiler's memory.
            match std::env::current_exe() {
                Ok(exe) => portcullis::policy::engine::compile_in_child_processes(exe),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot find this executable; policies compile in-process")
                }
            }
            let server = Server::bind_watching(config.clone(), config_path)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                addr = %server.local_addr(),
                storage = %server.storage_location(),
                "portcullis listening"
            );
            server
                .run(shutdown_signal())
                .await
                .map_err(|e| format!("server failed: {e}"))
        }
        Command::Policy {
            command: PolicyCommand::Check { config },
        } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let engine = PolicyEngine::new(authoring::cache_dir_outside_serve(&config))
                .map_err(|e| e.to_string())?;
            // `oci://` modules of this registry are read from its storage.
            if config
                .policy
                .chain
                .iter()
                .any(|p| p.module.starts_with("oci://"))
            {
                let storage = Storage::open_with(&config.storage, OpenMode::ReadOnly).await?;
                engine.attach_lookups(portcullis::policy::lookups::Lookups::new(
                    storage,
                    std::sync::Arc::new(portcullis::metrics::Metrics::new()),
                ));
            }
            let engine = std::sync::Arc::new(engine);
            let chain = tokio::task::spawn_blocking(move || PolicyChain::load(engine, &config))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            println!("policy chain ok: {}", chain.names().join(" -> "));
            for (name, module, contract, mode) in chain.describe() {
                println!("  {name}: {module} (contract {contract}, {mode:?})");
            }
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::New { name, lang, dir },
        } => {
            let project = scaffold::new_project(&name, lang, &dir).map_err(|e| e.to_string())?;
            println!("{}", scaffold::next_steps(&name, lang, &project));
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Precompile { output },
        } => {
            let mut wasm = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut wasm)
                .map_err(|e| format!("stdin: {e}"))?;
            portcullis::policy::engine::precompile_to(&wasm, &output).map_err(|e| e.to_string())
        }
        Command::Policy {
            command:
                PolicyCommand::Test {
                    policy,
                    settings,
                    request,
                    cases,
                    fuel,
                    cache_dir,
                    no_cache,
                },
        } => {
            let cache_dir = if no_cache {
                None
            } else {
                cache_dir.or_else(authoring::user_cache_dir)
            };
            let test = authoring::TestRun {
                policy,
                settings,
                request,
                cases,
                fuel,
                cache_dir,
            };
            exit_with(authoring::run_tests(&test))
        }
        Command::Policy {
            command:
                PolicyCommand::Push {
                    file,
                    reference,
                    username,
                },
        } => {
            use portcullis::policy::artifacts;
            let target = reference.strip_prefix("oci://").unwrap_or(&reference);
            let target = artifacts::parse_ref(target).map_err(|e| format!("{reference}: {e}"))?;
            let wasm = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let auth = match username {
                Some(user) => {
                    let password = std::env::var("PORTCULLIS_PUSH_PASSWORD")
                        .map_err(|_| "set PORTCULLIS_PUSH_PASSWORD with --username")?;
                    oci_client::secrets::RegistryAuth::Basic(user, password)
                }
                None => oci_client::secrets::RegistryAuth::Anonymous,
            };
            let digest = artifacts::push(wasm, &target, auth).await?;
            println!("pushed {target} ({digest})");
            println!(
                "use it with: module = \"oci://{}/{}@{digest}\"",
                target.host, target.repository
            );
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Replay { log, config },
        } => {
            let config = Config::load(Some(&config)).map_err(|e| e.to_string())?;
            exit_with(authoring::replay(&log, &config).await)
        }
        Command::Policy {
            command: PolicyCommand::Audit { config, user },
        } => {
            let config = Config::load(Some(&config)).map_err(|e| e.to_string())?;
            exit_with(authoring::audit(&config, user.as_deref()).await)
        }
        Command::Fsck {
            config,
            repair,
            fix_permissions,
            owner,
            dry_run,
        } => {
            if fix_permissions {
                return fix_permissions_command(config.as_deref(), owner.as_deref(), dry_run);
            }
            let mode = if repair {
                OpenMode::Maintain
            } else {
                OpenMode::ReadOnly
            };
            let storage = open_storage(config.as_deref(), mode).await?;
            let report = storage
                .fsck(repair, progress_bar())
                .await
                .map_err(|e| e.to_string())?;
            for finding in &report.repaired {
                println!("repaired: {finding}");
            }
            for finding in &report.findings {
                println!("{finding}");
            }
            println!(
                "{} blobs and {} manifests checked, {} findings, {} repaired",
                report.blobs_checked,
                report.manifests_checked,
                report.findings.len() + report.repaired.len(),
                report.repaired.len()
            );
            if !report.findings.is_empty() {
                return Err(format!(
                    "{} problems remain{}",
                    report.findings.len(),
                    if repair {
                        ""
                    } else {
                        "; `portcullis fsck --repair` fixes links, tags and corrupt blobs"
                    }
                ));
            }
            Ok(())
        }
        Command::Tls {
            command:
                TlsCommand::Generate {
                    hosts,
                    ips,
                    out,
                    port,
                    days,
                },
        } => {
            let generated =
                portcullis::tls::generate(&hosts, &ips, &out, days).map_err(|e| e.to_string())?;
            print_tls_instructions(&generated, &hosts, &ips, port);
            Ok(())
        }
        Command::Config { config } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Token { command } => token_command(command).await,
        Command::Gc {
            config,
            dry_run,
            retention,
        } => {
            let options = RunOptions {
                retention,
                gc: true,
                dry_run,
            };
            maintenance_command(config.as_deref(), options).await
        }
        Command::Retention { config, dry_run } => {
            let options = RunOptions {
                retention: true,
                gc: false,
                dry_run,
            };
            maintenance_command(config.as_deref(), options).await
        }
    }
}

/// `portcullis gc` and `portcullis retention`: one maintenance run, under
/// the same lock as the server's schedule.
async fn maintenance_command(
    config: Option<&std::path::Path>,
    options: RunOptions,
) -> Result<(), String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let mut options = options;
    if options.retention && config.retention.is_empty() {
        if !options.gc {
            return Err("the config has no [[retention]] rules".into());
        }
        eprintln!("note: the config has no [[retention]] rules; running gc only");
        options.retention = false;
    }
    // A dry run opens the store read-only: nothing at all is written.
    let mode = if options.dry_run {
        OpenMode::ReadOnly
    } else {
        OpenMode::Maintain
    };
    let (storage, chain) = if options.retention {
        let (chain, storage) = authoring::chain_with_store(&config, mode).await?;
        (
            storage,
            Some(ChainSource::Fixed(std::sync::Arc::new(chain))),
        )
    } else {
        (Storage::open_with(&config.storage, mode).await?, None)
    };
    let max_age = humantime::format_duration(config.storage.upload_max_age);
    if let Storage::S3(s3) = &storage {
        if !options.dry_run && !s3.enforces_conditional_writes() {
            eprintln!(
                "note: {} does not enforce conditional writes, so no lease keeps two runs \
                 apart: make sure no other gc runs now (a CronJob with concurrencyPolicy: \
                 Forbid, no replica with gc.every)",
                s3.description()
            );
        }
    }
    let metrics = std::sync::Arc::new(portcullis::metrics::Metrics::new());
    let maintenance = Maintenance::new(&config, storage, chain, metrics)
        .map_err(|e| e.to_string())?
        .with_progress(progress_bar());
    let report = maintenance.run(options).await.map_err(|e| e.to_string())?;
    let dry_run = options.dry_run;
    if let Some(retention) = &report.retention {
        print!("{}", retention.render());
        let deleted = if dry_run {
            "would be deleted"
        } else {
            "deleted"
        };
        println!(
            "retention: {} tags {deleted}, {} manifests {deleted}, {} refused by policies",
            retention.tags_deleted(),
            retention.manifests_deleted(),
            retention.refused(),
        );
    }
    if let Some(report) = &report.gc {
        let verb = if dry_run { "would remove" } else { "removed" };
        for removal in &report.removed {
            println!("{verb} {removal}");
        }
        for kept in &report.kept_young {
            println!("kept {kept}: younger than storage.upload_max_age ({max_age})");
        }
        for note in &report.notes {
            println!("{note}");
        }
        println!(
            "{} manifests scanned, {} blobs kept, {} items {verb}, {} bytes {}; \
             {} items ({} bytes) kept as younger than storage.upload_max_age ({max_age})",
            report.manifests_scanned,
            report.kept_blobs,
            report.removed.len(),
            report.freed_bytes(),
            if dry_run { "would be freed" } else { "freed" },
            report.kept_young.len(),
            report.kept_young_bytes(),
        );
    }
    Ok(())
}

async fn token_command(command: TokenCommand) -> Result<(), String> {
    use portcullis::identity::robots;
    let when = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default()
    };
    match command {
        TokenCommand::Create {
            config,
            user,
            groups,
            expires,
            description,
        } => {
            let loaded = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
                return Err("--user must be a name of at most 256 characters".into());
            }
            let storage = Storage::open_with(&loaded.storage, OpenMode::AddTo).await?;
            let expires = expires.map(|d| {
                portcullis::identity::jwt::now()
                    .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            });
            let (record, secret) = robots::create(&storage, &user, groups, expires, &description)
                .await
                .map_err(|e| e.to_string())?;
            println!("{secret}");
            eprintln!(
                "token {} for {} created{}; it is shown once. Log in with:\n  \
                 echo \"$TOKEN\" | docker login <registry> -u {} --password-stdin",
                record.id,
                record.user,
                record
                    .expires
                    .map(|e| format!(", valid until {}", when(e)))
                    .unwrap_or_default(),
                record.user
            );
            if !loaded.accounts_enabled() {
                eprintln!(
                    "note: accounts are off in this config; set auth.enabled = true \
                     (or auth.htpasswd) for the registry to accept the token"
                );
            }
            Ok(())
        }
        TokenCommand::List { config } => {
            let storage = open_storage(config.as_deref(), OpenMode::ReadOnly).await?;
            let tokens = robots::list(&storage).await.map_err(|e| e.to_string())?;
            println!("ID                USER  GROUPS  CREATED  EXPIRES  LAST USED  DESCRIPTION");
            for t in tokens {
                let last = robots::last_used(&storage, &t.id).await;
                println!(
                    "{}  {}  {}  {}  {}  {}  {}",
                    t.id,
                    t.user,
                    t.groups
                        .map(|g| g.join(","))
                        .unwrap_or_else(|| "(the user's)".into()),
                    when(t.created),
                    t.expires.map(when).unwrap_or_else(|| "never".into()),
                    last.map(when).unwrap_or_else(|| "never".into()),
                    t.description
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { config, id } => {
            let storage = open_storage(config.as_deref(), OpenMode::Maintain).await?;
            if robots::revoke(&storage, &id)
                .await
                .map_err(|e| e.to_string())?
            {
                println!("revoked {id}");
                Ok(())
            } else {
                Err(format!("no token {id}"))
            }
        }
    }
}

/// The store a config names, for the maintenance commands: a missing root
/// or bucket is an error, and nothing is made that `mode` does not allow.
async fn open_storage(config: Option<&std::path::Path>, mode: OpenMode) -> Result<Storage, String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    Storage::open_with(&config.storage, mode).await
}

/// `portcullis fsck --fix-permissions`: the filesystem store's modes, group
/// and (with `--owner`) owner made what the config says.
fn fix_permissions_command(
    config: Option<&std::path::Path>,
    owner: Option<&str>,
    dry_run: bool,
) -> Result<(), String> {
    use portcullis::storage::permissions;
    let config = Config::load(config).map_err(|e| e.to_string())?;
    if config.storage.backend != portcullis::config::Backend::Filesystem {
        return Err(
            "--fix-permissions works on a filesystem store; an S3 bucket's objects have no modes"
                .into(),
        );
    }
    let settings = portcullis::storage::StorageSettings::from_config(&config.storage)?;
    let owner = owner.map(permissions::resolve_user).transpose()?;
    let target = permissions::Target {
        permissions: settings.permissions,
        owner,
    };
    let report =
        permissions::fix(&config.storage.root, &target, dry_run).map_err(|e| e.to_string())?;
    let verb = if dry_run { "would change" } else { "changed" };
    for line in &report.changes {
        println!("{verb}: {line}");
    }
    for line in &report.skipped {
        println!("skipped: {line}");
    }
    for line in &report.failures {
        println!("failed: {line}");
    }
    println!(
        "{} directories and {} files looked at below {}; modes {verb} on {}, owner or group on {}; \
         {} skipped, {} failed",
        report.dirs,
        report.files,
        report.root.display(),
        report.modes_changed,
        report.owners_changed,
        report.skipped.len(),
        report.failures.len()
    );
    if !report.failures.is_empty() {
        return Err(format!(
            "{} entries could not be changed (run as root, or as their owner)",
            report.failures.len()
        ));
    }
    Ok(())
}

/// A progress bar drawn on a terminal only (indicatif hides it otherwise).
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len}") {
        bar.set_style(style);
    }
    bar
}

/// What to do with freshly generated certificates, step by step.
fn print_tls_instructions(
    g: &portcullis::tls::Generated,
    hosts: &[String],
    ips: &[std::net::IpAddr],
    port: u16,
) {
    use portcullis::tls::format_utc;
    let (ca, cert, key) = (g.ca_cert.display(), g.cert.display(), g.key.display());
    // Clients name a registry as image references do: `host:port`, or the
    // bare host on 443 (docker's certs.d and containerd's hosts look the
    // name up as written, and nobody writes `:443`).
    let host = &hosts[0];
    let host = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.clone(),
    };
    let reg = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let names = hosts
        .iter()
        .cloned()
        .chain(ips.iter().map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(", ");
    let days = |t: time::OffsetDateTime, from: time::OffsetDateTime| (t - from).whole_days();
    let now = time::OffsetDateTime::now_utc();
    let ca_state = if g.ca.reused {
        format!("kept from {ca}; {} days left", days(g.ca.not_after, now))
    } else {
        format!("new; {} days", days(g.ca.not_after, g.not_before))
    };
    let cut_short = if g.ends_with_ca {
        format!(
            "\n  cut short to end with its CA: before {}, move ca.crt and ca.key away and\n  \
             generate again (a new CA, which every client must then trust)",
            format_utc(g.ca.not_after)
        )
    } else {
        String::new()
    };
    println!(
        "Wrote {ca} (the CA to trust), {cert} and {key} (mode 0600).

CA: {ca_name} ({ca_state})
  valid until {ca_until}
Server certificate for {names}:
  valid until {until} ({valid} days){cut_short}
  Renew it before then: run this command again with the same --out (the CA is
  kept, so clients need nothing new). The server warns in its log from 30 days
  before; /metrics has portcullis_tls_certificate_expiry_timestamp_seconds.

1. Serve TLS: in portcullis.toml
     [tls]
     cert = \"{cert}\"
     key = \"{key}\"
   (the files are re-read when they change; no restart needed).

2. Docker on each machine that pushes or pulls (the directory is the registry's
   name as images spell it: {reg}):
     sudo mkdir -p /etc/docker/certs.d/{reg}
     sudo cp {ca} /etc/docker/certs.d/{reg}/ca.crt

3. Every cluster node (Debian/Ubuntu/Raspberry Pi OS), so containerd and curl trust it:
     sudo cp {ca} /usr/local/share/ca-certificates/portcullis-ca.crt
     sudo update-ca-certificates

4. k3s: /etc/rancher/k3s/registries.yaml on every node, then restart k3s:
     configs:
       \"{reg}\":
         tls:
           ca_file: /usr/local/share/ca-certificates/portcullis-ca.crt
   or plain containerd: /etc/containerd/certs.d/{reg}/hosts.toml
     server = \"https://{reg}\"
     [host.\"https://{reg}\"]
       ca = \"/usr/local/share/ca-certificates/portcullis-ca.crt\"

Keep ca.key private: anyone holding it can issue certificates your nodes trust.",
        ca_name = g.ca.name,
        ca_until = format_utc(g.ca.not_after),
        until = format_utc(g.not_after),
        valid = days(g.not_after, g.not_before),
    );
}
