//! Operations on CUDA tensors: kernel launches for the ops of [`crate::ops`].
//!
//! Non-GEMM kernels compute in f32: bf16/f16 inputs are widened by the cast kernels and results are
//! narrowed back to the activation dtype (mixed precision keeps 16-bit storage, f32 math). GEMMs on two
//! bf16 (or two f16) operands use the tensor-core kernel. The data-movement ops, GEGLU, trailing-axis
//! reductions and the convolution backward are in [`super::ops_more`]. Ops without a kernel (embedding
//! and its backward, `mean_over`'s backward, `sum_to` other than over leading axes, permutes of more
//! than 6 axes, f64 casts) run on the host and upload the result; none is on the training hot path.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{driver_err, CudaBackend, CudaStorage};
use crate::cpu;
use crate::dtype::DType;
use crate::error::{shape_err, Error, Result};
use crate::ops::{self, Activation, BinaryOp, Conv2dCfg, NormStats};
use crate::tensor::{Storage, Tensor};
use crate::Device;

pub(super) fn storage(t: &Tensor) -> Result<&CudaStorage> {
    match &t.storage {
        Storage::Cuda(c) => Ok(c),
        _ => Err(Error::Device {
            op: "cuda".into(),
            msg: "expected a CUDA tensor".into(),
        }),
    }
}

pub(super) fn cfg1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn cfg_rows(rows: usize, per_block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(per_block).max(1) as u32, 1, 1),
        block_dim: ((per_block * 32) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Widens a device tensor to f32 storage (a cast kernel for bf16/f16; shared storage for f32).
pub(super) fn f32_of(t: &Tensor) -> Result<CudaStorage> {
    let c = storage(t)?;
    if c.dtype == DType::F32 {
        return Ok(c.clone());
    }
    cast(c, DType::F32)
}

/// Device cast through the kernels (f64 goes through the host).
pub(crate) fn cast(c: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    let b = CudaBackend::get(c.ordinal)?;
    let n = c.len;
    let kernel = match (c.dtype, dtype) {
        (a, b2) if a == b2 => return Ok(c.clone()),
        (DType::F32, DType::BF16) => "f32_to_bf16",
        (DType::F32, DType::F16) => "f32_to_f16",
        (DType::BF16, DType::F32) => "bf16_to_f32",
        (DType::F16, DType::F32) => "f16_to_f32",
        (DType::BF16 | DType::F16, DType::BF16 | DType::F16) => {
            let mid = cast(c, DType::F32)?;
            return cast(&mid, dtype);
        }
        _ => return super::cast_via_host(c, dtype),
    };
    let f = b.function("elementwise.cu", kernel)?;
    let mut out = b.alloc(n, dtype)?;
    let nn = n as i64;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(c.buf.as_ref()).arg(&mut out).arg(&nn);
    // SAFETY: input and output hold n elements of the kernel's types.
    unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err(kernel, e))?;
    Ok(b.wrap(c.ordinal, dtype, n, out))
}

pub(super) fn finish(
    b: &CudaBackend,
    ordinal: usize,
    out: CudaSlice<u8>,
    n: usize,
    shape: &[usize],
    dtype: DType,
) -> Result<Tensor> {
    let s = b.wrap(ordinal, DType::F32, n, out);
    let s = if dtype == DType::F32 {
        s
    } else {
        cast(&s, dtype)?
    };
    Ok(Tensor::from_storage(shape.to_vec(), Storage::Cuda(s)))
}

pub(super) fn ctx(t: &Tensor) -> Result<(Arc<CudaBackend>, usize)> {
    let c = storage(t)?;
    Ok((CudaBackend::get(c.ordinal)?, c.ordinal))
}

/// Runs an op on host copies and uploads the results (ops without a kernel).
fn via_host<F>(ordinal: usize, ts: &[&Tensor], f: F) -> Result<Vec<Tensor>>
where
    F: FnOnce(&[Tensor]) -> Result<Vec<Tensor>>,
{
    let host: Vec<Tensor> = ts
        .iter()
        .map(|t| t.to_device(&Device::Cpu))
        .collect::<Result<_>>()?;
    f(&host)?
        .into_iter()
        .map(|t| t.to_device(&Device::Cuda(ordinal)))
        .collect()
}

/// Host fallback for a single-output op.
pub(crate) fn host1<F>(ts: &[&Tensor], f: F) -> Result<Tensor>
where
    F: FnOnce(&[Tensor]) -> Result<Tensor>,
{
    let (_, o) = ctx(ts[0])?;
    Ok(via_host(o, ts, |h| Ok(vec![f(h)?]))?.remove(0))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm_launch(
    b: &CudaBackend,
    a: &CudaSlice<u8>,
    bm: &CudaSlice<u8>,
    c: &mut CudaSlice<u8>,
    dims: (usize, usize, usize),
    ld: (usize, usize, usize),
    strides: (usize, usize, usize),
    trans: (bool, bool),
    batch: usize,
    alpha: f32,
    beta: f32,
    kernel: &str,
) -> Result<()> {
    let file = if kernel == "sgemm" {
        "sgemm.cu"
    } else {
        "hgemm.cu"
    };
    let f = b.function(file, kernel)?;
    let (m, n, k) = (dims.0 as i32, dims.1 as i32, dims.2 as i32);
    let (lda, ldb, ldc) = (ld.0 as i32, ld.1 as i32, ld.2 as i32);
    let (sa, sb, sc) = (strides.0 as i64, strides.1 as i64, strides.2 as i64);
    let (ta, tb) = (trans.0 as i32, trans.1 as i32);
    let threads = if kernel == "sgemm" { 256 } else { 128 };
    let cfg = LaunchConfig {
        grid_dim: (
            dims.1.div_ceil(64) as u32,
            dims.0.div_ceil(64) as u32,
            batch as u32,
        ),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(a)
        .arg(bm)
        .arg(c)
        .arg(&m)
        .arg(&n)
        .arg(&k)
        .arg(&lda)
        .arg(&ldb)
        .arg(&ldc)
        .arg(&sa)
        .arg(&sb)
        .arg(&sc)
        .arg(&ta)
        .arg(&tb)
        .arg(&alpha)
        .arg(&beta);
    // SAFETY: dims/strides were validated by ops::matmul against the buffer lengths.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err(kernel, e))?;
    Ok(())
}

/// Batched matmul on the device (see [`crate::ops::matmul`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    b_shared: bool,
    os: &[usize],
) -> Result<Tensor> {
    let (be, o) = ctx(a)?;
    let half = a.dtype() == b.dtype() && a.dtype().is_half();
    let (sa, sb) = if half {
        (storage(a)?.clone(), storage(b)?.clone())
    } else {
        (f32_of(a)?, f32_of(b)?)
    };
    let dt = if half { a.dtype() } else { DType::F32 };
    let mut out = be.alloc(batch * m * n, dt)?;
    let kernel = match (half, a.dtype()) {
        (true, DType::BF16) => "hgemm_bf16",
        (true, _) => "hgemm_f16",
        _ => "sgemm",
    };
    let ld = (if ta { m } else { k }, if tb { k } else { n }, n);
    sgemm_launch(
        &be,
        &sa.buf,
        &sb.buf,
        &mut out,
        (m, n, k),
        ld,
        (m * k, if b_shared { 0 } else { k * n }, m * n),
        (ta, tb),
        batch,
        1.0,
        0.0,
        kernel,
    )?;
    let s = be.wrap(o, dt, batch * m * n, out);
    let s = if dt == a.dtype() {
        s
    } else {
        cast(&s, a.dtype())?
    };
    Ok(Tensor::from_storage(os.to_vec(), Storage::Cuda(s)))
}

fn unary(kernel: &str, file: &'static str, x: &Tensor, extra: i32) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let xs = f32_of(x)?;
    let n = x.numel();
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function(file, kernel)?;
    let nn = n as i64;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref()).arg(&mut out).arg(&nn).arg(&extra);
    // SAFETY: n elements in and out.
    unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err(kernel, e))?;
    finish(&b, o, out, n, x.shape(), x.dtype())
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::QuickGelu => 2,
    }
}

/// Activation forward.
pub(crate) fn activation(x: &Tensor, a: Activation) -> Result<Tensor> {
    unary("act_fwd", "elementwise.cu", x, act_code(a))
}

/// Activation backward.
pub(crate) fn activation_backward(x: &Tensor, dy: &Tensor, a: Activation) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let (xs, gs) = (f32_of(x)?, f32_of(dy)?);
    let n = x.numel();
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function("elementwise.cu", "act_bwd")?;
    let (nn, op) = (n as i64, act_code(a));
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(gs.buf.as_ref())
        .arg(&mut out)
        .arg(&nn)
        .arg(&op);
    // SAFETY: n elements each.
    unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err("act_bwd", e))?;
    finish(&b, o, out, n, x.shape(), x.dtype())
}

/// Broadcast shape description for `binary_bcast` (matches `struct Bcast` in elementwise.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct Bcast {
    nd: i32,
    shape: [i64; 6],
    sa: [i64; 6],
    sb: [i64; 6],
}
// SAFETY: repr(C) plain data matching the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for Bcast {}

/// Binary op with broadcasting.
pub(crate) fn binary(a: &Tensor, bt: &Tensor, op: BinaryOp, os: &[usize]) -> Result<Tensor> {
    let (b, o) = ctx(a)?;
    let (sa, sb) = (f32_of(a)?, f32_of(bt)?);
    let n: usize = os.iter().product();
    let code: i32 = match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
    };
    let mut out = b.alloc(n, DType::F32)?;
    let nn = n as i64;
    if a.shape() == bt.shape() {
        let f = b.function("elementwise.cu", "binary_same")?;
        let mut lb = b.stream().launch_builder(&f);
        lb.arg(sa.buf.as_ref())
            .arg(sb.buf.as_ref())
            .arg(&mut out)
            .arg(&nn)
            .arg(&code);
        // SAFETY: n elements each.
        unsafe { lb.launch(cfg1d(n.div_ceil(4))) }.map_err(|e| driver_err("binary_same", e))?;
    } else {
        if os.len() > 6 {
            return host1(&[a, bt], |h| ops::binary(&h[0], &h[1], op));
        }
        let stra = cpu::broadcast_strides(a.shape(), os);
        let strb = cpu::broadcast_strides(bt.shape(), os);
        let mut bc = Bcast {
            nd: os.len() as i32,
            shape: [1; 6],
            sa: [0; 6],
            sb: [0; 6],
        };
        for i in 0..os.len() {
            bc.shape[i] = os[i] as i64;
            bc.sa[i] = stra[i] as i64;
            bc.sb[i] = strb[i] as i64;
        }
        let f = b.function("elementwise.cu", "binary_bcast")?;
        let mut lb = b.stream().launch_builder(&f);
        lb.arg(sa.buf.as_ref())
            .arg(sb.buf.as_ref())
            .arg(&mut out)
            .arg(&nn)
            .arg(&code)
            .arg(&bc);
        // SAFETY: strides index within the inputs (computed from their shapes).
        unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err("binary_bcast", e))?;
    }
    finish(&b, o, out, n, os, a.dtype())
}

/// `alpha·x + beta·y` (same shapes).
pub(crate) fn axpby(x: &Tensor, y: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let (sx, sy) = (f32_of(x)?, f32_of(y)?);
    let n = x.numel();
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function("elementwise.cu", "axpby")?;
    let nn = n as i64;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(sx.buf.as_ref())
        .arg(sy.buf.as_ref())
        .arg(&mut out)
        .arg(&nn)
        .arg(&alpha)
        .arg(&beta);
    // SAFETY: n elements each.
    unsafe { lb.launch(cfg1d(n.div_ceil(4))) }.map_err(|e| driver_err("axpby", e))?;
    finish(&b, o, out, n, x.shape(), x.dtype())
}

fn reduce_to_scalar(kernel: &str, x: &CudaStorage, b: &CudaBackend, o: usize) -> Result<Tensor> {
    let mut out = b.alloc(1, DType::F32)?;
    let f = b.function("reduce.cu", kernel)?;
    let nn = x.len as i64;
    let blocks = x.len.div_ceil(256).clamp(1, 1024) as u32;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(x.buf.as_ref()).arg(&mut out).arg(&nn);
    // SAFETY: out holds one zeroed f32 (alloc zeroes), x holds len elements.
    unsafe {
        lb.launch(LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .map_err(|e| driver_err(kernel, e))?;
    Ok(Tensor::from_storage(
        vec![],
        Storage::Cuda(b.wrap(o, DType::F32, 1, out)),
    ))
}

/// Sum of all elements (an f32 scalar on the device).
pub(crate) fn sum(x: &Tensor) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    reduce_to_scalar("sum_f32", &f32_of(x)?, &b, o)
}

/// Mean squared error.
pub(crate) fn mse_loss(a: &Tensor, t: &Tensor) -> Result<Tensor> {
    let (b, o) = ctx(a)?;
    let d = axpby(
        &a.to_dtype(DType::F32)?,
        &t.to_dtype(DType::F32)?,
        1.0,
        -1.0,
    )?;
    let s = reduce_to_scalar("sumsq_f32", storage(&d)?, &b, o)?;
    scale(&s, 1.0 / a.numel().max(1) as f64)
}

/// `x·s`.
pub(crate) fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    axpby(x, x, s as f32, 0.0)
}

/// Softmax over the last axis.
pub(crate) fn softmax(x: &Tensor) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let d = x.shape()[x.rank() - 1];
    let rows = x.numel() / d;
    let xs = f32_of(x)?;
    let mut out = b.alloc(x.numel(), DType::F32)?;
    let f = b.function("softmax.cu", "softmax_fwd")?;
    let (r, dd, z) = (rows as i64, d as i32, 0i32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(&mut out)
        .arg(&r)
        .arg(&dd)
        .arg(&z)
        .arg(&z);
    // SAFETY: rows·d elements.
    unsafe { lb.launch(cfg_rows(rows, 8)) }.map_err(|e| driver_err("softmax_fwd", e))?;
    finish(&b, o, out, x.numel(), x.shape(), x.dtype())
}

/// Softmax backward.
pub(crate) fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let (b, o) = ctx(y)?;
    let d = y.shape()[y.rank() - 1];
    let rows = y.numel() / d;
    let (ys, gs) = (f32_of(y)?, f32_of(dy)?);
    let mut out = b.alloc(y.numel(), DType::F32)?;
    let f = b.function("softmax.cu", "softmax_bwd")?;
    let (r, dd) = (rows as i64, d as i32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(ys.buf.as_ref())
        .arg(gs.buf.as_ref())
        .arg(&mut out)
        .arg(&r)
        .arg(&dd);
    // SAFETY: rows·d elements.
    unsafe { lb.launch(cfg_rows(rows, 8)) }.map_err(|e| driver_err("softmax_bwd", e))?;
    finish(&b, o, out, y.numel(), y.shape(), y.dtype())
}

/// Attention forward and backward through the flash kernels (head width ≤ 256); wider heads fall back
/// to the host.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    g: &cpu::AttnGeom,
) -> Result<(Tensor, Tensor)> {
    let (b, o) = ctx(q)?;
    if g.d > 256 || g.dv > 256 {
        return Err(shape_err(
            "attention (CUDA)",
            format!("head width {} / {} above 256", g.d, g.dv),
        ));
    }
    let (qs, ks, vs) = (f32_of(q)?, f32_of(k)?, f32_of(v)?);
    let mut out = b.alloc(g.bh * g.lq * g.dv, DType::F32)?;
    let mut lse = b.alloc(g.bh * g.lq, DType::F32)?;
    let f = b.function("attention.cu", "attn_fwd")?;
    let (lq, lk, d, dv, sc, ca) = (
        g.lq as i32,
        g.lk as i32,
        g.d as i32,
        g.dv as i32,
        g.scale as f32,
        g.causal as i32,
    );
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(qs.buf.as_ref())
        .arg(ks.buf.as_ref())
        .arg(vs.buf.as_ref())
        .arg(&mut out)
        .arg(&mut lse)
        .arg(&lq)
        .arg(&lk)
        .arg(&d)
        .arg(&dv)
        .arg(&sc)
        .arg(&ca);
    let cfg = LaunchConfig {
        grid_dim: (g.lq.div_ceil(4) as u32, g.bh as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: shapes validated by ops::attention.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("attn_fwd", e))?;
    let mut os = q.shape().to_vec();
    *os.last_mut().unwrap_or(&mut 0) = g.dv;
    let ot = finish(&b, o, out, g.bh * g.lq * g.dv, &os, q.dtype())?;
    let lt = Tensor::from_storage(
        vec![g.bh * g.lq],
        Storage::Cuda(b.wrap(o, DType::F32, g.bh * g.lq, lse)),
    );
    Ok((ot, lt))
}

/// Attention backward (recomputes the forward for its log-sum-exp, as flash attention does).
pub(crate) fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    d_o: &Tensor,
    g: &cpu::AttnGeom,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, o) = ctx(q)?;
    let (out, lse) = attention(q, k, v, g)?;
    let (os, dos) = (f32_of(&out)?, f32_of(d_o)?);
    let rows = g.bh * g.lq;
    let mut delta = b.alloc(rows, DType::F32)?;
    let f = b.function("attention.cu", "attn_bwd_dot")?;
    let (r, dv) = (rows as i64, g.dv as i32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(os.buf.as_ref())
        .arg(dos.buf.as_ref())
        .arg(&mut delta)
        .arg(&r)
        .arg(&dv);
    // SAFETY: rows·dv elements.
    unsafe { lb.launch(cfg_rows(rows, 8)) }.map_err(|e| driver_err("attn_bwd_dot", e))?;
    let (qs, ks, vs) = (f32_of(q)?, f32_of(k)?, f32_of(v)?);
    let mut dq = b.alloc(q.numel(), DType::F32)?;
    let mut dk = b.alloc(k.numel(), DType::F32)?;
    let mut dvv = b.alloc(v.numel(), DType::F32)?;
    let f = b.function("attention.cu", "attn_bwd")?;
    let (lq, lk, d, dvi, sc, ca) = (
        g.lq as i32,
        g.lk as i32,
        g.d as i32,
        g.dv as i32,
        g.scale as f32,
        g.causal as i32,
    );
    let ls = storage(&lse)?;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(qs.buf.as_ref())
        .arg(ks.buf.as_ref())
        .arg(vs.buf.as_ref())
        .arg(dos.buf.as_ref())
        .arg(ls.buf.as_ref())
        .arg(&delta)
        .arg(&mut dq)
        .arg(&mut dk)
        .arg(&mut dvv)
        .arg(&lq)
        .arg(&lk)
        .arg(&d)
        .arg(&dvi)
        .arg(&sc)
        .arg(&ca);
    let cfg = LaunchConfig {
        grid_dim: (g.lq.div_ceil(4) as u32, g.bh as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: dk/dv are zeroed by alloc; shapes validated by ops::attention_backward.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("attn_bwd", e))?;
    Ok((
        finish(&b, o, dq, q.numel(), q.shape(), q.dtype())?,
        finish(&b, o, dk, k.numel(), k.shape(), k.dtype())?,
        finish(&b, o, dvv, v.numel(), v.shape(), v.dtype())?,
    ))
}

/// Layer norm forward.
pub(crate) fn layer_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    let (b, o) = ctx(x)?;
    let d = x.shape()[x.rank() - 1];
    let rows = x.numel() / d.max(1);
    let (xs, gs, bs) = (f32_of(x)?, f32_of(gamma)?, f32_of(beta)?);
    let mut y = b.alloc(x.numel(), DType::F32)?;
    let mut mean = b.alloc(rows, DType::F32)?;
    let mut rstd = b.alloc(rows, DType::F32)?;
    let f = b.function("norm.cu", "layer_norm_fwd")?;
    let (r, dd, e) = (rows as i64, d as i32, eps as f32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(&mut y)
        .arg(gs.buf.as_ref())
        .arg(bs.buf.as_ref())
        .arg(&mut mean)
        .arg(&mut rstd)
        .arg(&r)
        .arg(&dd)
        .arg(&e);
    // SAFETY: rows·d elements; gamma/beta have d.
    unsafe { lb.launch(cfg_rows(rows, 8)) }.map_err(|e| driver_err("layer_norm_fwd", e))?;
    let st = |s| Tensor::from_storage(vec![rows], Storage::Cuda(b.wrap(o, DType::F32, rows, s)));
    Ok((
        finish(&b, o, y, x.numel(), x.shape(), x.dtype())?,
        NormStats {
            mean: st(mean),
            rstd: st(rstd),
        },
    ))
}

/// Layer norm backward.
pub(crate) fn layer_norm_backward(
    x: &Tensor,
    gamma: &Tensor,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, o) = ctx(x)?;
    let d = x.shape()[x.rank() - 1];
    let rows = x.numel() / d.max(1);
    let (xs, gs, ys) = (f32_of(x)?, f32_of(gamma)?, f32_of(dy)?);
    let (ms, rs) = (f32_of(&stats.mean)?, f32_of(&stats.rstd)?);
    let mut dx = b.alloc(x.numel(), DType::F32)?;
    let f = b.function("norm.cu", "layer_norm_bwd_dx")?;
    let (r, dd) = (rows as i64, d as i32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(ys.buf.as_ref())
        .arg(gs.buf.as_ref())
        .arg(ms.buf.as_ref())
        .arg(rs.buf.as_ref())
        .arg(&mut dx)
        .arg(&r)
        .arg(&dd);
    // SAFETY: as in the forward.
    unsafe { lb.launch(cfg_rows(rows, 8)) }.map_err(|e| driver_err("layer_norm_bwd_dx", e))?;
    let mut dg = b.alloc(d, DType::F32)?;
    let mut db = b.alloc(d, DType::F32)?;
    let f = b.function("norm.cu", "layer_norm_bwd_param")?;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(ys.buf.as_ref())
        .arg(ms.buf.as_ref())
        .arg(rs.buf.as_ref())
        .arg(&mut dg)
        .arg(&mut db)
        .arg(&r)
        .arg(&dd);
    // SAFETY: d columns.
    unsafe { lb.launch(cfg1d(d)) }.map_err(|e| driver_err("layer_norm_bwd_param", e))?;
    Ok((
        finish(&b, o, dx, x.numel(), x.shape(), x.dtype())?,
        finish(&b, o, dg, d, &[d], gamma.dtype())?,
        finish(&b, o, db, d, &[d], gamma.dtype())?,
    ))
}

/// Group norm forward.
pub(crate) fn group_norm(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, NormStats)> {
    let (b, o) = ctx(x)?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let s: usize = x.shape()[2..].iter().product();
    let (xs, gs, bs) = (f32_of(x)?, f32_of(gamma)?, f32_of(beta)?);
    let mut y = b.alloc(x.numel(), DType::F32)?;
    let mut mean = b.alloc(n * groups, DType::F32)?;
    let mut rstd = b.alloc(n * groups, DType::F32)?;
    let f = b.function("norm.cu", "group_norm_fwd")?;
    let (ci, si, gi, e) = (c as i32, s as i64, groups as i32, eps as f32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(&mut y)
        .arg(gs.buf.as_ref())
        .arg(bs.buf.as_ref())
        .arg(&mut mean)
        .arg(&mut rstd)
        .arg(&ci)
        .arg(&si)
        .arg(&gi)
        .arg(&e);
    let cfg = LaunchConfig {
        grid_dim: ((n * groups) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: shapes validated by ops::group_norm.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("group_norm_fwd", e))?;
    let st = |v| {
        Tensor::from_storage(
            vec![n * groups],
            Storage::Cuda(b.wrap(o, DType::F32, n * groups, v)),
        )
    };
    Ok((
        finish(&b, o, y, x.numel(), x.shape(), x.dtype())?,
        NormStats {
            mean: st(mean),
            rstd: st(rstd),
        },
    ))
}

/// Group norm backward.
pub(crate) fn group_norm_backward(
    x: &Tensor,
    groups: usize,
    gamma: &Tensor,
    stats: &NormStats,
    dy: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, o) = ctx(x)?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let s: usize = x.shape()[2..].iter().product();
    let (xs, gs, ys) = (f32_of(x)?, f32_of(gamma)?, f32_of(dy)?);
    let (ms, rs) = (f32_of(&stats.mean)?, f32_of(&stats.rstd)?);
    let mut dx = b.alloc(x.numel(), DType::F32)?;
    let f = b.function("norm.cu", "group_norm_bwd_dx")?;
    let (ci, si, gi, ni) = (c as i32, s as i64, groups as i32, n as i32);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(ys.buf.as_ref())
        .arg(gs.buf.as_ref())
        .arg(ms.buf.as_ref())
        .arg(rs.buf.as_ref())
        .arg(&mut dx)
        .arg(&ci)
        .arg(&si)
        .arg(&gi);
    let cfg = LaunchConfig {
        grid_dim: ((n * groups) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: as in the forward.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("group_norm_bwd_dx", e))?;
    let mut dg = b.alloc(c, DType::F32)?;
    let mut db = b.alloc(c, DType::F32)?;
    let f = b.function("norm.cu", "group_norm_bwd_param")?;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(ys.buf.as_ref())
        .arg(ms.buf.as_ref())
        .arg(rs.buf.as_ref())
        .arg(&mut dg)
        .arg(&mut db)
        .arg(&ni)
        .arg(&ci)
        .arg(&si)
        .arg(&gi);
    let cfg = LaunchConfig {
        grid_dim: (c as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: one block per channel.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("group_norm_bwd_param", e))?;
    Ok((
        finish(&b, o, dx, x.numel(), x.shape(), x.dtype())?,
        finish(&b, o, dg, c, &[c], gamma.dtype())?,
        finish(&b, o, db, c, &[c], gamma.dtype())?,
    ))
}

/// Convolution forward: im2col + GEMM per sample (1×1 stride-1 convs skip the unfold).
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    g: &cpu::ConvGeom,
) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let (xs, ws) = (f32_of(x)?, f32_of(w)?);
    let hw = g.ho() * g.wo();
    let ckk = g.ckk();
    let chw = g.c * g.h * g.w;
    let mut y = b.alloc(g.n * g.o * hw, DType::F32)?;
    let mut col = b.alloc(if g.is_pointwise() { 1 } else { ckk * hw }, DType::F32)?;
    for i in 0..g.n {
        let xi = xs.buf.slice(i * chw * 4..(i + 1) * chw * 4);
        if g.is_pointwise() {
            // The sample is the GEMM operand itself; copy it into `col` (sgemm takes whole slices).
            let mut tmp = b.alloc(chw, DType::F32)?;
            b.stream()
                .memcpy_dtod(&xi, &mut tmp)
                .map_err(|e| driver_err("conv2d copy", e))?;
            col = tmp;
        } else {
            let f = b.function("conv.cu", "im2col_f32")?;
            let a: [i32; 9] = [
                g.c as i32,
                g.h as i32,
                g.w as i32,
                g.kh as i32,
                g.kw as i32,
                g.stride as i32,
                g.pad as i32,
                g.ho() as i32,
                g.wo() as i32,
            ];
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(&xi).arg(&mut col);
            for v in a.iter() {
                lb.arg(v);
            }
            // SAFETY: col holds ckk·hw floats.
            unsafe { lb.launch(cfg1d(ckk * hw)) }.map_err(|e| driver_err("im2col_f32", e))?;
        }
        let src = &col;
        let mut yi = b.alloc(g.o * hw, DType::F32)?;
        sgemm_launch(
            &b,
            &ws.buf,
            src,
            &mut yi,
            (g.o, hw, ckk),
            (ckk, hw, hw),
            (0, 0, 0),
            (false, false),
            1,
            1.0,
            0.0,
            "sgemm",
        )?;
        let mut dst = y.slice_mut(i * g.o * hw * 4..(i + 1) * g.o * hw * 4);
        b.stream()
            .memcpy_dtod(&yi, &mut dst)
            .map_err(|e| driver_err("conv2d copy", e))?;
    }
    if let Some(bias) = bias {
        let bs = f32_of(bias)?;
        let f = b.function("conv.cu", "add_channel_bias")?;
        let (nn, oo, hwi) = ((g.n * g.o * hw) as i64, g.o as i32, hw as i64);
        let mut lb = b.stream().launch_builder(&f);
        lb.arg(&mut y)
            .arg(bs.buf.as_ref())
            .arg(&nn)
            .arg(&oo)
            .arg(&hwi);
        // SAFETY: n·o·hw outputs, o biases.
        unsafe { lb.launch(cfg1d(g.n * g.o * hw)) }
            .map_err(|e| driver_err("add_channel_bias", e))?;
    }
    finish(
        &b,
        o,
        y,
        g.n * g.o * hw,
        &[g.n, g.o, g.ho(), g.wo()],
        x.dtype(),
    )
}

/// Convolution backward through the host reference (kept for comparison; `ops_more::conv2d_backward`
/// is the device path).
#[allow(dead_code)]
pub(crate) fn conv2d_backward_host(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    cfg: Conv2dCfg,
    need: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (_, o) = ctx(x)?;
    let host: Vec<Tensor> = [x, w, dy]
        .iter()
        .map(|t| t.to_device(&Device::Cpu))
        .collect::<Result<_>>()?;
    let (a, bb, c) = ops::conv2d_backward(&host[0], &host[1], &host[2], cfg, need)?;
    let up = |t: Option<Tensor>| t.map(|t| t.to_device(&Device::Cuda(o))).transpose();
    Ok((up(a)?, up(bb)?, up(c)?))
}

/// Fused AdamW on the device: f32 master weights and moments stay on the device between steps.
pub(crate) fn adamw(
    value: &Tensor,
    grad: &Tensor,
    opt: &mut crate::optim::AdamW,
    id: crate::autograd::ParamId,
    lr: f64,
) -> Result<Tensor> {
    let (b, o) = ctx(value)?;
    let cfg = opt.config();
    let n = value.numel();
    let p = f32_of(value)?;
    let g = f32_of(&grad.to_device(&Device::Cuda(o))?)?;
    let mut pnew = b.alloc(n, DType::F32)?;
    b.stream()
        .memcpy_dtod(p.buf.as_ref(), &mut pnew)
        .map_err(|e| driver_err("adamw copy", e))?;
    let (m_host, v_host, step) = opt.state_for_device(id, n);
    let mut m = b
        .stream()
        .clone_htod(&m_host[..])
        .map_err(|e| driver_err("adamw upload", e))?;
    let mut v = b
        .stream()
        .clone_htod(&v_host[..])
        .map_err(|e| driver_err("adamw upload", e))?;
    let t = step as f64;
    let step_size = (lr / (1.0 - cfg.beta1.powf(t))) as f32;
    let bc2_sqrt = (1.0 - cfg.beta2.powf(t)).sqrt() as f32;
    let f = b.function("elementwise.cu", "adamw_f32")?;
    let (nn, lrf, b1, b2, eps, wd) = (
        n as i64,
        lr as f32,
        cfg.beta1 as f32,
        cfg.beta2 as f32,
        cfg.eps as f32,
        cfg.weight_decay as f32,
    );
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(&mut pnew)
        .arg(g.buf.as_ref())
        .arg(&mut m)
        .arg(&mut v)
        .arg(&nn)
        .arg(&lrf)
        .arg(&b1)
        .arg(&b2)
        .arg(&eps)
        .arg(&wd)
        .arg(&step_size)
        .arg(&bc2_sqrt);
    // SAFETY: all four buffers hold n floats.
    unsafe { lb.launch(cfg1d(n.div_ceil(4))) }.map_err(|e| driver_err("adamw_f32", e))?;
    // The moments are mirrored on the host so that state survives device changes and can be saved.
    let mh = b
        .stream()
        .clone_dtoh(&m)
        .map_err(|e| driver_err("adamw download", e))?;
    let vh = b
        .stream()
        .clone_dtoh(&v)
        .map_err(|e| driver_err("adamw download", e))?;
    m_host.copy_from_slice(&mh);
    v_host.copy_from_slice(&vh);
    finish(&b, o, pnew, n, value.shape(), value.dtype())
}
