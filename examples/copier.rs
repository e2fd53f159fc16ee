//! `copier`: the Copier LoRA method end to end (steps 1–9 and the report). All work is library code in
//! `copier_lora::pipeline::copier`; this only parses the flags.
//!
//! ```text
//! cargo run --release --example copier -- --out copier-out
//! cargo run --release --example copier -- --out seed-settings --network_dim 64 --network_alpha 32 \
//!     --max_train_steps 3072 --processed_max_train_steps 4096 --learning_rate 1e-4 --lr_warmup_steps 500
//! ```
use clap::Parser;
use copier_lora::pipeline::{cli::CopierArgs, copier};

fn main() {
    let result = CopierArgs::parse()
        .into_options()
        .and_then(|o| copier::run(&o));
    match result {
        Ok(s) => {
            if let Some(k) = s.stopped_after {
                println!("stopped after step {k} as asked; run the same command again to continue");
            }
            if let Some(r) = &s.report {
                println!("report: {}", r.display());
            }
            if let Some(p) = s.copier_psnr {
                println!("copier fidelity: {p:.2} dB PSNR");
            }
            println!("{:.1} s", s.seconds);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
