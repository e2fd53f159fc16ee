//! A small tape-based autograd over the explicit forward/backward pairs of [`crate::ops`].
//!
//! A [`Graph`] records every operation applied to its [`Var`]s (handles into the tape). Each record holds
//! the output value and a closure that calls the op's explicit backward function. [`Graph::backward`]
//! walks the tape in reverse and returns the gradients of the *trainable* parameters only: frozen
//! parameters and plain inputs get no gradient (their gradient is never even computed unless an earlier
//! trainable value needs it), and no optimizer state is ever made for them.
//!
//! Parameters live in a [`ParamStore`] (name, value, trainable flag) so that the model is written once:
//! build a fresh `Graph` per step, bring parameters in with [`Graph::param`], run the forward ops, call
//! `backward`, and hand the [`Grads`] to the optimizer.

use std::collections::BTreeMap;

use rand::Rng;

use crate::dtype::DType;
use crate::error::{shape_err, Error, Result};
use crate::ops::{self, Activation, BinaryOp, Conv2dCfg};
use crate::tensor::Tensor;

/// A value on a [`Graph`]'s tape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// A parameter in a [`ParamStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(usize);

impl ParamId {
    /// The index in its store (parameters are numbered in the order they were added).
    pub fn index(self) -> usize {
        self.0
    }
}

/// One parameter: a name (e.g. `lora_unet_..._to_q.lora_down.weight`), its value and whether it trains.
#[derive(Debug, Clone)]
pub struct Param {
    /// The parameter's name.
    pub name: String,
    /// The current value.
    pub value: Tensor,
    /// Trainable parameters get gradients and optimizer state; frozen ones never do.
    pub trainable: bool,
}

/// The parameters of a model: frozen base weights and trainable (LoRA) weights.
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: std::collections::HashMap<String, ParamId>,
    id: StoreId,
}

/// A process-unique number per store (clones share it): gradients are keyed by [`ParamId`], an index within one
/// store, so a graph must not take trainable parameters from two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StoreId(u64);

impl Default for StoreId {
    fn default() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        StoreId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Adds a parameter; errors if the name is taken.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        value: Tensor,
        trainable: bool,
    ) -> Result<ParamId> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::InvalidArgument {
                what: format!("parameter {name}"),
                msg: "name already used".into(),
            });
        }
        let id = ParamId(self.params.len());
        self.by_name.insert(name.clone(), id);
        self.params.push(Param {
            name,
            value,
            trainable,
        });
        Ok(id)
    }

    /// The parameter with this name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    /// A parameter by id.
    pub fn get(&self, id: ParamId) -> Result<&Param> {
        self.params
            .get(id.0)
            .ok_or_else(|| Error::UnknownHandle(format!("parameter #{}", id.0)))
    }

    /// The value of a parameter.
    pub fn value(&self, id: ParamId) -> Result<&Tensor> {
        Ok(&self.get(id)?.value)
    }

    /// Replaces a parameter's value (same shape required).
    pub fn set_value(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let p = self
            .params
            .get_mut(id.0)
            .ok_or_else(|| Error::UnknownHandle(format!("parameter #{}", id.0)))?;
        if p.value.shape() != value.shape() {
            return Err(shape_err(
                "ParamStore::set_value",
                format!(
                    "parameter {}: {:?} replaced by {:?}",
                    p.name,
                    p.value.shape(),
                    value.shape()
                ),
            ));
        }
        p.value = value;
        Ok(())
    }

    /// Marks a parameter trainable or frozen.
    pub fn set_trainable(&mut self, id: ParamId, trainable: bool) -> Result<()> {
        let p = self
            .params
            .get_mut(id.0)
            .ok_or_else(|| Error::UnknownHandle(format!("parameter #{}", id.0)))?;
        p.trainable = trainable;
        Ok(())
    }

    /// All parameter ids in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.params.len()).map(ParamId)
    }

    /// The trainable parameter ids.
    pub fn trainable_ids(&self) -> Vec<ParamId> {
        self.ids().filter(|&i| self.params[i.0].trainable).collect()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Moves every parameter to a device (e.g. after loading on the CPU).
    pub fn to_device(&mut self, device: &crate::Device) -> Result<()> {
        for p in &mut self.params {
            p.value = p.value.to_device(device)?;
        }
        Ok(())
    }

    /// The device of the parameters (the first one's; the CPU for an empty store). [`ParamStore::to_device`]
    /// keeps them together.
    pub fn device(&self) -> crate::Device {
        self.params
            .first()
            .map(|p| p.value.device())
            .unwrap_or_default()
    }
}

/// Gradients of trainable parameters, from [`Graph::backward`].
#[derive(Debug, Clone, Default)]
pub struct Grads {
    map: BTreeMap<ParamId, Tensor>,
}

impl Grads {
    /// The gradient of a parameter, if it got one.
    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.map.get(&id)
    }

    /// Sets or replaces a gradient (for gradient accumulation over micro-batches).
    pub fn insert(&mut self, id: ParamId, g: Tensor) {
        self.map.insert(id, g);
    }

    /// Adds another set of gradients to this one.
    pub fn accumulate(&mut self, other: &Grads) -> Result<()> {
        for (id, g) in &other.map {
            let v = match self.map.get(id) {
                Some(mine) => ops::axpy(mine, g, 1.0)?,
                None => g.clone(),
            };
            self.map.insert(*id, v);
        }
        Ok(())
    }

    /// (parameter, gradient) pairs in parameter order.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Tensor)> {
        self.map.iter().map(|(k, v)| (*k, v))
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no parameter got a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Multiplies every gradient by `s`.
    pub fn scale(&mut self, s: f64) -> Result<()> {
        for g in self.map.values_mut() {
            *g = ops::scale(g, s)?;
        }
        Ok(())
    }
}

type BackwardFn = Box<dyn Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

struct Node {
    value: Tensor,
    inputs: Vec<Var>,
    backward: Option<BackwardFn>,
    requires_grad: bool,
    param: Option<ParamId>,
}

/// The tape: values and the backward closures that connect them.
pub struct Graph {
    nodes: Vec<Node>,
    grad_enabled: bool,
    /// The one store whose trainable parameters this graph differentiates.
    trainable_store: Option<StoreId>,
}

impl Default for Graph {
    fn default() -> Self {
        Graph::new()
    }
}

impl Graph {
    /// A graph that records backward functions (for training).
    pub fn new() -> Graph {
        Graph {
            nodes: Vec::new(),
            grad_enabled: true,
            trainable_store: None,
        }
    }

    /// A graph that records no backward functions (inference: less memory, no `backward`).
    pub fn inference() -> Graph {
        Graph {
            nodes: Vec::new(),
            grad_enabled: false,
            trainable_store: None,
        }
    }

    /// Number of values on the tape.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn node(&self, v: Var) -> Result<&Node> {
        self.nodes
            .get(v.0)
            .ok_or_else(|| Error::UnknownHandle(format!("variable #{} not on this graph", v.0)))
    }

    /// The value of a variable.
    pub fn value(&self, v: Var) -> Result<&Tensor> {
        Ok(&self.node(v)?.value)
    }

    /// The shape of a variable.
    pub fn shape(&self, v: Var) -> Result<Vec<usize>> {
        Ok(self.node(v)?.value.shape().to_vec())
    }

    /// True if gradients flow back through this variable.
    pub fn requires_grad(&self, v: Var) -> Result<bool> {
        Ok(self.node(v)?.requires_grad)
    }

    /// A constant input (no gradient).
    pub fn input(&mut self, t: Tensor) -> Var {
        self.nodes.push(Node {
            value: t,
            inputs: vec![],
            backward: None,
            requires_grad: false,
            param: None,
        });
        Var(self.nodes.len() - 1)
    }

    /// Brings a parameter onto the tape; trainable parameters require gradients.
    pub fn param(&mut self, store: &ParamStore, id: ParamId) -> Result<Var> {
        let p = store.get(id)?;
        if self.grad_enabled && p.trainable {
            match self.trainable_store {
                None => self.trainable_store = Some(store.id),
                Some(s) if s != store.id => {
                    return Err(Error::InvalidArgument {
                        what: "Graph::param".into(),
                        msg: "trainable parameters from a second ParamStore in one graph (gradients are keyed by \
                              index within one store: freeze the other store)"
                            .into(),
                    })
                }
                Some(_) => {}
            }
        }
        self.nodes.push(Node {
            value: p.value.clone(),
            inputs: vec![],
            backward: None,
            requires_grad: self.grad_enabled && p.trainable,
            param: Some(id),
        });
        Ok(Var(self.nodes.len() - 1))
    }

    /// True when an op on these inputs will record its backward function (gradients are on and flow into
    /// one of them): an op can then keep what its backward pass needs.
    fn records(&self, inputs: &[Var]) -> bool {
        self.grad_enabled
            && inputs
                .iter()
                .any(|v| self.nodes.get(v.0).is_some_and(|n| n.requires_grad))
    }

    fn push(&mut self, value: Tensor, inputs: Vec<Var>, backward: BackwardFn) -> Var {
        let requires = self.records(&inputs);
        self.nodes.push(Node {
            value,
            inputs,
            backward: if requires { Some(backward) } else { None },
            requires_grad: requires,
            param: None,
        });
        Var(self.nodes.len() - 1)
    }

    fn vals<const N: usize>(&self, vs: [Var; N]) -> Result<[Tensor; N]> {
        let mut out: [Option<Tensor>; N] = std::array::from_fn(|_| None);
        for (o, v) in out.iter_mut().zip(vs) {
            *o = Some(self.value(v)?.clone());
        }
        Ok(out.map(|o| o.expect("filled above")))
    }

    /// Batched matrix product (see [`ops::matmul`]).
    pub fn matmul(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
        let [at, bt] = self.vals([a, b])?;
        let y = ops::matmul(&at, &bt, ta, tb)?;
        Ok(self.push(
            y,
            vec![a, b],
            Box::new(move |dy, need| {
                let (da, db) = ops::matmul_backward(&at, &bt, ta, tb, dy, need[0], need[1])?;
                Ok(vec![da, db])
            }),
        ))
    }

    /// `x·wᵀ + b` (see [`ops::linear`]).
    pub fn linear(&mut self, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
        let [xt, wt] = self.vals([x, w])?;
        let bt = b.map(|b| self.value(b).cloned()).transpose()?;
        let y = ops::linear(&xt, &wt, bt.as_ref())?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok(self.push(
            y,
            inputs,
            Box::new(move |dy, need| {
                let (dx, dw, db) = ops::linear_backward(
                    &xt,
                    &wt,
                    dy,
                    [need[0], need[1], need.get(2).copied().unwrap_or(false)],
                )?;
                Ok(vec![dx, dw, db])
            }),
        ))
    }

    /// A linear layer with a LoRA adapter in one op, `x·wᵀ + b + (s·(x·downᵀ))·upᵀ` (see
    /// [`ops::lora_linear`]).
    #[allow(clippy::too_many_arguments)]
    pub fn lora_linear(
        &mut self,
        x: Var,
        w: Var,
        b: Option<Var>,
        down: Var,
        up: Var,
        scale: f64,
    ) -> Result<Var> {
        let [xt, wt, dt, ut] = self.vals([x, w, down, up])?;
        let bt = b.map(|b| self.value(b).cloned()).transpose()?;
        let (y, lxs) = ops::lora_linear(&xt, &wt, bt.as_ref(), &dt, &ut, scale)?;
        let has_b = b.is_some();
        let mut inputs = vec![x, w, down, up];
        inputs.extend(b);
        Ok(self.push(
            y,
            inputs,
            Box::new(move |dy, need| {
                let need_b = has_b && need[4];
                let (dx, dw, db, dd, du) = ops::lora_linear_backward(
                    &xt,
                    &wt,
                    &dt,
                    &ut,
                    &lxs,
                    scale,
                    dy,
                    [need[0], need[1], need_b, need[2], need[3]],
                )?;
                let mut g = vec![dx, dw, dd, du];
                if has_b {
                    g.push(db);
                }
                Ok(g)
            }),
        ))
    }

    /// 2-D convolution (see [`ops::conv2d`]).
    pub fn conv2d(&mut self, x: Var, w: Var, b: Option<Var>, cfg: Conv2dCfg) -> Result<Var> {
        let [xt, wt] = self.vals([x, w])?;
        let bt = b.map(|b| self.value(b).cloned()).transpose()?;
        let y = ops::conv2d(&xt, &wt, bt.as_ref(), cfg)?;
        let mut inputs = vec![x, w];
        inputs.extend(b);
        Ok(self.push(
            y,
            inputs,
            Box::new(move |dy, need| {
                let (dx, dw, db) = ops::conv2d_backward(
                    &xt,
                    &wt,
                    dy,
                    cfg,
                    [need[0], need[1], need.get(2).copied().unwrap_or(false)],
                )?;
                Ok(vec![dx, dw, db])
            }),
        ))
    }

    /// Group norm with affine parameters (see [`ops::group_norm`]).
    pub fn group_norm(
        &mut self,
        x: Var,
        groups: usize,
        gamma: Var,
        beta: Var,
        eps: f64,
    ) -> Result<Var> {
        let [xt, gt, bt] = self.vals([x, gamma, beta])?;
        let (y, stats) = ops::group_norm(&xt, groups, Some(&gt), Some(&bt), eps)?;
        Ok(self.push(
            y,
            vec![x, gamma, beta],
            Box::new(move |dy, _| {
                let (dx, dg, db) = ops::group_norm_backward(&xt, groups, Some(&gt), &stats, dy)?;
                Ok(vec![Some(dx), Some(dg), Some(db)])
            }),
        ))
    }

    /// Group norm with affine parameters, then SiLU (the ResNet blocks' `norm → SiLU`). On the CPU one fused
    /// op that keeps only its input for the backward pass (see [`ops::group_norm_silu`]); on CUDA the two ops.
    pub fn group_norm_silu(
        &mut self,
        x: Var,
        groups: usize,
        gamma: Var,
        beta: Var,
        eps: f64,
    ) -> Result<Var> {
        let [xt, gt, bt] = self.vals([x, gamma, beta])?;
        if !xt.device().is_cpu() {
            let h = self.group_norm(x, groups, gamma, beta, eps)?;
            return self.silu(h);
        }
        let (y, stats) = ops::group_norm_silu(&xt, groups, Some(&gt), Some(&bt), eps)?;
        Ok(self.push(
            y,
            vec![x, gamma, beta],
            Box::new(move |dy, _| {
                let (dx, dg, db) =
                    ops::group_norm_silu_backward(&xt, groups, Some(&gt), Some(&bt), &stats, dy)?;
                Ok(vec![Some(dx), Some(dg), Some(db)])
            }),
        ))
    }

    /// Layer norm over the last axis with affine parameters (see [`ops::layer_norm`]).
    pub fn layer_norm(&mut self, x: Var, gamma: Var, beta: Var, eps: f64) -> Result<Var> {
        let [xt, gt, bt] = self.vals([x, gamma, beta])?;
        let (y, stats) = ops::layer_norm(&xt, Some(&gt), Some(&bt), eps)?;
        Ok(self.push(
            y,
            vec![x, gamma, beta],
            Box::new(move |dy, _| {
                let (dx, dg, db) = ops::layer_norm_backward(&xt, Some(&gt), &stats, dy)?;
                Ok(vec![Some(dx), Some(dg), Some(db)])
            }),
        ))
    }

    /// A pointwise activation.
    pub fn activation(&mut self, x: Var, a: Activation) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::activation(&xt, a)?;
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::activation_backward(&xt, dy, a)?)])),
        ))
    }

    /// SiLU.
    pub fn silu(&mut self, x: Var) -> Result<Var> {
        self.activation(x, Activation::Silu)
    }

    /// Exact GELU.
    pub fn gelu(&mut self, x: Var) -> Result<Var> {
        self.activation(x, Activation::Gelu)
    }

    /// CLIP's quick GELU.
    pub fn quick_gelu(&mut self, x: Var) -> Result<Var> {
        self.activation(x, Activation::QuickGelu)
    }

    /// GEGLU on the last axis (see [`ops::geglu`]).
    pub fn geglu(&mut self, x: Var) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::geglu(&xt)?;
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::geglu_backward(&xt, dy)?)])),
        ))
    }

    /// Softmax over the last axis.
    pub fn softmax(&mut self, x: Var) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::softmax(&xt)?;
        let yc = y.clone();
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::softmax_backward(&yc, dy)?)])),
        ))
    }

    /// Scaled dot-product attention (see [`ops::attention`]).
    pub fn attention(&mut self, q: Var, k: Var, v: Var, scale: f64, causal: bool) -> Result<Var> {
        let [qt, kt, vt] = self.vals([q, k, v])?;
        let y = ops::attention(&qt, &kt, &vt, scale, causal)?;
        Ok(self.push(
            y,
            vec![q, k, v],
            Box::new(move |dy, _| {
                let (dq, dk, dv) = ops::attention_backward(&qt, &kt, &vt, dy, scale, causal)?;
                Ok(vec![Some(dq), Some(dk), Some(dv)])
            }),
        ))
    }

    /// Multi-head attention on `[..., L, heads·d]` projections (see [`ops::attention_heads`]).
    pub fn attention_heads(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        heads: usize,
        scale: f64,
        causal: bool,
    ) -> Result<Var> {
        let [qt, kt, vt] = self.vals([q, k, v])?;
        // When a backward pass will run, keep the probabilities it needs (CPU) instead of recomputing them.
        let (y, probs) = if self.records(&[q, k, v]) {
            ops::attention_heads_keep(&qt, &kt, &vt, heads, scale, causal)?
        } else {
            (
                ops::attention_heads(&qt, &kt, &vt, heads, scale, causal)?,
                None,
            )
        };
        Ok(self.push(
            y,
            vec![q, k, v],
            Box::new(move |dy, _| {
                let (dq, dk, dv) = ops::attention_heads_backward(
                    &qt,
                    &kt,
                    &vt,
                    probs.as_ref(),
                    dy,
                    heads,
                    scale,
                    causal,
                )?;
                Ok(vec![Some(dq), Some(dk), Some(dv)])
            }),
        ))
    }

    /// Nearest 2× upsampling of NCHW.
    pub fn upsample_nearest2x(&mut self, x: Var) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::upsample_nearest2x(&xt)?;
        let xs = xt.shape().to_vec();
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::upsample_nearest2x_backward(dy, &xs)?)])),
        ))
    }

    /// Concatenation along an axis (channels: axis 1).
    pub fn concat(&mut self, xs: &[Var], axis: usize) -> Result<Var> {
        let ts: Vec<Tensor> = xs
            .iter()
            .map(|&v| self.value(v).cloned())
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = ts.iter().collect();
        let y = ops::concat(&refs, axis)?;
        let sizes: Vec<usize> = ts.iter().map(|t| t.shape()[axis]).collect();
        Ok(self.push(
            y,
            xs.to_vec(),
            Box::new(move |dy, _| {
                Ok(ops::split(dy, axis, &sizes)?
                    .into_iter()
                    .map(Some)
                    .collect())
            }),
        ))
    }

    /// Splits along an axis into parts of the given sizes.
    pub fn split(&mut self, x: Var, axis: usize, sizes: &[usize]) -> Result<Vec<Var>> {
        let [xt] = self.vals([x])?;
        let parts = ops::split(&xt, axis, sizes)?;
        let mut out = Vec::with_capacity(parts.len());
        for (i, p) in parts.into_iter().enumerate() {
            let sizes = sizes.to_vec();
            let like = xt.clone();
            out.push(self.push(
                p,
                vec![x],
                Box::new(move |dy, _| {
                    // Zeros for the other parts, dy for this one.
                    let mut pieces = Vec::with_capacity(sizes.len());
                    for (j, &s) in sizes.iter().enumerate() {
                        if j == i {
                            pieces.push(dy.clone());
                        } else {
                            let mut sh = like.shape().to_vec();
                            sh[axis] = s;
                            pieces.push(Tensor::zeros(&sh, dy.dtype()).to_device(&dy.device())?);
                        }
                    }
                    let refs: Vec<&Tensor> = pieces.iter().collect();
                    Ok(vec![Some(ops::concat(&refs, axis)?)])
                }),
            ));
        }
        Ok(out)
    }

    fn binary(&mut self, a: Var, b: Var, op: BinaryOp) -> Result<Var> {
        let [at, bt] = self.vals([a, b])?;
        let y = ops::binary(&at, &bt, op)?;
        Ok(self.push(
            y,
            vec![a, b],
            Box::new(move |dy, need| {
                let (da, db) = ops::binary_backward(&at, &bt, dy, op, [need[0], need[1]])?;
                Ok(vec![da, db])
            }),
        ))
    }

    /// `a + b` with broadcasting.
    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(a, b, BinaryOp::Add)
    }

    /// `a − b` with broadcasting.
    pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(a, b, BinaryOp::Sub)
    }

    /// `a · b` with broadcasting.
    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(a, b, BinaryOp::Mul)
    }

    /// `x · s` for a scalar `s` (may be negative, e.g. a signed LoRA multiplier).
    pub fn scale(&mut self, x: Var, s: f64) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::scale(&xt, s)?;
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::scale(dy, s)?)])),
        ))
    }

    /// Sum of all elements.
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::sum(&xt)?;
        let (shape, dt, dev) = (xt.shape().to_vec(), xt.dtype(), xt.device());
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| {
                let g = dy.scalar_value()?;
                Ok(vec![Some(Tensor::full(&shape, g, dt).to_device(&dev)?)])
            }),
        ))
    }

    /// Mean of all elements.
    pub fn mean(&mut self, x: Var) -> Result<Var> {
        let n = self.value(x)?.numel().max(1) as f64;
        let s = self.sum(x)?;
        self.scale(s, 1.0 / n)
    }

    /// Mean over axes `from_axis..` (see [`ops::mean_over`]).
    pub fn mean_over(&mut self, x: Var, from_axis: usize) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::mean_over(&xt, from_axis)?;
        let xs = xt.shape().to_vec();
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::mean_over_backward(dy, &xs, from_axis)?)])),
        ))
    }

    /// Mean squared error (a scalar).
    pub fn mse_loss(&mut self, pred: Var, target: Var) -> Result<Var> {
        let [pt, tt] = self.vals([pred, target])?;
        let y = ops::mse_loss(&pt, &tt)?;
        Ok(self.push(
            y,
            vec![pred, target],
            Box::new(move |dy, _| {
                let (da, db) = ops::mse_loss_backward(&pt, &tt, dy.scalar_value()?)?;
                Ok(vec![Some(da), Some(db)])
            }),
        ))
    }

    /// Same data, new shape.
    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = xt.reshape(shape)?;
        let xs = xt.shape().to_vec();
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(dy.reshape(&xs)?)])),
        ))
    }

    /// Permutes axes (see [`ops::permute`]).
    pub fn permute(&mut self, x: Var, perm: &[usize]) -> Result<Var> {
        let [xt] = self.vals([x])?;
        let y = ops::permute(&xt, perm)?;
        let inv = ops::inverse_permutation(perm);
        Ok(self.push(
            y,
            vec![x],
            Box::new(move |dy, _| Ok(vec![Some(ops::permute(dy, &inv)?)])),
        ))
    }

    /// Rows of an embedding table.
    pub fn embedding(&mut self, table: Var, ids: &[usize]) -> Result<Var> {
        let [tt] = self.vals([table])?;
        let y = ops::embedding(&tt, ids)?;
        let (ids, ts) = (ids.to_vec(), tt.shape().to_vec());
        Ok(self.push(
            y,
            vec![table],
            Box::new(move |dy, _| Ok(vec![Some(ops::embedding_backward(&ts, &ids, dy)?)])),
        ))
    }

    /// Inverted dropout with probability `p` (`F.dropout` in training mode); `p = 0` is the identity.
    pub fn dropout<R: Rng + ?Sized>(&mut self, x: Var, p: f64, rng: &mut R) -> Result<Var> {
        if p == 0.0 {
            return Ok(x);
        }
        let xt = self.value(x)?;
        let mask = ops::dropout_mask(xt.shape(), p, xt.dtype(), rng)?.to_device(&xt.device())?;
        let m = self.input(mask);
        self.mul(x, m)
    }

    /// Runs the tape backwards from a scalar `loss` and returns the gradients of the trainable parameters.
    /// A non-scalar `loss` is seeded with ones (the gradient of its sum). The tape is kept (see
    /// [`Graph::into_grads`] for the form that frees it as it goes).
    pub fn backward(&self, loss: Var) -> Result<Grads> {
        let mut state = BackwardState::seed(self.node(loss)?, loss)?;
        for i in (0..=loss.0).rev() {
            state.visit(i, &self.nodes[i], &self.nodes[..i])?;
        }
        Ok(state.out)
    }

    /// [`Graph::backward`] that consumes the graph, dropping each op's saved tensors and value as soon as its
    /// backward has run (torch's `backward()` without `retain_graph`): the memory of a training step peaks at
    /// the end of the forward pass instead of growing with the gradients while every activation is still
    /// held.
    pub fn into_grads(self, loss: Var) -> Result<Grads> {
        let mut state = BackwardState::seed(self.node(loss)?, loss)?;
        let mut nodes = self.nodes;
        nodes.truncate(loss.0 + 1);
        while let Some(node) = nodes.pop() {
            state.visit(nodes.len(), &node, &nodes)?;
        }
        Ok(state.out)
    }
}

/// The gradients flowing back through a tape, and the parameter gradients collected so far.
struct BackwardState {
    grads: Vec<Option<Tensor>>,
    out: Grads,
}

impl BackwardState {
    fn seed(loss_node: &Node, loss: Var) -> Result<Self> {
        let mut grads: Vec<Option<Tensor>> = vec![None; loss.0 + 1];
        let seed_dt = if loss_node.value.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        grads[loss.0] = Some(
            Tensor::ones(loss_node.value.shape(), seed_dt).to_device(&loss_node.value.device())?,
        );
        Ok(BackwardState {
            grads,
            out: Grads::default(),
        })
    }

    /// Node `i` (whose inputs are among `earlier`, the nodes before it): its parameter gradient, or its
    /// backward function's gradients added to its inputs'.
    fn visit(&mut self, i: usize, node: &Node, earlier: &[Node]) -> Result<()> {
        let Some(g) = self.grads[i].take() else {
            return Ok(());
        };
        if let Some(pid) = node.param {
            if node.requires_grad {
                let g = g.to_dtype(node.value.dtype())?;
                let v = match self.out.map.remove(&pid) {
                    Some(prev) => ops::axpy(&prev, &g, 1.0)?,
                    None => g,
                };
                self.out.map.insert(pid, v);
            }
            return Ok(());
        }
        let Some(bw) = &node.backward else {
            return Ok(());
        };
        let need: Vec<bool> = node
            .inputs
            .iter()
            .map(|v| earlier[v.0].requires_grad)
            .collect();
        let gs = bw(&g, &need)?;
        drop(g);
        for ((inp, gi), needed) in node.inputs.iter().zip(gs).zip(need) {
            let (Some(gi), true) = (gi, needed) else {
                continue;
            };
            let slot = &mut self.grads[inp.0];
            *slot = Some(match slot.take() {
                Some(prev) => ops::axpy(&prev, &gi, 1.0)?,
                None => gi,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_grads_equals_backward() {
        let mut store = ParamStore::new();
        let w = store
            .add(
                "w",
                Tensor::from_vec((0..12).map(|i| i as f32 * 0.1 - 0.5).collect(), &[4, 3]).unwrap(),
                true,
            )
            .unwrap();
        let b = store
            .add(
                "b",
                Tensor::from_vec(vec![0.1, -0.2, 0.3, 0.0], &[4]).unwrap(),
                false,
            )
            .unwrap();
        let build = || {
            let mut g = Graph::new();
            let x = g.input(
                Tensor::from_vec((0..6).map(|i| i as f32 - 2.5).collect(), &[2, 3]).unwrap(),
            );
            let (wv, bv) = (g.param(&store, w).unwrap(), g.param(&store, b).unwrap());
            let y = g.linear(x, wv, Some(bv)).unwrap();
            let y = g.silu(y).unwrap();
            let y2 = g.mul(y, y).unwrap();
            let l = g.sum(y2).unwrap();
            (g, l)
        };
        let (g1, l1) = build();
        let kept = g1.backward(l1).unwrap();
        let (g2, l2) = build();
        let freed = g2.into_grads(l2).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(freed.len(), 1);
        assert_eq!(
            kept.get(w).unwrap().to_vec_f32().unwrap(),
            freed.get(w).unwrap().to_vec_f32().unwrap()
        );
    }

    #[test]
    fn trainable_parameters_from_two_stores_are_refused() {
        let mut a = ParamStore::new();
        let mut b = ParamStore::new();
        let t = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let ia = a.add("w", t.clone(), true).unwrap();
        let ib = b.add("w", t.clone(), true).unwrap();
        let mut g = Graph::new();
        g.param(&a, ia).unwrap();
        assert!(g.param(&a, ia).is_ok(), "the same store again is fine");
        let e = g.param(&b, ib).unwrap_err().to_string();
        assert!(e.contains("second ParamStore"), "{e}");
        // A frozen parameter of another store is fine, and so is a second store in an inference graph.
        let mut c = ParamStore::new();
        let ic = c.add("w", t.clone(), false).unwrap();
        assert!(g.param(&c, ic).is_ok());
        let mut inf = Graph::inference();
        inf.param(&a, ia).unwrap();
        assert!(inf.param(&b, ib).is_ok());
    }
}
