//! Links the system libjpeg-turbo (TurboJPEG API) when the `turbojpeg` feature is on (the default).
//!
//! The static archive is preferred, so that binaries run where the library is not installed; pkg-config
//! finds its folder (Debian: `libturbojpeg0-dev` puts both `libturbojpeg.a` and `.so` in the multiarch lib
//! folder). Without pkg-config the default linker path is tried. Set `IMGFX_TURBOJPEG_DYNAMIC=1` to link the
//! shared library instead.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=IMGFX_TURBOJPEG_DYNAMIC");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    if std::env::var_os("CARGO_FEATURE_TURBOJPEG").is_none() {
        return;
    }
    let dynamic = std::env::var("IMGFX_TURBOJPEG_DYNAMIC").is_ok_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = Vec::new();
    match Command::new("pkg-config")
        .args(["--variable=libdir", "libturbojpeg"])
        .output()
    {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !dir.is_empty() {
                dirs.push(dir.into());
            }
        }
        _ => println!(
            "cargo:warning=imgfx: pkg-config does not know libturbojpeg; the `turbojpeg` feature needs \
             libjpeg-turbo's TurboJPEG library (Debian/Ubuntu: apt-get install libturbojpeg0-dev; \
             scripts/setup.sh installs it), or build imgfx with default-features = false for the \
             pure-Rust JPEG codec"
        ),
    }
    // Default library folders, for machines without pkg-config.
    if dirs.is_empty() {
        dirs.extend(
            [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu",
                "/usr/lib64",
                "/usr/lib",
                "/usr/local/lib",
                "/opt/homebrew/lib",
            ]
            .map(PathBuf::from),
        );
    }
    for d in &dirs {
        println!("cargo:rustc-link-search=native={}", d.display());
    }
    let has_static = dirs.iter().any(|d| d.join("libturbojpeg.a").is_file());
    if has_static && !dynamic {
        println!("cargo:rustc-link-lib=static=turbojpeg");
    } else {
        println!("cargo:rustc-link-lib=dylib=turbojpeg");
    }
}
