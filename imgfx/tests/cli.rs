//! The command line: effects on files, metrics, and the error cases (nothing written on error).

use std::path::Path;

use imgfx::{cli, testimage::synthetic, Error};

fn run(args: &[&str]) -> Result<String, Error> {
    let mut out = Vec::new();
    cli::run(args.iter().map(|s| s.to_string()), &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn effect_with_flag_params_and_spec_forms() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    synthetic(40, 30, 3).save(&input).unwrap();
    let out1 = dir.path().join("a.png");
    let out2 = dir.path().join("b.png");
    run(&["--effect", "posterize", "--bits", "2", p(&input), p(&out1)]).unwrap();
    run(&["--effect", "posterize:bits=2", p(&input), p(&out2)]).unwrap();
    let (a, b) = (image::open(&out1).unwrap(), image::open(&out2).unwrap());
    assert_eq!(a, b);
    let want = imgfx::posterize(&image::open(&input).unwrap(), 2).unwrap();
    assert_eq!(a, want);
    // JPEG output and a dashed parameter name
    let out3 = dir.path().join("c.png");
    run(&[
        "--effect",
        "flatten",
        "--sigma-color",
        "30",
        "--iterations=1",
        p(&input),
        p(&out3),
    ])
    .unwrap();
    assert!(out3.exists());
    // no temporary files left behind
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
}

#[test]
fn metrics_table_with_one_and_two_images() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    synthetic(40, 30, 3).save(&a).unwrap();
    run(&["--effect", "jpeg:quality=10", p(&a), p(&b)]).unwrap();
    let one = run(&["--metrics", p(&a)]).unwrap();
    assert!(
        one.contains("blockiness\t") && !one.contains("psnr"),
        "{one}"
    );
    let two = run(&["--metrics", p(&a), p(&b)]).unwrap();
    assert!(two.contains("psnr_db\t") && two.contains("ssim\t"), "{two}");
    assert_eq!(two.lines().count(), 1 + 8 + 2, "{two}");
}

#[test]
fn errors_name_the_file_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    // unreadable
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"not an image").unwrap();
    let e = run(&["--effect", "contrast", p(&garbage), p(&out)]).unwrap_err();
    assert!(e.to_string().contains("garbage.png"), "{e}");
    // missing
    let e = run(&[
        "--effect",
        "contrast",
        p(&dir.path().join("missing.png")),
        p(&out),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("missing.png"), "{e}");
    // too large for the limit
    let big = dir.path().join("big.png");
    synthetic(64, 64, 1).save(&big).unwrap();
    let e = run(&[
        "--effect",
        "contrast",
        "--max-pixels",
        "1000",
        p(&big),
        p(&out),
    ])
    .unwrap_err();
    assert!(
        matches!(e, Error::ImageTooLarge { .. }) && e.to_string().contains("big.png"),
        "{e}"
    );
    // the input is never overwritten
    let before = std::fs::read(&big).unwrap();
    let e = run(&["--effect", "contrast", p(&big), p(&big)]).unwrap_err();
    assert!(matches!(e, Error::WouldOverwriteInput { .. }), "{e}");
    assert_eq!(std::fs::read(&big).unwrap(), before);
    // bad parameters and usage
    assert!(matches!(
        run(&["--effect", "contrast", "--gain", "2", p(&big), p(&out)]),
        Err(Error::UnknownParameter { .. })
    ));
    assert!(matches!(
        run(&["--effect", "contrast", p(&big)]),
        Err(Error::Usage(_))
    ));
    assert!(matches!(run(&["--metrics"]), Err(Error::Usage(_))));
    assert!(!out.exists());
}

#[test]
fn empty_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    // A 0×N image cannot be written by the png encoder; refuse it as an in-memory image instead.
    let empty = image::DynamicImage::new_rgb8(0, 5);
    let e = "contrast"
        .parse::<imgfx::Effect>()
        .unwrap()
        .apply(&empty)
        .unwrap_err();
    assert!(matches!(e, Error::EmptyImage { .. }), "{e}");
    // and an empty file is unreadable, naming the file
    let zero = dir.path().join("zero.png");
    std::fs::write(&zero, b"").unwrap();
    let e = run(&["--effect", "contrast", p(&zero), p(&out)]).unwrap_err();
    assert!(e.to_string().contains("zero.png"), "{e}");
    assert!(!out.exists());
}
