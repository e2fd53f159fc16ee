//! `imgfx`: apply one of the method's image effects to a file, or print the metrics that measure them.
//!
//! ```text
//! cargo run --release --example imgfx -- --effect posterize --bits 3 in.png out.png
//! cargo run --release --example imgfx -- --effect 'jpeg:quality=20,passes=2' in.png out.png
//! cargo run --release --example imgfx -- --metrics original.png processed.png
//! ```
//! The options are documented in `imgfx::cli`.

fn main() {
    let mut stdout = std::io::stdout();
    if let Err(e) = copier_lora::imgfx::cli::run(std::env::args().skip(1), &mut stdout) {
        eprintln!("imgfx: {e}");
        std::process::exit(match e {
            copier_lora::imgfx::Error::Usage(_) => 2,
            _ => 1,
        });
    }
}
