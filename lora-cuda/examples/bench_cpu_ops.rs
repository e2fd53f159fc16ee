//! CPU backend at the demo model's shapes, timed in process CPU time (so a loaded machine distorts it less
//! than wall time), each case next to its yardstick measured in the same run:
//!
//! * `matmul` / `linear`: our [`ops::matmul`] / [`ops::linear`] against OpenBLAS `cblas_sgemm` called directly
//!   on the same operands and transposes (target: ours ≥ 90% of sgemm's speed);
//! * `conv`: our [`ops::conv2d`] (im2col + GEMM + bias) against `cblas_sgemm` of the same GEMM alone, so the
//!   ratio also charges the unfold and the bias to us;
//! * `lora`: the LoRA adapter as the trainer uses it, `y = x·Wᵀ + b + s·up(down(x))` with `W`, `b` frozen,
//!   `loss = sum(y)`, backward for `down`, `up` and `x`; no yardstick here: `scripts/cpu_torch_bench.py` runs
//!   this binary and PyTorch CPU on the same shapes and prints the comparison.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 nice -n 15 \
//!     cargo run --release -p lora-cuda --example bench_cpu_ops -- [--tsv] [--block-ms 40] [--rounds 7]
//! ```
//!
//! Each case: 3 warm-up calls, then `--rounds` rounds of one block of ours and one block of the yardstick,
//! alternating (so both see the same machine load); a block repeats the call until it has used `--block-ms` of
//! CPU time. The figure is the median over rounds of CPU ms per call. `--tsv` prints
//! `group\tcase\tours_cpu_ms\tref_cpu_ms\tours_wall_ms\tref_wall_ms` lines (ref empty for `lora`).

use std::hint::black_box;
use std::os::raw::c_int;
use std::time::Instant;

use lora_cuda::ops::{self, Conv2dCfg};
use lora_cuda::{DType, Graph, LoraAdapter, LoraConfig, LoraContext, LoraKind, ParamStore, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

const CLOCK_PROCESS_CPUTIME_ID: c_int = 2;
const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

extern "C" {
    fn clock_gettime(clk: c_int, ts: *mut Timespec) -> c_int;
}

#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        order: c_int,
        ta: c_int,
        tb: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

/// Process CPU time (all threads) in seconds.
fn cpu_s() -> f64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a Linux constant.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Row-major `C = op(A)·op(B)` by OpenBLAS directly (the yardstick).
#[allow(clippy::too_many_arguments)]
fn sgemm(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
    // SAFETY: the lengths were checked above for these dimensions and leading dimensions.
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            if ta { TRANS } else { NO_TRANS },
            if tb { TRANS } else { NO_TRANS },
            m as c_int,
            n as c_int,
            k as c_int,
            1.0,
            a.as_ptr(),
            lda as c_int,
            b.as_ptr(),
            ldb as c_int,
            0.0,
            c.as_mut_ptr(),
            n as c_int,
        )
    }
}

struct Opts {
    tsv: bool,
    block_ms: f64,
    rounds: usize,
    filter: Option<String>,
}

/// CPU and wall ms per call of one block that runs `f` until it has used `block_ms` of CPU time.
fn block(f: &mut dyn FnMut(), block_ms: f64) -> (f64, f64) {
    let (c0, w0) = (cpu_s(), Instant::now());
    let mut n = 0u64;
    loop {
        f();
        n += 1;
        if (cpu_s() - c0) * 1e3 >= block_ms {
            break;
        }
    }
    let c = (cpu_s() - c0) * 1e3 / n as f64;
    let w = w0.elapsed().as_secs_f64() * 1e3 / n as f64;
    (c, w)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Times `ours` and (if given) `yard` in alternating blocks; returns (ours cpu, ref cpu, ours wall, ref wall).
fn time_pair(
    o: &Opts,
    ours: &mut dyn FnMut(),
    mut yard: Option<&mut dyn FnMut()>,
) -> (f64, Option<f64>, f64, Option<f64>) {
    for _ in 0..3 {
        ours();
        if let Some(y) = yard.as_mut() {
            y();
        }
    }
    let (mut oc, mut ow, mut rc, mut rw) = (vec![], vec![], vec![], vec![]);
    for _ in 0..o.rounds {
        let (c, w) = block(ours, o.block_ms);
        oc.push(c);
        ow.push(w);
        if let Some(y) = yard.as_mut() {
            let (c, w) = block(*y, o.block_ms);
            rc.push(c);
            rw.push(w);
        }
    }
    let has_ref = !rc.is_empty();
    (
        median(oc),
        has_ref.then(|| median(rc)),
        median(ow),
        has_ref.then(|| median(rw)),
    )
}

fn report(o: &Opts, group: &str, case: &str, r: (f64, Option<f64>, f64, Option<f64>)) {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    if o.tsv {
        println!(
            "{group}\t{case}\t{:.4}\t{}\t{:.4}\t{}",
            r.0,
            f(r.1),
            r.2,
            f(r.3)
        );
    } else {
        let ratio =
            r.1.map(|rc| format!("{:.1}%", 100.0 * rc / r.0))
                .unwrap_or_else(|| "-".into());
        println!(
            "{group:<7} {case:<28} ours {:>9.3} ms  sgemm {:>9} ms  speed vs sgemm {ratio:>7}  (CPU ms/call)",
            r.0,
            r.1.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
        );
    }
}

fn rt(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, &mut StdRng::seed_from_u64(seed))
}

fn wanted(o: &Opts, group: &str, case: &str) -> bool {
    o.filter
        .as_deref()
        .is_none_or(|f| format!("{group}/{case}").contains(f))
}

fn bench_matmul(o: &Opts) -> lora_cuda::Result<()> {
    // (m, n, k) of the demo U-Net's transformer layers at 16×16 (256 tokens) and 8×8 (64 tokens), batch 1
    // and 4: attention projections 128→128, ff.net.0.proj 128→1024 (GEGLU), ff.net.2 512→128.
    let shapes = [
        (64, 128, 128),
        (256, 128, 128),
        (1024, 128, 128),
        (256, 1024, 128),
        (1024, 1024, 128),
        (256, 128, 512),
        (1024, 128, 512),
    ];
    for (m, n, k) in shapes {
        let case = format!("{m}x{n}x{k}");
        if wanted(o, "matmul", &case) {
            let (a, b) = (rt(&[m, k], 1), rt(&[k, n], 2));
            let (av, bv) = (a.to_vec_f32()?, b.to_vec_f32()?);
            let mut cv = vec![0.0f32; m * n];
            let r = time_pair(
                o,
                &mut || {
                    black_box(ops::matmul(&a, &b, false, false).unwrap());
                },
                Some(&mut || sgemm(false, false, m, n, k, &av, &bv, &mut cv)),
            );
            report(o, "matmul", &case, r);
        }
        // The model's layers are `linear`: x [m, k] · Wᵀ with W [n, k], plus a bias row.
        if wanted(o, "linear", &case) {
            let (x, w, bias) = (rt(&[m, k], 3), rt(&[n, k], 4), rt(&[n], 5));
            let (xv, wv) = (x.to_vec_f32()?, w.to_vec_f32()?);
            let mut cv = vec![0.0f32; m * n];
            let r = time_pair(
                o,
                &mut || {
                    black_box(ops::linear(&x, &w, Some(&bias)).unwrap());
                },
                Some(&mut || sgemm(false, true, m, n, k, &xv, &wv, &mut cv)),
            );
            report(o, "linear", &format!("{case}+bias"), r);
        }
    }
    Ok(())
}

fn bench_conv(o: &Opts) -> lora_cuda::Result<()> {
    // The demo U-Net's 3×3 convs (block_out_channels 32/64/128/128 at 64/32/16/8 px), batch 1 and 4.
    for batch in [1usize, 4] {
        for (ch, hw) in [(32usize, 64usize), (64, 32), (128, 16), (128, 8)] {
            let case = format!("b{batch}_{ch}ch_{hw}px_3x3");
            if !wanted(o, "conv", &case) {
                continue;
            }
            let x = rt(&[batch, ch, hw, hw], 3);
            let w = rt(&[ch, ch, 3, 3], 4);
            let b = rt(&[ch], 5);
            let cfg = Conv2dCfg {
                stride: 1,
                padding: 1,
            };
            let (m, n, k) = (ch, hw * hw, ch * 9);
            let wv = w.to_vec_f32()?;
            let colv = rt(&[k, n], 6).to_vec_f32()?;
            let mut cv = vec![0.0f32; m * n];
            let r = time_pair(
                o,
                &mut || {
                    black_box(ops::conv2d(&x, &w, Some(&b), cfg).unwrap());
                },
                Some(&mut || {
                    for _ in 0..batch {
                        sgemm(false, false, m, n, k, &wv, &colv, &mut cv);
                    }
                }),
            );
            report(o, "conv", &case, r);
        }
    }
    Ok(())
}

/// One LoRA-adapted linear layer as the trainer runs it: frozen W, b; trainable down, up; x needs a gradient
/// (it is an activation of the layers below). Returns the forward+backward closure's state.
struct LoraCase {
    store: ParamStore,
    ad: LoraAdapter,
    x: lora_cuda::ParamId,
    w: lora_cuda::ParamId,
    b: lora_cuda::ParamId,
}

fn lora_case(batch: usize, tokens: usize, fin: usize, fout: usize, rank: usize) -> LoraCase {
    let mut rng = StdRng::seed_from_u64(7);
    let mut store = ParamStore::new();
    let mut add = |store: &mut ParamStore, name: &str, shape: &[usize], trainable: bool| {
        store
            .add(name, Tensor::randn(shape, DType::F32, &mut rng), trainable)
            .unwrap()
    };
    let w = add(&mut store, "w", &[fout, fin], false);
    let b = add(&mut store, "b", &[fout], false);
    let x = add(&mut store, "x", &[batch, tokens, fin], true);
    // Non-zero up (a trained adapter), so no gradient is trivially zero.
    let down = rt(&[rank, fin], 8);
    let up = rt(&[fout, rank], 9);
    let ad = LoraAdapter::from_tensors(
        &mut store,
        "l",
        down,
        up,
        LoraKind::Linear,
        LoraConfig::new(rank, 8.0),
    )
    .unwrap();
    LoraCase { store, ad, x, w, b }
}

fn lora_step(c: &LoraCase) -> lora_cuda::Result<lora_cuda::Grads> {
    let mut g = Graph::new();
    let x = g.param(&c.store, c.x)?;
    let w = g.param(&c.store, c.w)?;
    let b = g.param(&c.store, c.b)?;
    let y = c.ad.linear(
        &mut g,
        &c.store,
        x,
        w,
        Some(b),
        &mut LoraContext::training(1),
    )?;
    let l = g.sum(y)?;
    g.backward(l)
}

/// The LoRA cases: (batch, tokens, in, out). Shared with `scripts/cpu_torch_bench.py` through the tsv case name.
pub const LORA_CASES: [(usize, usize, usize, usize); 10] = [
    (1, 256, 128, 128),
    (4, 256, 128, 128),
    (1, 64, 128, 128),
    (4, 64, 128, 128),
    (1, 256, 128, 1024),
    (4, 256, 128, 1024),
    (1, 256, 512, 128),
    (4, 256, 512, 128),
    (1, 64, 128, 1024),
    (4, 64, 512, 128),
];

fn bench_lora(o: &Opts, rank: usize) -> lora_cuda::Result<()> {
    for (batch, tokens, fin, fout) in LORA_CASES {
        let case = format!("b{batch}_t{tokens}_{fin}to{fout}_r{rank}");
        if !wanted(o, "lora", &case) {
            continue;
        }
        let c = lora_case(batch, tokens, fin, fout, rank);
        // Check once that the step yields the gradients it should (down, up, x; none for W, b).
        let gr = lora_step(&c)?;
        for (id, what) in [(c.ad.down, "down"), (c.ad.up, "up"), (c.x, "x")] {
            if gr.get(id).is_none() {
                return Err(lora_cuda::Error::InvalidArgument {
                    what: format!("bench lora {case}"),
                    msg: format!("no gradient for {what}"),
                });
            }
        }
        if gr.get(c.w).is_some() || gr.get(c.b).is_some() {
            return Err(lora_cuda::Error::InvalidArgument {
                what: format!("bench lora {case}"),
                msg: "a frozen weight got a gradient".into(),
            });
        }
        let r = time_pair(
            o,
            &mut || {
                black_box(lora_step(&c).unwrap());
            },
            None,
        );
        report(o, "lora", &case, r);
    }
    Ok(())
}

fn main() {
    let mut o = Opts {
        tsv: false,
        block_ms: 40.0,
        rounds: 7,
        filter: None,
    };
    let mut groups: Vec<String> = vec![];
    let mut rank = 16usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next().unwrap_or_else(|| {
                eprintln!("{a} needs a value");
                std::process::exit(2)
            })
        };
        let num = |s: String| -> f64 {
            s.parse().unwrap_or_else(|e| {
                eprintln!("bad number {s}: {e}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--tsv" => o.tsv = true,
            "--block-ms" => o.block_ms = num(val()),
            "--rounds" => o.rounds = num(val()).max(1.0) as usize,
            "--rank" => rank = num(val()) as usize,
            "--filter" => o.filter = Some(val()),
            "--only" => groups.push(val()),
            "--bench" => {}
            other => {
                eprintln!("unknown flag {other}; flags: --tsv --block-ms MS --rounds N --rank R --filter SUBSTR --only matmul|conv|lora");
                std::process::exit(2)
            }
        }
    }
    let on = |g: &str| groups.is_empty() || groups.iter().any(|x| x == g);
    if !o.tsv {
        println!(
            "# CPU ms per call (process CPU time, median of {} rounds); RAYON_NUM_THREADS={} OPENBLAS_NUM_THREADS={}",
            o.rounds,
            std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into()),
            std::env::var("OPENBLAS_NUM_THREADS").unwrap_or_else(|_| "unset".into())
        );
    }
    let res = (|| {
        if on("matmul") {
            bench_matmul(&o)?;
        }
        if on("conv") {
            bench_conv(&o)?;
        }
        if on("lora") {
            bench_lora(&o, rank)?;
        }
        Ok::<_, lora_cuda::Error>(())
    })();
    if let Err(e) = res {
        eprintln!("bench_cpu_ops: {e}");
        std::process::exit(1);
    }
}
