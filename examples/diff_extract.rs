//! `diff_extract`: the difference-extraction variant (copier LoRA A, processed LoRA B, `svd_merge` A − B).
//! All work is library code in `copier_lora::pipeline::diff_extract`; this only parses the flags.
//!
//! ```text
//! cargo run --release --example diff_extract -- --out diff-out --processed-start all
//! ```
use clap::Parser;
use copier_lora::pipeline::{cli::DiffExtractArgs, diff_extract};

fn main() {
    let result = DiffExtractArgs::parse()
        .into_options()
        .and_then(|o| diff_extract::run(&o));
    match result {
        Ok(s) => {
            if let Some(k) = s.stopped_after {
                println!("stopped after step {k} as asked; run the same command again to continue");
            }
            if let Some(r) = &s.report {
                println!("report: {}", r.display());
            }
            println!("{:.1} s", s.seconds);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
