//! The `flamingo` command-line program.
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "flamingo", version, about = "Flamingo in Rust on our own tensor engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo (today: the engine training a small MLP; the Flamingo few-shot demo comes next).
    Demo {
        /// Training steps.
        #[arg(long, default_value_t = 300)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print parameter counts per component and FLOPs per image/token, without allocating weights.
    Info {
        /// A preset (tiny, small, openflamingo-3b, nfnet-f0 … nfnet-f6, flamingo-3b/9b/80b) or a JSON file.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Print the full config as JSON as well.
        #[arg(long)]
        json: bool,
    },
    /// Run one module on given inputs and weights and write its outputs (see docs/TESTBED.md).
    Forward {
        /// nfnet, perceiver, xattn, lm, flamingo or clip.
        #[arg(long)]
        module: String,
        /// The module's JSON config.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Weights (safetensors, the module's parameter names).
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Inputs (safetensors).
        #[arg(long)]
        inputs: std::path::PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Gradient of the output: also write input and parameter gradients (`grad.<name>`).
        #[arg(long)]
        grad_output: Option<std::path::PathBuf>,
    },
    /// Run a benchmark suite and print one row per case.
    Bench {
        /// Suite name (ops).
        #[arg(long, default_value = "ops")]
        suite: String,
        /// Print a JSON array of rows instead of a table.
        #[arg(long)]
        json: bool,
        /// Comma-separated case names to run (default: all).
        #[arg(long, value_delimiter = ',')]
        cases: Option<Vec<String>>,
        /// Fewer, shorter samples.
        #[arg(long)]
        quick: bool,
        /// Print the suite's case names and exit.
        #[arg(long)]
        list: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Demo { steps, seed } => demo(steps, seed),
        Command::Info { config, json } => info(&config, json),
        Command::Forward { module, config, weights, inputs, out, grad_output } => {
            flamingo_trainer::testbed::run(&module, &config, &weights, &inputs, &out, grad_output.as_deref()).map_err(|e| e.to_string())
        }
        Command::Bench { suite, list: true, .. } => flamingo_benches::suites::cases(&suite).map(|cs| cs.iter().for_each(|c| println!("{}", c.name))),
        Command::Bench { suite, json, cases, quick, .. } => bench(&suite, json, cases.as_deref(), quick),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flamingo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(steps: usize, seed: u64) -> Result<(), String> {
    println!("flamingo demo: what is built so far is the tensor engine (CPU): tensors, autodiff, ops,");
    println!("optimisers, safetensors. The Flamingo model and its few-shot demo arrive with the model and");
    println!("training issues. Meanwhile: an MLP learns two interleaved spirals with AdamW.\n");
    let every = (steps / 10).max(1);
    let t = std::time::Instant::now();
    let (first, last, acc) = flamingo_trainer::demo::run(steps, seed, |step, loss, acc| {
        if step % every == 0 || step + 1 == steps {
            println!("step {step:>5}  loss {loss:.4}  train accuracy {:.1}%", acc * 100.0);
        }
    })
    .map_err(|e| e.to_string())?;
    println!("\nloss {first:.4} → {last:.4}, accuracy {:.1}% in {:.2} s", acc * 100.0, t.elapsed().as_secs_f64());
    Ok(())
}

fn info(config: &str, json: bool) -> Result<(), String> {
    let cfg = flamingo_model::config::load(config).map_err(|e| e.to_string())?;
    print!("{}", flamingo_model::config::info(&cfg).map_err(|e| e.to_string())?);
    if json {
        println!("{}", serde_json::to_string_pretty(&cfg).map_err(|e| e.to_string())?);
    }
    Ok(())
}

fn bench(suite: &str, json: bool, cases: Option<&[String]>, quick: bool) -> Result<(), String> {
    let rows = flamingo_benches::run_suite(suite, cases, quick, |name| eprintln!("  running {name}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
    } else {
        print!("{}", flamingo_benches::table(&rows));
    }
    Ok(())
}
