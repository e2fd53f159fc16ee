//! Prints a LoRA's modules (name, kind, in, out, rank, alpha), the detected base model, the
//! metadata, and whether the stored sshs hashes match the file.
//!
//! ```text
//! cargo run --example inspect_lora -- my_lora.safetensors [--json]
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut json = false;
    let mut path = None;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--json" => json = true,
            "-h" | "--help" => {
                println!("usage: inspect_lora FILE.safetensors [--json]");
                return ExitCode::SUCCESS;
            }
            _ if path.is_none() => path = Some(a),
            _ => {
                eprintln!("inspect_lora: unexpected argument {a:?}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(path) = path else {
        eprintln!("usage: inspect_lora FILE.safetensors [--json]");
        return ExitCode::from(2);
    };
    match lora_core::inspect::inspect(&path) {
        Ok(r) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&r.to_json()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            print!("{}", r.to_text());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("inspect_lora: {e}");
            ExitCode::FAILURE
        }
    }
}
