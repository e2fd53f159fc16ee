//! The CPU reference kernels, over plain row-major slices in a compute type `T` (`f32` or `f64`).
//!
//! Matrix products go through OpenBLAS `?gemm`; convolutions are im2col + GEMM; everything else is a
//! clear loop, parallel with rayon where the work is large. These are the twins the CUDA kernels are
//! checked against.

use std::any::Any;
use std::cell::RefCell;

use rayon::prelude::*;

use crate::dtype::Real;

/// Work below this many elements stays on one thread (rayon's overhead would dominate).
const PAR_MIN: usize = 1 << 14;
/// Elements of the im2col matrix unfolded at once by a large convolution (512 KiB of f32: half an L2).
const CONV_BAND: usize = 1 << 17;

/// True when work over `n` elements is worth handing to rayon: large enough, and more than one thread to
/// share it. With one thread (the benchmarks, a loaded machine) every kernel runs inline on the calling
/// thread: a rayon call from outside the pool would otherwise hand each small job to the pool's worker and
/// sleep on a futex until it returns (≈ 5 % of a demo training step in thread switches alone).
#[inline]
fn parallel(n: usize) -> bool {
    n >= PAR_MIN && rayon::current_num_threads() > 1
}

/// Runs `body((i, chunk))` over the `chunk`-long pieces of `buf` (the last may be shorter), on rayon's
/// threads when [`parallel`] says so.
fn for_each_chunk<T: Send>(
    buf: &mut [T],
    chunk: usize,
    body: impl Fn((usize, &mut [T])) + Sync + Send,
) {
    let chunk = chunk.max(1);
    if parallel(buf.len()) {
        buf.par_chunks_mut(chunk).enumerate().for_each(body);
    } else {
        buf.chunks_mut(chunk).enumerate().for_each(body);
    }
}

/// `c[i] = f(a[i])`, in parallel for large inputs.
pub fn map<T: Real>(a: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    if parallel(a.len()) {
        a.par_iter().map(|&x| f(x)).collect()
    } else {
        a.iter().map(|&x| f(x)).collect()
    }
}

/// `c[i] = f(a[i], b[i])` for equal lengths.
pub fn zip_map<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync + Send) -> Vec<T> {
    debug_assert_eq!(a.len(), b.len());
    if parallel(a.len()) {
        a.par_iter()
            .zip(b.par_iter())
            .map(|(&x, &y)| f(x, y))
            .collect()
    } else {
        a.iter().zip(b.iter()).map(|(&x, &y)| f(x, y)).collect()
    }
}

/// `c[i] = f(a[i], b[i], c[i])` for equal lengths.
pub fn zip3_map<T: Real>(
    a: &[T],
    b: &[T],
    c: &[T],
    f: impl Fn(T, T, T) -> T + Sync + Send,
) -> Vec<T> {
    let n = a.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    if parallel(n) {
        (0..n)
            .into_par_iter()
            .map(|i| f(a[i], b[i], c[i]))
            .collect()
    } else {
        (0..n).map(|i| f(a[i], b[i], c[i])).collect()
    }
}

/// Sum in f64 (pairwise through rayon for large inputs), returned in T.
pub fn sum<T: Real>(a: &[T]) -> T {
    let s: f64 = if parallel(a.len()) {
        a.par_chunks(4096)
            .map(|c| c.iter().map(|x| x.to_f64()).sum::<f64>())
            .sum()
    } else {
        a.iter().map(|x| x.to_f64()).sum()
    };
    T::from_f64(s)
}

/// Tells glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel (once per
/// process; other C libraries: nothing).
///
/// Every CPU op allocates its output, and a training step frees and allocates the same few hundred
/// megabytes each step. With glibc's defaults, blocks above the (adaptive) mmap threshold are fresh `mmap`s
/// and the top of the heap is trimmed past 128 KiB free, so each step page-faults and zeroes its memory
/// again: 10–15 % of a demo training step in the kernel. With both thresholds raised, the heap stays at the
/// step's peak and is reused; the peak resident size does not grow. [`crate::train::Trainer::new`] and the
/// sampling pipeline call this; it is the same as running with
/// `GLIBC_TUNABLES=glibc.malloc.trim_threshold=…:glibc.malloc.mmap_threshold=…`.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time.
            unsafe {
                // Blocks up to 32 MiB (glibc's largest allowed threshold) come from the heap, so they are
                // reused, and the heap is trimmed only when 1 GiB at its top is free.
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Matrix products

/// The `beta` of a GEMM whose output buffer was just allocated zeroed: 1, adding onto the zeros. The same
/// result as beta = 0 (0 + x = x), but OpenBLAS then skips the pass in which it first zeroes C itself for
/// beta = 0 (`sgemm_beta`, ≈ 3 % of a demo training step).
#[inline(always)]
pub(crate) fn onto_zeros<T: Real>() -> T {
    T::ONE
}

/// Batched row-major GEMM: for each batch i, `C_i = alpha·op(A_i)·op(B_i) + beta·C_i`, where A_i has
/// `a_stride` elements between batches (0: the same A for every batch), likewise B.
#[allow(clippy::too_many_arguments)]
pub fn batched_gemm<T: Real>(
    ta: bool,
    tb: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    a_stride: usize,
    b: &[T],
    b_stride: usize,
    beta: T,
    c: &mut [T],
) {
    let lda = if ta { m } else { k };
    let ldb = if tb { k } else { n };
    for i in 0..batch {
        let ao = i * a_stride;
        let bo = i * b_stride;
        T::gemm(
            ta,
            tb,
            m,
            n,
            k,
            alpha,
            &a[ao..ao + m * k],
            lda,
            &b[bo..bo + k * n],
            ldb,
            beta,
            &mut c[i * m * n..(i + 1) * m * n],
            n,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution (NCHW, weights OIHW)

/// The geometry of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub pad: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.kh) / self.stride + 1
    }
    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.kw) / self.stride + 1
    }
    /// Rows of the im2col matrix: c·kh·kw.
    pub fn ckk(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// True when the convolution is a plain matrix product (1×1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
}

/// The output columns `ox` whose input column `ox·stride + k − pad` lies inside `[0, w)`, as a range.
fn valid_out_range(
    w: usize,
    wo: usize,
    stride: usize,
    k: usize,
    pad: usize,
) -> std::ops::Range<usize> {
    // ox·s + k ≥ pad  ⇔  ox ≥ ceil((pad − k) / s);  ox·s + k − pad ≤ w − 1  ⇔  ox ≤ (w − 1 + pad − k) / s.
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    let hi = if w + pad > k {
        ((w - 1 + pad - k) / stride + 1).min(wo)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// Unfolds one image `x [c, h, w]` into `col [c·kh·kw, ho·wo]` (zeros where the window leaves the image).
pub fn im2col<T: Real>(x: &[T], g: &ConvGeom, col: &mut [T]) {
    im2col_band(x, g, 0, g.ho(), col)
}

/// The output rows `oy0..oy1` of [`im2col`]: `col [c·kh·kw, (oy1 − oy0)·wo]`.
pub fn im2col_band<T: Real>(x: &[T], g: &ConvGeom, oy0: usize, oy1: usize, col: &mut [T]) {
    let (ho, wo) = (g.ho(), g.wo());
    let nb = (oy1 - oy0) * wo;
    let unfold_row = |(row, out): (usize, &mut [T])| {
        let ci = row / (g.kh * g.kw);
        let ky = (row / g.kw) % g.kh;
        let kx = row % g.kw;
        let xc = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        let ox_ok = valid_out_range(g.w, wo, g.stride, kx, g.pad);
        let oy_all = valid_out_range(g.h, ho, g.stride, ky, g.pad);
        let oy_ok = oy_all.start.clamp(oy0, oy1)..oy_all.end.clamp(oy0, oy1);
        if g.stride == 1 && wo == g.w && ho == g.h {
            // "Same" convolution (stride 1, 2·pad = k − 1): the row is the image shifted by
            // (ky − pad)·w + kx − pad, so one copy of the whole valid block, then zeros in the columns
            // the window leaves; short image rows cost one call per kernel tap instead of three per row.
            let (p0, p1) = ((oy_ok.start - oy0) * wo, (oy_ok.end - oy0) * wo);
            out[..p0].fill(T::ZERO);
            out[p1..].fill(T::ZERO);
            // Local position p is image position p + oy0·wo.
            let shift = (ky as isize - g.pad as isize) * g.w as isize + kx as isize
                - g.pad as isize
                + (oy0 * wo) as isize;
            let n_img = (g.h * g.w) as isize;
            let start = (p0 as isize).max(-shift).min(p1 as isize) as usize;
            let end = (p1 as isize).min(n_img - shift).max(start as isize) as usize;
            out[p0..start].fill(T::ZERO);
            out[end..p1].fill(T::ZERO);
            if start < end {
                // start ≥ −shift and end ≤ h·w − shift: the source window lies inside the image.
                let s0 = (start as isize + shift) as usize;
                out[start..end].copy_from_slice(&xc[s0..s0 + (end - start)]);
            }
            for ox in (0..ox_ok.start).chain(ox_ok.end..wo) {
                for oy in oy_ok.clone() {
                    out[(oy - oy0) * wo + ox] = T::ZERO;
                }
            }
            return;
        }
        for (j, orow) in out.chunks_exact_mut(wo).enumerate() {
            let oy = oy0 + j;
            if !oy_ok.contains(&oy) {
                orow.fill(T::ZERO);
                continue;
            }
            let iy = oy * g.stride + ky - g.pad;
            let xrow = &xc[iy * g.w..(iy + 1) * g.w];
            orow[..ox_ok.start].fill(T::ZERO);
            orow[ox_ok.end..].fill(T::ZERO);
            if ox_ok.is_empty() {
                continue;
            }
            let ix0 = ox_ok.start * g.stride + kx - g.pad;
            let dst = &mut orow[ox_ok.clone()];
            if g.stride == 1 {
                dst.copy_from_slice(&xrow[ix0..ix0 + dst.len()]);
            } else {
                for (o, v) in dst.iter_mut().zip(xrow[ix0..].iter().step_by(g.stride)) {
                    *o = *v;
                }
            }
        }
    };
    if nb == 0 {
        return;
    }
    let col = &mut col[..g.ckk() * nb];
    if parallel(col.len()) {
        // Rows of a small image are short: hand rayon tasks of at least PAR_MIN elements.
        col.par_chunks_mut(nb)
            .with_min_len((PAR_MIN / nb).max(1))
            .enumerate()
            .for_each(unfold_row);
    } else {
        col.chunks_mut(nb).enumerate().for_each(unfold_row);
    }
}

/// Folds `col [c·kh·kw, ho·wo]` back into one image `dx [c, h, w]`, adding overlapping windows.
pub fn col2im<T: Real>(col: &[T], g: &ConvGeom, dx: &mut [T]) {
    let (ho, wo) = (g.ho(), g.wo());
    let hw = ho * wo;
    let kk = g.kh * g.kw;
    for_each_chunk(dx, g.h * g.w, |(ci, xc)| {
        xc.fill(T::ZERO);
        for k in 0..kk {
            let ky = k / g.kw;
            let kx = k % g.kw;
            let crow = &col[(ci * kk + k) * hw..(ci * kk + k + 1) * hw];
            let ox_ok = valid_out_range(g.w, wo, g.stride, kx, g.pad);
            if ox_ok.is_empty() {
                continue;
            }
            let ix0 = ox_ok.start * g.stride + kx - g.pad;
            for oy in valid_out_range(g.h, ho, g.stride, ky, g.pad) {
                let iy = oy * g.stride + ky - g.pad;
                let src = &crow[oy * wo + ox_ok.start..oy * wo + ox_ok.end];
                let xrow = &mut xc[iy * g.w..(iy + 1) * g.w];
                if g.stride == 1 {
                    for (d, s) in xrow[ix0..ix0 + src.len()].iter_mut().zip(src) {
                        *d += *s;
                    }
                } else {
                    for (d, s) in xrow[ix0..].iter_mut().step_by(g.stride).zip(src) {
                        *d += *s;
                    }
                }
            }
        }
    });
}

/// Forward convolution: `y [n, o, ho, wo]` from `x [n, c, h, w]`, `w [o, c, kh, kw]`, optional bias `[o]`.
pub fn conv2d_fwd<T: Real>(x: &[T], w: &[T], bias: Option<&[T]>, g: &ConvGeom) -> Vec<T> {
    let hw = g.ho() * g.wo();
    let ckk = g.ckk();
    // With a bias, the output starts as the bias rows (the GEMMs add onto them, beta = 1): no zeroing first.
    let mut y = match bias {
        Some(b) => {
            let mut y = Vec::with_capacity(g.n * g.o * hw);
            for _ in 0..g.n {
                for &bv in &b[..g.o] {
                    y.extend(std::iter::repeat_n(bv, hw));
                }
            }
            y
        }
        None => vec![T::ZERO; g.n * g.o * hw],
    };
    let col_len = if g.is_pointwise() { 0 } else { ckk * hw };
    with_workspace::<T, _>(col_len, |col| conv2d_fwd_with(x, w, g, &mut y, col));
    y
}

/// [`conv2d_fwd`] into `y` with the im2col buffer `col` (`c·kh·kw·ho·wo` long, or empty for pointwise):
/// `y` holds the bias rows or zeros, and the products are added onto it.
fn conv2d_fwd_with<T: Real>(x: &[T], w: &[T], g: &ConvGeom, y: &mut [T], col: &mut [T]) {
    let hw = g.ho() * g.wo();
    let ckk = g.ckk();
    let beta = onto_zeros();
    for i in 0..g.n {
        let xi = &x[i * g.c * g.h * g.w..(i + 1) * g.c * g.h * g.w];
        let yi = &mut y[i * g.o * hw..(i + 1) * g.o * hw];
        if !g.is_pointwise() && ckk * hw > 8 * CONV_BAND {
            // A large unfold (the 64 px level: 4.5 MiB) would go out to memory and come back for the
            // GEMM; unfold and multiply bands of output rows that stay in the L2 cache instead.
            let (ho, wo) = (g.ho(), g.wo());
            let band = (CONV_BAND / (ckk * wo)).max(1);
            let mut oy0 = 0;
            while oy0 < ho {
                let oy1 = (oy0 + band).min(ho);
                let nb = (oy1 - oy0) * wo;
                im2col_band(xi, g, oy0, oy1, col);
                T::gemm(
                    false,
                    false,
                    g.o,
                    nb,
                    ckk,
                    T::ONE,
                    w,
                    ckk,
                    &col[..ckk * nb],
                    nb,
                    beta,
                    &mut yi[oy0 * wo..],
                    hw,
                );
                oy0 = oy1;
            }
            continue;
        }
        let src: &[T] = if g.is_pointwise() {
            xi
        } else {
            im2col(xi, g, col);
            col
        };
        T::gemm(
            false,
            false,
            g.o,
            hw,
            ckk,
            T::ONE,
            w,
            ckk,
            src,
            hw,
            beta,
            yi,
            hw,
        );
    }
}

thread_local! {
    static WORKSPACE_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WORKSPACE_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` elements whose contents are unspecified (callers overwrite it):
/// a per-thread buffer kept between calls, so the im2col matrix is not allocated and zeroed at each
/// convolution (at the demo's small images that cost a fifth of the GEMM). A fresh buffer when the
/// thread's one is already in use (a nested call from a rayon job on the same thread).
pub(crate) fn with_workspace<T: Real, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let mut f = Some(f);
    let mut go = |v: &mut dyn Any| -> Option<R> {
        let v = v.downcast_mut::<Vec<T>>()?;
        if v.len() < len {
            v.resize(len, T::ZERO);
        }
        Some((f.take()?)(&mut v[..len]))
    };
    let r = WORKSPACE_F32
        .try_with(|c| c.try_borrow_mut().ok().and_then(|mut b| go(&mut *b)))
        .ok()
        .flatten();
    let r = match r {
        Some(r) => Some(r),
        None => WORKSPACE_F64
            .try_with(|c| c.try_borrow_mut().ok().and_then(|mut b| go(&mut *b)))
            .ok()
            .flatten(),
    };
    match r {
        Some(r) => r,
        None => {
            let mut v = vec![T::ZERO; len];
            (f.take().expect("the closure runs at most once"))(&mut v)
        }
    }
}

/// Backward convolution: gradients for the input, weight and bias (each only when asked for).
#[allow(clippy::type_complexity)]
pub fn conv2d_bwd<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    g: &ConvGeom,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
    let hw = g.ho() * g.wo();
    let db = need_db.then(|| {
        let mut db = vec![T::ZERO; g.o];
        for i in 0..g.n {
            for (oc, d) in db.iter_mut().enumerate() {
                let s = (i * g.o + oc) * hw;
                *d += sum(&dy[s..s + hw]);
            }
        }
        db
    });
    let dw = need_dw.then(|| conv2d_bwd_weight(x, dy, g));
    let dx = need_dx.then(|| conv2d_bwd_input(w, dy, g));
    (dx, dw, db)
}

/// `dW [o, c·kh·kw] = Σ_i dY_i [o, hw] · im2col(x_i)ᵀ`.
fn conv2d_bwd_weight<T: Real>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    let hw = g.ho() * g.wo();
    let ckk = g.ckk();
    let chw = g.c * g.h * g.w;
    let mut dw = vec![T::ZERO; g.o * ckk];
    let col_len = if g.is_pointwise() { 0 } else { ckk * hw };
    with_workspace::<T, _>(col_len, |col| {
        for i in 0..g.n {
            let dyi = &dy[i * g.o * hw..(i + 1) * g.o * hw];
            let xi = &x[i * chw..(i + 1) * chw];
            let src: &[T] = if g.is_pointwise() {
                xi
            } else {
                im2col(xi, g, col);
                col
            };
            let beta = onto_zeros();
            T::gemm(
                false,
                true,
                g.o,
                ckk,
                hw,
                T::ONE,
                dyi,
                hw,
                src,
                hw,
                beta,
                &mut dw,
                ckk,
            );
        }
    });
    dw
}

/// The input gradient of a convolution.
///
/// A stride-1 convolution's input gradient is itself a stride-1 convolution: of `dY` with the kernel
/// flipped in space and its in/out channels swapped, padded by `k − 1 − pad`. So it runs as a forward
/// convolution (banded unfold of `dY` + one GEMM writing `dx`) instead of a GEMM into a column matrix nine
/// times the size of `dx` followed by a fold (col2im) that reads it back and scatters it. Strided
/// convolutions (the down-samplers) take that second way.
fn conv2d_bwd_input<T: Real>(w: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    let hw = g.ho() * g.wo();
    let chw = g.c * g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * chw];
    if g.is_pointwise() {
        for i in 0..g.n {
            // dx_i [c, hw] = Wᵀ [c, o] · dY_i [o, hw]
            T::gemm(
                true,
                false,
                g.c,
                hw,
                g.o,
                T::ONE,
                w,
                g.c,
                &dy[i * g.o * hw..(i + 1) * g.o * hw],
                hw,
                onto_zeros(),
                &mut dx[i * chw..(i + 1) * chw],
                hw,
            );
        }
        return dx;
    }
    if g.stride == 1 && g.kh == g.kw && g.pad < g.kh {
        let (k, kk) = (g.kh, g.kh * g.kw);
        // wt [c, o, ky, kx] = w [o, c, k−1−ky, k−1−kx]
        let mut wt = vec![T::ZERO; w.len()];
        for oc in 0..g.o {
            for ci in 0..g.c {
                let src = &w[(oc * g.c + ci) * kk..(oc * g.c + ci + 1) * kk];
                let dst = &mut wt[(ci * g.o + oc) * kk..(ci * g.o + oc + 1) * kk];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = src[kk - 1 - j];
                }
            }
        }
        let gt = ConvGeom {
            n: g.n,
            c: g.o,
            h: g.ho(),
            w: g.wo(),
            o: g.c,
            kh: k,
            kw: k,
            stride: 1,
            pad: k - 1 - g.pad,
        };
        debug_assert_eq!((gt.ho(), gt.wo()), (g.h, g.w));
        with_workspace::<T, _>(gt.ckk() * g.h * g.w, |col| {
            conv2d_fwd_with(dy, &wt, &gt, &mut dx, col)
        });
        return dx;
    }
    conv2d_bwd_input_fold(w, dy, g, &mut dx);
    dx
}

/// The input gradient of any convolution as `dcol = Wᵀ·dY` folded back onto the image (col2im), into `dx`.
fn conv2d_bwd_input_fold<T: Real>(w: &[T], dy: &[T], g: &ConvGeom, dx: &mut [T]) {
    let hw = g.ho() * g.wo();
    let ckk = g.ckk();
    let chw = g.c * g.h * g.w;
    with_workspace::<T, _>(ckk * hw, |dcol| {
        for i in 0..g.n {
            // dcol [ckk, hw] = Wᵀ [ckk, o] · dY_i [o, hw], folded back onto the image.
            T::gemm(
                true,
                false,
                ckk,
                hw,
                g.o,
                T::ONE,
                w,
                ckk,
                &dy[i * g.o * hw..(i + 1) * g.o * hw],
                hw,
                T::ZERO,
                dcol,
                hw,
            );
            col2im(dcol, g, &mut dx[i * chw..(i + 1) * chw]);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/// Mean and 1/sqrt(var + eps) of each of `rows` contiguous rows of length `len` (biased variance,
/// two-pass in f64 for accuracy).
pub fn row_stats<T: Real>(x: &[T], rows: usize, len: usize, eps: f64) -> (Vec<T>, Vec<T>) {
    let row = |r: usize| {
        let s = &x[r * len..(r + 1) * len];
        let mean = lane_sum_f64(s, |v| v) / len as f64;
        let var = lane_sum_f64(s, |v| (v - mean) * (v - mean)) / len as f64;
        (T::from_f64(mean), T::from_f64(1.0 / (var + eps).sqrt()))
    };
    if parallel(rows * len) {
        (0..rows).into_par_iter().map(row).unzip()
    } else {
        (0..rows).map(row).unzip()
    }
}

/// `Σ f(x[i])` in f64 over four interleaved accumulators (independent add chains the CPU overlaps).
#[inline]
fn lane_sum_f64<T: Real>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let mut chunks = x.chunks_exact(4);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v.to_f64());
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v.to_f64())).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Group norm forward on `x [n, c, s]` with `groups` groups and per-channel affine.
/// Returns `(y, mean[n·groups], rstd[n·groups])`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_fwd<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    group_norm_fwd_then(x, n, c, s, groups, gamma, beta, eps, |z| z)
}

/// `x·sigmoid(x)`, as [`crate::ops::Activation::Silu`] computes it.
#[inline(always)]
fn silu<T: Real>(x: T) -> T {
    x * (T::ONE / (T::ONE + (-x).exp()))
}

/// The derivative of [`silu`], as [`crate::ops::Activation::Silu`]'s backward computes it.
#[inline(always)]
fn silu_grad<T: Real>(x: T) -> T {
    let s = T::ONE / (T::ONE + (-x).exp());
    s * (T::ONE + x * (T::ONE - s))
}

/// Group norm followed by SiLU in one pass (the ResNet blocks' `norm → SiLU`): `y = silu(group_norm(x))`,
/// bit for bit the two ops in a row, without writing the normalised tensor. Returns `(y, mean, rstd)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_fwd<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    group_norm_fwd_then(x, n, c, s, groups, gamma, beta, eps, silu)
}

/// Backward of [`group_norm_silu_fwd`]: the normalised values are recomputed from `x` and the statistics,
/// the gradient goes through SiLU, then through the group norm. Returns `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_silu_bwd<T: Real>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let cg = c / groups;
    let mut dz = dy.to_vec();
    for_each_chunk(&mut dz, s, |(row, dr)| {
        let ch = row % c;
        let ng = (row / c) * groups + ch / cg;
        let (m, r) = (mean[ng], rstd[ng]);
        let ga = gamma.map_or(T::ONE, |g| g[ch]);
        let be = beta.map_or(T::ZERO, |b| b[ch]);
        let xr = &x[row * s..(row + 1) * s];
        for (d, &v) in dr.iter_mut().zip(xr) {
            *d *= silu_grad((v - m) * r * ga + be);
        }
    });
    group_norm_bwd(x, &dz, mean, rstd, n, c, s, groups, gamma)
}

/// Group norm forward with `post` applied to each normalised value.
#[allow(clippy::too_many_arguments)]
fn group_norm_fwd_then<T: Real>(
    x: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
    post: impl Fn(T) -> T + Sync + Send,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let cg = c / groups;
    let len = cg * s;
    let (mean, rstd) = row_stats(x, n * groups, len, eps);
    let mut y = vec![T::ZERO; x.len()];
    for_each_chunk(&mut y, s, |(row, yr)| {
        let ch = row % c;
        let ng = (row / c) * groups + ch / cg;
        let (m, r) = (mean[ng], rstd[ng]);
        let ga = gamma.map_or(T::ONE, |g| g[ch]);
        let be = beta.map_or(T::ZERO, |b| b[ch]);
        let xr = &x[row * s..(row + 1) * s];
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = post((v - m) * r * ga + be);
        }
    });
    (y, mean, rstd)
}

/// Group norm backward. Returns `(dx, dgamma, dbeta)`.
///
/// Two passes over `x` and `dy`: per (sample, channel) row the sums `Σdy` and `Σdy·x̂` (in f64), from which
/// come `dbeta`, `dgamma` and the per-group terms of `dx`; then `dx = rstd·(γ·dy − mean(γ·dy) − x̂·mean(γ·dy·x̂))`
/// row by row, with the row's constants folded so that the inner loop is two multiply-adds.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_bwd<T: Real>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    gamma: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let cg = c / groups;
    let len = (cg * s) as f64;
    let ga = |ch: usize| gamma.map_or(1.0, |g| g[ch].to_f64());
    // Pass 1: (Σdy, Σdy·x̂) per row (sample i, channel ch).
    let row_sums = |row: usize| {
        let ng = (row / c) * groups + (row % c) / cg;
        let (m, r) = (mean[ng], rstd[ng]);
        let (xr, dr) = (&x[row * s..(row + 1) * s], &dy[row * s..(row + 1) * s]);
        // Four interleaved accumulators: independent add chains the CPU can overlap.
        let (mut a, mut b) = ([0.0f64; 4], [0.0f64; 4]);
        let (xc, dc) = (xr.chunks_exact(4), dr.chunks_exact(4));
        let (xt, dt) = (xc.remainder(), dc.remainder());
        for (xs, ds) in xc.zip(dc) {
            for l in 0..4 {
                let d = ds[l].to_f64();
                a[l] += d;
                b[l] += d * ((xs[l] - m) * r).to_f64();
            }
        }
        for (&xv, &dv) in xt.iter().zip(dt) {
            let d = dv.to_f64();
            a[0] += d;
            b[0] += d * ((xv - m) * r).to_f64();
        }
        (a.iter().sum::<f64>(), b.iter().sum::<f64>())
    };
    let sums: Vec<(f64, f64)> = if parallel(x.len()) {
        (0..n * c).into_par_iter().map(row_sums).collect()
    } else {
        (0..n * c).map(row_sums).collect()
    };
    let mut dgamma = vec![0.0f64; c];
    let mut dbeta = vec![0.0f64; c];
    // Per (sample, group): mean(γ·dy) and mean(γ·dy·x̂).
    let mut a1 = vec![0.0f64; n * groups];
    let mut a2 = vec![0.0f64; n * groups];
    for (row, &(a, b)) in sums.iter().enumerate() {
        let ch = row % c;
        let ng = (row / c) * groups + ch / cg;
        dbeta[ch] += a;
        dgamma[ch] += b;
        a1[ng] += ga(ch) * a / len;
        a2[ng] += ga(ch) * b / len;
    }
    // Pass 2: dx = α·dy + β·(x − mean) + γ0 per row.
    let mut dx = vec![T::ZERO; x.len()];
    for_each_chunk(&mut dx, s, |(row, o)| {
        let ch = row % c;
        let ng = (row / c) * groups + ch / cg;
        let r = rstd[ng].to_f64();
        let m = mean[ng];
        let alpha = T::from_f64(r * ga(ch));
        let beta = T::from_f64(-r * r * a2[ng]);
        let g0 = T::from_f64(-r * a1[ng]);
        let (xr, dr) = (&x[row * s..(row + 1) * s], &dy[row * s..(row + 1) * s]);
        for ((o, &xv), &dv) in o.iter_mut().zip(xr).zip(dr) {
            *o = alpha * dv + beta * (xv - m) + g0;
        }
    });
    (
        dx,
        dgamma.into_iter().map(T::from_f64).collect(),
        dbeta.into_iter().map(T::from_f64).collect(),
    )
}

/// Layer norm forward over the last axis (`rows` rows of length `d`). Returns `(y, mean, rstd)`.
pub fn layer_norm_fwd<T: Real>(
    x: &[T],
    rows: usize,
    d: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (mean, rstd) = row_stats(x, rows, d, eps);
    let mut y = vec![T::ZERO; x.len()];
    for_each_chunk(&mut y, d, |(r, yr)| {
        let xr = &x[r * d..(r + 1) * d];
        for j in 0..d {
            let ga = gamma.map_or(T::ONE, |g| g[j]);
            let be = beta.map_or(T::ZERO, |b| b[j]);
            yr[j] = (xr[j] - mean[r]) * rstd[r] * ga + be;
        }
    });
    (y, mean, rstd)
}

/// Layer norm backward. Returns `(dx, dgamma, dbeta)`.
pub fn layer_norm_bwd<T: Real>(
    x: &[T],
    dy: &[T],
    mean: &[T],
    rstd: &[T],
    rows: usize,
    d: usize,
    gamma: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let mut dx = vec![T::ZERO; x.len()];
    for_each_chunk(&mut dx, d, |(r, o)| {
        let (m, rs) = (mean[r].to_f64(), rstd[r].to_f64());
        let mut s1 = 0.0;
        let mut s2 = 0.0;
        for j in 0..d {
            let dxh = dy[r * d + j].to_f64() * gamma.map_or(1.0, |g| g[j].to_f64());
            let xh = (x[r * d + j].to_f64() - m) * rs;
            s1 += dxh;
            s2 += dxh * xh;
        }
        let (a1, a2) = (s1 / d as f64, s2 / d as f64);
        for j in 0..d {
            let dxh = dy[r * d + j].to_f64() * gamma.map_or(1.0, |g| g[j].to_f64());
            let xh = (x[r * d + j].to_f64() - m) * rs;
            o[j] = T::from_f64(rs * (dxh - a1 - xh * a2));
        }
    });
    let mut dgamma = vec![0.0f64; d];
    let mut dbeta = vec![0.0f64; d];
    for r in 0..rows {
        let (m, rs) = (mean[r].to_f64(), rstd[r].to_f64());
        for j in 0..d {
            let g = dy[r * d + j].to_f64();
            dgamma[j] += g * (x[r * d + j].to_f64() - m) * rs;
            dbeta[j] += g;
        }
    }
    (
        dx,
        dgamma.into_iter().map(T::from_f64).collect(),
        dbeta.into_iter().map(T::from_f64).collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Softmax and attention

/// Sum over 8 interleaved lanes: a reduction the compiler can keep in vector registers.
#[inline]
fn lane_sum<T: Real>(x: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    let mut s = chunks.remainder().iter().fold(T::ZERO, |s, &v| s + v);
    for a in acc {
        s += a;
    }
    s
}

/// Maximum over 8 interleaved lanes (vectorizes; a NaN in `x` may or may not win, and softmax's
/// output is NaN either way). `x` must not be empty.
#[inline]
fn lane_max<T: Real>(x: &[T]) -> T {
    let mut acc = [x[0]; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(x[0], |m, &v| if v > m { v } else { m });
    for a in acc {
        m = if a > m { a } else { m };
    }
    m
}

/// Softmax over rows of length `d`, in place. With `causal = Some(offset)`, entry j of row i is masked
/// when `j > (i % rows_per_matrix) + offset` (rows_per_matrix given in the tuple).
pub fn softmax_rows_inplace<T: Real>(x: &mut [T], d: usize, causal: Option<(usize, usize)>) {
    let body = |(r, row): (usize, &mut [T])| {
        let limit = match causal {
            Some((rows_per, off)) => ((r % rows_per) + off + 1).min(d),
            None => d,
        };
        let mx = lane_max(&row[..limit]);
        // The exponentials in a loop of their own (it vectorizes), then the sum over 8 lanes.
        for v in row[..limit].iter_mut() {
            *v = (*v - mx).exp();
        }
        let s = lane_sum(&row[..limit]);
        let inv = T::ONE / s;
        for v in row[..limit].iter_mut() {
            *v *= inv;
        }
        for v in row[limit..].iter_mut() {
            *v = T::ZERO;
        }
    };
    for_each_chunk(x, d, body);
}

/// Softmax backward over rows: `dx = y ⊙ (dy − Σ dy⊙y)`.
pub fn softmax_rows_bwd<T: Real>(y: &[T], dy: &[T], d: usize) -> Vec<T> {
    let mut dx = dy.to_vec();
    softmax_rows_bwd_inplace(y, &mut dx, d);
    dx
}

/// [`softmax_rows_bwd`] overwriting the incoming gradient `g` with the result.
pub fn softmax_rows_bwd_inplace<T: Real>(y: &[T], g: &mut [T], d: usize) {
    let body = |(r, gr): (usize, &mut [T])| {
        let yr = &y[r * d..(r + 1) * d];
        let dot: T = yr.iter().zip(gr.iter()).map(|(&a, &b)| a * b).sum();
        for (o, &yv) in gr.iter_mut().zip(yr) {
            *o = yv * (*o - dot);
        }
    };
    for_each_chunk(g, d, body);
}

/// The geometry of scaled dot-product attention: `bh` independent (batch·head) matrices,
/// `q [bh, lq, d]`, `k [bh, lk, d]`, `v [bh, lk, dv]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnGeom {
    /// batch·heads.
    pub bh: usize,
    /// Query length.
    pub lq: usize,
    /// Key/value length.
    pub lk: usize,
    /// Query/key width.
    pub d: usize,
    /// Value width.
    pub dv: usize,
    /// Logit scale (usually 1/sqrt(d)).
    pub scale: f64,
    /// Causal mask (query i sees keys j ≤ i + lk − lq).
    pub causal: bool,
}

/// Where matrix `i` of an attention lives when `heads` heads are interleaved in each row (`[B, L, heads, d]`,
/// i.e. the `[B, L, heads·d]` output of a projection, with `bh = B·heads`): its first element and the
/// stride between its rows. With `heads = 1` this is the plain `[bh, L, d]` layout.
#[derive(Clone, Copy)]
struct HeadLayout {
    heads: usize,
}

impl HeadLayout {
    /// (offset, row stride) of matrix `i` in a tensor of `len` rows of `width` per head.
    #[inline]
    fn at(self, i: usize, len: usize, width: usize) -> (usize, usize) {
        let (b, h) = (i / self.heads, i % self.heads);
        let ld = self.heads * width;
        (b * len * ld + h * width, ld)
    }
}

/// The slice a strided matrix of `rows` rows of `cols` at stride `ld` starting at `off` spans.
#[inline]
fn span(off: usize, rows: usize, cols: usize, ld: usize) -> std::ops::Range<usize> {
    off..off + if rows == 0 { 0 } else { (rows - 1) * ld + cols }
}

fn attn_probs<T: Real>(q: &[T], k: &[T], g: &AttnGeom, lay: HeadLayout, i: usize, p: &mut [T]) {
    let (qo, ldq) = lay.at(i, g.lq, g.d);
    let (ko, ldk) = lay.at(i, g.lk, g.d);
    T::gemm(
        false,
        true,
        g.lq,
        g.lk,
        g.d,
        T::from_f64(g.scale),
        &q[span(qo, g.lq, g.d, ldq)],
        ldq,
        &k[span(ko, g.lk, g.d, ldk)],
        ldk,
        T::ZERO,
        p,
        g.lk,
    );
    let causal = g.causal.then_some((g.lq, g.lk.saturating_sub(g.lq)));
    softmax_rows_inplace(p, g.lk, causal);
}

/// Attention forward: `o = softmax(scale·q·kᵀ)·v`, one (batch, head) matrix at a time (the probability
/// matrix is never kept: the backward pass recomputes it, as the flash kernel does).
pub fn attention_fwd<T: Real>(q: &[T], k: &[T], v: &[T], g: &AttnGeom) -> Vec<T> {
    attention_fwd_heads(q, k, v, g, 1)
}

/// [`attention_fwd`] on head-interleaved tensors: `q [B, Lq, heads·d]`, `k [B, Lk, heads·d]`,
/// `v [B, Lk, heads·dv]` → `o [B, Lq, heads·dv]`, with `g.bh = B·heads`. Each head's matrices are read and
/// written in place through the GEMMs' leading dimensions, so multi-head attention needs no permuted copies.
pub fn attention_fwd_heads<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    g: &AttnGeom,
    heads: usize,
) -> Vec<T> {
    attention_fwd_heads_keep(q, k, v, g, heads, None)
}

/// [`attention_fwd_heads`] that also writes every head's probability matrix into `probs`
/// (`[bh, lq, lk]`) when given, so that the backward pass can take them instead of recomputing them.
pub fn attention_fwd_heads_keep<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    g: &AttnGeom,
    heads: usize,
    mut probs: Option<&mut [T]>,
) -> Vec<T> {
    let lay = HeadLayout { heads };
    let pl = g.lq * g.lk;
    let mut o = vec![T::ZERO; g.bh * g.lq * g.dv];
    let mut scratch = vec![T::ZERO; if probs.is_some() { 0 } else { pl }];
    for i in 0..g.bh {
        let p: &mut [T] = match probs.as_deref_mut() {
            Some(all) => &mut all[i * pl..(i + 1) * pl],
            None => &mut scratch,
        };
        attn_probs(q, k, g, lay, i, p);
        let p: &[T] = p;
        let (vo, ldv) = lay.at(i, g.lk, g.dv);
        let (oo, ldo) = lay.at(i, g.lq, g.dv);
        T::gemm(
            false,
            false,
            g.lq,
            g.dv,
            g.lk,
            T::ONE,
            p,
            g.lk,
            &v[span(vo, g.lk, g.dv, ldv)],
            ldv,
            onto_zeros(),
            &mut o[span(oo, g.lq, g.dv, ldo)],
            ldo,
        );
    }
    o
}

/// Attention backward: `(dq, dk, dv)`.
pub fn attention_bwd<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    d_o: &[T],
    g: &AttnGeom,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    attention_bwd_heads(q, k, v, d_o, g, 1)
}

/// [`attention_bwd`] on head-interleaved tensors (see [`attention_fwd_heads`]).
pub fn attention_bwd_heads<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    d_o: &[T],
    g: &AttnGeom,
    heads: usize,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    attention_bwd_heads_kept(q, k, v, d_o, g, heads, None)
}

/// [`attention_bwd_heads`] with the probability matrices the forward pass kept (see
/// [`attention_fwd_heads_keep`]), or recomputing them when `probs` is None.
pub fn attention_bwd_heads_kept<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    d_o: &[T],
    g: &AttnGeom,
    heads: usize,
    probs: Option<&[T]>,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let lay = HeadLayout { heads };
    let pl = g.lq * g.lk;
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    let mut scratch = vec![T::ZERO; if probs.is_some() { 0 } else { pl }];
    let mut dp = vec![T::ZERO; pl];
    let sc = T::from_f64(g.scale);
    for i in 0..g.bh {
        let p: &[T] = match probs {
            Some(all) => &all[i * pl..(i + 1) * pl],
            None => {
                attn_probs(q, k, g, lay, i, &mut scratch);
                &scratch
            }
        };
        let (qs, ldq) = lay.at(i, g.lq, g.d);
        let (ks, ldk) = lay.at(i, g.lk, g.d);
        let (vs, ldv) = lay.at(i, g.lk, g.dv);
        let (os, ldo) = lay.at(i, g.lq, g.dv);
        let (qs, ks) = (span(qs, g.lq, g.d, ldq), span(ks, g.lk, g.d, ldk));
        let (vs, os) = (span(vs, g.lk, g.dv, ldv), span(os, g.lq, g.dv, ldo));
        let doi = &d_o[os];
        // dV = Pᵀ·dO
        T::gemm(
            true,
            false,
            g.lk,
            g.dv,
            g.lq,
            T::ONE,
            p,
            g.lk,
            doi,
            ldo,
            onto_zeros(),
            &mut dv[vs.clone()],
            ldv,
        );
        // dP = dO·Vᵀ
        T::gemm(
            false,
            true,
            g.lq,
            g.lk,
            g.dv,
            T::ONE,
            doi,
            ldo,
            &v[vs],
            ldv,
            T::ZERO,
            &mut dp,
            g.lk,
        );
        // dS = P ⊙ (dP − rowsum(dP ⊙ P)), in place in dp.
        softmax_rows_bwd_inplace(p, &mut dp, g.lk);
        // dQ = scale·dS·K ; dK = scale·dSᵀ·Q
        T::gemm(
            false,
            false,
            g.lq,
            g.d,
            g.lk,
            sc,
            &dp,
            g.lk,
            &k[ks.clone()],
            ldk,
            onto_zeros(),
            &mut dq[qs.clone()],
            ldq,
        );
        T::gemm(
            true,
            false,
            g.lk,
            g.d,
            g.lq,
            sc,
            &dp,
            g.lk,
            &q[qs],
            ldq,
            onto_zeros(),
            &mut dk[ks],
            ldk,
        );
    }
    (dq, dk, dv)
}

// ---------------------------------------------------------------------------------------------
// Layout: broadcasting, permutes, concatenation, upsampling

/// The numpy broadcast of two shapes, or None when they are incompatible.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let nd = a.len().max(b.len());
    let mut out = vec![0; nd];
    for i in 0..nd {
        let da = if i + a.len() >= nd {
            a[i + a.len() - nd]
        } else {
            1
        };
        let db = if i + b.len() >= nd {
            b[i + b.len() - nd]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// Strides of `shape` seen through the broadcast to `out` (0 on broadcast axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let nd = out.len();
    let mut st = vec![0; nd];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + nd - shape.len();
        st[oi] = if shape[i] == 1 && out[oi] != 1 {
            0
        } else {
            acc
        };
        acc *= shape[i];
    }
    st
}

fn offsets_of_row(row: usize, out: &[usize], strides: &[&[usize]], offs: &mut [usize]) {
    // Decompose the row index over all axes but the last.
    let nd = out.len();
    offs.iter_mut().for_each(|o| *o = 0);
    let mut r = row;
    for ax in (0..nd.saturating_sub(1)).rev() {
        let idx = r % out[ax];
        r /= out[ax];
        for (o, s) in offs.iter_mut().zip(strides) {
            *o += idx * s[ax];
        }
    }
}

/// `c = f(a, b)` with numpy broadcasting to shape `out`.
pub fn broadcast_binary<T: Real>(
    a: &[T],
    ash: &[usize],
    b: &[T],
    bsh: &[usize],
    out: &[usize],
    f: impl Fn(T, T) -> T + Sync + Send,
) -> Vec<T> {
    if ash == bsh {
        return zip_map(a, b, f);
    }
    let n: usize = out.iter().product();
    if out.is_empty() {
        return vec![f(a[0], b[0])];
    }
    let sa = broadcast_strides(ash, out);
    let sb = broadcast_strides(bsh, out);
    let last = *out.last().unwrap_or(&1);
    let (la, lb) = (sa[out.len() - 1], sb[out.len() - 1]);
    let mut c = vec![T::ZERO; n];
    let body = |(row, cr): (usize, &mut [T])| {
        let mut offs = [0usize; 2];
        offsets_of_row(row, out, &[&sa, &sb], &mut offs);
        // Unit or zero strides along the last axis (bias rows, per-row scalars) as plain slice loops,
        // which vectorize; the general strided loop otherwise.
        match (la, lb) {
            (1, 1) => {
                let (ar, br) = (&a[offs[0]..offs[0] + last], &b[offs[1]..offs[1] + last]);
                for ((o, &x), &y) in cr.iter_mut().zip(ar).zip(br) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let (ar, y) = (&a[offs[0]..offs[0] + last], b[offs[1]]);
                for (o, &x) in cr.iter_mut().zip(ar) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let (x, br) = (a[offs[0]], &b[offs[1]..offs[1] + last]);
                for (o, &y) in cr.iter_mut().zip(br) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (j, o) in cr.iter_mut().enumerate() {
                    *o = f(a[offs[0] + j * la], b[offs[1] + j * lb]);
                }
            }
        }
    };
    if last == 0 {
        return c;
    }
    for_each_chunk(&mut c, last, body);
    c
}

/// Sums a gradient of shape `out` down to the broadcast input shape `shape`.
pub fn sum_to_shape<T: Real>(g: &[T], out: &[usize], shape: &[usize]) -> Vec<T> {
    if out == shape {
        return g.to_vec();
    }
    let n_in: usize = shape.iter().product();
    let mut acc = vec![0.0f64; n_in];
    if out.is_empty() {
        return vec![g[0]];
    }
    let st = broadcast_strides(shape, out);
    let last = *out.last().unwrap_or(&1);
    if last == 0 {
        return vec![T::ZERO; n_in];
    }
    let ls = st[out.len() - 1];
    let mut offs = [0usize; 1];
    for (row, gr) in g.chunks(last).enumerate() {
        offsets_of_row(row, out, &[&st], &mut offs);
        for (j, &v) in gr.iter().enumerate() {
            acc[offs[0] + j * ls] += v.to_f64();
        }
    }
    acc.into_iter().map(T::from_f64).collect()
}

/// Permutes the axes: `out` axis i is input axis `perm[i]`.
pub fn permute<T: Real>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let nd = shape.len();
    let mut in_strides = vec![1usize; nd];
    for i in (0..nd.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let n = x.len();
    if nd == 0 || n == 0 {
        return x.to_vec();
    }
    let last = out[nd - 1];
    let ls = st[nd - 1];
    let mut y = vec![T::ZERO; n];
    let body = |(row, yr): (usize, &mut [T])| {
        let mut offs = [0usize; 1];
        offsets_of_row(row, &out, &[&st], &mut offs);
        for (j, o) in yr.iter_mut().enumerate() {
            *o = x[offs[0] + j * ls];
        }
    };
    for_each_chunk(&mut y, last, body);
    y
}

/// Concatenates blocks along an axis: each input is `[outer, sizes[i], inner]`.
pub fn concat<T: Real>(parts: &[&[T]], sizes: &[usize], outer: usize, inner: usize) -> Vec<T> {
    let total: usize = sizes.iter().sum();
    let mut y = vec![T::ZERO; outer * total * inner];
    for o in 0..outer {
        let mut off = o * total * inner;
        for (p, &s) in parts.iter().zip(sizes) {
            let len = s * inner;
            y[off..off + len].copy_from_slice(&p[o * len..(o + 1) * len]);
            off += len;
        }
    }
    y
}

/// Splits `[outer, Σsizes, inner]` into parts `[outer, sizes[i], inner]`.
pub fn split<T: Real>(x: &[T], sizes: &[usize], outer: usize, inner: usize) -> Vec<Vec<T>> {
    let total: usize = sizes.iter().sum();
    let mut parts: Vec<Vec<T>> = sizes
        .iter()
        .map(|&s| Vec::with_capacity(outer * s * inner))
        .collect();
    for o in 0..outer {
        let mut off = o * total * inner;
        for (p, &s) in parts.iter_mut().zip(sizes) {
            p.extend_from_slice(&x[off..off + s * inner]);
            off += s * inner;
        }
    }
    parts
}

/// Nearest-neighbour 2× upsampling of `[planes, h, w]` to `[planes, 2h, 2w]`.
pub fn upsample2x<T: Real>(x: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let mut y = vec![T::ZERO; planes * 4 * h * w];
    for_each_chunk(&mut y, 4 * h * w, |(p, yp)| {
        let xp = &x[p * h * w..(p + 1) * h * w];
        for i in 0..2 * h {
            for j in 0..2 * w {
                yp[i * 2 * w + j] = xp[(i / 2) * w + j / 2];
            }
        }
    });
    y
}

/// Backward of [`upsample2x`]: each input pixel receives the sum of its four copies.
pub fn upsample2x_bwd<T: Real>(dy: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
    let mut dx = vec![T::ZERO; planes * h * w];
    for_each_chunk(&mut dx, h * w, |(p, dp)| {
        let yp = &dy[p * 4 * h * w..(p + 1) * 4 * h * w];
        for i in 0..h {
            for j in 0..w {
                let a = yp[(2 * i) * 2 * w + 2 * j];
                let b = yp[(2 * i) * 2 * w + 2 * j + 1];
                let c = yp[(2 * i + 1) * 2 * w + 2 * j];
                let d = yp[(2 * i + 1) * 2 * w + 2 * j + 1];
                dp[i * w + j] = a + b + c + d;
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_shapes() {
        assert_eq!(broadcast_shape(&[2, 3], &[3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shape(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[2, 3], &[4]), None);
    }

    #[test]
    fn broadcast_add_and_reduce_back() {
        let a: Vec<f64> = (0..6).map(|v| v as f64).collect();
        let b = vec![10.0, 20.0, 30.0];
        let c = broadcast_binary(&a, &[2, 3], &b, &[3], &[2, 3], |x, y| x + y);
        assert_eq!(c, vec![10., 21., 32., 13., 24., 35.]);
        let g = sum_to_shape(&c, &[2, 3], &[3]);
        assert_eq!(g, vec![23., 45., 67.]);
        let col = vec![1.0, 2.0];
        let c2 = broadcast_binary(&a, &[2, 3], &col, &[2, 1], &[2, 3], |x, y| x * y);
        assert_eq!(c2, vec![0., 1., 2., 6., 8., 10.]);
    }

    #[test]
    fn permute_transposes() {
        let x: Vec<f64> = (0..6).map(|v| v as f64).collect();
        assert_eq!(permute(&x, &[2, 3], &[1, 0]), vec![0., 3., 1., 4., 2., 5.]);
    }

    #[test]
    fn concat_split_round_trip() {
        let a: Vec<f64> = (0..8).map(|v| v as f64).collect();
        let b: Vec<f64> = (0..4).map(|v| 100.0 + v as f64).collect();
        let c = concat(&[&a, &b], &[2, 1], 2, 2);
        let parts = split(&c, &[2, 1], 2, 2);
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
    }

    #[test]
    fn im2col_col2im_adjoint() {
        // <im2col(x), c> == <x, col2im(c)> for the same geometry.
        let g = ConvGeom {
            n: 1,
            c: 2,
            h: 5,
            w: 4,
            o: 1,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        };
        let x: Vec<f64> = (0..40).map(|v| (v as f64 * 0.37).sin()).collect();
        let mut col = vec![0.0; g.ckk() * g.ho() * g.wo()];
        im2col(&x, &g, &mut col);
        let cv: Vec<f64> = (0..col.len()).map(|v| (v as f64 * 0.11).cos()).collect();
        let mut back = vec![0.0; 40];
        col2im(&cv, &g, &mut back);
        let l: f64 = col.iter().zip(&cv).map(|(a, b)| a * b).sum();
        let r: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
        assert!((l - r).abs() < 1e-12);
    }

    #[test]
    fn conv_forward_in_bands_matches_one_whole_unfold() {
        // Geometries whose unfold exceeds 8·CONV_BAND (so conv2d_fwd takes the banded path), with a last
        // band shorter than the others: "same" 3×3 (65×67), strided 3×3 (130×130, s2), and batch 2.
        for (n, c, h, w, o, stride, pad) in [
            (1usize, 32usize, 65usize, 67usize, 5usize, 1usize, 1usize),
            (2, 32, 130, 130, 3, 2, 1),
        ] {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o,
                kh: 3,
                kw: 3,
                stride,
                pad,
            };
            let hw = g.ho() * g.wo();
            assert!(
                g.ckk() * hw > 8 * CONV_BAND,
                "the test must reach the banded path"
            );
            assert!(
                g.ho() % (CONV_BAND / (g.ckk() * g.wo())).max(1) != 0,
                "ragged last band"
            );
            let x: Vec<f64> = (0..n * c * h * w)
                .map(|v| ((v as f64) * 0.37).sin())
                .collect();
            let wt: Vec<f64> = (0..o * g.ckk())
                .map(|v| ((v as f64) * 0.53).cos())
                .collect();
            let b: Vec<f64> = (0..o).map(|v| v as f64 - 1.5).collect();
            let y = conv2d_fwd(&x, &wt, Some(&b), &g);
            let mut col = vec![f64::NAN; g.ckk() * hw];
            for i in 0..n {
                im2col(&x[i * c * h * w..(i + 1) * c * h * w], &g, &mut col);
                for oc in 0..o {
                    for p in 0..hw {
                        let r: f64 = b[oc]
                            + (0..g.ckk())
                                .map(|k| wt[oc * g.ckk() + k] * col[k * hw + p])
                                .sum::<f64>();
                        let got = y[(i * o + oc) * hw + p];
                        assert!(
                            (got - r).abs() <= 1e-9 * r.abs().max(1.0),
                            "n{i} o{oc} p{p}: {got} vs {r} ({g:?})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn conv_input_gradient_as_a_convolution_equals_the_fold() {
        for (k, pad, h, w) in [
            (3usize, 1usize, 7usize, 5usize),
            (3, 0, 6, 6),
            (3, 2, 4, 5),
            (2, 1, 5, 4),
            (5, 2, 9, 8),
        ] {
            let g = ConvGeom {
                n: 2,
                c: 3,
                h,
                w,
                o: 4,
                kh: k,
                kw: k,
                stride: 1,
                pad,
            };
            let wt: Vec<f64> = (0..g.o * g.ckk())
                .map(|v| ((v as f64) * 0.53).cos())
                .collect();
            let dy: Vec<f64> = (0..g.n * g.o * g.ho() * g.wo())
                .map(|v| ((v as f64) * 0.37).sin())
                .collect();
            let got = conv2d_bwd_input(&wt, &dy, &g);
            let mut want = vec![f64::NAN; g.n * g.c * h * w];
            conv2d_bwd_input_fold(&wt, &dy, &g, &mut want);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "k{k} p{pad}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn attention_on_interleaved_heads_equals_permuted_attention() {
        // q [b, lq, h·d], k [b, lk, h·d], v [b, lk, h·dv] against [b·h, l, d] copies, causal and not.
        let (b, h, lq, lk, d, dv) = (2usize, 3usize, 5usize, 4usize, 2usize, 3usize);
        let data =
            |n: usize, f: f64| -> Vec<f64> { (0..n).map(|i| (i as f64 * f).sin()).collect() };
        let (q, k, v) = (
            data(b * lq * h * d, 0.37),
            data(b * lk * h * d, 0.91),
            data(b * lk * h * dv, 0.53),
        );
        let d_o = data(b * lq * h * dv, 0.29);
        let split = |t: &[f64], l: usize, w: usize| permute(t, &[b, l, h, w], &[0, 2, 1, 3]);
        let merge = |t: &[f64], l: usize, w: usize| permute(t, &[b, h, l, w], &[0, 2, 1, 3]);
        for causal in [false, true] {
            let g = AttnGeom {
                bh: b * h,
                lq,
                lk,
                d,
                dv,
                scale: 0.7,
                causal,
            };
            let o = attention_fwd_heads(&q, &k, &v, &g, h);
            let want = merge(
                &attention_fwd(&split(&q, lq, d), &split(&k, lk, d), &split(&v, lk, dv), &g),
                lq,
                dv,
            );
            assert_eq!(o.len(), want.len());
            for (a, w) in o.iter().zip(&want) {
                assert!((a - w).abs() < 1e-12, "forward {a} vs {w}");
            }
            let (dq, dk, dvv) = attention_bwd_heads(&q, &k, &v, &d_o, &g, h);
            let (wq, wk, wv) = attention_bwd(
                &split(&q, lq, d),
                &split(&k, lk, d),
                &split(&v, lk, dv),
                &split(&d_o, lq, dv),
                &g,
            );
            for (got, want) in [
                (dq, merge(&wq, lq, d)),
                (dk, merge(&wk, lk, d)),
                (dvv, merge(&wv, lk, dv)),
            ] {
                for (a, w) in got.iter().zip(&want) {
                    assert!((a - w).abs() < 1e-12, "backward {a} vs {w}");
                }
            }
        }
    }

    /// The element-by-element definition of im2col, to check the sliced fast path against.
    fn im2col_naive(x: &[f64], g: &ConvGeom) -> Vec<f64> {
        let (ho, wo) = (g.ho(), g.wo());
        let mut col = vec![0.0; g.ckk() * ho * wo];
        for row in 0..g.ckk() {
            let (ci, ky, kx) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
            for oy in 0..ho {
                for ox in 0..wo {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                    if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                        col[(row * ho + oy) * wo + ox] =
                            x[(ci * g.h + iy as usize) * g.w + ix as usize];
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_definition_on_all_small_geometries() {
        for (h, w) in [(1, 1), (2, 3), (5, 4), (7, 7), (8, 6)] {
            for k in 1..=4 {
                for stride in 1..=3 {
                    for pad in 0..=3 {
                        if h + 2 * pad < k || w + 2 * pad < k {
                            continue;
                        }
                        let g = ConvGeom {
                            n: 1,
                            c: 2,
                            h,
                            w,
                            o: 1,
                            kh: k,
                            kw: k,
                            stride,
                            pad,
                        };
                        let x: Vec<f64> = (0..2 * h * w).map(|v| 1.0 + v as f64).collect();
                        let mut col = vec![f64::NAN; g.ckk() * g.ho() * g.wo()];
                        im2col(&x, &g, &mut col);
                        assert_eq!(col, im2col_naive(&x, &g), "h{h} w{w} k{k} s{stride} p{pad}");
                        // col2im is im2col's adjoint: <im2col(x), c> == <x, col2im(c)>.
                        let cv: Vec<f64> =
                            (0..col.len()).map(|v| (v as f64 * 0.11).cos()).collect();
                        let mut back = vec![f64::NAN; x.len()];
                        col2im(&cv, &g, &mut back);
                        let l: f64 = col.iter().zip(&cv).map(|(a, b)| a * b).sum();
                        let r: f64 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
                        assert!(
                            (l - r).abs() < 1e-9 * l.abs().max(1.0),
                            "adjoint h{h} w{w} k{k} s{stride} p{pad}"
                        );
                    }
                }
            }
        }
    }
}
