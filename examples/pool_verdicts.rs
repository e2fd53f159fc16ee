//! `pool_verdicts`: one verdict table over several `copier` runs of the same settings (e.g. other
//! `--train_seed`s), their prompt/seed pairs pooled. Library code: `copier_lora::pipeline::pool`.
//!
//! ```text
//! cargo run --release --example copier -- --out run42
//! cargo run --release --example copier -- --out run3 --train_seed 3
//! cargo run --release --example pool_verdicts -- run42 run3
//! ```
use std::path::PathBuf;

use clap::Parser;
use copier_lora::pipeline::copier::DEFAULT_EFFECTS;
use copier_lora::pipeline::effects::parse_effects;
use copier_lora::pipeline::{pool, report};

/// Pools the evaluations of `copier` runs into one verdict table.
#[derive(Parser)]
#[command(name = "pool_verdicts")]
struct Args {
    /// The runs' effects, as given to `copier` (default: its defaults).
    #[arg(long, value_delimiter = ';')]
    effects: Vec<String>,
    /// The run folders (`copier --out`).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
}

fn main() {
    let a = Args::parse();
    let effects = if a.effects.is_empty() {
        DEFAULT_EFFECTS.iter().map(|e| e.to_string()).collect()
    } else {
        a.effects
    };
    let result = parse_effects(&effects).and_then(|e| pool::pooled_verdicts(&a.runs, &e));
    match result {
        Ok((pooled, rows)) => {
            println!(
                "{} runs, {} prompt/seed pairs pooled\n",
                a.runs.len(),
                pooled.jobs.len()
            );
            println!("{}", report::verdict_table(&rows));
            for (base, (plus, strict, n)) in report::transfer_counts(&rows, report::PROCESSED_GROUP)
            {
                println!("- base {base}: {plus} of {n} effects beyond 2 SE in the right direction at +1; {strict} also opposite at −1");
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
