//! Tensor operations, each a forward function and an explicit backward function.
//!
//! Inputs may be f32, f64, bf16 or f16: the CPU computes in f64 when any input is f64 and in f32
//! otherwise, and writes results in the dtype of the first (activation) input; gradients come back in the
//! dtype of the input they belong to. Operations on CUDA tensors run the CUDA kernels (see
//! [`crate::cuda`]); the CPU versions are the reference.

use rand::Rng;

use crate::cpu::{self, AttnGeom, ConvGeom};
use crate::dtype::{DType, Real};
use crate::error::{arg_err, shape_err, Error, Result};
use crate::tensor::Tensor;

/// Runs `$body` with `$T` bound to the compute type for `$dt` (f64 for F64, else f32).
macro_rules! with_real {
    ($dt:expr, $T:ident, $body:expr) => {
        match $dt {
            DType::F64 => {
                type $T = f64;
                $body
            }
            _ => {
                type $T = f32;
                $body
            }
        }
    };
}

/// The compute dtype for a set of inputs.
fn cdt(ts: &[&Tensor]) -> DType {
    if ts.iter().any(|t| t.dtype() == DType::F64) {
        DType::F64
    } else {
        DType::F32
    }
}

/// True when all tensors are on one CUDA device, false when all are on the CPU, an error when mixed.
fn on_cuda(op: &str, ts: &[&Tensor]) -> Result<bool> {
    Ok(!same_device(op, ts)?.is_cpu())
}

/// Runs `body` on host copies of `ts` and uploads the result (ops without a CUDA kernel path).
macro_rules! host {
    ($ts:expr, |$h:ident| $body:expr) => {
        crate::cuda::ops::host1($ts, |$h: &[Tensor]| $body)
    };
}

fn ones_on(n: usize, like: &Tensor) -> Result<Tensor> {
    Tensor::ones(&[n], DType::F32).to_device(&like.device())
}

fn zeros_on(n: usize, like: &Tensor) -> Result<Tensor> {
    Tensor::zeros(&[n], DType::F32).to_device(&like.device())
}

fn same_device(op: &str, ts: &[&Tensor]) -> Result<crate::Device> {
    let d = ts[0].device();
    for t in ts {
        if t.device() != d {
            return Err(Error::Device {
                op: op.to_string(),
                msg: format!("tensors on {} and {}", d, t.device()),
            });
        }
    }
    Ok(d)
}

fn out<T: Real>(v: Vec<T>, shape: &[usize], like: &Tensor) -> Tensor {
    Tensor::from_real(v, shape.to_vec(), like.dtype())
}

// ---------------------------------------------------------------------------------------------
// Matrix products

fn mm_dims(
    op: &str,
    a: &[usize],
    b: &[usize],
    ta: bool,
    tb: bool,
) -> Result<(usize, usize, usize, usize, bool, Vec<usize>)> {
    if a.len() < 2 || b.len() < 2 {
        return Err(shape_err(op, format!("need matrices, got {a:?} and {b:?}")));
    }
    let (am, ak) = (a[a.len() - 2], a[a.len() - 1]);
    let (m, k) = if ta { (ak, am) } else { (am, ak) };
    let (bk, bn) = (b[b.len() - 2], b[b.len() - 1]);
    let (k2, n) = if tb { (bn, bk) } else { (bk, bn) };
    if k != k2 {
        return Err(shape_err(
            op,
            format!(
                "inner sizes differ: {a:?}{} x {b:?}{}",
                if ta { "ᵀ" } else { "" },
                if tb { "ᵀ" } else { "" }
            ),
        ));
    }
    let abatch = &a[..a.len() - 2];
    let bbatch = &b[..b.len() - 2];
    let batch: usize = abatch.iter().product();
    let b_shared = bbatch.is_empty() || bbatch.iter().product::<usize>() == 1;
    if !b_shared && abatch != bbatch {
        return Err(shape_err(op, format!("batch axes differ: {a:?} and {b:?}")));
    }
    let mut os = abatch.to_vec();
    os.push(m);
    os.push(n);
    Ok((batch, m, n, k, b_shared, os))
}

/// Batched matrix product `op(a)·op(b)` where `op` transposes the last two axes when asked.
/// `a` is `[..., m, k]` (or `[..., k, m]` with `ta`); `b` has the same batch axes or none (shared).
pub fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let (batch, m, n, k, b_shared, os) = mm_dims("matmul", a.shape(), b.shape(), ta, tb)?;
    if same_device("matmul", &[a, b])?.is_cpu() {
        with_real!(cdt(&[a, b]), T, {
            let (ad, bd) = (a.cpu_data::<T>()?, b.cpu_data::<T>()?);
            let mut c = vec![T::ZERO; batch * m * n];
            cpu::batched_gemm(
                ta,
                tb,
                batch,
                m,
                n,
                k,
                T::ONE,
                &ad,
                m * k,
                &bd,
                if b_shared { 0 } else { k * n },
                cpu::onto_zeros(),
                &mut c,
            );
            Ok(out(c, &os, a))
        })
    } else {
        crate::cuda::ops::matmul(a, b, ta, tb, batch, m, n, k, b_shared, &os)
    }
}

/// Backward of [`matmul`]: gradients for `a` and `b` (each only when asked for).
pub fn matmul_backward(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    dy: &Tensor,
    need_a: bool,
    need_b: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let (batch, m, n, k, b_shared, _) = mm_dims("matmul_backward", a.shape(), b.shape(), ta, tb)?;
    if !same_device("matmul_backward", &[a, b, dy])?.is_cpu() {
        let da = if need_a {
            // dA = dC·op(B)ᵀ, or (for ta) op(B)·dCᵀ
            Some(
                if !ta {
                    matmul(dy, b, false, !tb)?
                } else {
                    matmul(b, dy, tb, true)?
                }
                .reshape(a.shape())?,
            )
        } else {
            None
        };
        let db = if need_b {
            if b_shared {
                // Fold the batch into rows: dB = op(A)ᵀ·dC summed over the batch.
                let a2 = a.reshape(&[batch * a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]])?;
                let d2 = dy.reshape(&[batch * m, n])?;
                let r = if ta {
                    // A stored [k, m] per batch: no single fold; do it per batch on the host.
                    return Err(Error::Device {
                        op: "matmul_backward".into(),
                        msg: "transposed batched A with shared B is CPU-only".into(),
                    });
                } else if !tb {
                    matmul(&a2, &d2, true, false)?
                } else {
                    matmul(&d2, &a2, true, false)?
                };
                Some(r.reshape(b.shape())?)
            } else {
                Some(
                    if !tb {
                        matmul(a, dy, !ta, false)?
                    } else {
                        matmul(dy, a, true, ta)?
                    }
                    .reshape(b.shape())?,
                )
            }
        } else {
            None
        };
        return Ok((da, db));
    }
    with_real!(cdt(&[a, b, dy]), T, {
        let (ad, bd, g) = (a.cpu_data::<T>()?, b.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let da = if need_a {
            let mut da = vec![T::ZERO; batch * m * k];
            let bs = if b_shared { 0 } else { k * n };
            for i in 0..batch {
                let gi = &g[i * m * n..(i + 1) * m * n];
                let bi = &bd[i * bs..i * bs + k * n];
                let di = &mut da[i * m * k..(i + 1) * m * k];
                if !ta {
                    // dA [m,k] = dC [m,n] · op(B)ᵀ
                    T::gemm(
                        false,
                        !tb,
                        m,
                        k,
                        n,
                        T::ONE,
                        gi,
                        n,
                        bi,
                        if tb { k } else { n },
                        cpu::onto_zeros(),
                        di,
                        k,
                    );
                } else {
                    // dA [k,m] = op(B) [k,n] · dCᵀ
                    T::gemm(
                        tb,
                        true,
                        k,
                        m,
                        n,
                        T::ONE,
                        bi,
                        if tb { k } else { n },
                        gi,
                        n,
                        cpu::onto_zeros(),
                        di,
                        m,
                    );
                }
            }
            Some(Tensor::from_real(da, a.shape().to_vec(), a.dtype()))
        } else {
            None
        };
        let db = if need_b {
            let mut db = vec![T::ZERO; if b_shared { k * n } else { batch * k * n }];
            for i in 0..batch {
                let gi = &g[i * m * n..(i + 1) * m * n];
                let ai = &ad[i * m * k..(i + 1) * m * k];
                // db starts zeroed: every product adds onto it (for a shared B, the batch sum).
                let (di, beta) = if b_shared {
                    (&mut db[..], cpu::onto_zeros())
                } else {
                    (&mut db[i * k * n..(i + 1) * k * n], cpu::onto_zeros())
                };
                if !tb {
                    // dB [k,n] = op(A)ᵀ · dC
                    T::gemm(
                        !ta,
                        false,
                        k,
                        n,
                        m,
                        T::ONE,
                        ai,
                        if ta { m } else { k },
                        gi,
                        n,
                        beta,
                        di,
                        n,
                    );
                } else {
                    // dB [n,k] = dCᵀ · op(A)
                    T::gemm(
                        true,
                        ta,
                        n,
                        k,
                        m,
                        T::ONE,
                        gi,
                        n,
                        ai,
                        if ta { m } else { k },
                        beta,
                        di,
                        k,
                    );
                }
            }
            Some(Tensor::from_real(db, b.shape().to_vec(), b.dtype()))
        } else {
            None
        };
        Ok((da, db))
    })
}

/// `y = x·wᵀ + b` with `x [..., in]`, `w [out, in]`, `b [out]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    check_linear(x, w, b)?;
    let dt = x.dtype();
    let mut ts = vec![x, w];
    ts.extend(b);
    if (dt == DType::F32 || dt == DType::F64)
        && ts.iter().all(|t| t.dtype() == dt)
        && same_device("linear", &ts)?.is_cpu()
    {
        // One GEMM over all rows (the leading axes flattened), with beta = 1 onto rows pre-filled with the
        // bias: no second pass over `y` and no broadcast add (a separate bias add cost as much as the GEMM
        // at out = 1024). [`lora_linear`] computes its base layer the same way, bit for bit.
        let (out_f, inn) = (w.shape()[0], w.shape()[1]);
        let rows: usize = x.shape()[..x.rank() - 1].iter().product();
        let mut os = x.shape().to_vec();
        *os.last_mut().expect("rank >= 1 checked") = out_f;
        return with_real!(dt, T, {
            let (xd, wd) = (x.cpu_data::<T>()?, w.cpu_data::<T>()?);
            let bd = b.map(|b| b.cpu_data::<T>()).transpose()?;
            let c = cpu_linear(&xd, &wd, bd.as_deref(), rows, out_f, inn);
            Ok(out(c, &os, x))
        });
    }
    let y = matmul(x, w, false, true)?;
    match b {
        Some(b) => binary(&y, b, BinaryOp::Add),
        None => Ok(y),
    }
}

/// `x [rows, inn] · wᵀ + b` on the CPU: the bias rows first, then one GEMM adding onto them.
fn cpu_linear<T: Real>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    rows: usize,
    out_f: usize,
    inn: usize,
) -> Vec<T> {
    let (mut y, beta) = match b {
        Some(b) => {
            let mut y = Vec::with_capacity(rows * out_f);
            for _ in 0..rows {
                y.extend_from_slice(b);
            }
            (y, T::ONE)
        }
        None => (vec![T::ZERO; rows * out_f], cpu::onto_zeros()),
    };
    T::gemm(
        false,
        true,
        rows,
        out_f,
        inn,
        T::ONE,
        x,
        inn,
        w,
        inn,
        beta,
        &mut y,
        out_f,
    );
    y
}

fn check_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<()> {
    if w.rank() != 2 || x.rank() < 1 || x.shape()[x.rank() - 1] != w.shape()[1] {
        return Err(shape_err(
            "linear",
            format!("input {:?} does not fit weight {:?}", x.shape(), w.shape()),
        ));
    }
    if let Some(b) = b {
        if b.shape() != [w.shape()[0]] {
            return Err(shape_err(
                "linear",
                format!("bias {:?} for weight {:?}", b.shape(), w.shape()),
            ));
        }
    }
    Ok(())
}

/// Gradients of [`linear`]: `(dx, dw, db)`, each only when asked for.
pub fn linear_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    need: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let inn = w.shape()[1];
    let rows = x.numel() / inn.max(1);
    let x2 = x.reshape(&[rows, inn])?;
    let g2 = dy.reshape(&[rows, w.shape()[0]])?;
    let (dx, dw) = matmul_backward(&x2, w, false, true, &g2, need[0], need[1])?;
    let dx = dx.map(|d| d.reshape(x.shape())).transpose()?;
    let db = if need[2] { Some(sum_rows(&g2)?) } else { None };
    Ok((dx, dw, db))
}

/// A linear layer with a LoRA adapter in one op: `y = x·Wᵀ + b + (s·(x·Dᵀ))·Uᵀ`, with `down` D `[r, in]`,
/// `up` U `[out, r]` and the scale `s` (multiplier × alpha / rank). Returns `y` and the scaled rank-r
/// activation `s·x·Dᵀ` that [`lora_linear_backward`] needs.
///
/// The same numbers as [`linear`] + LoRA as separate ops (base output, `x·Dᵀ`, scale, `·Uᵀ`, add), but on
/// the CPU the LoRA product is accumulated into the base output by its GEMM (`beta = 1`): no separate
/// full-width up-projection and sum, and only `x` and the r-wide activation are kept for the backward pass.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    down: &Tensor,
    up: &Tensor,
    scale: f64,
) -> Result<(Tensor, Tensor)> {
    check_linear(x, w, b)?;
    let (out_f, inn) = (w.shape()[0], w.shape()[1]);
    let r = down.shape().first().copied().unwrap_or(0);
    if down.shape() != [r, inn] || up.shape() != [out_f, r] {
        return Err(shape_err(
            "lora_linear",
            format!(
                "lora_down {:?} / lora_up {:?} for weight {:?}",
                down.shape(),
                up.shape(),
                w.shape()
            ),
        ));
    }
    let mut ts = vec![x, w, down, up];
    ts.extend(b);
    if !same_device("lora_linear", &ts)?.is_cpu() {
        let base = linear(x, w, b)?;
        let lxs = self::scale(&linear(x, down, None)?, scale)?;
        let y = binary(&base, &linear(&lxs, up, None)?, BinaryOp::Add)?;
        return Ok((y, lxs));
    }
    let rows = x.numel() / inn.max(1);
    let mut os = x.shape().to_vec();
    *os.last_mut().expect("rank >= 1 checked") = out_f;
    let mut ls = x.shape().to_vec();
    *ls.last_mut().expect("rank >= 1 checked") = r;
    with_real!(cdt(&ts), T, {
        let (xd, wd, dd, ud) = (
            x.cpu_data::<T>()?,
            w.cpu_data::<T>()?,
            down.cpu_data::<T>()?,
            up.cpu_data::<T>()?,
        );
        // lx = x·Dᵀ, then s·lx (as the separate ops would round it).
        let mut lx = vec![T::ZERO; rows * r];
        T::gemm(
            false,
            true,
            rows,
            r,
            inn,
            T::ONE,
            &xd,
            inn,
            &dd,
            inn,
            cpu::onto_zeros(),
            &mut lx,
            r,
        );
        let sv = T::from_f64(scale);
        lx.iter_mut().for_each(|v| *v *= sv);
        // y = x·Wᵀ + b exactly as [`linear`] computes it, then += lxs·Uᵀ.
        let bd = b.map(|b| b.cpu_data::<T>()).transpose()?;
        let mut y = cpu_linear(&xd, &wd, bd.as_deref(), rows, out_f, inn);
        T::gemm(
            false,
            true,
            rows,
            out_f,
            r,
            T::ONE,
            &lx,
            r,
            &ud,
            r,
            T::ONE,
            &mut y,
            out_f,
        );
        Ok((out(y, &os, x), out(lx, &ls, x)))
    })
}

/// Gradients of [`lora_linear`] from its input `x`, the scaled rank activation `lxs` it returned and the
/// output gradient: `(dx, dw, db, ddown, dup)`, each only when asked for (`need` in that order).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn lora_linear_backward(
    x: &Tensor,
    w: &Tensor,
    down: &Tensor,
    up: &Tensor,
    lxs: &Tensor,
    scale: f64,
    dy: &Tensor,
    need: [bool; 5],
) -> Result<(
    Option<Tensor>,
    Option<Tensor>,
    Option<Tensor>,
    Option<Tensor>,
    Option<Tensor>,
)> {
    let [need_x, need_w, need_b, need_d, need_u] = need;
    let (out_f, inn) = (w.shape()[0], w.shape()[1]);
    let r = down.shape()[0];
    let rows = x.numel() / inn.max(1);
    if dy.numel() != rows * out_f || lxs.numel() != rows * r {
        return Err(shape_err(
            "lora_linear_backward",
            format!("gradient {:?} for input {:?}", dy.shape(), x.shape()),
        ));
    }
    // The frozen base layer's own gradients (rarely asked for) as a plain linear layer's.
    let (_, dw, db) = if need_w || need_b {
        linear_backward(x, w, dy, [false, need_w, need_b])?
    } else {
        (None, None, None)
    };
    if !same_device("lora_linear_backward", &[x, w, down, up, lxs, dy])?.is_cpu() {
        let (dlxs, du, _) = linear_backward(lxs, up, dy, [need_x || need_d, need_u, false])?;
        let (mut dx, mut dd) = (None, None);
        if let Some(dlxs) = dlxs {
            let dlx = self::scale(&dlxs, scale)?;
            let (dx1, d, _) = linear_backward(x, down, &dlx, [need_x, need_d, false])?;
            dd = d;
            if let Some(dx1) = dx1 {
                let (dx0, _, _) = linear_backward(x, w, dy, [true, false, false])?;
                dx = Some(axpy(&dx0.expect("asked for"), &dx1, 1.0)?);
            }
        }
        return Ok((dx, dw, db, dd, du));
    }
    with_real!(cdt(&[x, w, down, up, dy]), T, {
        let (xd, wd, dd_, ud, ld, g) = (
            x.cpu_data::<T>()?,
            w.cpu_data::<T>()?,
            down.cpu_data::<T>()?,
            up.cpu_data::<T>()?,
            lxs.cpu_data::<T>()?,
            dy.cpu_data::<T>()?,
        );
        // dU [out, r] = dyᵀ·lxs
        let du = need_u.then(|| {
            let mut du = vec![T::ZERO; out_f * r];
            T::gemm(
                true,
                false,
                out_f,
                r,
                rows,
                T::ONE,
                &g,
                out_f,
                &ld,
                r,
                cpu::onto_zeros(),
                &mut du,
                r,
            );
            Tensor::from_real(du, up.shape().to_vec(), up.dtype())
        });
        let (mut dx, mut ddown) = (None, None);
        if need_x || need_d {
            // dlx [rows, r] = s·(dy·U)
            let mut dlx = vec![T::ZERO; rows * r];
            let sv = T::from_f64(scale);
            T::gemm(
                false,
                false,
                rows,
                r,
                out_f,
                sv,
                &g,
                out_f,
                &ud,
                r,
                cpu::onto_zeros(),
                &mut dlx,
                r,
            );
            if need_d {
                // dD [r, in] = dlxᵀ·x
                let mut d = vec![T::ZERO; r * inn];
                T::gemm(
                    true,
                    false,
                    r,
                    inn,
                    rows,
                    T::ONE,
                    &dlx,
                    r,
                    &xd,
                    inn,
                    cpu::onto_zeros(),
                    &mut d,
                    inn,
                );
                ddown = Some(Tensor::from_real(d, down.shape().to_vec(), down.dtype()));
            }
            if need_x {
                // dx = dy·W + dlx·D, the second product accumulated by its GEMM.
                let mut d = vec![T::ZERO; rows * inn];
                T::gemm(
                    false,
                    false,
                    rows,
                    inn,
                    out_f,
                    T::ONE,
                    &g,
                    out_f,
                    &wd,
                    inn,
                    cpu::onto_zeros(),
                    &mut d,
                    inn,
                );
                T::gemm(
                    false,
                    false,
                    rows,
                    inn,
                    r,
                    T::ONE,
                    &dlx,
                    r,
                    &dd_,
                    inn,
                    T::ONE,
                    &mut d,
                    inn,
                );
                dx = Some(out(d, x.shape(), x));
            }
        }
        Ok((dx, dw, db, ddown, du))
    })
}

/// Sums a `[rows, n]` tensor over its rows.
fn sum_rows(g: &Tensor) -> Result<Tensor> {
    let n = g.shape()[1];
    let r = sum_to(g, &[n])?;
    r.to_dtype(DType::F32.max_with(g.dtype()))
}

impl DType {
    /// F64 if either is F64, else F32 (the accumulation dtype for gradients).
    fn max_with(self, o: DType) -> DType {
        if self == DType::F64 || o == DType::F64 {
            DType::F64
        } else {
            DType::F32
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution

/// Stride and zero padding of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dCfg {
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on both axes.
    pub padding: usize,
}

impl Default for Conv2dCfg {
    fn default() -> Self {
        Conv2dCfg {
            stride: 1,
            padding: 0,
        }
    }
}

fn conv_geom(x: &Tensor, w: &Tensor, cfg: Conv2dCfg) -> Result<ConvGeom> {
    let (xs, ws) = (x.shape(), w.shape());
    if xs.len() != 4 || ws.len() != 4 || xs[1] != ws[1] {
        return Err(shape_err(
            "conv2d",
            format!("input {xs:?} does not fit weight {ws:?} (NCHW, OIHW)"),
        ));
    }
    if cfg.stride == 0 {
        return Err(arg_err("conv2d stride", "must be at least 1"));
    }
    if xs[2] + 2 * cfg.padding < ws[2] || xs[3] + 2 * cfg.padding < ws[3] {
        return Err(shape_err(
            "conv2d",
            format!("kernel {ws:?} larger than padded input {xs:?}"),
        ));
    }
    Ok(ConvGeom {
        n: xs[0],
        c: xs[1],
        h: xs[2],
        w: xs[3],
        o: ws[0],
        kh: ws[2],
        kw: ws[3],
        stride: cfg.stride,
        pad: cfg.padding,
    })
}

/// 2-D convolution (NCHW input, OIHW weight, optional bias `[O]`).
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, cfg: Conv2dCfg) -> Result<Tensor> {
    let g = conv_geom(x, w, cfg)?;
    if let Some(b) = b {
        if b.shape() != [g.o] {
            return Err(shape_err(
                "conv2d",
                format!("bias {:?} for {} output channels", b.shape(), g.o),
            ));
        }
    }
    let mut ts = vec![x, w];
    ts.extend(b);
    if on_cuda("conv2d", &ts)? {
        return crate::cuda::ops::conv2d(x, w, b, &g);
    }
    with_real!(cdt(&ts), T, {
        let (xd, wd) = (x.cpu_data::<T>()?, w.cpu_data::<T>()?);
        let bd = b.map(|b| b.cpu_data::<T>()).transpose()?;
        let y = cpu::conv2d_fwd(&xd, &wd, bd.as_deref(), &g);
        Ok(out(y, &[g.n, g.o, g.ho(), g.wo()], x))
    })
}

/// Gradients of [`conv2d`]: `(dx, dw, db)`, each only when asked for.
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    cfg: Conv2dCfg,
    need: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let g = conv_geom(x, w, cfg)?;
    if dy.shape() != [g.n, g.o, g.ho(), g.wo()] {
        return Err(shape_err(
            "conv2d_backward",
            format!(
                "gradient {:?} for output {:?}",
                dy.shape(),
                [g.n, g.o, g.ho(), g.wo()]
            ),
        ));
    }
    if on_cuda("conv2d_backward", &[x, w, dy])? {
        return crate::cuda::ops_more::conv2d_backward(x, w, dy, &g, need);
    }
    with_real!(cdt(&[x, w, dy]), T, {
        let (xd, wd, gd) = (x.cpu_data::<T>()?, w.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let (dx, dw, db) = cpu::conv2d_bwd(&xd, &wd, &gd, &g, need[0], need[1], need[2]);
        Ok((
            dx.map(|v| Tensor::from_real(v, x.shape().to_vec(), x.dtype())),
            dw.map(|v| Tensor::from_real(v, w.shape().to_vec(), w.dtype())),
            db.map(|v| Tensor::from_real(v, vec![g.o], DType::F32.max_with(dy.dtype()))),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/// Per-row statistics saved by a normalisation forward for its backward.
#[derive(Debug, Clone)]
pub struct NormStats {
    /// Means, one per normalised group/row.
    pub mean: Tensor,
    /// 1/sqrt(var + eps), one per group/row.
    pub rstd: Tensor,
}

fn check_affine(op: &str, t: Option<&Tensor>, n: usize) -> Result<()> {
    if let Some(t) = t {
        if t.shape() != [n] {
            return Err(shape_err(
                op,
                format!("affine parameter {:?}, expected [{n}]", t.shape()),
            ));
        }
    }
    Ok(())
}

/// Group norm over `x [N, C, ...]` with `groups` groups (C divisible by it) and optional affine `[C]`.
pub fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    let xs = x.shape();
    if xs.len() < 2 || groups == 0 || xs[1] % groups != 0 {
        return Err(shape_err(
            "group_norm",
            format!("input {xs:?} with {groups} groups"),
        ));
    }
    let (n, c) = (xs[0], xs[1]);
    let s: usize = xs[2..].iter().product();
    check_affine("group_norm", gamma, c)?;
    check_affine("group_norm", beta, c)?;
    let mut ts = vec![x];
    ts.extend(gamma);
    ts.extend(beta);
    if on_cuda("group_norm", &ts)? {
        let g = match gamma {
            Some(g) => g.clone(),
            None => ones_on(c, x)?,
        };
        let b = match beta {
            Some(b) => b.clone(),
            None => zeros_on(c, x)?,
        };
        return crate::cuda::ops::group_norm(x, groups, &g, &b, eps);
    }
    with_real!(cdt(&ts), T, {
        let xd = x.cpu_data::<T>()?;
        let gd = gamma.map(|t| t.cpu_data::<T>()).transpose()?;
        let bd = beta.map(|t| t.cpu_data::<T>()).transpose()?;
        let (y, m, r) =
            cpu::group_norm_fwd(&xd, n, c, s, groups, gd.as_deref(), bd.as_deref(), eps);
        let sd = T::DTYPE;
        Ok((
            out(y, xs, x),
            NormStats {
                mean: Tensor::from_real(m, vec![n * groups], sd),
                rstd: Tensor::from_real(r, vec![n * groups], sd),
            },
        ))
    })
}

/// Gradients of [`group_norm`]: `(dx, dgamma, dbeta)`.
pub fn group_norm_backward(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let xs = x.shape();
    if dy.shape() != xs || xs.len() < 2 || groups == 0 || xs[1] % groups != 0 {
        return Err(shape_err(
            "group_norm_backward",
            format!("input {xs:?}, gradient {:?}", dy.shape()),
        ));
    }
    let (n, c) = (xs[0], xs[1]);
    let s: usize = xs[2..].iter().product();
    if on_cuda("group_norm_backward", &[x, dy])? {
        let g = match gamma {
            Some(g) => g.clone(),
            None => ones_on(c, x)?,
        };
        return crate::cuda::ops::group_norm_backward(x, groups, &g, stats, dy);
    }
    with_real!(cdt(&[x, dy, &stats.mean]), T, {
        let (xd, g) = (x.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let (m, r) = (stats.mean.cpu_data::<T>()?, stats.rstd.cpu_data::<T>()?);
        let gd = gamma.map(|t| t.cpu_data::<T>()).transpose()?;
        let (dx, dg, db) = cpu::group_norm_bwd(&xd, &g, &m, &r, n, c, s, groups, gd.as_deref());
        let pd = gamma.map_or(DType::F32.max_with(x.dtype()), |t| t.dtype());
        Ok((
            out(dx, xs, x),
            Tensor::from_real(dg, vec![c], pd),
            Tensor::from_real(db, vec![c], pd),
        ))
    })
}

fn cpu_only(op: &str) -> Error {
    Error::Device {
        op: op.into(),
        msg: "a fused CPU op: on CUDA run its parts (group_norm, then activation)".into(),
    }
}

/// Group norm followed by SiLU, one pass on the CPU (see [`cpu::group_norm_silu_fwd`]); CPU tensors only
/// (on CUDA, run [`group_norm`] and [`activation`]).
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    let xs = x.shape();
    if xs.len() < 2 || groups == 0 || xs[1] % groups != 0 {
        return Err(shape_err(
            "group_norm_silu",
            format!("input {xs:?} with {groups} groups"),
        ));
    }
    let (n, c) = (xs[0], xs[1]);
    let s: usize = xs[2..].iter().product();
    check_affine("group_norm_silu", gamma, c)?;
    check_affine("group_norm_silu", beta, c)?;
    let mut ts = vec![x];
    ts.extend(gamma);
    ts.extend(beta);
    if on_cuda("group_norm_silu", &ts)? {
        return Err(cpu_only("group_norm_silu"));
    }
    with_real!(cdt(&ts), T, {
        let xd = x.cpu_data::<T>()?;
        let gd = gamma.map(|t| t.cpu_data::<T>()).transpose()?;
        let bd = beta.map(|t| t.cpu_data::<T>()).transpose()?;
        let (y, m, r) =
            cpu::group_norm_silu_fwd(&xd, n, c, s, groups, gd.as_deref(), bd.as_deref(), eps);
        Ok((
            out(y, xs, x),
            NormStats {
                mean: Tensor::from_real(m, vec![n * groups], T::DTYPE),
                rstd: Tensor::from_real(r, vec![n * groups], T::DTYPE),
            },
        ))
    })
}

/// Gradients of [`group_norm_silu`]: `(dx, dgamma, dbeta)`.
pub fn group_norm_silu_backward(
    x: &Tensor,
    groups: usize,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let xs = x.shape();
    if dy.shape() != xs || xs.len() < 2 || groups == 0 || xs[1] % groups != 0 {
        return Err(shape_err(
            "group_norm_silu_backward",
            format!("input {xs:?}, gradient {:?}", dy.shape()),
        ));
    }
    let (n, c) = (xs[0], xs[1]);
    let s: usize = xs[2..].iter().product();
    if on_cuda("group_norm_silu_backward", &[x, dy])? {
        return Err(cpu_only("group_norm_silu_backward"));
    }
    with_real!(cdt(&[x, dy, &stats.mean]), T, {
        let (xd, g) = (x.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let (m, r) = (stats.mean.cpu_data::<T>()?, stats.rstd.cpu_data::<T>()?);
        let gd = gamma.map(|t| t.cpu_data::<T>()).transpose()?;
        let bd = beta.map(|t| t.cpu_data::<T>()).transpose()?;
        let (dx, dg, db) = cpu::group_norm_silu_bwd(
            &xd,
            &g,
            &m,
            &r,
            n,
            c,
            s,
            groups,
            gd.as_deref(),
            bd.as_deref(),
        );
        let pd = gamma.map_or(DType::F32.max_with(x.dtype()), |t| t.dtype());
        Ok((
            out(dx, xs, x),
            Tensor::from_real(dg, vec![c], pd),
            Tensor::from_real(db, vec![c], pd),
        ))
    })
}

/// Layer norm over the last axis of `x [..., D]`, optional affine `[D]`.
pub fn layer_norm(
    x: &Tensor,
    gamma: Option<&Tensor>,
    beta: Option<&Tensor>,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    let xs = x.shape();
    let d = *xs
        .last()
        .ok_or_else(|| shape_err("layer_norm", "scalar input"))?;
    check_affine("layer_norm", gamma, d)?;
    check_affine("layer_norm", beta, d)?;
    let rows = x.numel() / d.max(1);
    let mut ts = vec![x];
    ts.extend(gamma);
    ts.extend(beta);
    if on_cuda("layer_norm", &ts)? {
        let g = match gamma {
            Some(g) => g.clone(),
            None => ones_on(d, x)?,
        };
        let b = match beta {
            Some(b) => b.clone(),
            None => zeros_on(d, x)?,
        };
        return crate::cuda::ops::layer_norm(x, &g, &b, eps);
    }
    with_real!(cdt(&ts), T, {
        let xd = x.cpu_data::<T>()?;
        let gd = gamma.map(|t| t.cpu_data::<T>()).transpose()?;
        let bd = beta.map(|t| t.cpu_data::<T>()).transpose()?;
        let (y, m, r) = cpu::layer_norm_fwd(&xd, rows, d, gd.as_deref(), bd.as_deref(), eps);
        Ok((
            out(y, xs, x),
            NormStats {
                mean: Tensor::from_real(m, vec![rows], T::DTYPE),
                rstd: Tensor::from_real(r, vec![rows], T::DTYPE),
            },
        ))
    })
}

/// Gradients of [`layer_norm`]: `(dx, dgamma, dbeta)`.
pub fn layer_norm_backward(
    x: &Tensor,
    gamma: Option<&Tensor>,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let xs = x.shape();
    if dy.shape() != xs || xs.is_empty() {
        return Err(shape_err(
            "layer_norm_backward",
            format!("input {xs:?}, gradient {:?}", dy.shape()),
        ));
    }
    let d = xs[xs.len() - 1];
    let rows = x.numel() / d.max(1);
    if on_cuda("layer_norm_backward", &[x, dy])? {
        let g = match gamma {
            Some(g) => g.clone(),
            None => ones_on(d, x)?,
        };
        return crate::cuda::ops::layer_norm_backward(x, &g, stats, dy);
    }
    with_real!(cdt(&[x, dy, &stats.mean]), T, {
        let (xd, g) = (x.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let (m, r) = (stats.mean.cpu_data::<T>()?, stats.rstd.cpu_data::<T>()?);
        let gd = gamma.map(|t| t.cpu_data::<T>()).transpose()?;
        let (dx, dg, db) = cpu::layer_norm_bwd(&xd, &g, &m, &r, rows, d, gd.as_deref());
        let pd = gamma.map_or(DType::F32.max_with(x.dtype()), |t| t.dtype());
        Ok((
            out(dx, xs, x),
            Tensor::from_real(dg, vec![d], pd),
            Tensor::from_real(db, vec![d], pd),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Activations

/// A pointwise activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// `x·sigmoid(x)` (the U-Net's nonlinearity).
    Silu,
    /// Exact GELU `x·Φ(x)` (torch's default, used by GEGLU).
    Gelu,
    /// `x·sigmoid(1.702x)` (CLIP's `quick_gelu`).
    QuickGelu,
}

#[inline(always)]
fn sigmoid<T: Real>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

#[inline(always)]
fn act_f<T: Real>(a: Activation, x: T) -> T {
    match a {
        Activation::Silu => x * sigmoid(x),
        Activation::Gelu => {
            T::from_f64(0.5)
                * x
                * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
        }
        Activation::QuickGelu => x * sigmoid(T::from_f64(1.702) * x),
    }
}

#[inline(always)]
fn act_df<T: Real>(a: Activation, x: T) -> T {
    match a {
        Activation::Silu => {
            let s = sigmoid(x);
            s * (T::ONE + x * (T::ONE - s))
        }
        Activation::Gelu => {
            let cdf = T::from_f64(0.5)
                * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (T::from_f64(-0.5) * x * x).exp()
                * T::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt());
            cdf + x * pdf
        }
        Activation::QuickGelu => {
            let k = T::from_f64(1.702);
            let s = sigmoid(k * x);
            s + k * x * s * (T::ONE - s)
        }
    }
}

/// Applies an activation elementwise.
pub fn activation(x: &Tensor, a: Activation) -> Result<Tensor> {
    if on_cuda("activation", &[x])? {
        return crate::cuda::ops::activation(x, a);
    }
    with_real!(cdt(&[x]), T, {
        let xd = x.cpu_data::<T>()?;
        // One closure per activation, so that the match leaves the loop and the loop vectorizes.
        let y = match a {
            Activation::Silu => cpu::map(&xd, |v| act_f(Activation::Silu, v)),
            Activation::Gelu => cpu::map(&xd, |v| act_f(Activation::Gelu, v)),
            Activation::QuickGelu => cpu::map(&xd, |v| act_f(Activation::QuickGelu, v)),
        };
        Ok(out(y, x.shape(), x))
    })
}

/// Gradient of [`activation`] with respect to its input.
pub fn activation_backward(x: &Tensor, dy: &Tensor, a: Activation) -> Result<Tensor> {
    if x.shape() != dy.shape() {
        return Err(shape_err(
            "activation_backward",
            format!("{:?} vs {:?}", x.shape(), dy.shape()),
        ));
    }
    if on_cuda("activation_backward", &[x, dy])? {
        return crate::cuda::ops::activation_backward(x, dy, a);
    }
    with_real!(cdt(&[x, dy]), T, {
        let (xd, g) = (x.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let dx = match a {
            Activation::Silu => cpu::zip_map(&xd, &g, |v, d| d * act_df(Activation::Silu, v)),
            Activation::Gelu => cpu::zip_map(&xd, &g, |v, d| d * act_df(Activation::Gelu, v)),
            Activation::QuickGelu => {
                cpu::zip_map(&xd, &g, |v, d| d * act_df(Activation::QuickGelu, v))
            }
        };
        Ok(out(dx, x.shape(), x))
    })
}

fn geglu_dims(x: &Tensor) -> Result<(usize, usize, Vec<usize>)> {
    let xs = x.shape();
    let d2 = *xs
        .last()
        .ok_or_else(|| shape_err("geglu", "scalar input"))?;
    if d2 % 2 != 0 {
        return Err(shape_err("geglu", format!("last axis {d2} is odd")));
    }
    let mut os = xs.to_vec();
    *os.last_mut().unwrap_or(&mut 0) = d2 / 2;
    Ok((x.numel() / d2.max(1), d2 / 2, os))
}

/// GEGLU: `x [..., 2D]` split into `(h, gate)` along the last axis; `y = h·gelu(gate)` (diffusers' order).
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let (rows, d, os) = geglu_dims(x)?;
    if on_cuda("geglu", &[x])? {
        return crate::cuda::ops_more::geglu(x, rows, d, &os);
    }
    with_real!(cdt(&[x]), T, {
        let xd = x.cpu_data::<T>()?;
        let mut y = Vec::with_capacity(rows * d);
        // Row by row over slices (no index arithmetic in the inner loop, so it vectorizes).
        for xr in xd.chunks_exact(2 * d) {
            let (h, gate) = xr.split_at(d);
            y.extend(
                h.iter()
                    .zip(gate)
                    .map(|(&h, &gt)| h * act_f(Activation::Gelu, gt)),
            );
        }
        Ok(out(y, &os, x))
    })
}

/// Gradient of [`geglu`].
pub fn geglu_backward(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (rows, d, os) = geglu_dims(x)?;
    if dy.shape() != os.as_slice() {
        return Err(shape_err(
            "geglu_backward",
            format!("gradient {:?} for output {os:?}", dy.shape()),
        ));
    }
    if on_cuda("geglu_backward", &[x, dy])? {
        return crate::cuda::ops_more::geglu_backward(x, dy, rows, d);
    }
    with_real!(cdt(&[x, dy]), T, {
        let (xd, g) = (x.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        let mut dx = vec![T::ZERO; x.numel()];
        for ((dr, xr), gr) in dx
            .chunks_exact_mut(2 * d)
            .zip(xd.chunks_exact(2 * d))
            .zip(g.chunks_exact(d))
        {
            let (dh, dgate) = dr.split_at_mut(d);
            let (h, gate) = xr.split_at(d);
            // Equal-length slices: the bounds checks go and the loop vectorizes.
            let (dgate, h, gate, gr) = (&mut dgate[..d], &h[..d], &gate[..d], &gr[..d]);
            for j in 0..d {
                let (gt, gy) = (gate[j], gr[j]);
                dh[j] = gy * act_f(Activation::Gelu, gt);
                dgate[j] = gy * h[j] * act_df(Activation::Gelu, gt);
            }
        }
        Ok(out(dx, x.shape(), x))
    })
}

/// Softmax over the last axis.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let d = *x
        .shape()
        .last()
        .ok_or_else(|| shape_err("softmax", "scalar input"))?;
    if on_cuda("softmax", &[x])? && d > 0 {
        return crate::cuda::ops::softmax(x);
    }
    if d == 0 {
        return Ok(x.clone());
    }
    with_real!(cdt(&[x]), T, {
        let mut y = x.cpu_data::<T>()?.into_owned();
        cpu::softmax_rows_inplace(&mut y, d, None);
        Ok(out(y, x.shape(), x))
    })
}

/// Gradient of [`softmax`] from its output `y`.
pub fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if y.shape() != dy.shape() || y.rank() == 0 {
        return Err(shape_err(
            "softmax_backward",
            format!("{:?} vs {:?}", y.shape(), dy.shape()),
        ));
    }
    if on_cuda("softmax_backward", &[y, dy])? && y.numel() > 0 {
        return crate::cuda::ops::softmax_backward(y, dy);
    }
    let d = y.shape()[y.rank() - 1];
    if d == 0 {
        return Ok(dy.clone());
    }
    with_real!(cdt(&[y, dy]), T, {
        let (yd, g) = (y.cpu_data::<T>()?, dy.cpu_data::<T>()?);
        Ok(out(cpu::softmax_rows_bwd(&yd, &g, d), y.shape(), y))
    })
}

fn attn_geom(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<AttnGeom> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() < 2 || ks.len() != qs.len() || vs.len() != qs.len() {
        return Err(shape_err(
            "attention",
            format!("q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    let nd = qs.len();
    let lead = &qs[..nd - 2];
    if &ks[..nd - 2] != lead
        || &vs[..nd - 2] != lead
        || ks[nd - 1] != qs[nd - 1]
        || vs[nd - 2] != ks[nd - 2]
    {
        return Err(shape_err(
            "attention",
            format!(
                "q {qs:?}, k {ks:?}, v {vs:?} (want [..., Lq, D], [..., Lk, D], [..., Lk, Dv])"
            ),
        ));
    }
    if ks[nd - 2] == 0 {
        return Err(shape_err("attention", "no keys"));
    }
    Ok(AttnGeom {
        bh: lead.iter().product(),
        lq: qs[nd - 2],
        lk: ks[nd - 2],
        d: qs[nd - 1],
        dv: vs[nd - 1],
        scale,
        causal,
    })
}

/// Scaled dot-product attention `softmax(scale·q·kᵀ [+ causal mask])·v` over any leading axes
/// (e.g. `[B, H, L, D]`; self-attention when k/v come from q's sequence, cross-attention otherwise).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    let g = attn_geom(q, k, v, scale, causal)?;
    if on_cuda("attention", &[q, k, v])? {
        return Ok(crate::cuda::ops::attention(q, k, v, &g)?.0);
    }
    with_real!(cdt(&[q, k, v]), T, {
        let o = cpu::attention_fwd(
            &q.cpu_data::<T>()?,
            &k.cpu_data::<T>()?,
            &v.cpu_data::<T>()?,
            &g,
        );
        let mut os = q.shape().to_vec();
        *os.last_mut().unwrap_or(&mut 0) = g.dv;
        Ok(out(o, &os, q))
    })
}

/// Gradients of [`attention`]: `(dq, dk, dv)`.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d_o: &Tensor,
    scale: f64,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = attn_geom(q, k, v, scale, causal)?;
    if d_o.numel() != g.bh * g.lq * g.dv {
        return Err(shape_err(
            "attention_backward",
            format!("gradient {:?}", d_o.shape()),
        ));
    }
    if on_cuda("attention_backward", &[q, k, v, d_o])? {
        return crate::cuda::ops::attention_backward(q, k, v, d_o, &g);
    }
    with_real!(cdt(&[q, k, v, d_o]), T, {
        let (dq, dk, dv) = cpu::attention_bwd(
            &q.cpu_data::<T>()?,
            &k.cpu_data::<T>()?,
            &v.cpu_data::<T>()?,
            &d_o.cpu_data::<T>()?,
            &g,
        );
        Ok((
            out(dq, q.shape(), q),
            out(dk, k.shape(), k),
            out(dv, v.shape(), v),
        ))
    })
}

/// The geometry of [`attention_heads`] from `[..., L, heads·d]` tensors.
fn attn_heads_geom(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<AttnGeom> {
    let (qs, vs) = (q.shape(), v.shape());
    let bad = heads == 0
        || qs.len() < 2
        || qs[qs.len() - 1] % heads != 0
        || vs.len() < 2
        || vs[vs.len() - 1] % heads != 0;
    if bad {
        return Err(shape_err(
            "attention_heads",
            format!("q {qs:?}, v {vs:?} with {heads} heads"),
        ));
    }
    // The same checks as the one-head form on [..., L, heads·d]; then the head axis is split off the width.
    let g = attn_geom(q, k, v, scale, causal)?;
    Ok(AttnGeom {
        bh: g.bh * heads,
        d: g.d / heads,
        dv: g.dv / heads,
        ..g
    })
}

/// Multi-head scaled dot-product attention on projections laid out `[..., L, heads·d]` (a linear layer's
/// output): head `h` is columns `h·d..(h+1)·d`. The same as splitting the heads off, permuting them in front of
/// the sequence axis, [`attention`] and permuting back, without the four permuted copies.
pub fn attention_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let g = attn_heads_geom(q, k, v, heads, scale, causal)?;
    if on_cuda("attention_heads", &[q, k, v])? {
        // The CUDA kernel takes [bh, L, d]: split, permute, attend, permute back.
        let split = |t: &Tensor, w: usize| -> Result<Tensor> {
            let s = t.shape();
            let l = s[s.len() - 2];
            permute(&t.reshape(&[g.bh / heads, l, heads, w])?, &[0, 2, 1, 3])
        };
        let o = attention(
            &split(q, g.d)?,
            &split(k, g.d)?,
            &split(v, g.dv)?,
            scale,
            causal,
        )?;
        let o = permute(&o, &[0, 2, 1, 3])?;
        let mut os = q.shape().to_vec();
        *os.last_mut().unwrap_or(&mut 0) = heads * g.dv;
        return o.reshape(&os);
    }
    with_real!(cdt(&[q, k, v]), T, {
        let o = cpu::attention_fwd_heads(
            &q.cpu_data::<T>()?,
            &k.cpu_data::<T>()?,
            &v.cpu_data::<T>()?,
            &g,
            heads,
        );
        let mut os = q.shape().to_vec();
        *os.last_mut().unwrap_or(&mut 0) = heads * g.dv;
        Ok(out(o, &os, q))
    })
}

/// [`attention_heads`] for training on the CPU: also returns the probability matrices `[bh, lq, lk]` (f32,
/// or f64 for f64 inputs), so that [`attention_heads_backward`] does not recompute them (one GEMM and a
/// softmax per head saved, for `bh·lq·lk` values kept). On CUDA the probabilities are not kept (None).
pub fn attention_heads_keep(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let g = attn_heads_geom(q, k, v, heads, scale, causal)?;
    if on_cuda("attention_heads_keep", &[q, k, v])? {
        return Ok((attention_heads(q, k, v, heads, scale, causal)?, None));
    }
    with_real!(cdt(&[q, k, v]), T, {
        let mut probs = vec![T::ZERO; g.bh * g.lq * g.lk];
        let o = cpu::attention_fwd_heads_keep(
            &q.cpu_data::<T>()?,
            &k.cpu_data::<T>()?,
            &v.cpu_data::<T>()?,
            &g,
            heads,
            Some(&mut probs),
        );
        let mut os = q.shape().to_vec();
        *os.last_mut().unwrap_or(&mut 0) = heads * g.dv;
        Ok((
            out(o, &os, q),
            Some(Tensor::from_real(probs, vec![g.bh, g.lq, g.lk], T::DTYPE)),
        ))
    })
}

/// Gradients of [`attention_heads`]: `(dq, dk, dv)`, with the probabilities from [`attention_heads_keep`]
/// when there are (else recomputed).
#[allow(clippy::too_many_arguments)]
pub fn attention_heads_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: Option<&Tensor>,
    d_o: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = attn_heads_geom(q, k, v, heads, scale, causal)?;
    if let Some(p) = probs {
        if p.numel() != g.bh * g.lq * g.lk {
            return Err(shape_err(
                "attention_heads_backward",
                format!(
                    "probabilities {:?} for {} matrices of {}×{}",
                    p.shape(),
                    g.bh,
                    g.lq,
                    g.lk
                ),
            ));
        }
    }
    if d_o.numel() != g.bh * g.lq * g.dv {
        return Err(shape_err(
            "attention_heads_backward",
            format!("gradient {:?}", d_o.shape()),
        ));
    }
    if on_cuda("attention_heads_backward", &[q, k, v, d_o])? {
        let b = g.bh / heads;
        let split = |t: &Tensor, l: usize, w: usize| -> Result<Tensor> {
            permute(&t.reshape(&[b, l, heads, w])?, &[0, 2, 1, 3])
        };
        let merge = |t: Tensor, like: &Tensor| -> Result<Tensor> {
            permute(&t, &[0, 2, 1, 3])?.reshape(like.shape())
        };
        let (dq, dk, dv) = attention_backward(
            &split(q, g.lq, g.d)?,
            &split(k, g.lk, g.d)?,
            &split(v, g.lk, g.dv)?,
            &split(d_o, g.lq, g.dv)?,
            scale,
            causal,
        )?;
        return Ok((merge(dq, q)?, merge(dk, k)?, merge(dv, v)?));
    }
    with_real!(cdt(&[q, k, v, d_o]), T, {
        let pd = probs.map(|p| p.cpu_data::<T>()).transpose()?;
        let (dq, dk, dv) = cpu::attention_bwd_heads_kept(
            &q.cpu_data::<T>()?,
            &k.cpu_data::<T>()?,
            &v.cpu_data::<T>()?,
            &d_o.cpu_data::<T>()?,
            &g,
            heads,
            pd.as_deref(),
        );
        Ok((
            out(dq, q.shape(), q),
            out(dk, k.shape(), k),
            out(dv, v.shape(), v),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Layout

/// Nearest-neighbour 2× upsampling of `[N, C, H, W]`.
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() != 4 {
        return Err(shape_err(
            "upsample_nearest2x",
            format!("input {xs:?} is not NCHW"),
        ));
    }
    if on_cuda("upsample_nearest2x", &[x])? {
        return crate::cuda::ops_more::upsample2x(x);
    }
    with_real!(cdt(&[x]), T, {
        let y = cpu::upsample2x(&x.cpu_data::<T>()?, xs[0] * xs[1], xs[2], xs[3]);
        Ok(out(y, &[xs[0], xs[1], 2 * xs[2], 2 * xs[3]], x))
    })
}

/// Gradient of [`upsample_nearest2x`] (`x_shape` is the input's shape).
pub fn upsample_nearest2x_backward(dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    if x_shape.len() != 4 || dy.shape() != [x_shape[0], x_shape[1], 2 * x_shape[2], 2 * x_shape[3]]
    {
        return Err(shape_err(
            "upsample_nearest2x_backward",
            format!("gradient {:?} for input {x_shape:?}", dy.shape()),
        ));
    }
    if on_cuda("upsample_nearest2x_backward", &[dy])? {
        return crate::cuda::ops_more::upsample2x_backward(dy, x_shape);
    }
    with_real!(cdt(&[dy]), T, {
        let dx = cpu::upsample2x_bwd(
            &dy.cpu_data::<T>()?,
            x_shape[0] * x_shape[1],
            x_shape[2],
            x_shape[3],
        );
        Ok(out(dx, x_shape, dy))
    })
}

/// Concatenates tensors along `axis` (all other axes equal).
pub fn concat(ts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let first = ts
        .first()
        .ok_or_else(|| shape_err("concat", "no tensors"))?;
    let s0 = first.shape();
    if axis >= s0.len() {
        return Err(shape_err("concat", format!("axis {axis} for shape {s0:?}")));
    }
    for t in ts {
        let s = t.shape();
        if s.len() != s0.len() || s.iter().enumerate().any(|(i, &d)| i != axis && d != s0[i]) {
            return Err(shape_err(
                "concat",
                format!("shapes {s0:?} and {s:?} differ off axis {axis}"),
            ));
        }
    }
    if on_cuda("concat", ts)? {
        return crate::cuda::ops_more::concat(ts, axis);
    }
    let outer: usize = s0[..axis].iter().product();
    let inner: usize = s0[axis + 1..].iter().product();
    let sizes: Vec<usize> = ts.iter().map(|t| t.shape()[axis]).collect();
    with_real!(cdt(ts), T, {
        let datas: Vec<_> = ts
            .iter()
            .map(|t| t.cpu_data::<T>())
            .collect::<Result<_>>()?;
        let refs: Vec<&[T]> = datas.iter().map(|d| &**d).collect();
        let y = cpu::concat(&refs, &sizes, outer, inner);
        let mut os = s0.to_vec();
        os[axis] = sizes.iter().sum();
        Ok(out(y, &os, first))
    })
}

/// Splits a tensor along `axis` into parts of the given sizes (they must add up to the axis length).
pub fn split(x: &Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let xs = x.shape();
    if axis >= xs.len() || sizes.iter().sum::<usize>() != xs[axis] {
        return Err(shape_err(
            "split",
            format!("sizes {sizes:?} along axis {axis} of {xs:?}"),
        ));
    }
    if on_cuda("split", &[x])? {
        return crate::cuda::ops_more::split(x, axis, sizes);
    }
    let outer: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis + 1..].iter().product();
    with_real!(cdt(&[x]), T, {
        let parts = cpu::split(&x.cpu_data::<T>()?, sizes, outer, inner);
        Ok(parts
            .into_iter()
            .zip(sizes)
            .map(|(p, &s)| {
                let mut os = xs.to_vec();
                os[axis] = s;
                out(p, &os, x)
            })
            .collect())
    })
}

/// Permutes axes: output axis i is input axis `perm[i]`.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let xs = x.shape();
    let mut seen = vec![false; xs.len()];
    if perm.len() != xs.len()
        || perm
            .iter()
            .any(|&p| p >= xs.len() || std::mem::replace(&mut seen[p], true))
    {
        return Err(shape_err(
            "permute",
            format!("{perm:?} is not a permutation of the axes of {xs:?}"),
        ));
    }
    if on_cuda("permute", &[x])? {
        if xs.len() <= 6 {
            return crate::cuda::ops_more::permute(x, perm);
        }
        return host!(&[x], |h| permute(&h[0], perm));
    }
    with_real!(cdt(&[x]), T, {
        let y = cpu::permute(&x.cpu_data::<T>()?, xs, perm);
        let os: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
        Ok(out(y, &os, x))
    })
}

/// The inverse of a permutation.
pub fn inverse_permutation(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// Rows of `table [V, D]` picked by `ids`, shaped `[ids.len(), D]`.
pub fn embedding(table: &Tensor, ids: &[usize]) -> Result<Tensor> {
    let ts = table.shape();
    if ts.len() != 2 {
        return Err(shape_err(
            "embedding",
            format!("table {ts:?} is not [V, D]"),
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i >= ts[0]) {
        return Err(arg_err(
            "embedding ids",
            format!("id {bad} out of range for table of {} rows", ts[0]),
        ));
    }
    if on_cuda("embedding", &[table])? {
        return host!(&[table], |h| embedding(&h[0], ids));
    }
    let d = ts[1];
    with_real!(cdt(&[table]), T, {
        let t = table.cpu_data::<T>()?;
        let mut y = Vec::with_capacity(ids.len() * d);
        for &i in ids {
            y.extend_from_slice(&t[i * d..(i + 1) * d]);
        }
        Ok(out(y, &[ids.len(), d], table))
    })
}

/// Gradient of [`embedding`] with respect to the table (rows picked twice add up).
pub fn embedding_backward(table_shape: &[usize], ids: &[usize], dy: &Tensor) -> Result<Tensor> {
    if table_shape.len() != 2
        || dy.shape() != [ids.len(), table_shape[1]]
        || ids.iter().any(|&i| i >= table_shape[0])
    {
        return Err(shape_err(
            "embedding_backward",
            format!("gradient {:?} for table {table_shape:?}", dy.shape()),
        ));
    }
    if on_cuda("embedding_backward", &[dy])? {
        return host!(&[dy], |h| embedding_backward(table_shape, ids, &h[0]));
    }
    let d = table_shape[1];
    with_real!(cdt(&[dy]), T, {
        let g = dy.cpu_data::<T>()?;
        let mut dt = vec![T::ZERO; table_shape[0] * d];
        for (r, &i) in ids.iter().enumerate() {
            for j in 0..d {
                dt[i * d + j] += g[r * d + j];
            }
        }
        Ok(Tensor::from_real(
            dt,
            table_shape.to_vec(),
            DType::F32.max_with(dy.dtype()),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Elementwise arithmetic and reductions

/// A broadcasting binary operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
}

/// `a op b` with numpy broadcasting.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let os = cpu::broadcast_shape(a.shape(), b.shape()).ok_or_else(|| {
        shape_err(
            "binary",
            format!("{:?} and {:?} do not broadcast", a.shape(), b.shape()),
        )
    })?;
    if on_cuda("binary", &[a, b])? {
        return crate::cuda::ops::binary(a, b, op, &os);
    }
    with_real!(cdt(&[a, b]), T, {
        let (ad, bd) = (a.cpu_data::<T>()?, b.cpu_data::<T>()?);
        let y = match op {
            BinaryOp::Add => {
                cpu::broadcast_binary(&ad, a.shape(), &bd, b.shape(), &os, |x, y| x + y)
            }
            BinaryOp::Sub => {
                cpu::broadcast_binary(&ad, a.shape(), &bd, b.shape(), &os, |x, y| x - y)
            }
            BinaryOp::Mul => {
                cpu::broadcast_binary(&ad, a.shape(), &bd, b.shape(), &os, |x, y| x * y)
            }
        };
        Ok(Tensor::from_real(y, os, a.dtype()))
    })
}

/// Sums `g` down to `shape` (the reverse of a broadcast).
pub fn sum_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        // Nothing to reduce (the gradient of an add of equal shapes): share the storage, no copy.
        return Ok(g.clone());
    }
    if cpu::broadcast_shape(shape, g.shape()).as_deref() != Some(g.shape()) {
        return Err(shape_err(
            "sum_to",
            format!("{:?} is not a broadcast of {shape:?}", g.shape()),
        ));
    }
    if on_cuda("sum_to", &[g])? {
        // Reducing leading axes only (bias gradients): column sums on the device.
        let k = g.rank() - shape.len();
        if g.shape()[k..] == *shape {
            let rows: usize = g.shape()[..k].iter().product();
            return crate::cuda::ops_more::col_sum(g, rows, shape.iter().product(), shape);
        }
        return host!(&[g], |h| sum_to(&h[0], shape));
    }
    with_real!(cdt(&[g]), T, {
        let r = cpu::sum_to_shape(&g.cpu_data::<T>()?, g.shape(), shape);
        Ok(out(r, shape, g))
    })
}

/// Gradients of [`binary`]: `(da, db)` reduced to the input shapes.
pub fn binary_backward(
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
    op: BinaryOp,
    need: [bool; 2],
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let da = if need[0] {
        let full = match op {
            BinaryOp::Add | BinaryOp::Sub => dy.clone(),
            BinaryOp::Mul => binary(dy, b, BinaryOp::Mul)?,
        };
        Some(sum_to(&full, a.shape())?.to_dtype(a.dtype())?)
    } else {
        None
    };
    let db = if need[1] {
        let full = match op {
            BinaryOp::Add => dy.clone(),
            BinaryOp::Sub => scale(dy, -1.0)?,
            BinaryOp::Mul => binary(dy, a, BinaryOp::Mul)?,
        };
        Some(sum_to(&full, b.shape())?.to_dtype(b.dtype())?)
    } else {
        None
    };
    Ok((da, db))
}

/// `x·s` for a scalar `s`.
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    if on_cuda("scale", &[x])? {
        return crate::cuda::ops::scale(x, s);
    }
    with_real!(cdt(&[x]), T, {
        let sv = T::from_f64(s);
        Ok(out(cpu::map(&x.cpu_data::<T>()?, |v| v * sv), x.shape(), x))
    })
}

/// `a + s·b` for equal shapes (gradient accumulation, optimizer updates).
pub fn axpy(a: &Tensor, b: &Tensor, s: f64) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(shape_err(
            "axpy",
            format!("{:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    if on_cuda("axpy", &[a, b])? {
        return crate::cuda::ops::axpby(a, b, 1.0, s as f32);
    }
    with_real!(cdt(&[a, b]), T, {
        let sv = T::from_f64(s);
        Ok(out(
            cpu::zip_map(&a.cpu_data::<T>()?, &b.cpu_data::<T>()?, |x, y| x + sv * y),
            a.shape(),
            a,
        ))
    })
}

/// Sum of all elements, as a 0-dimensional tensor (f32, or f64 for f64 input).
pub fn sum(x: &Tensor) -> Result<Tensor> {
    if on_cuda("sum", &[x])? {
        return crate::cuda::ops::sum(x);
    }
    with_real!(cdt(&[x]), T, {
        let s = cpu::sum(&x.cpu_data::<T>()?);
        Ok(Tensor::from_real(vec![s], vec![], T::DTYPE))
    })
}

/// Mean of all elements, as a 0-dimensional tensor.
pub fn mean(x: &Tensor) -> Result<Tensor> {
    let n = x.numel().max(1) as f64;
    scale(&sum(x)?, 1.0 / n)
}

/// Mean over the axes from `from_axis` on: `[d0, .., d(k-1), ...] → [d0, .., d(k-1)]`
/// (e.g. a per-sample loss with `from_axis = 1`).
pub fn mean_over(x: &Tensor, from_axis: usize) -> Result<Tensor> {
    let xs = x.shape();
    if from_axis > xs.len() {
        return Err(shape_err(
            "mean_over",
            format!("axis {from_axis} for shape {xs:?}"),
        ));
    }
    let inner: usize = xs[from_axis..].iter().product();
    if on_cuda("mean_over", &[x])? {
        return crate::cuda::ops_more::row_mean(
            x,
            xs[..from_axis].iter().product(),
            xs[from_axis..].iter().product(),
            &xs[..from_axis],
        );
    }
    with_real!(cdt(&[x]), T, {
        let d = x.cpu_data::<T>()?;
        let inv = 1.0 / inner.max(1) as f64;
        let r: Vec<T> = if inner == 0 {
            vec![T::ZERO; xs[..from_axis].iter().product()]
        } else {
            d.chunks(inner)
                .map(|c| T::from_f64(c.iter().map(|v| v.to_f64()).sum::<f64>() * inv))
                .collect()
        };
        Ok(Tensor::from_real(r, xs[..from_axis].to_vec(), T::DTYPE))
    })
}

/// Gradient of [`mean_over`]: `dy [d0..dk-1]` spread evenly over the reduced axes of `x_shape`.
pub fn mean_over_backward(dy: &Tensor, x_shape: &[usize], from_axis: usize) -> Result<Tensor> {
    if from_axis > x_shape.len() || dy.shape() != &x_shape[..from_axis] {
        return Err(shape_err(
            "mean_over_backward",
            format!("gradient {:?} for {x_shape:?}", dy.shape()),
        ));
    }
    let inner: usize = x_shape[from_axis..].iter().product();
    if on_cuda("mean_over_backward", &[dy])? {
        return host!(&[dy], |h| mean_over_backward(&h[0], x_shape, from_axis));
    }
    with_real!(cdt(&[dy]), T, {
        let g = dy.cpu_data::<T>()?;
        let inv = T::from_f64(1.0 / inner.max(1) as f64);
        let mut r = Vec::with_capacity(g.len() * inner);
        for &v in g.iter() {
            r.extend(std::iter::repeat_n(v * inv, inner));
        }
        Ok(Tensor::from_real(r, x_shape.to_vec(), dy.dtype()))
    })
}

/// Mean squared error `mean((a − b)²)`, computed in f32 (f64 for f64 inputs) as sd-scripts does.
pub fn mse_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(shape_err(
            "mse_loss",
            format!("prediction {:?} vs target {:?}", a.shape(), b.shape()),
        ));
    }
    if on_cuda("mse_loss", &[a, b])? {
        return crate::cuda::ops::mse_loss(a, b);
    }
    with_real!(cdt(&[a, b]), T, {
        let (ad, bd) = (a.cpu_data::<T>()?, b.cpu_data::<T>()?);
        let sq = cpu::zip_map(&ad, &bd, |x, y| (x - y) * (x - y));
        let m = cpu::sum(&sq).to_f64() / a.numel().max(1) as f64;
        Ok(Tensor::from_real(vec![T::from_f64(m)], vec![], T::DTYPE))
    })
}

/// Gradients of [`mse_loss`] given the upstream scalar gradient `dl`: `(da, db)`.
pub fn mse_loss_backward(a: &Tensor, b: &Tensor, dl: f64) -> Result<(Tensor, Tensor)> {
    if on_cuda("mse_loss_backward", &[a, b])? {
        let k = (2.0 * dl / a.numel().max(1) as f64) as f32;
        let da = crate::cuda::ops::axpby(a, b, k, -k)?;
        let db = crate::cuda::ops::scale(&da, -1.0)?.to_dtype(b.dtype())?;
        return Ok((da, db));
    }
    with_real!(cdt(&[a, b]), T, {
        let k = T::from_f64(2.0 * dl / a.numel().max(1) as f64);
        let da = cpu::zip_map(&a.cpu_data::<T>()?, &b.cpu_data::<T>()?, |x, y| k * (x - y));
        let db = cpu::map(&da, |v| -v);
        Ok((out(da, a.shape(), a), out(db, b.shape(), b)))
    })
}

/// An inverted-dropout mask: each element is `1/(1−p)` with probability `1−p`, else 0 (as `F.dropout`).
pub fn dropout_mask<R: Rng + ?Sized>(
    shape: &[usize],
    p: f64,
    dtype: DType,
    rng: &mut R,
) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        return Err(arg_err(
            "dropout probability",
            format!("{p} is not in [0, 1)"),
        ));
    }
    let n: usize = shape.iter().product();
    let keep = 1.0 / (1.0 - p);
    let v: Vec<f64> = (0..n)
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect();
    Ok(Tensor::from_real(v, shape.to_vec(), dtype))
}
