//! Portcullis against CNCF Distribution (Debian's docker-registry) on loopback:
//! the same workloads against both, alternating, and a markdown table of the
//! figures, their ratio and the targets. Run it through `bench/run.sh`, which
//! builds both binaries; every setting is an environment variable (see run.sh).

mod client;
mod report;
mod servers;
mod workloads;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper::Method;

use report::{Better, Report, Row, Target};
use servers::{
    Binaries, Garage, GarageMark, GarageUse, Kind, RssSampler, S3Store, Server, Storage,
};

const MB: f64 = 1e6;
const GIB: f64 = (1u64 << 30) as f64;

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn pick<T>(quick: bool, full: T, quick_value: T) -> T {
    if quick {
        quick_value
    } else {
        full
    }
}

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

struct Settings {
    quick: bool,
    blob_mib: u64,
    chunk_mib: u64,
    pull_clients: usize,
    small_count: usize,
    small_kib: usize,
    small_clients: usize,
    secs: f64,
    warmup: f64,
    concurrency: Vec<usize>,
    image_mib: u64,
    layers: usize,
    rounds: usize,
    startup_runs: usize,
    workloads: Vec<usize>,
    tmp: PathBuf,
    bins: Binaries,
    docker: bool,
    storage: Storage,
    /// The Garage of the S3 mode, when bench/run.sh started it.
    garage: Option<Garage>,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let quick = env_or("BENCH_QUICK", 0u32) == 1;
        let storage = match std::env::var("BENCH_STORAGE").as_deref() {
            Err(_) | Ok("") | Ok("filesystem") => Storage::Filesystem,
            Ok("s3") => {
                let var = |name: &str| {
                    std::env::var(name).with_context(|| {
                        format!("BENCH_STORAGE=s3 needs {name} (use bench/run.sh)")
                    })
                };
                let part_mib: u64 = env_or("BENCH_S3_PART_MIB", 8);
                if !(5..=512).contains(&part_mib) {
                    anyhow::bail!("BENCH_S3_PART_MIB={part_mib}: S3 parts are 5 to 512 MiB here");
                }
                Storage::S3(S3Store {
                    endpoint: var("BENCH_S3_ENDPOINT")?,
                    bucket: var("BENCH_S3_BUCKET")?,
                    region: var("BENCH_S3_REGION")?,
                    access_key: var("BENCH_S3_ACCESS_KEY")?,
                    secret_key: var("BENCH_S3_SECRET_KEY")?,
                    part_size: part_mib << 20,
                })
            }
            Ok(other) => anyhow::bail!("BENCH_STORAGE={other}: expected filesystem or s3"),
        };
        let s3 = matches!(storage, Storage::S3(_));
        let distribution = std::env::var("BENCH_DISTRIBUTION")
            .ok()
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/usr/bin/docker-registry")))
            .filter(|p| p.exists());
        Ok(Self {
            quick,
            blob_mib: env_or("BENCH_BLOB_MIB", pick(quick, 1024, 64)),
            chunk_mib: env_or("BENCH_CHUNK_MIB", 16),
            pull_clients: env_or("BENCH_PULL_CLIENTS", 8),
            small_count: env_or("BENCH_SMALL_BLOBS", pick(quick, 2000, 200)),
            small_kib: env_or("BENCH_SMALL_KIB", 4),
            small_clients: env_or("BENCH_SMALL_CLIENTS", 16),
            secs: env_or("BENCH_SECS", pick(quick, 5.0, 1.0)),
            warmup: env_or("BENCH_WARMUP_SECS", pick(quick, 0.5, 0.2)),
            concurrency: env_list("BENCH_CONCURRENCY", "1,16,64"),
            image_mib: env_or("BENCH_IMAGE_MIB", pick(quick, 200, 20)),
            layers: env_or("BENCH_IMAGE_LAYERS", 10),
            rounds: env_or("BENCH_ROUNDS", 1usize).max(1),
            startup_runs: env_or("BENCH_STARTUP_RUNS", pick(quick, 5usize, 3)).max(1),
            // Workload 5 (docker pull) only when asked for on S3.
            workloads: env_list(
                "BENCH_WORKLOADS",
                if s3 { "1,2,3,4,6,7" } else { "1,2,3,4,5,6,7" },
            ),
            tmp: PathBuf::from(
                std::env::var("BENCH_TMPDIR")
                    .context("BENCH_TMPDIR is not set (use bench/run.sh)")?,
            ),
            bins: Binaries {
                portcullis: PathBuf::from(
                    std::env::var("BENCH_PORTCULLIS")
                        .unwrap_or_else(|_| "target/release/portcullis".into()),
                ),
                distribution,
            },
            docker: env_or("BENCH_DOCKER", 1u32) == 1,
            garage: if s3 { Garage::from_env() } else { None },
            storage,
        })
    }

    fn runs(&self, w: usize) -> bool {
        self.workloads.contains(&w)
    }
}

impl Settings {
    fn s3(&self) -> Option<&S3Store> {
        match &self.storage {
            Storage::S3(s3) => Some(s3),
            Storage::Filesystem => None,
        }
    }

    /// Waits for Garage to go quiet (what it still does in the background
    /// for the previous cell, it does not charge to this one), then marks.
    async fn garage_mark(&self) -> Option<GarageMark> {
        let g = self.garage.as_ref()?;
        if !g.settle().await {
            println!("  (garage still busy after 10 s; measuring anyway)");
        }
        Some(g.mark())
    }

    fn garage_since(&self, mark: &Option<GarageMark>) -> Option<GarageUse> {
        Some(self.garage.as_ref()?.since(mark.as_ref()?))
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into())
}

fn header(s: &Settings) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let p_version = command_line(
        s.bins.portcullis.to_str().unwrap_or("portcullis"),
        &["--version"],
    );
    let d_version = s
        .bins
        .distribution
        .as_ref()
        .map(|d| command_line(d.to_str().unwrap_or("docker-registry"), &["--version"]))
        .unwrap_or_else(|| "not installed (apt-get install -y docker-registry)".into());
    println!(
        "# Portcullis vs CNCF Distribution benchmark{}{}",
        if s.s3().is_some() {
            ", S3 storage (Garage)"
        } else {
            ""
        },
        if s.quick {
            " (BENCH_QUICK=1: smoke run, not a baseline)"
        } else {
            ""
        }
    );
    println!();
    println!(
        "- date: {}",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    );
    println!(
        "- nproc: {}, kernel: {}, CPU: {cpu}",
        command_line("nproc", &[]),
        kernel.trim()
    );
    println!(
        "- load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "- portcullis: {p_version} ({}), rev {}",
        s.bins.portcullis.display(),
        std::env::var("BENCH_REV").unwrap_or_else(|_| "?".into())
    );
    println!("- distribution: {d_version}");
    println!("- load generator: bench/ (Rust, hyper 1.x client, one keep-alive HTTP/1.1 connection per client, tokio on {} worker threads, same machine as the servers: client CPU competes with the server's)", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    match s.s3() {
        None => println!("- portcullis runs with the three bundled policies (repo-allowlist, group-access, tag-immutability, all evaluated and allowing: the chain of benches/policy.rs, as examples/portcullis.toml enables only tag-immutability) unless a row says \"no policies\"; distribution with Debian's default config less auth (inmemory blob descriptor cache); both log at their default level to files; storage in fresh directories under {}", s.tmp.display()),
        Some(s3) => {
            println!("- portcullis runs with the three bundled policies (repo-allowlist, group-access, tag-immutability, all evaluated and allowing: the chain of benches/policy.rs, as examples/portcullis.toml enables only tag-immutability) unless a row says \"no policies\"; distribution with Debian's default config less auth (inmemory blob descriptor cache); both log at their default level to files under {}", s.tmp.display());
            let garage = match &s.garage {
                Some(g) => format!(
                    "{} (pid {}, single node, lmdb, replication 1, data under {}, log at INFO: one line per request)",
                    g.version(),
                    g.pid,
                    s.tmp.display()
                ),
                None => "not started by bench/run.sh: no Garage rows".into(),
            };
            println!("- storage: S3, bucket {} at {}, every server under its own key prefix (bench-p-policies, bench-p-bare, bench-distribution, ...); garage: {garage}", s3.bucket, s3.endpoint);
            println!("- portcullis: `backend = \"s3\"`, part_size {} MiB, redirect off (blob bytes pass through the server), conditional_writes auto; distribution: its s3 driver (aws-sdk-go v1), chunksize {} MiB, `redirect: disable: true`, v4auth, path-style; both started without AWS_* in their environment", s3.part_size >> 20, s3.part_size >> 20);
            println!("- three processes share the 2 cores during S3 cells: the server, Garage, and the load generator");
        }
    }
    println!("- workload 4 also runs GET against a third portcullis, \"3 bundled policies + builtin:signature on pull\": the same three policies (no accounts), then `builtin:signature` (`actions = [\"pull\"]`, `keys` = a P-256 key generated for the run); its image carries a cosign signature pushed in the tag scheme (`sha256-<hex>.sig`: simple-signing payload blob, `{{}}` config, base64 ASN.1 DER ECDSA-P256-SHA256 signature in the layer's annotation); every GET looks the signature up (tag and referrers) and verifies it, the verification itself cached by the host");
    println!("- the 3-policies portcullis has accounts on (`[auth] htpasswd`, user bench in group devs, token_ttl 1h): every workload calls it anonymously (allowed by the chain as before; docker in workload 5 fetches an anonymous token, as it does from any registry with accounts), except the \"Bearer token\" rows of workload 4 (manifest GET with bench's token from /token, fetched once); its start-up waits for /healthz, as GET /v2/ without credentials answers 401");
    println!(
        "- scale: blob {} MiB (chunks {} MiB), pull clients 1 and {}, {} small blobs of {} KiB with {} clients, manifest cells {} s (+{} s warm-up) at c={:?}, image {} MiB in {} layers, {} round(s), start-up runs {}",
        s.blob_mib, s.chunk_mib, s.pull_clients, s.small_count, s.small_kib, s.small_clients, s.secs, s.warmup, s.concurrency, s.image_mib, s.layers, s.rounds, s.startup_runs
    );
    println!("- MB = 10^6 bytes; ratio = portcullis / distribution; every figure is the median over rounds");
    if s.s3().is_some() {
        println!("- Garage rows: Garage's own CPU (utime+stime of its process) and the S3 requests it logged while the workload ran against each server: the portcullis column is Garage serving Portcullis, the distribution column Garage serving Distribution");
        println!("- targets: the filesystem mode's, shown for reference (none were set for S3)");
    }
    println!();
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Per-server samples of one measure.
#[derive(Default)]
struct Samples {
    p: Vec<f64>,
    d: Vec<f64>,
}

impl Samples {
    fn push(&mut self, kind: Kind, v: f64) {
        if kind == Kind::Distribution {
            self.d.push(v)
        } else {
            self.p.push(v)
        }
    }

    /// A row of the largest sample of each (for peaks).
    fn row_max(self, name: &str, unit: &'static str, better: Better, target: Target) -> Row {
        let max = |v: Vec<f64>| v.into_iter().filter(|x| x.is_finite()).reduce(f64::max);
        Row {
            name: name.into(),
            unit,
            better,
            p: max(self.p),
            d: max(self.d),
            target,
        }
    }

    /// A row with no target where lower is better (CPU, requests, latencies).
    fn cost(self, name: impl Into<String>, unit: &'static str) -> Row {
        self.row(name, unit, Better::Lower, Target::None)
    }

    fn row(
        self,
        name: impl Into<String>,
        unit: &'static str,
        better: Better,
        target: Target,
    ) -> Row {
        Row {
            name: name.into(),
            unit,
            better,
            p: median(self.p),
            d: median(self.d),
            target,
        }
    }
}

/// One manifest cell's samples.
struct Cell {
    kind: Kind,
    /// Requests with the user's Bearer token (else anonymous).
    bearer: bool,
    /// req/s, p50 ms, p99 ms; S3 mode: S3 requests per request, Garage CPU s per 1000 requests.
    values: [Vec<f64>; 5],
}

impl Cell {
    fn new(kind: Kind, bearer: bool) -> Self {
        Self {
            kind,
            bearer,
            values: Default::default(),
        }
    }
}

/// The servers in the order of step `k`: alternating who goes first.
fn order<'a>(servers: &'a [&'a Server], k: usize) -> Vec<&'a Server> {
    let mut v: Vec<&Server> = servers.to_vec();
    if k % 2 == 1 {
        v.reverse();
    }
    v
}

struct Peak {
    sampler: RssSampler,
    hwm_reset: bool,
    /// VmRSS when the measurement began, MiB.
    start: f64,
}

fn peak_start(server: &Server) -> Peak {
    let hwm_reset = server.reset_hwm();
    Peak {
        sampler: RssSampler::start(server.pid),
        hwm_reset,
        start: server.status_kib("VmRSS") as f64 / 1024.0,
    }
}

/// S3 mode: the RSS a measurement started from, next to its peak (memory
/// the allocator kept from an earlier cell shows as this one's peak).
fn rss_at_start(s: &Settings, peak: &Peak) -> String {
    if s.s3().is_some() {
        format!(" ({:.1} at start)", peak.start)
    } else {
        String::new()
    }
}

async fn peak_finish(server: &Server, peak: Peak) -> f64 {
    let sampled = peak.sampler.finish().await;
    let hwm = if peak.hwm_reset {
        server.status_kib("VmHWM")
    } else {
        0
    };
    sampled.max(hwm) as f64 / 1024.0
}

/// Garage's part in a measurement for the progress log: its CPU per `unit`
/// of work and the S3 requests per `per` of them (empty outside the S3 mode).
fn garage_text(
    used: &Option<GarageUse>,
    units: f64,
    unit: &str,
    per: f64,
    per_what: &str,
) -> String {
    match used {
        Some(u) => format!(
            "; garage {:.2} CPU s/{unit}, {:.1} S3 requests/{per_what}",
            u.cpu_secs / units,
            u.requests as f64 / per
        ),
        None => String::new(),
    }
}

/// Garage's use per server over the whole run (S3 mode), for the closing notes.
#[derive(Default)]
struct GarageLedger {
    per: Vec<(Kind, GarageUse)>,
}

impl GarageLedger {
    fn add(&mut self, kind: Kind, used: &Option<GarageUse>) {
        let Some(used) = used else { return };
        match self.per.iter_mut().find(|x| x.0 == kind) {
            Some(x) => x.1.add(used),
            None => {
                let mut u = GarageUse::default();
                u.add(used);
                self.per.push((kind, u));
            }
        }
    }
}

fn log_line(what: &str, server: &Server, value: String) {
    println!("  {what:<44} {:<26} {value}", server.kind.label());
}

#[tokio::main]
async fn main() -> Result<()> {
    let s = Settings::from_env()?;
    let t_all = Instant::now();
    header(&s);
    let mut report = Report::default();
    if s.s3().is_some() {
        report.targets_caption =
            Some("the filesystem mode's targets, for reference: none were set for S3".into());
    }
    std::fs::create_dir_all(&s.tmp)?;

    println!("## Progress\n");
    println!("```");
    let started_p = servers::start(
        &s.bins,
        &s.storage,
        Kind::PortcullisPolicies,
        &s.tmp.join("p-policies"),
        None,
    )
    .await?;
    let pol = started_p.server;
    let bare = if s.runs(4) {
        Some(
            servers::start(
                &s.bins,
                &s.storage,
                Kind::PortcullisBare,
                &s.tmp.join("p-bare"),
                None,
            )
            .await?
            .server,
        )
    } else {
        None
    };
    // Workload 4's signed-image server: the three policies plus
    // builtin:signature on pulls, trusting a P-256 key made for this run.
    let cosign_key = if s.runs(4) {
        Some(workloads::CosignKey::generate()?)
    } else {
        None
    };
    let signed = match &cosign_key {
        Some(key) => Some(
            servers::start_signed(
                &s.bins,
                &s.storage,
                &s.tmp.join("p-signed"),
                &key.public_pem(),
            )
            .await?
            .server,
        ),
        None => None,
    };
    let dist = match &s.bins.distribution {
        Some(_) => Some(
            servers::start(
                &s.bins,
                &s.storage,
                Kind::Distribution,
                &s.tmp.join("distribution"),
                None,
            )
            .await?
            .server,
        ),
        None => {
            println!("  distribution: not installed, its columns stay empty (apt-get install -y docker-registry)");
            None
        }
    };
    let mut pair: Vec<&Server> = vec![&pol];
    if let Some(d) = &dist {
        pair.push(d);
    }
    let mut step = 0usize;

    // 6 (idle): after a second of quiet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut idle = Samples::default();
    for srv in &pair {
        let kib = srv.status_kib("VmRSS");
        idle.push(srv.kind, kib as f64 / 1024.0);
        log_line(
            "idle VmRSS",
            srv,
            format!(
                "{:.1} MiB (pid {}, {})",
                kib as f64 / 1024.0,
                srv.pid,
                srv.addr
            ),
        );
    }
    let idle_d = idle.d.first().copied();
    let idle_bare = bare.as_ref().map(|b| b.status_kib("VmRSS") as f64 / 1024.0);
    if let (Some(b), Some(v)) = (&bare, idle_bare) {
        log_line(
            "idle VmRSS",
            b,
            format!("{v:.1} MiB (pid {}, {})", b.pid, b.addr),
        );
    }
    if let Some(sg) = &signed {
        log_line(
            "idle VmRSS",
            sg,
            format!(
                "{:.1} MiB (pid {}, {})",
                sg.status_kib("VmRSS") as f64 / 1024.0,
                sg.pid,
                sg.addr
            ),
        );
    }
    if let Some(g) = &s.garage {
        println!(
            "  {:<44} {:<26} {:.1} MiB (pid {})",
            "VmRSS",
            "garage",
            g.rss_mib(),
            g.pid
        );
    }

    // 1. one big blob, monolithic and chunked.
    let blob_size = s.blob_mib << 20;
    let blob = s.tmp.join("blob.bin");
    let on_s3 = s.s3().is_some();
    // On S3 the measured pushes send blobs of their own (see below).
    let need_blob = s.runs(2) || (s.runs(1) && !on_s3);
    let digest = if need_blob {
        let t = Instant::now();
        let (path, size) = (blob.clone(), blob_size);
        let d =
            tokio::task::spawn_blocking(move || workloads::random_file(&path, size, 42)).await??;
        println!(
            "  generated {} MiB of random data in {:.1} s: {d}",
            s.blob_mib,
            t.elapsed().as_secs_f64()
        );
        d
    } else {
        String::new()
    };
    let mut peak_push = Samples::default();
    let mut ledger = GarageLedger::default();
    // On S3 the measured pushes each send bytes of their own (below), so the
    // pull reads a blob pushed to both for it.
    let pull_repo = if on_s3 {
        "team-a/big-pull"
    } else {
        "team-a/big-mono-r0"
    };
    if s.runs(1) {
        let mut mono = Samples::default();
        let mut mono_cpu = Samples::default();
        let mut chunked = Samples::default();
        let mut chunked_cpu = Samples::default();
        // S3 mode: Garage's CPU per GiB and S3 requests per push, [mono, chunked].
        let mut g_cpu: [Samples; 2] = Default::default();
        let mut g_req: [Samples; 2] = Default::default();
        let mut pushes = 0u64;
        for round in 0..s.rounds {
            for chunked_mode in [false, true] {
                for srv in order(&pair, step) {
                    let repo = format!(
                        "team-a/big-{}-r{round}",
                        if chunked_mode { "chunked" } else { "mono" }
                    );
                    // S3: Garage stores blocks by content and keeps one copy
                    // of identical blocks, so the same blob pushed again
                    // costs it (and whoever pushes second) less: every push
                    // gets random bytes of its own.
                    let own = if on_s3 {
                        let path = s.tmp.join("push-blob.bin");
                        let (p, size, seed) = (path.clone(), blob_size, 1000 + pushes);
                        pushes += 1;
                        let d = tokio::task::spawn_blocking(move || {
                            workloads::random_file(&p, size, seed)
                        })
                        .await??;
                        Some((path, d))
                    } else {
                        None
                    };
                    let (file, digest) = match &own {
                        Some((p, d)) => (p, d),
                        None => (&blob, &digest),
                    };
                    let (dir, size) = (s.tmp.clone(), blob_size);
                    tokio::task::spawn_blocking(move || {
                        workloads::recycle_page_cache(&dir, size)?;
                        workloads::flush_dirty_pages();
                        anyhow::Ok(())
                    })
                    .await??;
                    let gm = s.garage_mark().await;
                    let peak = peak_start(srv);
                    let cpu0 = srv.cpu_secs();
                    let t = Instant::now();
                    if chunked_mode {
                        workloads::push_chunked(
                            srv.addr,
                            &repo,
                            file,
                            blob_size,
                            digest,
                            (s.chunk_mib << 20) as usize,
                        )
                        .await?;
                    } else {
                        workloads::push_monolithic(srv.addr, &repo, file, blob_size, digest)
                            .await?;
                    }
                    let secs = t.elapsed().as_secs_f64();
                    let cpu = (srv.cpu_secs() - cpu0) / (blob_size as f64 / GIB);
                    let used = s.garage_since(&gm);
                    if let Some((p, _)) = &own {
                        std::fs::remove_file(p)?;
                    }
                    let at_start = rss_at_start(&s, &peak);
                    let rss = peak_finish(srv, peak).await;
                    let mbs = blob_size as f64 / MB / secs;
                    let what = if chunked_mode {
                        "push chunked"
                    } else {
                        "push monolithic"
                    };
                    log_line(
                        what,
                        srv,
                        format!(
                            "{mbs:.0} MB/s, {cpu:.2} CPU s/GiB, peak RSS {rss:.1} MiB{at_start}{}",
                            garage_text(&used, blob_size as f64 / GIB, "GiB", 1.0, "push")
                        ),
                    );
                    if let Some(u) = &used {
                        let i = usize::from(chunked_mode);
                        g_cpu[i].push(srv.kind, u.cpu_secs / (blob_size as f64 / GIB));
                        g_req[i].push(srv.kind, u.requests as f64);
                    }
                    ledger.add(srv.kind, &used);
                    if chunked_mode {
                        chunked.push(srv.kind, mbs);
                        chunked_cpu.push(srv.kind, cpu);
                    } else {
                        mono.push(srv.kind, mbs);
                        mono_cpu.push(srv.kind, cpu);
                    }
                    peak_push.push(srv.kind, rss);
                }
                step += 1;
            }
        }
        let sz = s.blob_mib;
        report.section("1. Push one blob");
        report.add(mono.row(
            format!("push {sz} MiB monolithic (POST + PUT)"),
            "MB/s",
            Better::Higher,
            Target::RatioMin(1.8),
        ));
        report.add(chunked.row(
            format!("push {sz} MiB chunked ({} MiB PATCHes)", s.chunk_mib),
            "MB/s",
            Better::Higher,
            Target::RatioMin(1.8),
        ));
        report.add(mono_cpu.cost("server CPU per GiB pushed, monolithic", "s/GiB"));
        report.add(chunked_cpu.cost("server CPU per GiB pushed, chunked", "s/GiB"));
        if s.garage.is_some() {
            let [g_mono, g_chunked] = g_cpu;
            report.add(g_mono.cost("Garage CPU per GiB pushed, monolithic", "s/GiB"));
            report.add(g_chunked.cost("Garage CPU per GiB pushed, chunked", "s/GiB"));
            let [r_mono, r_chunked] = g_req;
            report.add(r_mono.cost("S3 requests per push, monolithic", "req"));
            report.add(r_chunked.cost("S3 requests per push, chunked", "req"));
        }
    }
    if s.runs(2) && (on_s3 || !s.runs(1)) {
        let t = Instant::now();
        for srv in &pair {
            workloads::push_monolithic(srv.addr, pull_repo, &blob, blob_size, &digest).await?;
        }
        if on_s3 {
            println!(
                "  pushed the blob to pull to both servers (not measured) in {:.1} s",
                t.elapsed().as_secs_f64()
            );
        }
    }

    // 2. pull it.
    let mut peak_pull = Samples::default();
    if s.runs(2) {
        let mut one = Samples::default();
        let mut many = Samples::default();
        let mut one_cpu = Samples::default();
        let mut many_cpu = Samples::default();
        // S3 mode: Garage's CPU per GiB and S3 requests per GET, [1, N clients].
        let mut g_cpu: [Samples; 2] = Default::default();
        let mut g_req: [Samples; 2] = Default::default();
        for _round in 0..s.rounds {
            for clients in [1, s.pull_clients] {
                for srv in order(&pair, step) {
                    let gm = s.garage_mark().await;
                    let peak = peak_start(srv);
                    let cpu0 = srv.cpu_secs();
                    let t = Instant::now();
                    let bytes =
                        workloads::pull(srv.addr, pull_repo, &digest, blob_size, clients).await?;
                    let secs = t.elapsed().as_secs_f64();
                    let cpu = (srv.cpu_secs() - cpu0) / (bytes as f64 / GIB);
                    let used = s.garage_since(&gm);
                    let at_start = rss_at_start(&s, &peak);
                    let rss = peak_finish(srv, peak).await;
                    let mbs = bytes as f64 / MB / secs;
                    log_line(
                        &format!("pull, {clients} client(s)"),
                        srv,
                        format!(
                            "{mbs:.0} MB/s, {cpu:.2} CPU s/GiB, peak RSS {rss:.1} MiB{at_start}{}",
                            garage_text(&used, bytes as f64 / GIB, "GiB", clients as f64, "GET")
                        ),
                    );
                    if let Some(u) = &used {
                        let i = usize::from(clients != 1);
                        g_cpu[i].push(srv.kind, u.cpu_secs / (bytes as f64 / GIB));
                        g_req[i].push(srv.kind, u.requests as f64 / clients as f64);
                    }
                    ledger.add(srv.kind, &used);
                    if clients == 1 {
                        one.push(srv.kind, mbs);
                        one_cpu.push(srv.kind, cpu);
                    } else {
                        many.push(srv.kind, mbs);
                        many_cpu.push(srv.kind, cpu);
                    }
                    peak_pull.push(srv.kind, rss);
                }
                step += 1;
            }
        }
        report.section("2. Pull the blob");
        report.add(one.row(
            format!("pull {} MiB, 1 client", s.blob_mib),
            "MB/s",
            Better::Higher,
            Target::RatioMin(1.0),
        ));
        report.add(many.row(
            format!(
                "pull {} MiB, {} clients (aggregate)",
                s.blob_mib, s.pull_clients
            ),
            "MB/s",
            Better::Higher,
            Target::RatioMin(1.0),
        ));
        report.add(one_cpu.cost("server CPU per GiB pulled, 1 client", "s/GiB"));
        report.add(many_cpu.cost(
            format!("server CPU per GiB pulled, {} clients", s.pull_clients),
            "s/GiB",
        ));
        if s.garage.is_some() {
            let [g_one, g_many] = g_cpu;
            report.add(g_one.cost("Garage CPU per GiB pulled, 1 client", "s/GiB"));
            report.add(g_many.cost(
                format!("Garage CPU per GiB pulled, {} clients", s.pull_clients),
                "s/GiB",
            ));
            let [r_one, r_many] = g_req;
            report.add(r_one.cost("S3 requests per blob GET, 1 client", "req"));
            report.add(r_many.cost(
                format!("S3 requests per blob GET, {} clients", s.pull_clients),
                "req",
            ));
        }
    }

    // 3. many small blobs.
    if s.runs(3) {
        let mut rate = Samples::default();
        let mut modes_note = Vec::new();
        // S3 mode: server and Garage CPU (ms) and S3 requests, per blob.
        let mut srv_ms = Samples::default();
        let mut g_ms = Samples::default();
        let mut g_req = Samples::default();
        for round in 0..s.rounds {
            let blobs =
                workloads::small_blobs(s.small_count, s.small_kib << 10, 100 + round as u64);
            for srv in order(&pair, step) {
                // S3: blobs of their own for each server (Garage keeps one
                // copy of identical blocks: see workload 1).
                let blobs = if on_s3 {
                    let seed =
                        100 + round as u64 + 1000 * u64::from(srv.kind == Kind::Distribution);
                    workloads::small_blobs(s.small_count, s.small_kib << 10, seed)
                } else {
                    blobs.clone()
                };
                // Dirty data left by earlier cells (Distribution does not
                // fsync its uploads) is written back now, not during this
                // cell, where it would slow down whichever server fsyncs.
                tokio::task::spawn_blocking(workloads::flush_dirty_pages).await?;
                let gm = s.garage_mark().await;
                let cpu0 = srv.cpu_secs();
                let t = Instant::now();
                let modes = workloads::push_many(
                    srv.addr,
                    &format!("team-a/small-r{round}"),
                    blobs.clone(),
                    s.small_clients,
                )
                .await?;
                let r = s.small_count as f64 / t.elapsed().as_secs_f64();
                let cpu_ms = (srv.cpu_secs() - cpu0) * 1e3 / s.small_count as f64;
                let used = s.garage_since(&gm);
                ledger.add(srv.kind, &used);
                let how = if modes.two_step == 0 {
                    "POST ?digest= answered 201"
                } else if modes.single == 0 {
                    "POST ?digest= answered 202: POST + PUT"
                } else {
                    "mixed 201/202"
                };
                match &used {
                    None => log_line("small blobs", srv, format!("{r:.0} blobs/s ({how})")),
                    Some(u) => {
                        let n = s.small_count as f64;
                        log_line(
                            "small blobs",
                            srv,
                            format!(
                                "{r:.0} blobs/s ({how}), {cpu_ms:.2} CPU ms/blob; garage {:.2} CPU ms/blob, {:.1} S3 requests/blob, {}",
                                u.cpu_secs * 1e3 / n,
                                u.requests as f64 / n,
                                u.errors_text()
                            ),
                        );
                        srv_ms.push(srv.kind, cpu_ms);
                        g_ms.push(srv.kind, u.cpu_secs * 1e3 / n);
                        g_req.push(srv.kind, u.requests as f64 / n);
                    }
                }
                if round == 0 {
                    modes_note.push(format!("{}: {how}", srv.kind.label()));
                }
                rate.push(srv.kind, r);
            }
            step += 1;
        }
        report.section("3. Small blobs");
        report.add(rate.row(
            format!(
                "push {} blobs of {} KiB, {} clients",
                s.small_count, s.small_kib, s.small_clients
            ),
            "blobs/s",
            Better::Higher,
            Target::RatioMin(6.0),
        ));
        if s.garage.is_some() {
            report.add(srv_ms.cost("server CPU per small blob", "ms"));
            report.add(g_ms.cost("Garage CPU per small blob", "ms"));
            report.add(g_req.cost("S3 requests per small blob", "req"));
        }
        report.note(format!("small-blob protocol: {}", modes_note.join("; ")));
    }

    // 4. manifest GET / HEAD by tag.
    if s.runs(4) {
        let bare = bare.as_ref().expect("started for workload 4");
        let mut trio: Vec<&Server> = vec![bare, &pol];
        if let Some(d) = &dist {
            trio.push(d);
        }
        for srv in &trio {
            workloads::push_small_image(srv.addr, "team-a/manifest", "latest").await?;
        }
        let path = "/v2/team-a/manifest/manifests/latest";
        // The signed server: the same image, then its cosign signature (tag
        // scheme), checking that the chain refuses the pull before the
        // signature is there and allows it after.
        let signed = signed.as_ref().expect("started for workload 4");
        let key = cosign_key.as_ref().expect("made for workload 4");
        let image = workloads::push_small_image(signed.addr, "team-a/manifest", "latest").await?;
        let before = workloads::get_status(signed.addr, path).await?;
        let sig_tag =
            workloads::push_cosign_signature(signed.addr, "team-a/manifest", &image, key).await?;
        let after = workloads::get_status(signed.addr, path).await?;
        let check = format!(
            "signed-image server: GET {path} before the signature was pushed: {before}, after (tag {sig_tag}): {after}"
        );
        println!("  {check}");
        if before == 200 || after != 200 {
            anyhow::bail!(
                "{check}: expected a refusal, then 200; log: {}",
                signed.log.display()
            );
        }
        report.note(check);
        // The 3-policies server has accounts on: its GET cells are also run
        // with the user bench's token (valid an hour), next to anonymous.
        let bearer = format!(
            "Bearer {}",
            workloads::token(
                pol.addr,
                &servers::basic_auth(),
                "repository:team-a/manifest:pull"
            )
            .await?
        );
        report.section("4. Manifest by tag (keep-alive)");
        for method in [Method::GET, Method::HEAD] {
            // (server, Bearer token or anonymous)
            let mut runs: Vec<(&Server, Option<&str>)> = trio.iter().map(|&x| (x, None)).collect();
            if method == Method::GET {
                runs.push((&pol, Some(&bearer)));
                runs.push((signed, None));
            }
            for &c in &s.concurrency {
                let mut cells: Vec<Cell> = runs
                    .iter()
                    .map(|(x, auth)| Cell::new(x.kind, auth.is_some()))
                    .collect();
                for _round in 0..s.rounds {
                    let mut rot = runs.clone();
                    rot.rotate_left(step % runs.len());
                    for (srv, auth) in rot {
                        let with = if auth.is_some() { ", Bearer token" } else { "" };
                        let gm = s.garage_mark().await;
                        let r = workloads::rate(
                            srv.addr,
                            method.clone(),
                            path,
                            auth,
                            c,
                            Duration::from_secs_f64(s.warmup),
                            Duration::from_secs_f64(s.secs),
                        )
                        .await?;
                        // Garage's share includes the warm-up: per request
                        // sent, warm-up included.
                        let used = s.garage_since(&gm);
                        ledger.add(srv.kind, &used);
                        let sent = r.sent.max(1) as f64;
                        log_line(
                            &format!("manifest {method} c={c}{with}"),
                            srv,
                            format!(
                                "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors, {} connections{}",
                                r.rate(),
                                r.percentile_ms(0.5),
                                r.percentile_ms(0.99),
                                r.errors,
                                r.connections,
                                garage_text(&used, sent / 1000.0, "1000 req", sent, "req")
                            ),
                        );
                        if r.errors > 0 {
                            anyhow::bail!(
                                "{} answered {} non-200s to {method} {path}{with}; log: {}",
                                srv.kind.label(),
                                r.errors,
                                srv.log.display()
                            );
                        }
                        let cell = cells
                            .iter_mut()
                            .find(|x| x.kind == srv.kind && x.bearer == auth.is_some())
                            .expect("cell");
                        cell.values[0].push(r.rate());
                        cell.values[1].push(r.percentile_ms(0.5));
                        cell.values[2].push(r.percentile_ms(0.99));
                        if let Some(u) = &used {
                            cell.values[3].push(u.requests as f64 / sent);
                            cell.values[4].push(u.cpu_secs * 1e3 / sent);
                        }
                    }
                    step += 1;
                }
                let d = cells.iter().find(|x| x.kind == Kind::Distribution);
                let anonymous = cells
                    .iter()
                    .find(|x| x.kind == Kind::PortcullisPolicies && !x.bearer)
                    .and_then(|x| median(x.values[0].clone()));
                for (variant, bearer) in [
                    (Kind::PortcullisPolicies, false),
                    (Kind::PortcullisPolicies, true),
                    (Kind::PortcullisSigned, false),
                    (Kind::PortcullisBare, false),
                ] {
                    let Some(p) = cells
                        .iter()
                        .find(|x| x.kind == variant && x.bearer == bearer)
                    else {
                        continue; // no Bearer or signed-image cells for HEAD
                    };
                    let label = match (variant, bearer) {
                        (Kind::PortcullisBare, _) => "no policies",
                        (Kind::PortcullisSigned, _) => {
                            "3 bundled policies + builtin:signature on pull (cached verification)"
                        }
                        (_, false) => "3 policies",
                        (_, true) => "3 policies, Bearer token",
                    };
                    // Targets at c=64: 3 policies >= 10x distribution's req/s,
                    // with the signature >= 8x; p99 <= 0.1x for both; the
                    // Bearer cells >= 0.9x the anonymous 3-policies req/s.
                    let (rate_target, p99_target) = match (variant, bearer) {
                        _ if c != 64 => (Target::None, Target::None),
                        (Kind::PortcullisPolicies, false) => {
                            (Target::RatioMin(10.0), Target::RatioMax(0.1))
                        }
                        (Kind::PortcullisPolicies, true) => (
                            Target::BaseRatioMin {
                                base: anonymous,
                                min: 0.9,
                                of: "anonymous 3 policies",
                            },
                            Target::None,
                        ),
                        (Kind::PortcullisSigned, _) => {
                            (Target::RatioMin(8.0), Target::RatioMax(0.1))
                        }
                        _ => (Target::None, Target::None),
                    };
                    let metrics: [(&str, &'static str, Better, usize, Target); 3] = [
                        ("req/s", "req/s", Better::Higher, 0, rate_target),
                        ("p50", "ms", Better::Lower, 1, Target::None),
                        ("p99", "ms", Better::Lower, 2, p99_target),
                    ];
                    for (what, unit, better, idx, target) in metrics {
                        report.add(Row {
                            name: format!("manifest {method} c={c}, {label}: {what}"),
                            unit,
                            better,
                            p: median(p.values[idx].clone()),
                            d: d.and_then(|d| median(d.values[idx].clone())),
                            target,
                        });
                    }
                    if s.garage.is_some() && variant == Kind::PortcullisPolicies && !bearer {
                        for (what, unit, idx) in [
                            ("S3 requests per request", "req", 3),
                            ("Garage CPU per 1000 requests", "s", 4),
                        ] {
                            report.add(Row {
                                name: format!("manifest {method} c={c}, {label}: {what}"),
                                unit,
                                better: Better::Lower,
                                p: median(p.values[idx].clone()),
                                d: d.and_then(|d| median(d.values[idx].clone())),
                                target: Target::None,
                            });
                        }
                    }
                }
            }
        }
    }

    // 5. docker pull.
    if s.runs(5) {
        report.section("5. docker pull");
        match docker_pull(&s, &pair, &mut step).await {
            Ok(Some(row)) => report.add(row),
            Ok(None) => {
                println!("  docker pull: skipped: no docker engine");
                report.note("workload 5 (docker pull): skipped: no docker engine".into());
            }
            Err(e) => {
                println!("  docker pull: failed: {e:#}");
                report.note(format!("workload 5 (docker pull): failed: {e:#}"));
            }
        }
    }

    // 6. memory.
    if s.runs(6) {
        report.section("6. Memory (VmRSS / VmHWM)");
        report.add(idle.row(
            "idle RSS after start-up",
            "MiB",
            Better::Lower,
            Target::RatioMax(1.0),
        ));
        if let Some(v) = idle_bare {
            report.add(Row {
                name: "idle RSS after start-up, no policies".into(),
                unit: "MiB",
                better: Better::Lower,
                p: Some(v),
                d: None,
                target: Target::None,
            });
        }
        if s.runs(1) {
            report.add(peak_push.row_max(
                "peak RSS during push (workload 1, max of all pushes)",
                "MiB",
                Better::Lower,
                Target::AbsMax(48.0),
            ));
        }
        if s.runs(2) {
            report.add(peak_pull.row_max(
                "peak RSS during pull (workload 2, max of all pulls)",
                "MiB",
                Better::Lower,
                Target::AbsMax(48.0),
            ));
        }
    }
    if s.s3().is_some() {
        for srv in [Some(&pol), bare.as_ref(), dist.as_ref()]
            .into_iter()
            .flatten()
        {
            report.note(log_summary(srv));
        }
    }
    drop(bare);
    drop(signed);

    // 7. start-up.
    if s.runs(7) {
        report.section(
            "7. Start-up to the first 200 (portcullis, accounts on: /healthz; distribution: /v2/)",
        );
        let dir = s.tmp.join("startup-portcullis");
        let cache = dir.join("policy-cache");
        let cold = servers::start(
            &s.bins,
            &s.storage,
            Kind::PortcullisPolicies,
            &dir,
            Some(&cache),
        )
        .await?;
        let cold_ms = cold.startup.as_secs_f64() * 1e3;
        log_line(
            "start-up, empty policy cache (cold)",
            &cold.server,
            format!("{cold_ms:.0} ms"),
        );
        drop(cold);
        let mut warm = Samples::default();
        let mut warm_idle = None;
        for i in 0..s.startup_runs {
            let w = servers::start(
                &s.bins,
                &s.storage,
                Kind::PortcullisPolicies,
                &dir,
                Some(&cache),
            )
            .await?;
            let ms = w.startup.as_secs_f64() * 1e3;
            log_line(
                "start-up, warm policy cache",
                &w.server,
                format!("{ms:.0} ms"),
            );
            warm.push(Kind::PortcullisPolicies, ms);
            if i + 1 == s.startup_runs {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let mib = w.server.status_kib("VmRSS") as f64 / 1024.0;
                log_line(
                    "idle VmRSS after a warm start",
                    &w.server,
                    format!("{mib:.1} MiB"),
                );
                warm_idle = Some(mib);
            }
        }
        let mut d_first = None;
        if s.bins.distribution.is_some() {
            let ddir = s.tmp.join("startup-distribution");
            for i in 0..s.startup_runs {
                let w =
                    servers::start(&s.bins, &s.storage, Kind::Distribution, &ddir, None).await?;
                let ms = w.startup.as_secs_f64() * 1e3;
                log_line("start-up", &w.server, format!("{ms:.0} ms"));
                if i == 0 {
                    d_first = Some(ms);
                }
                warm.push(Kind::Distribution, ms);
            }
        }
        report.add(Row {
            name: "start-up, cold (empty policy cache, empty storage)".into(),
            unit: "ms",
            better: Better::Lower,
            p: Some(cold_ms),
            d: d_first,
            target: Target::None,
        });
        report.add(warm.row(
            format!("start-up, warm (median of {})", s.startup_runs),
            "ms",
            Better::Lower,
            Target::AbsBelow(200.0),
        ));
        report.add(Row {
            name: "idle RSS after a warm start (policy cache filled; workload 6's row is after a cold start)".into(),
            unit: "MiB",
            better: Better::Lower,
            p: warm_idle,
            d: idle_d,
            target: Target::None,
        });
    }

    if let Some(g) = &s.garage {
        println!(
            "  {:<44} {:<26} {:.1} MiB (pid {}{})",
            "VmRSS at the end",
            "garage",
            g.rss_mib(),
            g.pid,
            if g.alive() { "" } else { ", not running" }
        );
        for (kind, used) in &ledger.per {
            report.note(format!(
                "garage while serving {} (all measured cells): {:.1} CPU s, {} S3 requests, {}, {} WARN/ERROR log lines{}",
                kind.label(),
                used.cpu_secs,
                used.requests,
                used.errors_text(),
                used.warnings,
                if used.first_warnings.is_empty() {
                    String::new()
                } else {
                    format!(" (first: {})", used.first_warnings.join(" | "))
                }
            ));
        }
    }
    drop(pol);
    drop(dist);
    println!("```\n");
    report.print();
    println!("\nTotal run time: {:.0} s", t_all.elapsed().as_secs_f64());
    Ok(())
}

/// How many lines of a server's log are warnings or errors, and the first
/// few: the S3 mode's check that neither server met trouble it hid behind a
/// retry. Distribution's start-up warning about its generated HTTP secret
/// (it signs upload state with it: one instance only) is left out.
fn log_summary(srv: &Server) -> String {
    let text = std::fs::read_to_string(&srv.log).unwrap_or_default();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("No HTTP secret provided"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("level=error")
                || l.contains("level=warn")
                || l.contains("\"level\":\"error\"")
                || l.contains("\"level\":\"warn\"")
                || l.contains(" error ")
                || l.contains(" warn ")
                || l.contains("panic")
        })
        .collect();
    let first: Vec<String> = bad
        .iter()
        .take(3)
        .map(|l| l.chars().take(300).collect())
        .collect();
    format!(
        "{} log ({}): {} warning/error lines{}",
        srv.kind.label(),
        srv.log.display(),
        bad.len(),
        if first.is_empty() {
            String::new()
        } else {
            format!(", first: {}", first.join(" | "))
        }
    )
}

fn docker_available() -> bool {
    std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn docker(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("docker").args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn docker_pull(s: &Settings, pair: &[&Server], step: &mut usize) -> Result<Option<Row>> {
    if !s.docker || !docker_available() {
        return Ok(None);
    }
    let dir = s.tmp.join("image");
    std::fs::create_dir_all(&dir)?;
    let per_layer = ((s.image_mib << 20) / s.layers as u64) as usize;
    let (layers, dir2) = (s.layers, dir.clone());
    let t = Instant::now();
    let layers = tokio::task::spawn_blocking(move || {
        (0..layers)
            .map(|i| workloads::make_layer(&dir2, i, per_layer))
            .collect::<Result<Vec<_>>>()
    })
    .await??;
    let (config, config_digest, manifest) = workloads::image_manifest(&layers)?;
    println!(
        "  built a {}-layer image ({} MiB) in {:.1} s",
        s.layers,
        s.image_mib,
        t.elapsed().as_secs_f64()
    );
    let refs: Vec<(Kind, String)> = pair
        .iter()
        .map(|srv| (srv.kind, format!("{}/team-a/dockerimg:latest", srv.addr)))
        .collect();
    for srv in pair {
        workloads::push_image(
            srv.addr,
            "team-a/dockerimg",
            "latest",
            &layers,
            &config,
            &config_digest,
            &manifest,
        )
        .await?;
    }
    let clean = || {
        for (_, r) in &refs {
            let _ = docker(&["rmi", "-f", r]);
        }
    };
    clean();
    let mut samples = Samples::default();
    for _ in 0..s.rounds {
        for srv in order(pair, *step) {
            let r = &refs.iter().find(|x| x.0 == srv.kind).expect("ref").1;
            let t = Instant::now();
            docker(&["pull", "-q", r])?;
            let secs = t.elapsed().as_secs_f64();
            log_line("docker pull", srv, format!("{secs:.2} s"));
            samples.push(srv.kind, secs);
            clean();
        }
        *step += 1;
    }
    Ok(Some(samples.cost(
        format!("docker pull, {} layers, {} MiB", s.layers, s.image_mib),
        "s",
    )))
}
