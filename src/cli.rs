//! Command-line interface: argument parsing and printing. The work happens in the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::Cell;

use crate::cache::Cache;
use crate::dag::{self, Pipeline};
use crate::cache::remote::{Remote, RemoteError, RemoteMode};
use crate::engine::{RemoteHandle, RunOptions, RunRecord, RunStatus, StageStatus};
use crate::stages::CancelFlag;

// Whole commands in files of their own (private: parts of this module).
/// `println!` for text that carries what a pipeline file or a cache holds (names, params,
/// errors, records): terminal control sequences stripped, so a file from elsewhere cannot
/// retitle, clear or rewrite the user's terminal (found by a hostile pass in `runs`, `runs
/// diff` and `plan --explain`).
/// Known secrets (`text::redact`) are replaced too: a value passed with `--set` that is also
/// in `AWS_SECRET_ACCESS_KEY` is printed as `[redacted]`.
macro_rules! outln {
    ($($arg:tt)*) => { println!("{}", crate::text::redact(&crate::text::strip_controls(&format!($($arg)*)))) };
}
/// `print!` with the same stripping as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { print!("{}", crate::text::redact(&crate::text::strip_controls(&format!($($arg)*)))) };
}

mod cache_cmd;
mod dag_render;
mod run_promote;

use cache_cmd::cache_cmd;
use dag_render::render_dag;
pub use run_promote::run_and_promote;

#[derive(Parser, Debug)]
#[command(name = "pipeline", version, about = "Declarative, content-cached pipelines: AMT labels -> Dawid-Skene -> augment -> train -> evaluate")]
pub struct Cli {
    /// Cache directory.
    #[arg(long, global = true, env = "PIPELINE_CACHE", default_value = "cache")]
    pub cache: PathBuf,
    /// Wait for another process using the cache instead of failing.
    #[arg(long, global = true)]
    pub wait: bool,
    /// Log format on stderr (level from PIPELINE_LOG, e.g. `info`, `pipeline=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a pipeline: stages whose key is cached are reused, the others run.
    Run(RunArgs),
    /// Show which stages would run and why, without running anything.
    Plan {
        file: PathBuf,
        /// Print the reasons of every miss.
        #[arg(long)]
        explain: bool,
        /// Machine-readable: {"stages":[{"name","status","source","key","reasons","why"}]}
        /// (`why`: the reasons typed, `plan::RerunReason`).
        #[arg(long)]
        json: bool,
        /// Override a param: stage.param=value (JSON or a plain string), or stage.inputs.x=ref.
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
        /// As `run --only`: plan only this stage (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// As `run --from`.
        #[arg(long)]
        from: Vec<String>,
        /// As `run --force`.
        #[arg(long)]
        force: Vec<String>,
    },
    /// Print the pipeline graph.
    Dag {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = DagFormat::Text)]
        format: DagFormat,
    },
    /// Print a JSON Schema of pipeline files (or of one stage kind's params).
    Schema { kind: Option<String> },
    /// Inspect and maintain the cache.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Run history: list, show one, diff two, or compare several runs.
    Runs {
        #[command(subcommand)]
        cmd: Option<RunsCmd>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Metric columns, comma-separated: `accuracy` (that metric of every stage) or
        /// `stage.metric` [default: accuracy,macro_f1,agreement].
        #[arg(long, value_name = "A,B")]
        metrics: Option<String>,
    },
    /// Run a pipeline at each tick of a cron expression (or print a systemd timer / crontab line).
    Schedule(ScheduleArgs),
    /// Aggregate crowd labels from a crowd-kit CSV (worker,task,label) or an AMT batch file:
    /// writes labels.csv (task,label), posteriors.csv and the dawid-skene stage's report
    /// files to DIR; takes the stage's options (and the amt stage's class check).
    Aggregate(crate::aggregate::AggregateArgs),
    /// Top-k classes with probabilities for each image, from a trained model.
    Predict {
        /// A `train` stage name, a cache key (prefix), or a model directory.
        #[arg(long)]
        model: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(short, long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
        k: u16,
    },
    /// Serve a local, read-only web view of the runs and the cache (no authentication).
    Ui {
        /// Port (0: any free port; the address is printed).
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Address to listen on: loopback unless --allow-remote.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Allow a --bind address other than loopback: anyone who can reach it reads every artifact.
        #[arg(long)]
        allow_remote: bool,
        /// A pipeline file the plan page offers (repeatable; those of recorded runs are offered too).
        #[arg(long = "pipeline", value_name = "FILE")]
        pipelines: Vec<PathBuf>,
        /// Seconds a connection may stay without a byte in either direction before it is closed.
        #[arg(long, hide = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        idle_timeout: u64,
    },
    /// Print a shell completion script: `pipeline completions bash > /etc/bash_completion.d/pipeline`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `pipeline man > pipeline.1`.
    Man,
    /// Run one stage from a job file (what an executor such as Slurm runs on a node).
    #[command(hide = true)]
    ExecStage { job: PathBuf },
    /// Write the embedded demo data set (faces + a simulated AMT batch) to DIR.
    DemoData {
        dir: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Images per class for train (crowd-labelled), valid and test.
        #[arg(long, default_value_t = 100)]
        per_class: usize,
        /// Write into a non-empty directory: gold.csv is replaced, but never one of the
        /// directories (amt, results, valid, test): remove those first.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    pub file: PathBuf,
    /// Stages to run at once (default: number of CPUs).
    #[arg(short = 'j', long, default_value_t = 0)]
    pub jobs: usize,
    /// Run only this stage (repeatable); its inputs must be cached.
    #[arg(long)]
    pub only: Vec<String>,
    /// Select this stage and everything downstream of it (repeatable); cached ones among
    /// them are still reused (add --force to rerun).
    #[arg(long)]
    pub from: Vec<String>,
    /// Rerun this stage even if cached (repeatable).
    #[arg(long)]
    pub force: Vec<String>,
    /// Override a param: stage.param=value (JSON or a plain string), or stage.inputs.x=ref.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub set: Vec<String>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Run every stage on this executor (`local` or `slurm`), whatever the file says.
    #[arg(long, value_parser = ["local", "slurm"])]
    pub executor: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// What started the run, as its record says: `manual`, or `schedule` (the line
    /// `schedule --print-cron` / `--print-systemd` write).
    #[arg(long, hide = true, default_value = "manual", value_parser = ["manual", "schedule"])]
    pub trigger: String,
}

/// Where the shared remote cache is and how to use it.
#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// Remote cache: s3://bucket/prefix, file:///path or a directory (else the pipeline
    /// file's `remote` field).
    #[arg(long, env = "PIPELINE_REMOTE")]
    pub remote: Option<String>,
    /// read-write: download hits, upload what ran; read-only: download only (CI, pull
    /// requests); off: ignore the remote.
    #[arg(long, value_enum, default_value_t = RemoteMode::ReadWrite)]
    pub remote_mode: RemoteMode,
}

impl RemoteArgs {
    /// The remote for a run of `p` (the flag or env var wins over the file's field).
    /// `writes`: the command may upload (a run); `plan` never does.
    fn open(&self, p: Option<&Pipeline>, writes: bool) -> Result<Option<RemoteHandle>> {
        if self.remote_mode == RemoteMode::Off {
            return Ok(None);
        }
        let url = self.remote.clone().filter(|u| !u.is_empty()).or_else(|| p.and_then(|p| p.remote.clone()));
        let Some(url) = url else { return Ok(None) };
        crate::cache::remote::check_url_shape(url.trim())?;
        // A relative directory in a pipeline file is relative to the file.
        let url = match p {
            Some(p) if self.remote.is_none() && !url.contains("://") && !Path::new(&url).is_absolute() => p.base_dir.join(&url).display().to_string(),
            _ => url,
        };
        // Read-only writes nothing, not even the directory: one that is not there is a wrong
        // path or a missing mount, not an empty remote (every stage would rerun, silently).
        if self.remote_mode == RemoteMode::ReadOnly || !writes {
            missing_dir_refused(&url, if writes { "--remote-mode read-only creates nothing" } else { "this command creates nothing" })?;
        }
        match Remote::connect(&url) {
            Ok(r) => Ok(Some(RemoteHandle(Arc::new(r), self.remote_mode))),
            // Offline is not an error for a run: it goes on with the local cache alone.
            Err(e @ RemoteError::Unreachable { .. }) => {
                tracing::warn!("{e}: running without the remote cache");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
    /// The remote of `cache push` (`writes`), `pull` and `gc --remote`.
    fn require(&self, writes: bool) -> Result<Arc<Remote>> {
        let url = self.remote.clone().filter(|u| !u.is_empty());
        match (self.remote_mode, url) {
            (RemoteMode::Off, _) | (_, None) => bail!("no remote: pass --remote URL or set PIPELINE_REMOTE"),
            (_, Some(url)) => {
                if !writes {
                    missing_dir_refused(&url, "this command creates nothing")?;
                }
                Ok(Arc::new(Remote::connect(&url)?))
            }
        }
    }
}

/// A directory remote that is not there, for a command that must not create it (found by a
/// hostile pass: `plan`, `cache pull` and `cache gc --remote` made a misspelled path).
fn missing_dir_refused(url: &str, why: &str) -> Result<()> {
    crate::cache::remote::check_url_shape(url.trim())?;
    if url.starts_with("s3://") {
        return Ok(());
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    // inside a pipeline cache: the remote's own check says so, more usefully
    let in_cache = crate::cache::remote::dir::enclosing_cache(&crate::cache::store::absolute(Path::new(dir))).is_some();
    if !Path::new(dir).exists() && !in_cache {
        bail!("remote {url}: no such directory ({why}: check the path, or whether it is mounted)");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    pub file: PathBuf,
    /// Cron expression: 5 fields (min hour dom month dow), or 6 with leading seconds.
    #[arg(long, default_value = "0 3 * * *")]
    pub cron: String,
    /// IANA time zone of the cron fields (default: the machine's).
    #[arg(long)]
    pub tz: Option<String>,
    /// Retries of a failed run, with exponential backoff.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Seconds before the first retry (doubles each time).
    #[arg(long, default_value_t = 30.0)]
    pub retry_delay: f64,
    /// On SIGTERM / Ctrl-C let the current run finish (a second signal cancels it).
    #[arg(long)]
    pub finish_on_shutdown: bool,
    /// Print a systemd service + timer running `pipeline run FILE` and exit.
    #[arg(long)]
    pub print_systemd: bool,
    /// Print a crontab line running `pipeline run FILE` and exit.
    #[arg(long)]
    pub print_cron: bool,
    /// Override a param for every scheduled run.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[arg(short = 'j', long, default_value_t = 0)]
    pub jobs: usize,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// List entries: stage, key, size, age.
    Ls,
    /// Show an entry (key prefix, stage name, or PIPELINE/STAGE): manifest, key inputs, provenance.
    Show { what: String },
    /// Copy an entry's files out (key prefix, stage name, or PIPELINE/STAGE) into DIR, which
    /// must be empty or absent and outside the cache.
    Export {
        what: String,
        dir: PathBuf,
        /// Export into a non-empty directory: files, links and FIFOs at the artifact's names are
        /// replaced, never a directory (remove it first); other names are left and listed.
        #[arg(long)]
        force: bool,
    },
    /// Remove what no entry needs; with --keep-last N, also entries not used by the last N runs.
    Gc {
        /// Also remove entries no run among the last N used; each stage's current output (its
        /// latest run's) is always kept, so `--keep-last 0` keeps those too.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Collect the remote instead (`--remote` alone: PIPELINE_REMOTE): blobs and
        /// manifests no remote entry needs, older than --grace seconds (a concurrent writer
        /// uploads blobs before its entry).
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        remote: Option<String>,
        /// Seconds: remote objects, and the Slurm job directories in `<cache>/slurm`, younger
        /// than this are kept.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
    },
    /// Upload entries to the remote cache (STAGE, PIPELINE/STAGE, key prefix, or --all).
    Push {
        what: Option<String>,
        #[arg(long)]
        all: bool,
        /// Also download and hash every blob the remote already has, and upload again the
        /// ones whose bytes changed (a plain push trusts a blob of the right size).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download entries from the remote cache (key prefix, stage name, or --all), verified.
    Pull {
        what: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Rehash every blob; drop entries whose files are damaged; check views.
    Verify {
        /// The database is damaged: move it aside and rebuild the entries from `index/`.
        #[arg(long)]
        rebuild: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// One run in detail.
    Show { id: u64 },
    /// What changed from run A to run B: params, inputs, flipped labels, metrics.
    Diff { a: u64, b: u64 },
    /// Two or more runs side by side: the params and inputs that differ, and the metrics.
    Compare {
        #[arg(required = true, num_args = 2..)]
        ids: Vec<u64>,
        /// Machine-readable: {"runs","params","inputs","metrics","flipped"}.
        #[arg(long)]
        json: bool,
    },
}

pub fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PIPELINE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // No colours, and every event cleaned on its way out (see `CleanStderr`).
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| crate::text::CleanStderr).with_ansi(false);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

/// Parse arguments and run; returns the process exit code.
pub fn main() -> i32 {
    crate::text::register_profile_secrets();
    // an argument clap refuses is echoed in its message: redacted like every other message
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) => e.exit(),
        Err(e) => {
            eprint!("{}", crate::text::redact(&e.render().to_string()));
            return e.exit_code();
        }
    };
    // `pipeline schema | head -1`: commands that only print end quietly when the reader goes
    // away, as Unix tools do. (Not `run`/`schedule`: a closed stdout must not kill a stage
    // mid-commit; their printing ignores the error instead.)
    if !matches!(cli.command, Command::Run(_) | Command::Schedule(_)) {
        #[cfg(unix)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // A scheduler is a service: its ticks and runs are worth logging by default.
    init_logging(cli.log_format, if matches!(cli.command, Command::Schedule(_)) { "info" } else { "warn" });
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::text::clean(&error_chain(&e)));
            1
        }
    }
}

/// `{e:#}` without repeating a cause its context already quotes (an OS error printed twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if out.contains(&c) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&c);
    }
    out
}

fn open_cache(cli_cache: &Path, wait: bool) -> Result<Cache> {
    let cache = Cache::open(cli_cache, wait)?;
    // A CUDA build keeps its compiled GPU kernels beside the artifacts (no-op otherwise).
    #[cfg(feature = "ml")]
    pipeline_model::backend::set_gpu_kernel_cache(cache.root().join("gpu-kernels"));
    Ok(cache)
}

/// [`open_cache`] for commands that only read or tidy a cache: a directory that is none is
/// not made one (found by a hostile pass: `runs` with a mistyped --cache created an empty
/// cache there and printed an empty history, exit 0).
fn existing_cache(cli_cache: &Path, wait: bool) -> Result<Cache> {
    if !["db", "index", "objects"].iter().any(|d| cli_cache.join(d).is_dir()) {
        bail!("no cache at {}: nothing has run with it (a typo in --cache or PIPELINE_CACHE?)", cli_cache.display());
    }
    open_cache(cli_cache, wait)
}

fn load(file: &Path, set: &[String]) -> Result<Pipeline> {
    Ok(dag::load(file, set)?)
}

pub fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Run(args) => {
            let p = load(&args.file, &args.set)?;
            for s in args.only.iter().chain(&args.from).chain(&args.force) {
                if p.index(s).is_none() {
                    bail!("no stage named `{s}` in {}", args.file.display());
                }
            }
            let cache = Arc::new(open_cache(&cli.cache, cli.wait)?);
            let remote = args.remote.open(Some(&p), true)?;
            let opts = RunOptions {
                jobs: args.jobs,
                only: args.only,
                from: args.from,
                force: args.force,
                quiet: args.quiet,
                trigger: args.trigger,
                overrides: args.set,
                cancel_grace: None,
                executor: args.executor,
                remote,
            };
            let record = run_pipeline(cache, Arc::new(p), &opts)?;
            Ok(exit_code(&record))
        }
        Command::Schedule(args) => schedule(&cli.cache, args),
        Command::Aggregate(args) => {
            // as export and demo-data: the cache's `tmp/` is emptied at every run
            crate::outdir::refuse_inside(&args.out, &cli.cache, "the cache")?;
            let d = crate::aggregate::aggregate_file(&args)?;
            // as the user would type it again: `nx2/./` and a trailing `/` dropped
            let out: PathBuf = args.out.components().collect();
            println!(
                "{}: {} items, {} answers; wrote {}, {} and report.md",
                d.method_line,
                d.items,
                d.answers,
                out.join("labels.csv").display(),
                out.join("posteriors.csv").display()
            );
            Ok(0)
        }
        Command::Predict { model, images, k } => predict(&cli.cache, cli.wait, &model, &images, k as usize),
        Command::Plan { file, explain, json, set, remote, only, from, force } => {
            let p = load(&file, &set)?;
            for s in only.iter().chain(&from).chain(&force) {
                if p.index(s).is_none() {
                    bail!("no stage named `{s}` in {}", file.display());
                }
            }
            let cache = open_cache(&cli.cache, cli.wait)?;
            let remote = remote.open(Some(&p), false)?;
            let flags = crate::plan::PlanFlags { only, from, force };
            let plan = crate::plan::plan_with(&cache, &p, remote.as_ref().map(|h| h.0.as_ref()), &flags);
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                let mut t = table(&["stage", "status", "why"]);
                for s in &plan.stages {
                    let why = if explain { s.reasons.join("\n") } else { s.reasons.first().cloned().unwrap_or_default() };
                    t.add_row(vec![Cell::new(&s.name), Cell::new(s.status), Cell::new(why)]);
                }
                outln!("{t}");
            }
            Ok(0)
        }
        Command::Dag { file, format } => {
            let p = load(&file, &[])?;
            out!("{}", render_dag(&p, format));
            Ok(0)
        }
        Command::Schema { kind } => {
            println!("{}", serde_json::to_string_pretty(&crate::schema::schema(kind.as_deref())?)?);
            Ok(0)
        }
        Command::Cache(CacheCmd::Verify { rebuild: true }) => {
            let (restored, skipped) = Cache::rebuild(&cli.cache)?;
            println!("rebuilt the database: {restored} entries restored, {skipped} records skipped (damaged or missing blobs)");
            cache_cmd(&open_cache(&cli.cache, cli.wait)?, CacheCmd::Verify { rebuild: false })
        }
        // gc of the remote needs no local cache (it made one at --cache, or was refused by a
        // directory there: found by a hostile pass); pull fills a new cache
        Command::Cache(CacheCmd::Gc { remote: Some(url), grace, .. }) => cache_cmd::remote_gc(url, grace),
        Command::Cache(cmd @ CacheCmd::Pull { .. }) => cache_cmd(&open_cache(&cli.cache, cli.wait)?, cmd),
        Command::Cache(cmd) => cache_cmd(&existing_cache(&cli.cache, cli.wait)?, cmd),
        Command::Runs { cmd, last, metrics } => {
            let cache = existing_cache(&cli.cache, cli.wait)?;
            match cmd {
                None => out!("{}", crate::runs::list(&cache, last, metrics.as_deref())),
                Some(RunsCmd::Show { id }) => out!("{}", crate::runs::show(&cache, id)?),
                Some(RunsCmd::Diff { a, b }) => out!("{}", crate::runs::diff(&cache, a, b)?),
                Some(RunsCmd::Compare { ids, json }) => {
                    let c = crate::runs::compare(&cache, &ids)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&c)?);
                    } else {
                        out!("{}", crate::runs::render_comparison(&c));
                    }
                }
            }
            Ok(0)
        }
        Command::Ui { port, bind, allow_remote, pipelines, idle_timeout } => {
            let idle_timeout = std::time::Duration::from_secs(idle_timeout);
            let opts = crate::ui::UiOptions { cache: cli.cache.clone(), bind, port, allow_remote, pipelines, idle_timeout };
            crate::ui::serve(opts, wait_for_shutdown())?;
            Ok(0)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "pipeline", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout())?;
            Ok(0)
        }
        Command::ExecStage { job } => Ok(crate::executor::exec_stage(&job)?),
        Command::DemoData { dir, seed, per_class, force } => {
            // Written into a private staging directory, then installed with aggregate --out's
            // rules (`outdir`): nothing written through a link, nothing half-written, never
            // into the cache; `--force` replaces gold.csv but never one of the directories.
            let own = |n: &str| matches!(n, "gold.csv" | "amt" | "results" | "valid" | "test");
            let target = crate::outdir::Target::new(&dir, Path::new(""), force, own).for_command("demo-data", "the input");
            crate::outdir::refuse_inside(&target.out, &cli.cache, "the cache")?;
            target.check()?;
            target.refuse_dirs(&["amt", "results", "valid", "test"])?;
            let params = crate::stages::demo_data::DemoDataParams { seed, per_class, ..Default::default() };
            let staging = target.stage()?;
            let n = crate::stages::demo_data::write_demo_data(&params, &staging.path(), None)?;
            target.install(staging)?;
            println!("wrote {n} images and amt/batch_results.csv to {}", target.out.display());
            Ok(0)
        }
    }
}

/// `Cache::resolve`, saying on stderr which pipeline a bare stage name picked when several
/// pipelines sharing this cache have a stage of that name.
fn resolve_noting_others(cache: &Cache, what: &str) -> Result<crate::cache::store::Entry> {
    let e = cache.resolve(what)?;
    let lasts = cache.lasts_for_stage(what);
    if lasts.len() > 1 {
        let others: Vec<String> = lasts.iter().filter(|l| l.0 != e.pipeline).map(|l| format!("`{}/{what}`", l.0)).collect();
        eprintln!("note: `{what}` is a stage of {} pipelines in this cache; this is `{}/{what}` (run most recently); others: {}", lasts.len(), e.pipeline, others.join(", "));
    }
    Ok(e)
}

#[cfg(feature = "ml")]
fn predict(cache_dir: &Path, wait: bool, model: &str, images: &[PathBuf], k: usize) -> Result<i32> {
    let dir = if Path::new(model).is_dir() {
        PathBuf::from(model)
    } else {
        if model.contains('/') && !model.split('/').all(|p| !p.is_empty() && !p.starts_with('.')) || Path::new(model).exists() {
            bail!("--model {model}: not a model directory (expected a directory with model.mpk, a `train` stage name, PIPELINE/STAGE or a cache key)");
        }
        if !cache_dir.join("db").is_dir() {
            bail!("--model {model}: no model directory of that name, and there is no cache at {} to look it up in", cache_dir.display());
        }
        let cache = open_cache(cache_dir, wait)?;
        let e = resolve_noting_others(&cache, model)?;
        let view = cache.view(&e.output)?;
        if !view.join("config.json").is_file() {
            // a hostile pass got only "config.json: No such file or directory"
            bail!("--model {model}: the entry of stage `{}` ({}) is not a trained model (no config.json): name a `train` stage, PIPELINE/STAGE or its cache key", e.stage, &e.key.0[..12.min(e.key.0.len())]);
        }
        view
    };
    print!("{}", crate::predict::predict_cli(&dir, images, k)?);
    Ok(0)
}

#[cfg(not(feature = "ml"))]
fn predict(_: &Path, _: bool, _: &str, _: &[PathBuf], _: usize) -> Result<i32> {
    bail!("this build has no ML support: rebuild with the default `ml` feature")
}

fn exit_code(r: &RunRecord) -> i32 {
    match r.status {
        RunStatus::Ok => 0,
        RunStatus::Cancelled => 130,
        _ => 1,
    }
}

/// Run a pipeline with Ctrl-C / SIGTERM handling, print the summary, return the record.
pub fn run_pipeline(cache: Arc<Cache>, p: Arc<Pipeline>, opts: &RunOptions) -> Result<RunRecord> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")?;
    let cancel = CancelFlag::new();
    let record = rt.block_on(async {
        let c = cancel.clone();
        tokio::spawn(async move {
            wait_for_shutdown().await;
            eprintln!("stopping: cancelling running stages (nothing half-written is kept)");
            c.cancel();
        });
        run_and_promote(&cache, &p, opts, cancel.clone()).await
    });
    // Do not wait for a stage thread abandoned after cancellation (see CANCEL_GRACE), but
    // take the processes it started down with us.
    rt.shutdown_background();
    crate::stages::command::kill_all_running();
    let record = record?;
    print_summary(&record);
    Ok(record)
}

fn schedule(cache_dir: &Path, args: ScheduleArgs) -> Result<i32> {
    use crate::schedule::{self as sch, OnShutdown, ScheduleOptions, Shutdown};
    let bin = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("pipeline"));
    let file = std::fs::canonicalize(&args.file).with_context(|| format!("{}", args.file.display()))?;
    // Fail now, not at 3 a.m., on a bad file.
    load(&file, &args.set)?;
    let retry_delay = std::time::Duration::try_from_secs_f64(args.retry_delay)
        .ok()
        .filter(|d| *d <= std::time::Duration::from_secs(7 * 24 * 3600))
        .with_context(|| format!("--retry-delay {}: expected seconds from 0 to 604800 (a week)", args.retry_delay))?;
    if args.print_systemd || args.print_cron {
        // The printed command runs elsewhere (cron's or systemd's directory and environment):
        // it names this cache, and carries the overrides, remote and job count, so the
        // nightly runs continue these runs' history and hits.
        let cache = crate::cache::store::absolute(cache_dir);
        let mut more = Vec::new();
        for s in &args.set {
            more.extend(["--set".to_string(), s.clone()]);
        }
        if args.jobs > 0 {
            more.extend(["-j".to_string(), args.jobs.to_string()]);
        }
        if let Some(url) = args.remote.remote.as_ref().filter(|u| !u.is_empty()) {
            // a directory remote is relative to here, and the printed line runs elsewhere
            let url = if url.contains("://") { url.clone() } else { crate::cache::store::absolute(Path::new(url)).display().to_string() };
            more.extend(["--remote".to_string(), url]);
        }
        if args.remote.remote_mode != RemoteMode::ReadWrite {
            let mode = clap::ValueEnum::to_possible_value(&args.remote.remote_mode).map(|v| v.get_name().to_string()).unwrap_or_default();
            more.extend(["--remote-mode".to_string(), mode]);
        }
        let run = sch::ScheduledRun { bin: &bin, file: &file, cache: &cache, args: more };
        // Without --tz the loop keeps the zone TZ names, when set; so does the printed entry.
        let tz = args.tz.clone().or_else(|| std::env::var("TZ").ok().map(|t| t.trim_start_matches(':').to_string()).filter(|t| sch::parse_tz(t).is_ok()));
        if args.print_systemd {
            print!("{}", sch::print_systemd(&run, &args.cron, tz.as_deref())?);
        }
        if args.print_cron {
            print!("{}", sch::print_cron(&run, &args.cron, tz.as_deref())?);
        }
        return Ok(0);
    }
    let mut opts = ScheduleOptions::new(args.cron.clone());
    opts.tz = args.tz.clone();
    opts.retries = args.retries;
    opts.retry_delay = retry_delay;
    if args.finish_on_shutdown {
        opts.on_shutdown = OnShutdown::Finish;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // A run cancelled by SIGTERM/Ctrl-C makes the scheduler exit 130, as `run` does.
    let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = rt.block_on(async {
        let shutdown = Shutdown::from_signals()?;
        let run_once = |cancel: CancelFlag| {
            let (file, set, cache_dir, jobs) = (file.clone(), args.set.clone(), cache_dir.to_path_buf(), args.jobs);
            let remote_args = args.remote.clone();
            let cancelled = cancelled.clone();
            async move {
                // Reload each tick: the file, globs and inputs may have changed since the last one.
                let p = Arc::new(load(&file, &set)?);
                // The cache is open only during the run, so `pipeline runs` works in between.
                // A nightly run waits for a `pipeline cache ls` to finish rather than fail.
                let cache = Arc::new(tokio::task::spawn_blocking(move || open_cache(&cache_dir, true)).await??);
                let remote = remote_args.open(Some(&p), true)?;
                let opts = RunOptions { jobs, quiet: true, trigger: "schedule".into(), overrides: set, remote, ..Default::default() };
                let record = run_and_promote(&cache, &p, &opts, cancel).await?;
                let ran = record.stages.iter().filter(|s| s.status == StageStatus::Ran).count();
                tracing::info!(run = record.id, status = ?record.status, ran, "scheduled run finished");
                if record.status == RunStatus::Cancelled {
                    cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                match record.status {
                    RunStatus::Ok | RunStatus::Cancelled => Ok(()),
                    _ => {
                        let why: Vec<String> = record
                            .stages
                            .iter()
                            .filter(|s| s.status == StageStatus::Failed)
                            .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("")))
                            .collect();
                        Err(anyhow::anyhow!("run {} failed: {}", record.id, why.join("; ")))
                    }
                }
            }
        };
        Ok::<_, anyhow::Error>(sch::run_schedule(&opts, run_once, shutdown).await?)
    });
    rt.shutdown_background();
    crate::stages::command::kill_all_running();
    result?;
    Ok(if cancelled.load(std::sync::atomic::Ordering::SeqCst) { 130 } else { 0 })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub use crate::fmt::{fmt_ms, human_age, human_bytes, table};

fn print_summary(r: &RunRecord) {
    let mut t = table(&["stage", "status", "time", "output"]);
    for s in &r.stages {
        let out = match (&s.output, &s.error) {
            (_, Some(e)) => e.clone(),
            (Some(o), None) => o[..12].to_string(),
            _ => String::new(),
        };
        t.add_row(vec![Cell::new(&s.name), Cell::new(s.status.as_str()), Cell::new(fmt_ms(s.duration_ms)), Cell::new(out)]);
    }
    outln!("{t}");
    for s in r.stages.iter().filter(|s| matches!(s.status, StageStatus::Ran | StageStatus::Cached)) {
        if !s.outcome.summary.is_empty() {
            outln!("\n{}:", s.name);
            for l in &s.outcome.summary {
                outln!("{l}");
            }
        }
    }
    let pulled: Vec<&crate::engine::StageRun> = r.stages.iter().filter(|s| s.remote.as_ref().and_then(|a| a.pulled).is_some()).collect();
    let pushed: Vec<&crate::engine::StageRun> = r.stages.iter().filter(|s| s.remote.as_ref().and_then(|a| a.pushed).is_some()).collect();
    if !pulled.is_empty() {
        let bytes: u64 = pulled.iter().filter_map(|s| s.remote.as_ref()?.pulled.map(|m| m.bytes)).sum();
        let names: Vec<&str> = pulled.iter().map(|s| s.name.as_str()).collect();
        outln!("\nfrom the remote cache: {} ({} downloaded)", names.join(", "), human_bytes(bytes));
    }
    if !pushed.is_empty() {
        let bytes: u64 = pushed.iter().filter_map(|s| s.remote.as_ref()?.pushed.map(|m| m.bytes)).sum();
        outln!("uploaded to the remote cache: {} stages ({})", pushed.len(), human_bytes(bytes));
    }
    for s in &r.stages {
        if let Some(w) = s.remote.as_ref().and_then(|a| a.warning.as_deref()) {
            eprintln!("warning: stage `{}`: {w}", s.name);
        }
    }
    // the promotion's decision, either way (only `runs show` had it: a misspelled metric
    // never promoted and the run said only "ok"; found by a hostile pass)
    if let Some(d) = r.promotion.as_ref().and_then(|v| serde_json::from_value::<crate::promote::Decision>(v.clone()).ok()) {
        // the reason holds the metric's name, from the pipeline file: cleaned as log lines are
        let (to, why) = (crate::text::clean(&d.to), crate::text::clean(&d.reason));
        if d.promoted {
            outln!("\npromoted to {to}: {why}");
        } else {
            eprintln!("\nnot promoted: {why}");
        }
    }
    let failed: Vec<&str> = r.stages.iter().filter(|s| s.status == StageStatus::Failed).map(|s| s.name.as_str()).collect();
    match r.status {
        RunStatus::Ok => outln!("\nrun {} ok in {}", r.id, fmt_ms(r.ended_ms.unwrap_or(r.started_ms) - r.started_ms)),
        RunStatus::Cancelled => eprintln!("\nrun {} cancelled", r.id),
        _ => {
            for s in r.stages.iter().filter(|s| s.status == StageStatus::Failed) {
                eprintln!("error: stage `{}` ({}) failed: {}", s.name, s.kind, s.error.as_deref().unwrap_or("unknown error"));
            }
            if failed.is_empty() {
                eprintln!("error: run {} incomplete: some stages were skipped", r.id);
            }
        }
    }
}
