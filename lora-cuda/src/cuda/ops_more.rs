//! Device paths for the data-movement ops, GEGLU, trailing-axis reductions and the convolution backward.

use cudarc::driver::PushKernelArg;

use super::driver_err;
use super::ops::{cfg1d, cfg_rows, ctx, f32_of, finish, sgemm_launch};
use crate::cpu::ConvGeom;
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;

/// Nearest 2× upsampling of NCHW.
pub(crate) fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let s = x.shape();
    let (planes, h, w) = ((s[0] * s[1]) as i64, s[2] as i32, s[3] as i32);
    let n = x.numel() * 4;
    let xs = f32_of(x)?;
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function("layout.cu", "upsample2x_fwd")?;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(&mut out)
        .arg(&planes)
        .arg(&h)
        .arg(&w);
    // SAFETY: out holds 4× the input.
    unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err("upsample2x_fwd", e))?;
    finish(&b, o, out, n, &[s[0], s[1], 2 * s[2], 2 * s[3]], x.dtype())
}

/// Backward of the 2× upsampling.
pub(crate) fn upsample2x_backward(dy: &Tensor, x_shape: &[usize]) -> Result<Tensor> {
    let (b, o) = ctx(dy)?;
    let (planes, h, w) = (
        (x_shape[0] * x_shape[1]) as i64,
        x_shape[2] as i32,
        x_shape[3] as i32,
    );
    let n: usize = x_shape.iter().product();
    let gs = f32_of(dy)?;
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function("layout.cu", "upsample2x_bwd")?;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(gs.buf.as_ref())
        .arg(&mut out)
        .arg(&planes)
        .arg(&h)
        .arg(&w);
    // SAFETY: out holds the input's element count.
    unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err("upsample2x_bwd", e))?;
    finish(&b, o, out, n, x_shape, dy.dtype())
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Perm {
    nd: i32,
    out_shape: [i64; 6],
    in_stride: [i64; 6],
}
// SAFETY: repr(C) plain data matching `struct Perm` in layout.cu.
unsafe impl cudarc::driver::DeviceRepr for Perm {}

/// Axis permutation (up to 6 axes; callers fall back to the host beyond).
pub(crate) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let xs = x.shape();
    let nd = xs.len();
    let mut strides = vec![1usize; nd];
    for i in (0..nd.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * xs[i + 1];
    }
    let mut p = Perm {
        nd: nd as i32,
        out_shape: [1; 6],
        in_stride: [0; 6],
    };
    for (i, &ax) in perm.iter().enumerate() {
        p.out_shape[i] = xs[ax] as i64;
        p.in_stride[i] = strides[ax] as i64;
    }
    let n = x.numel();
    let src = f32_of(x)?;
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function("layout.cu", "permute_f32")?;
    let nn = n as i64;
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(src.buf.as_ref()).arg(&mut out).arg(&nn).arg(&p);
    // SAFETY: the permutation was validated by ops::permute.
    unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err("permute_f32", e))?;
    let os: Vec<usize> = perm.iter().map(|&a| xs[a]).collect();
    finish(&b, o, out, n, &os, x.dtype())
}

/// Concatenation along `axis` with one block copy per input.
pub(crate) fn concat(ts: &[&Tensor], axis: usize) -> Result<Tensor> {
    let (b, o) = ctx(ts[0])?;
    let s0 = ts[0].shape();
    let outer: usize = s0[..axis].iter().product();
    let inner: usize = s0[axis + 1..].iter().product();
    let total: usize = ts.iter().map(|t| t.shape()[axis]).sum();
    let n = outer * total * inner;
    let mut out = b.alloc(n, DType::F32)?;
    let f = b.function("layout.cu", "copy_block")?;
    let mut off = 0usize;
    for t in ts {
        let src = f32_of(t)?;
        let isrc = (t.shape()[axis] * inner) as i64;
        let (ou, idst, of, to) = (outer as i64, (total * inner) as i64, off as i64, 1i32);
        let mut lb = b.stream().launch_builder(&f);
        lb.arg(&mut out)
            .arg(src.buf.as_ref())
            .arg(&ou)
            .arg(&isrc)
            .arg(&idst)
            .arg(&of)
            .arg(&to);
        // SAFETY: the destination rows hold total·inner values; the source outer·isrc.
        unsafe { lb.launch(cfg1d(outer * isrc as usize)) }
            .map_err(|e| driver_err("copy_block", e))?;
        off += isrc as usize;
    }
    let mut os = s0.to_vec();
    os[axis] = total;
    finish(&b, o, out, n, &os, ts[0].dtype())
}

/// Split along `axis` (the inverse block copies).
pub(crate) fn split(x: &Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let (b, o) = ctx(x)?;
    let xs = x.shape();
    let outer: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis + 1..].iter().product();
    let src = f32_of(x)?;
    let f = b.function("layout.cu", "copy_block")?;
    let mut off = 0usize;
    let mut parts = Vec::with_capacity(sizes.len());
    for &s in sizes {
        let n = outer * s * inner;
        let mut part = b.alloc(n, DType::F32)?;
        let (ou, ipart, idst, of, to) = (
            outer as i64,
            (s * inner) as i64,
            (xs[axis] * inner) as i64,
            off as i64,
            0i32,
        );
        {
            let mut lb = b.stream().launch_builder(&f);
            // copy_block(dst = the whole tensor, src = the part, ..., to_dst = 0) copies dst → src.
            lb.arg(src.buf.as_ref())
                .arg(&mut part)
                .arg(&ou)
                .arg(&ipart)
                .arg(&idst)
                .arg(&of)
                .arg(&to);
            // SAFETY: sizes were validated by ops::split.
            unsafe { lb.launch(cfg1d(n)) }.map_err(|e| driver_err("copy_block", e))?;
        }
        let mut os = xs.to_vec();
        os[axis] = s;
        parts.push(finish(&b, o, part, n, &os, x.dtype())?);
        off += s * inner;
    }
    Ok(parts)
}

/// GEGLU forward.
pub(crate) fn geglu(x: &Tensor, rows: usize, d: usize, os: &[usize]) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let xs = f32_of(x)?;
    let mut out = b.alloc(rows * d, DType::F32)?;
    let f = b.function("elementwise.cu", "geglu_fwd")?;
    let (r, dd) = (rows as i64, d as i64);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref()).arg(&mut out).arg(&r).arg(&dd);
    // SAFETY: x holds rows·2d values, out rows·d.
    unsafe { lb.launch(cfg1d(rows * d)) }.map_err(|e| driver_err("geglu_fwd", e))?;
    finish(&b, o, out, rows * d, os, x.dtype())
}

/// GEGLU backward.
pub(crate) fn geglu_backward(x: &Tensor, dy: &Tensor, rows: usize, d: usize) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let (xs, gs) = (f32_of(x)?, f32_of(dy)?);
    let mut out = b.alloc(rows * 2 * d, DType::F32)?;
    let f = b.function("elementwise.cu", "geglu_bwd")?;
    let (r, dd) = (rows as i64, d as i64);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref())
        .arg(gs.buf.as_ref())
        .arg(&mut out)
        .arg(&r)
        .arg(&dd);
    // SAFETY: as in the forward.
    unsafe { lb.launch(cfg1d(rows * d)) }.map_err(|e| driver_err("geglu_bwd", e))?;
    finish(&b, o, out, rows * 2 * d, x.shape(), x.dtype())
}

/// Column sums of `g` viewed as `[rows, cols]` (bias gradients; `sum_to` over leading axes).
pub(crate) fn col_sum(g: &Tensor, rows: usize, cols: usize, shape: &[usize]) -> Result<Tensor> {
    let (b, o) = ctx(g)?;
    let gs = f32_of(g)?;
    let mut out = b.alloc(cols, DType::F32)?;
    let f = b.function("reduce.cu", "col_sum")?;
    let (r, c) = (rows as i64, cols as i64);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(gs.buf.as_ref()).arg(&mut out).arg(&r).arg(&c);
    // SAFETY: g holds rows·cols values.
    unsafe { lb.launch(cfg1d(cols)) }.map_err(|e| driver_err("col_sum", e))?;
    finish(&b, o, out, cols, shape, g.dtype())
}

/// Means of `x` viewed as `[rows, inner]` (per-sample losses), as f32.
pub(crate) fn row_mean(x: &Tensor, rows: usize, inner: usize, shape: &[usize]) -> Result<Tensor> {
    let (b, o) = ctx(x)?;
    let xs = f32_of(x)?;
    let mut out = b.alloc(rows, DType::F32)?;
    let f = b.function("reduce.cu", "row_mean")?;
    let (r, i) = (rows as i64, inner as i64);
    let mut lb = b.stream().launch_builder(&f);
    lb.arg(xs.buf.as_ref()).arg(&mut out).arg(&r).arg(&i);
    // SAFETY: x holds rows·inner values.
    unsafe { lb.launch(cfg_rows(rows, 8)) }.map_err(|e| driver_err("row_mean", e))?;
    finish(&b, o, out, rows, shape, DType::F32)
}

/// Convolution backward on the device: per sample, `dW += dY·colᵀ` (sgemm, β = 1), `dcol = Wᵀ·dY`
/// (sgemm) folded by col2im, and `db` from row means and column sums.
pub(crate) fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &ConvGeom,
    need: [bool; 3],
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (b, o) = ctx(x)?;
    let (xs, ws, gs) = (f32_of(x)?, f32_of(w)?, f32_of(dy)?);
    let hw = g.ho() * g.wo();
    let ckk = g.ckk();
    let chw = g.c * g.h * g.w;
    let geo: [i32; 9] = [
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
    let mut dw = if need[1] {
        Some(b.alloc(g.o * ckk, DType::F32)?)
    } else {
        None
    };
    let mut dx = if need[0] {
        Some(b.alloc(g.n * chw, DType::F32)?)
    } else {
        None
    };
    let mut col = b.alloc(ckk * hw, DType::F32)?;
    let mut dyi = b.alloc(g.o * hw, DType::F32)?;
    for i in 0..g.n {
        let gview = gs.buf.slice(i * g.o * hw * 4..(i + 1) * g.o * hw * 4);
        b.stream()
            .memcpy_dtod(&gview, &mut dyi)
            .map_err(|e| driver_err("conv2d_backward copy", e))?;
        if let Some(dw) = dw.as_mut() {
            let xi = xs.buf.slice(i * chw * 4..(i + 1) * chw * 4);
            if g.is_pointwise() {
                b.stream()
                    .memcpy_dtod(&xi, &mut col)
                    .map_err(|e| driver_err("conv2d_backward copy", e))?;
            } else {
                let f = b.function("conv.cu", "im2col_f32")?;
                let mut lb = b.stream().launch_builder(&f);
                lb.arg(&xi).arg(&mut col);
                for v in geo.iter() {
                    lb.arg(v);
                }
                // SAFETY: col holds ckk·hw floats.
                unsafe { lb.launch(cfg1d(ckk * hw)) }.map_err(|e| driver_err("im2col_f32", e))?;
            }
            // dW [o, ckk] += dY_i [o, hw] · colᵀ [hw, ckk]
            let beta = if i == 0 { 0.0 } else { 1.0 };
            sgemm_launch(
                &b,
                &dyi,
                &col,
                dw,
                (g.o, ckk, hw),
                (hw, hw, ckk),
                (0, 0, 0),
                (false, true),
                1,
                1.0,
                beta,
                "sgemm",
            )?;
        }
        if let Some(dx) = dx.as_mut() {
            // dcol [ckk, hw] = Wᵀ [ckk, o] · dY_i [o, hw]
            sgemm_launch(
                &b,
                &ws.buf,
                &dyi,
                &mut col,
                (ckk, hw, g.o),
                (ckk, hw, hw),
                (0, 0, 0),
                (true, false),
                1,
                1.0,
                0.0,
                "sgemm",
            )?;
            let mut dxi = dx.slice_mut(i * chw * 4..(i + 1) * chw * 4);
            if g.is_pointwise() {
                b.stream()
                    .memcpy_dtod(&col, &mut dxi)
                    .map_err(|e| driver_err("conv2d_backward copy", e))?;
            } else {
                let f = b.function("conv.cu", "col2im_f32")?;
                let mut lb = b.stream().launch_builder(&f);
                lb.arg(&col).arg(&mut dxi);
                for v in geo.iter() {
                    lb.arg(v);
                }
                // SAFETY: dxi is one image of chw floats.
                unsafe { lb.launch(cfg1d(chw)) }.map_err(|e| driver_err("col2im_f32", e))?;
            }
        }
    }
    let db = if need[2] {
        let per = row_mean(dy, g.n * g.o, hw, &[g.n * g.o])?;
        let sums = super::ops::scale(&per, hw as f64)?;
        Some(col_sum(&sums, g.n, g.o, &[g.o])?.to_dtype(DType::F32)?)
    } else {
        None
    };
    Ok((
        dx.map(|d| finish(&b, o, d, g.n * chw, x.shape(), x.dtype()))
            .transpose()?,
        dw.map(|d| finish(&b, o, d, g.o * ckk, w.shape(), w.dtype()))
            .transpose()?,
        db,
    ))
}
