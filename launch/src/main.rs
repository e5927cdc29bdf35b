//! `fav`: align few-step generators to a reward with FAV.

mod progress;
mod settings;
mod signals;
mod slurm;
mod world;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use fav_trainer::config::DeviceKind;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "fav", version, about = "Distributed, resumable FAV alignment of few-step generators")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain the base generator if needed, then align it with FAV.
    Train {
        /// TOML config; omitted: the embedded defaults (the toy VAE job).
        config: Option<PathBuf>,
        /// Override a config key, e.g. `--set seed=3 --set fav.lr=2e-4`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Run directory (default: runs/<config name>-seed<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// `auto`: continue from the latest complete checkpoint in the run's store, if any;
        /// `none`: start afresh; or a store URL (path, file://, s3://) to continue from.
        #[arg(long, default_value = "auto", value_name = "auto|none|URL")]
        resume: String,
        /// Data-parallel ranks as threads of this one process (CPU, not under mpirun/srun): the
        /// batch is split over them as over MPI ranks, so the network's single-threaded work runs
        /// on every core. Use the number of cores; 1: one rank.
        #[arg(long, default_value_t = 1, value_name = "N")]
        ranks: usize,
    },
    /// Measure the toy FAV step and the transport-field throughput against GEMM.
    Bench {
        /// Config whose toy step is timed (default: embedded defaults).
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Timed repetitions per measurement.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Untimed steps first (kernels compiled, memory pools grown).
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Field size N = M.
        #[arg(long, default_value_t = 4096)]
        field_n: usize,
        /// Field feature dimension D.
        #[arg(long, default_value_t = 1024)]
        field_d: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Data-parallel ranks as threads of this one process (CPU, not under mpirun/srun): the
        /// batch is split over them as over MPI ranks, so the network's single-threaded work runs
        /// on every core. Use the number of cores; 1: one rank.
        #[arg(long, default_value_t = 1, value_name = "N")]
        ranks: usize,
    },
    /// Hand a checkpoint to inference: model.safetensors and model_card.json.
    Export {
        /// Checkpoint store (a run's `checkpoints/` folder, file:// or s3:// URL); the latest
        /// complete checkpoint unless --step is given.
        checkpoint: String,
        #[arg(long)]
        step: Option<u64>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Compare image runs: reward against diversity over training (mean over the seeds of each
    /// method) with best-of-N from the base, as a PNG; prints a Markdown table.
    Tradeoff {
        /// Image run directories (each with summary.json and metrics.jsonl).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        #[arg(long, default_value = "tradeoff.png")]
        out: PathBuf,
    },
    /// Print a ready `sbatch` script that runs `fav train CONFIG` under `srun --mpi=pmix`, with
    /// requeue on preemption and resume on by default.
    SlurmScript {
        config: PathBuf,
        #[arg(long)]
        nodes: usize,
        #[arg(long)]
        tasks_per_node: usize,
        #[arg(long)]
        gpus_per_node: Option<usize>,
        /// Slurm time limit, e.g. `04:00:00`.
        #[arg(long)]
        time: Option<String>,
        #[arg(long)]
        partition: Option<String>,
        /// Config overrides passed to `fav train`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Run directory, on storage every node sees (default: runs/<config name>-seed<seed>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Folder of the per-job logs (default: <run dir>/logs).
        #[arg(long)]
        logs: Option<PathBuf>,
        /// Seconds before the time limit at which the job is told to checkpoint and stop.
        #[arg(long, default_value_t = 120)]
        grace: u64,
        #[arg(long)]
        job_name: Option<String>,
    },
    /// Estimate the memory a job needs per rank (models, optimiser state, activations, field,
    /// evaluation) and whether it fits this machine.
    Plan {
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Data-parallel ranks of the job.
        #[arg(long, default_value_t = 1)]
        ranks: usize,
        /// Of those, ranks on this machine (default: all).
        #[arg(long)]
        ranks_here: Option<usize>,
    },
    /// Score images with a published reward model (files you downloaded; nothing is fetched):
    /// one JSON line per image (image, prompt, reward).
    Score {
        /// aesthetic, hpsv2, pickscore, clip_score or nsfw.
        #[arg(long)]
        reward: String,
        /// Model directory (transformers, or the hub's open_clip layout) or checkpoint file.
        #[arg(long)]
        model: PathBuf,
        /// The model config of a checkpoint file (open_clip's model JSON, e.g. ViT-H-14.json).
        #[arg(long)]
        model_config: Option<PathBuf>,
        /// The aesthetic head (LAION's .pth).
        #[arg(long)]
        head: Option<PathBuf>,
        /// One prompt for every image.
        #[arg(long, conflicts_with = "prompts")]
        prompt: Option<String>,
        /// A file of prompts, one line per image, in image order.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// HPSv2: score against the prompt as given, not "a photo of a …" (spec §7.1).
        #[arg(long)]
        raw_prompts: bool,
        /// Write each image's particle (the reward model's features) here, keyed "0", "1", ….
        #[arg(long)]
        features: Option<PathBuf>,
        /// Write the reward's gradient with respect to each image's pixels (in [−1, 1],
        /// [3, H, W]) here, keyed "0", "1", ….
        #[arg(long)]
        grad: Option<PathBuf>,
        /// cpu, cuda (the first visible GPU) or cuda:N.
        #[arg(long, default_value = "cpu", value_parser = device_arg)]
        device: DeviceKind,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Sample a SANA-Sprint model (a diffusers pipeline folder with transformer/ and vae/) on
    /// prompt embeddings (scripts/sana_prompt_embeddings.py): a PNG per prompt and sample, and
    /// images.safetensors (the decoded images in [−1, 1]).
    Sample {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        embeddings: PathBuf,
        /// A LoRA file in diffusers' layout (`fav train`'s `pytorch_lora_weights.safetensors`),
        /// folded into the transformer.
        #[arg(long)]
        lora: Option<PathBuf>,
        /// Sampling steps (SANA-Sprint: 1–4).
        #[arg(long, default_value_t = 4)]
        steps: usize,
        /// Guidance scale (through the model's guidance embedding, one pass).
        #[arg(long, default_value_t = 4.5)]
        guidance: f64,
        /// Noise from this seed (every prompt, every sample).
        #[arg(long, default_value_t = 0, conflicts_with = "noise")]
        seed: u64,
        /// Samples per prompt with --seed.
        #[arg(long, default_value_t = 1)]
        per_prompt: usize,
        /// Initial latents `noise` [n, C, h, w] (one per prompt, as diffusers' `latents=`) and
        /// optionally the scheduler's `step_noise` [steps, n, C, h, w].
        #[arg(long)]
        noise: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// cpu, cuda (the first visible GPU) or cuda:N.
        #[arg(long, default_value = "cpu", value_parser = device_arg)]
        device: DeviceKind,
    },
    /// Print the resolved configuration (defaults, file and overrides) as TOML.
    Config {
        config: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
}

/// A config's name: its file stem, or `default` for the embedded defaults.
fn config_name(config: Option<&std::path::Path>) -> String {
    config.and_then(|p| p.file_stem()).map_or("default".to_string(), |s| s.to_string_lossy().into_owned())
}

/// `runs/<config name>-seed<seed>`.
fn default_run_dir(config: Option<&std::path::Path>, seed: u64) -> PathBuf {
    PathBuf::from("runs").join(format!("{}-seed{seed}", config_name(config)))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs in files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train { config, overrides, out, resume, ranks } => {
            let resume = match resume.as_str() {
                "auto" => fav_trainer::Resume::Auto,
                "none" => fav_trainer::Resume::Fresh,
                url => fav_trainer::Resume::From(url.to_string()),
            };
            let cfg = settings::load(config.as_deref(), &overrides)?;
            let out = out.unwrap_or_else(|| default_run_dir(config.as_deref(), cfg.seed));
            let (world, comm) = world::join(cfg.comm, cfg.device.is_cuda())?;
            let stop = signals::install(comm.rank())?;
            let job = Job { cfg: &cfg, out: &out, resume: &resume, world: &world, stop: &stop };
            world::each_rank(comm, ranks, &cfg, |c| train(&job, c))
        }
        Command::Bench { config, overrides, runs, warmup, field_n, field_d, json, ranks } => {
            let cfg = settings::load(config.as_deref(), &overrides)?;
            let (world, comm) = world::join(cfg.comm, cfg.device.is_cuda())?;
            world::each_rank(comm, ranks, &cfg, |c| {
                bench(&cfg, c, world.device_index, (warmup, runs), (field_n, field_d), json.as_deref())
            })
        }
        Command::Tradeoff { runs, out } => {
            let table = fav_trainer::tasks::image::report::tradeoff(&runs, &out).map_err(|e| anyhow::anyhow!(e))?;
            print!("{table}");
            eprintln!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { checkpoint, step, out } => {
            let e = fav_trainer::export(&checkpoint, step, &out, env!("FAV_SOURCE_COMMIT"))?;
            println!("exported step {} to {}: {}", e.step, out.display(), e.files.join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::SlurmScript {
            config,
            nodes,
            tasks_per_node,
            gpus_per_node,
            time,
            partition,
            overrides,
            out,
            logs,
            grace,
            job_name,
        } => {
            // Refuse a bad config now, not in the queue.
            let cfg = settings::load(Some(&config), &overrides)?;
            if nodes == 0 || tasks_per_node == 0 {
                anyhow::bail!("--nodes and --tasks-per-node must be at least 1");
            }
            let abs = |p: &std::path::Path| std::path::absolute(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
            let out = abs(&out.unwrap_or_else(|| default_run_dir(Some(&config), cfg.seed)))?;
            let logs = abs(&logs.unwrap_or_else(|| out.join("logs")))?;
            std::fs::create_dir_all(&logs).map_err(|e| anyhow::anyhow!("{}: {e}", logs.display()))?;
            let name = job_name.unwrap_or_else(|| format!("fav-{}", config_name(Some(&config))));
            print!(
                "{}",
                slurm::script(&slurm::Request {
                    fav: &std::env::current_exe()?,
                    config: &abs(&config)?,
                    overrides: &overrides,
                    out: &out,
                    logs: &logs,
                    job_name: &name,
                    nodes,
                    tasks_per_node,
                    gpus_per_node,
                    time: time.as_deref(),
                    partition: partition.as_deref(),
                    grace_s: grace,
                })
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan { config, overrides, ranks, ranks_here } => {
            let cfg = settings::load(config.as_deref(), &overrides)?;
            if ranks == 0 {
                anyhow::bail!("--ranks 0: a run needs at least one rank");
            }
            let plan = fav_trainer::plan::plan(&cfg, ranks)?;
            print!("{}", plan.table());
            let here = ranks_here.unwrap_or(ranks).min(ranks);
            let need = fav_trainer::plan::human(plan.total() * here as f64);
            match fav_trainer::plan::available() {
                Some(avail) => {
                    let verdict =
                        plan.check(here, avail).map_or_else(|e| format!("does not fit: {e}"), |_| "fits".into());
                    println!(
                        "{here} rank(s) on this machine: {need} of {} available — {verdict}",
                        fav_trainer::plan::human(avail)
                    );
                }
                None => println!("{here} rank(s) on this machine: {need} (available memory unknown)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Score {
            reward,
            model,
            model_config,
            head,
            prompt,
            prompts,
            raw_prompts,
            features,
            grad,
            device,
            images,
        } => {
            use fav_trainer::rewards::clip::{score, scoring};
            let kind = score::Kind::parse(&reward).ok_or_else(|| {
                let names: Vec<&str> = score::Kind::ALL.iter().map(|(n, _)| *n).collect();
                anyhow::anyhow!("--reward {reward:?}: expected one of {}", names.join(", "))
            })?;
            let prompts = match (prompt, prompts) {
                (Some(p), _) => vec![p],
                (None, Some(file)) => std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                    .lines()
                    .map(str::to_string)
                    .collect(),
                (None, None) => vec![],
            };
            if kind.needs_text() && prompts.is_empty() {
                anyhow::bail!("--reward {reward} scores an image against its prompt: give --prompt or --prompts");
            }
            let source = score::Source { kind, model, model_config, head, prompts, raw_prompts, image: [0, 0] };
            let device = fav_trainer::gpu::open_here(device)?;
            let job = scoring::ScoreJob { source, images, features_out: features, grad_out: grad, device };
            for line in scoring::score(&job).map_err(|e| anyhow::anyhow!(e))? {
                println!("{}", serde_json::to_string(&line)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sample { model, embeddings, lora, steps, guidance, seed, per_prompt, noise, out, device } => {
            use fav_trainer::models::sana::sample;
            let noise = match noise {
                Some(f) => sample::NoiseSource::File(f),
                None => sample::NoiseSource::Seed { seed, per_prompt: per_prompt.max(1) },
            };
            let device = fav_trainer::gpu::open_here(device)?;
            let job = sample::SampleJob { model, embeddings, lora, steps, guidance, noise, out, device };
            for f in sample::sample(&job).map_err(|e| anyhow::anyhow!(e))? {
                println!("{}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { config, overrides } => {
            let cfg = settings::load(config.as_deref(), &overrides)?;
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--device`: the config's spelling (`cpu`, `cuda`, `cuda:N`).
fn device_arg(s: &str) -> Result<DeviceKind, String> {
    DeviceKind::try_from(s.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A non-finite quantity stopped the job (nothing of that step saved, the last good checkpoint
/// kept).
const EXIT_NONFINITE: u8 = 3;

/// Rank 0's report of a finished job, or the exit code that ends this process: success on the
/// other ranks, [`signals::EXIT_PREEMPTED`] when a signal stopped the job with its checkpoint
/// saved. An error on one of several ranks aborts the whole job: its peers may be blocked in a
/// collective.
fn report_or_exit(
    result: Result<fav_trainer::Outcome, fav_trainer::JobError>,
    comm: &dyn fav_comm::Collective,
) -> anyhow::Result<Result<Box<fav_trainer::Report>, ExitCode>> {
    use fav_trainer::Outcome;
    match result {
        Ok(Outcome::Finished(Some(r))) => Ok(Ok(r)),
        Ok(Outcome::Finished(None)) => Ok(Err(ExitCode::SUCCESS)),
        Ok(Outcome::Stopped { .. } | Outcome::StoppedEarly) => Ok(Err(ExitCode::from(signals::EXIT_PREEMPTED))),
        // Every rank saw the same non-finite step: each exits alike, no abort needed.
        Err(e @ fav_trainer::JobError::NonFinite { .. }) => {
            if comm.rank() == 0 {
                eprintln!("error: {e}");
            }
            Ok(Err(ExitCode::from(EXIT_NONFINITE)))
        }
        Err(e) if comm.size() > 1 => {
            eprintln!("error on rank {}: {e}", comm.rank());
            comm.abort(1)
        }
        Err(e) => Err(e.into()),
    }
}

/// What every rank of a `fav train` runs with.
struct Job<'a> {
    cfg: &'a fav_trainer::config::Config,
    out: &'a std::path::Path,
    resume: &'a fav_trainer::Resume,
    world: &'a fav_cluster::World,
    stop: &'a std::sync::atomic::AtomicBool,
}

/// One rank of `fav train`: rank 0 logs the world, reports progress and prints the report.
fn train(job: &Job, comm: &dyn fav_comm::Collective) -> Result<ExitCode> {
    let Job { cfg, out, resume, world, stop } = *job;
    let _rank = tracing::info_span!("rank", r = comm.rank()).entered();
    let (cores, online) = world::cpu_cores();
    let device = match cfg.device.gpu(world.device_index) {
        Some(gpu) => format!("cuda:{gpu}"),
        None => format!("{}[{cores} core{}]", cfg.device, if cores == 1 { "" } else { "s" }),
    };
    let layout = world::gather_layout(comm, &device)?;
    let here = layout.nodes.iter().find(|(_, r)| r.contains(&comm.rank())).map_or(1, |(_, r)| r.len());
    if !cfg.device.is_cuda() && cores == 1 && online >= 2 * here {
        // OpenMPI binds each rank to one core by default (two ranks or fewer per node).
        tracing::warn!(
            "this rank may use 1 of the node's {online} cores for {here} rank(s): start mpirun with \
             `--bind-to none` or `--map-by slot:PE=<cores per rank>` to use the rest"
        );
    }
    if comm.rank() == 0 {
        let store = if cfg.checkpoint.url.is_empty() {
            out.join("checkpoints").display().to_string()
        } else {
            world::redact(&cfg.checkpoint.url)
        };
        tracing::info!(launcher = ?world.launcher, world_size = comm.size(), nodes = layout.nodes.len(),
            ranks_per_node = %layout.ranks_per_node(), node_list = %layout.node_list(),
            devices = %layout.device_list(), run_dir = %out.display(), checkpoint_store = %store,
            task = ?cfg.task, family = %cfg.family(), steps = cfg.steps, seed = cfg.seed, "starting");
    }
    let mut reporter = progress::Reporter::new(comm.rank() == 0);
    let env =
        fav_trainer::Env { comm, resume: resume.clone(), stop, device_index: world.device_index, local_ranks: here };
    let result = fav_trainer::run_on(cfg, out, &mut reporter, &env);
    drop(reporter);
    match report_or_exit(result, comm)? {
        Ok(report) => {
            println!("{}", report.text);
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

/// One rank of `fav bench`: the FAV step of the config's task on the whole world; rank 0 of a
/// one-rank world also times the transport field against GEMM.
fn bench(
    cfg: &fav_trainer::config::Config,
    comm: &dyn fav_comm::Collective,
    device_index: usize,
    (warmup, runs): (usize, usize),
    (field_n, field_d): (usize, usize),
    json: Option<&std::path::Path>,
) -> Result<ExitCode> {
    use fav_trainer::bench;
    let device = fav_trainer::gpu::open(cfg, device_index, comm)?;
    let threads = rayon::current_num_threads();
    let step = bench::step(cfg, warmup, runs, &device, comm)?;
    if comm.rank() != 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let p = &step.parts;
    println!(
        "FAV step ({}, global batch {}, {} rank(s)): median {:.1} ms (min {:.1}) | per step: generate {:.1} ms, \
         encode {:.1} ms, field {:.1} ms, backward+optimiser {:.1} ms, comm {:.1} ms | threads per rank: {threads}",
        step.family,
        step.batch,
        step.ranks,
        1e3 * step.step.median_s,
        1e3 * step.step.min_s,
        1e3 * p.generate,
        1e3 * p.encode,
        1e3 * p.field,
        1e3 * p.backward,
        1e3 * p.comm
    );
    let field = (comm.size() == 1).then(|| bench::field(field_n, field_d, runs.min(5), &device)).transpose()?;
    if let Some(field) = &field {
        println!(
            "transport field N=M={} D={}: {:.1} ms, {:.1} GFLOP/s | GEMM {}x{}x{}: {:.1} GFLOP/s | field at \
             {:.0}% of GEMM",
            field.n,
            field.d,
            1e3 * field.field.median_s,
            field.field_gflops,
            field.n,
            field.d,
            field.m,
            field.gemm_gflops,
            100.0 * field.fraction_of_gemm
        );
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "threads": threads, "step": step, "field": field });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
