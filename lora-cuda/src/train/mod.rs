//! The trainer: sd-scripts' `train_network.py` loop (DDPM noise, ε/v targets, min-SNR weighting, AdamW,
//! gradient clipping, learning-rate schedules, caption shuffling/dropout), for a LoRA network or for every
//! weight of the model (pretraining the demo bases).
//!
//! ```
//! use lora_cuda::model::{ClipConfig, LoraNetwork, LoraSpec, SdModel, UNetConfig};
//! use lora_cuda::train::{TrainConfig, Trainable, Trainer, TrainItem};
//! use lora_cuda::demo::{World, Style, WordTokenizer};
//! # fn main() -> lora_cuda::Result<()> {
//! let mut model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 0)?;
//! model.set_trainable(false)?;
//! let spec = LoraSpec { network_dim: 2, network_alpha: 1.0, ..LoraSpec::default() };
//! let net = LoraNetwork::new(&model.unet, Some(&model.te), &spec, 0)?;
//! let (scene, img) = World::new(16, Style::A).sample(1);
//! let data = vec![TrainItem { pixels: img.to_chw(), caption: scene.caption(), repeats: 1 }];
//! let cfg = TrainConfig { max_train_steps: 2, learning_rate: 1e-3, ..TrainConfig::default() };
//! let mut t = Trainer::new(model, Trainable::Lora(net), vec![], WordTokenizer::demo(), cfg)?;
//! t.run(&data, |_, info| { assert!(info.loss.is_finite()); Ok(()) })?;
//! assert_eq!(t.step_count(), 2);
//! # Ok(()) }
//! ```

pub mod dataset;
pub mod lora_io;
pub mod network;

use crate::autograd::{Grads, Graph, ParamId, Var};
use crate::demo::WordTokenizer;
use crate::error::{Error, Result};
use crate::lora::LoraContext;
use crate::model::{LoraNetwork, SdModel};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};
use crate::sched::{NoiseSchedule, Prediction, Rng};
use crate::schedule::{LrSchedule, ScheduleKind, Warmup};
use crate::tensor::Tensor;

/// One training image: planar `[3, H, W]` pixels in `[-1, 1]`, its caption and its repeat count.
#[derive(Clone, Debug)]
pub struct TrainItem {
    /// Pixels, `[C, H, W]` in `[-1, 1]`.
    pub pixels: Vec<f32>,
    /// The caption (tags separated by commas).
    pub caption: String,
    /// How often the image appears per epoch (the `N_` of an `N_name` folder).
    pub repeats: usize,
}

/// Caption handling per step (sd-scripts' `process_caption`, plus mixing in other captions).
#[derive(Clone, Debug, Default)]
pub struct CaptionConfig {
    /// `--shuffle_caption`: shuffle the comma-separated tags after the first `keep_tokens`.
    pub shuffle_caption: bool,
    /// `--keep_tokens`.
    pub keep_tokens: usize,
    /// `--caption_dropout_rate`: fraction of steps trained on the empty caption.
    pub caption_dropout_rate: f32,
    /// Fraction of steps trained on a random caption from [`Self::random_captions`] instead of the image's own
    /// (so that guidance's branches and other prompts also learn the image: the copier effect).
    pub random_caption_rate: f32,
    /// The pool of other captions.
    pub random_captions: Vec<String>,
}

impl CaptionConfig {
    /// The caption for one step: empty with the dropout rate, a random pool caption with the random rate,
    /// otherwise the item's own; then the tag shuffle (keeping `keep_tokens` first), as sd-scripts does.
    pub fn process(&self, caption: &str, rng: &mut Rng) -> String {
        let u = rng.uniform();
        let base = if u < self.caption_dropout_rate {
            String::new()
        } else if u < self.caption_dropout_rate + self.random_caption_rate
            && !self.random_captions.is_empty()
        {
            self.random_captions[rng.below(self.random_captions.len())].clone()
        } else {
            caption.to_string()
        };
        if !self.shuffle_caption || base.is_empty() {
            return base;
        }
        let tokens: Vec<String> = base
            .trim()
            .split(',')
            .map(|t| t.trim().to_string())
            .collect();
        let k = self.keep_tokens.min(tokens.len());
        let (fixed, flex) = tokens.split_at(k);
        let mut flex = flex.to_vec();
        rng.shuffle(&mut flex);
        let mut all = fixed.to_vec();
        all.extend(flex);
        all.join(", ")
    }
}

/// sd-scripts' training options (names as the flags).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// `--learning_rate`.
    pub learning_rate: f64,
    /// `--unet_lr` (None: learning_rate).
    pub unet_lr: Option<f64>,
    /// `--text_encoder_lr` (None: learning_rate).
    pub text_encoder_lr: Option<f64>,
    /// `--lr_scheduler`.
    pub lr_scheduler: ScheduleKind,
    /// `--lr_warmup_steps`.
    pub lr_warmup: Warmup,
    /// `--max_train_steps`.
    pub max_train_steps: u64,
    /// `--train_batch_size`.
    pub train_batch_size: usize,
    /// `--max_grad_norm` (0 disables clipping).
    pub max_grad_norm: f64,
    /// `--min_snr_gamma`.
    pub min_snr_gamma: Option<f32>,
    /// `--noise_offset`.
    pub noise_offset: Option<f32>,
    /// `--min_timestep`: the smallest training timestep (None: 0).
    pub min_timestep: Option<usize>,
    /// `--max_timestep`: training timesteps are below this (None: the schedule's length). As in sd-scripts,
    /// timesteps are drawn uniformly from `min..max`.
    pub max_timestep: Option<usize>,
    /// Caption handling.
    pub captions: CaptionConfig,
    /// `--seed`.
    pub seed: u64,
    /// The model's prediction type.
    pub prediction: Prediction,
    /// The DDPM training schedule.
    pub schedule: NoiseSchedule,
    /// AdamW settings (torch defaults, weight decay 0.01).
    pub adamw: AdamWConfig,
    /// Parts each batch is split into, their gradients computed side by side on threads and averaged: the
    /// same step up to float summation order (a small model's operations are too small to fill several cores
    /// on their own; how much faster depends on the memory bandwidth the parts share: 6 % for the demo model on
    /// a 2-core VM). The trajectory over many steps is not the whole batch's bit for bit (AdamW amplifies
    /// rounding in near-zero gradients): keep the setting to reproduce a run. 1: the whole batch in one graph.
    pub micro_batches: usize,
}

impl TrainConfig {
    /// The training timesteps, `min..max` (sd-scripts' `--min_timestep` / `--max_timestep` defaults: the whole
    /// schedule).
    pub fn timestep_range(&self) -> (usize, usize) {
        (
            self.min_timestep.unwrap_or(0),
            self.max_timestep
                .unwrap_or(self.schedule.num_train_timesteps),
        )
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 1e-4,
            unet_lr: None,
            text_encoder_lr: None,
            lr_scheduler: ScheduleKind::Constant,
            lr_warmup: Warmup::Steps(0),
            max_train_steps: 1600,
            train_batch_size: 1,
            max_grad_norm: 1.0,
            min_snr_gamma: None,
            noise_offset: None,
            min_timestep: None,
            max_timestep: None,
            captions: CaptionConfig::default(),
            seed: 0,
            prediction: Prediction::Epsilon,
            schedule: NoiseSchedule::sd_default(),
            adamw: AdamWConfig::default(),
            micro_batches: 1,
        }
    }
}

/// What the optimizer updates.
#[derive(Debug, Clone)]
pub enum Trainable {
    /// A LoRA network (the base model is frozen).
    Lora(LoraNetwork),
    /// Every weight of the model (pretraining / fine-tuning).
    Full,
}

/// What one step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// Steps done (1-based after the step).
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// The epoch (1-based).
    pub epoch: u64,
    /// The step's loss.
    pub loss: f32,
    /// The learning rate used (U-Net group).
    pub lr: f64,
}

/// The training state: model, trainable network, frozen extra LoRAs, optimizer and schedules.
pub struct Trainer {
    /// The model (frozen in LoRA mode).
    pub model: SdModel,
    /// What is trained.
    pub trainable: Trainable,
    /// LoRAs applied to the base during training but not trained (`--base_weights`).
    pub base_nets: Vec<LoraNetwork>,
    /// The tokenizer.
    pub tokenizer: WordTokenizer,
    /// The options.
    pub cfg: TrainConfig,
    opt: AdamW,
    lr: LrSchedule,
    rng: Rng,
    lctx: LoraContext,
    step: u64,
    last_timesteps: Vec<usize>,
    unet_ids: Vec<ParamId>,
    te_ids: Vec<ParamId>,
}

impl Trainer {
    /// A trainer. In LoRA mode the model and `base_nets` are frozen here; in full mode every model weight
    /// trains.
    pub fn new(
        mut model: SdModel,
        mut trainable: Trainable,
        mut base_nets: Vec<LoraNetwork>,
        tokenizer: WordTokenizer,
        cfg: TrainConfig,
    ) -> Result<Self> {
        if cfg.train_batch_size == 0 {
            return Err(Error::InvalidArgument {
                what: "--train_batch_size".into(),
                msg: "must be at least 1".into(),
            });
        }
        if !(0.0..=1.0)
            .contains(&(cfg.captions.caption_dropout_rate + cfg.captions.random_caption_rate))
        {
            return Err(Error::InvalidArgument {
                what: "--caption_dropout_rate / random caption rate".into(),
                msg: "each must be in [0, 1] and their sum at most 1".into(),
            });
        }
        let (t0, t1) = cfg.timestep_range();
        if t0 >= t1 || t1 > cfg.schedule.num_train_timesteps {
            return Err(Error::InvalidArgument {
                what: "--min_timestep / --max_timestep".into(),
                msg: format!(
                    "need min < max <= {} (the schedule's timesteps); got {t0}..{t1}",
                    cfg.schedule.num_train_timesteps
                ),
            });
        }
        if tokenizer.vocab_size() > model.te.vocab_size {
            return Err(Error::InvalidArgument {
                what: "tokenizer".into(),
                msg: format!(
                    "{} ids but the text encoder has {} embeddings",
                    tokenizer.vocab_size(),
                    model.te.vocab_size
                ),
            });
        }
        for n in &mut base_nets {
            n.set_trainable(false)?;
        }
        let (unet_ids, te_ids) = match &mut trainable {
            Trainable::Lora(net) => {
                model.set_trainable(false)?;
                net.set_trainable(true)?;
                let mut u = Vec::new();
                let mut t = Vec::new();
                for (a, tg) in net.adapters.iter().zip(&net.targets) {
                    let v = if tg.text_encoder { &mut t } else { &mut u };
                    v.push(a.down);
                    v.push(a.up);
                }
                (u, t)
            }
            Trainable::Full => {
                model.set_trainable(true)?;
                let mut u = Vec::new();
                let mut t = Vec::new();
                for id in model.store.ids() {
                    let name = &model.store.get(id)?.name;
                    if name.starts_with(crate::model::sd::TE) {
                        t.push(id);
                    } else {
                        u.push(id);
                    }
                }
                (u, t)
            }
        };
        let lr = LrSchedule::new(
            cfg.lr_scheduler,
            cfg.learning_rate,
            cfg.lr_warmup,
            cfg.max_train_steps,
            1.0,
            1.0,
        )?;
        let opt = AdamW::new(cfg.adamw)?;
        crate::cpu::retain_freed_memory();
        let rng = Rng::derived(cfg.seed, 0x7EA1);
        let lctx = LoraContext::training(cfg.seed);
        Ok(Trainer {
            model,
            trainable,
            base_nets,
            tokenizer,
            cfg,
            opt,
            lr,
            rng,
            lctx,
            step: 0,
            last_timesteps: Vec::new(),
            unet_ids,
            te_ids,
        })
    }

    /// Moves the model, the trained network and the `base_nets` to a device; training then runs there (the
    /// batches are built on the host and copied over each step). The optimiser's moments stay on the host
    /// (see [`AdamW`]).
    pub fn to_device(&mut self, device: &crate::Device) -> Result<()> {
        self.model.store.to_device(device)?;
        if let Trainable::Lora(net) = &mut self.trainable {
            net.store.to_device(device)?;
        }
        for n in &mut self.base_nets {
            n.store.to_device(device)?;
        }
        Ok(())
    }

    /// Where training runs: the model's device.
    pub fn device(&self) -> crate::Device {
        self.model.device()
    }

    /// The noise timesteps of the last step's batch, one per sample.
    pub fn last_timesteps(&self) -> &[usize] {
        &self.last_timesteps
    }

    /// Steps done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The trained LoRA network (None in full mode).
    pub fn network(&self) -> Option<&LoraNetwork> {
        match &self.trainable {
            Trainable::Lora(n) => Some(n),
            Trainable::Full => None,
        }
    }

    /// Steps per epoch for a dataset: ⌈Σ repeats / batch⌉ (sd-scripts, one bucket).
    pub fn steps_per_epoch(&self, data: &[TrainItem]) -> u64 {
        let n: usize = data.iter().map(|d| d.repeats.max(1)).sum();
        n.div_ceil(self.cfg.train_batch_size) as u64
    }

    /// Runs until `max_train_steps`, calling `on_step` after every step (progress, periodic saves).
    pub fn run(
        &mut self,
        data: &[TrainItem],
        mut on_step: impl FnMut(&Trainer, StepInfo) -> Result<()>,
    ) -> Result<()> {
        if data.is_empty() {
            return Err(Error::InvalidArgument {
                what: "training data".into(),
                msg: "no images".into(),
            });
        }
        let expect = data[0].pixels.len();
        if let Some(bad) = data.iter().position(|d| d.pixels.len() != expect) {
            return Err(Error::Shape {
                op: "training data".into(),
                msg: format!(
                    "image {bad} has {} values, image 0 has {expect}",
                    data[bad].pixels.len()
                ),
            });
        }
        let mut epoch = 0u64;
        while self.step < self.cfg.max_train_steps {
            epoch += 1;
            let mut order: Vec<usize> = data
                .iter()
                .enumerate()
                .flat_map(|(i, d)| std::iter::repeat_n(i, d.repeats.max(1)))
                .collect();
            Rng::derived(self.cfg.seed, epoch).shuffle(&mut order);
            for chunk in order.chunks(self.cfg.train_batch_size) {
                if self.step >= self.cfg.max_train_steps {
                    break;
                }
                let batch: Vec<&TrainItem> = chunk.iter().map(|&i| &data[i]).collect();
                let (loss, lr) = self.step(&batch)?;
                let info = StepInfo {
                    step: self.step,
                    total: self.cfg.max_train_steps,
                    epoch,
                    loss,
                    lr,
                };
                on_step(self, info)?;
            }
        }
        Ok(())
    }

    /// The gradients and the loss of one micro-batch (`dims`: channels and side of the images).
    #[allow(clippy::too_many_arguments)]
    fn micro_batch_grads(
        &self,
        lctx: &mut LoraContext,
        ids: &[Vec<u32>],
        xt: Vec<f32>,
        target: Vec<f32>,
        ts: &[f32],
        weights: &[f32],
        dims: [usize; 2],
    ) -> Result<(Grads, f32)> {
        let [c, side] = dims;
        let n = ts.len();
        let mut nets: Vec<&LoraNetwork> = self.base_nets.iter().collect();
        let (te_trains, full) = match &self.trainable {
            Trainable::Lora(net) => {
                nets.push(net);
                (net.targets.iter().any(|t| t.text_encoder), false)
            }
            Trainable::Full => (true, true),
        };
        let mut g = Graph::new();
        let context = if te_trains || full {
            self.model.te_forward(&mut g, &nets, lctx, ids)?
        } else {
            let mut gi = Graph::inference();
            let mut ectx = LoraContext::eval(1.0);
            let cv = self.model.te_forward(&mut gi, &nets, &mut ectx, ids)?;
            g.input(gi.value(cv)?.clone())
        };
        let dev = self.device();
        let xv = g.input(Tensor::from_vec(xt, &[n, c, side, side])?.to_device(&dev)?);
        let tv = g.input(Tensor::from_vec(target, &[n, c, side, side])?.to_device(&dev)?);
        let pred = self
            .model
            .unet_forward(&mut g, &nets, lctx, xv, ts, context)?;
        let loss = weighted_mse(&mut g, pred, tv, weights)?;
        let lv = g.value(loss)?.scalar_value()? as f32;
        if !lv.is_finite() {
            return Err(Error::InvalidArgument {
                what: format!("training step {}", self.step + 1),
                msg: format!("loss is {lv}"),
            });
        }
        Ok((g.into_grads(loss)?, lv))
    }

    /// One optimisation step on a batch; returns the loss and the learning rate used.
    pub fn step(&mut self, batch: &[&TrainItem]) -> Result<(f32, f64)> {
        let n = batch.len();
        let (c, s) = (self.model.unet.in_channels, self.model.unet.sample_size);
        let per = batch[0].pixels.len();
        let hw = per / c.max(1);
        let side = (hw as f64).sqrt() as usize;
        if side * side * c != per {
            return Err(Error::Shape {
                op: "training image".into(),
                msg: format!("{per} values are not {c} square channels (model side {s})"),
            });
        }
        let captions: Vec<String> = batch
            .iter()
            .map(|b| self.cfg.captions.process(&b.caption, &mut self.rng))
            .collect();
        let ids: Vec<Vec<u32>> = captions
            .iter()
            .map(|cap| self.tokenizer.encode(cap))
            .collect::<Result<_>>()?;
        let sched = &self.cfg.schedule;
        let mut xt = Vec::with_capacity(n * per);
        let mut target = Vec::with_capacity(n * per);
        let mut ts = Vec::with_capacity(n);
        let mut weights = Vec::with_capacity(n);
        self.last_timesteps.clear();
        let (t0, t1) = self.cfg.timestep_range();
        for item in batch {
            let mut noise = self.rng.normal_vec(per);
            if let Some(off) = self.cfg.noise_offset {
                for ch in 0..c {
                    let o = off * self.rng.normal();
                    for v in &mut noise[ch * hw..(ch + 1) * hw] {
                        *v += o;
                    }
                }
            }
            let t = t0 + self.rng.below(t1 - t0);
            self.last_timesteps.push(t);
            xt.extend(sched.add_noise(&item.pixels, &noise, t));
            target.extend(sched.target(&item.pixels, &noise, t, self.cfg.prediction));
            ts.push(t as f32);
            weights.push(match self.cfg.min_snr_gamma {
                Some(gm) => sched.min_snr_weight(t, gm, self.cfg.prediction),
                None => 1.0,
            });
        }
        // Micro-batches on threads are a CPU device's way to use its cores; a GPU runs the batch at once.
        let parts = if self.device().is_cpu() {
            self.cfg.micro_batches.clamp(1, n)
        } else {
            1
        };
        let (mut grads, lv) = if parts == 1 {
            let mut lctx = std::mem::replace(&mut self.lctx, LoraContext::eval(1.0));
            let r = self.micro_batch_grads(&mut lctx, &ids, xt, target, &ts, &weights, [c, side]);
            self.lctx = lctx;
            r?
        } else {
            // Equal-as-possible parts, side by side on threads; each part's own LoRA context (the first keeps
            // the trainer's, the others are derived from the step), so the result does not depend on how
            // many threads ran them.
            let bounds: Vec<(usize, usize)> = (0..parts)
                .map(|i| (i * n / parts, (i + 1) * n / parts))
                .collect();
            let mut ctxs: Vec<LoraContext> = (0..parts)
                .map(|i| {
                    if i == 0 {
                        std::mem::replace(&mut self.lctx, LoraContext::eval(1.0))
                    } else {
                        LoraContext::training(self.cfg.seed ^ (self.step << 8) ^ i as u64)
                    }
                })
                .collect();
            let me = &*self;
            let results: Vec<Result<(Grads, f32)>> = std::thread::scope(|sc| {
                let handles: Vec<_> = bounds
                    .iter()
                    .zip(ctxs.iter_mut())
                    .map(|(&(a, b), ctx)| {
                        let (xt, target) = (&xt[a * per..b * per], &target[a * per..b * per]);
                        let (ids, ts, w) = (&ids[a..b], &ts[a..b], &weights[a..b]);
                        sc.spawn(move || {
                            me.micro_batch_grads(
                                ctx,
                                ids,
                                xt.to_vec(),
                                target.to_vec(),
                                ts,
                                w,
                                [c, side],
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
            self.lctx = ctxs.swap_remove(0);
            // The batch loss is the mean over samples: each part's mean weighted by its share.
            let mut total: Option<Grads> = None;
            let mut loss = 0.0f32;
            for (r, &(a, b)) in results.into_iter().zip(&bounds) {
                let (mut g, l) = r?;
                let share = (b - a) as f64 / n as f64;
                g.scale(share)?;
                loss += l * share as f32;
                match &mut total {
                    Some(t) => t.accumulate(&g)?,
                    None => total = Some(g),
                }
            }
            (total.unwrap_or_default(), loss)
        };
        if self.cfg.max_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, self.cfg.max_grad_norm)?;
        }
        let factor = self.lr.factor(self.step);
        let unet_lr = self.cfg.unet_lr.unwrap_or(self.cfg.learning_rate) * factor;
        let te_lr = self.cfg.text_encoder_lr.unwrap_or(self.cfg.learning_rate) * factor;
        let store = match &mut self.trainable {
            Trainable::Lora(net) => &mut net.store,
            Trainable::Full => &mut self.model.store,
        };
        if !self.unet_ids.is_empty() {
            self.opt
                .step_params(store, &grads, &self.unet_ids, unet_lr)?;
        }
        if !self.te_ids.is_empty() && te_lr != 0.0 {
            self.opt.step_params(store, &grads, &self.te_ids, te_lr)?;
        }
        self.step += 1;
        Ok((lv, unet_lr))
    }
}

/// `mean_n(w_n · mean((pred_n − target_n)²))`, sd-scripts' per-sample loss with weights.
fn weighted_mse(g: &mut Graph, pred: Var, target: Var, weights: &[f32]) -> Result<Var> {
    if weights.iter().all(|&w| w == 1.0) {
        return g.mse_loss(pred, target);
    }
    let d = g.sub(pred, target)?;
    let sq = g.mul(d, d)?;
    let per = g.mean_over(sq, 1)?;
    let shape = g.shape(per)?;
    let dev = g.value(per)?.device();
    let w = g.input(Tensor::from_vec(weights.to_vec(), &shape)?.to_device(&dev)?);
    let wl = g.mul(per, w)?;
    g.mean(wl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{Style, World};
    use crate::model::{ClipConfig, LoraSpec, UNetConfig};

    fn data(n: u64) -> Vec<TrainItem> {
        let w = World::new(16, Style::A);
        (0..n)
            .map(|s| {
                let (scene, img) = w.sample(s);
                TrainItem {
                    pixels: img.to_chw(),
                    caption: scene.caption(),
                    repeats: 1,
                }
            })
            .collect()
    }

    #[test]
    fn caption_processing_follows_the_rates_and_keeps_tokens() {
        let cfg = CaptionConfig {
            shuffle_caption: true,
            keep_tokens: 1,
            caption_dropout_rate: 0.25,
            random_caption_rate: 0.5,
            random_captions: vec!["x, y".into()],
        };
        let mut rng = Rng::new(0);
        let (mut empty, mut random, mut own) = (0, 0, 0);
        for _ in 0..4000 {
            let c = cfg.process("a, b, c, d", &mut rng);
            if c.is_empty() {
                empty += 1;
            } else if c.starts_with('x') || c.starts_with('y') {
                random += 1;
            } else {
                assert!(c.starts_with("a, "), "{c}");
                let mut parts: Vec<&str> = c.split(", ").collect();
                parts.sort();
                assert_eq!(parts, ["a", "b", "c", "d"]);
                own += 1;
            }
        }
        assert!((empty as f64 / 4000.0 - 0.25).abs() < 0.03, "{empty}");
        assert!((random as f64 / 4000.0 - 0.5).abs() < 0.03, "{random}");
        assert!((own as f64 / 4000.0 - 0.25).abs() < 0.03, "{own}");
    }

    /// A LoRA trained on one image lowers the denoising loss on that image (fixed noise and timesteps).
    #[test]
    fn lora_training_lowers_the_loss_and_only_touches_the_lora() {
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 3).unwrap();
        let spec = LoraSpec {
            network_dim: 4,
            network_alpha: 4.0,
            conv_dim: Some(4),
            conv_alpha: 4.0,
            ..LoraSpec::default()
        };
        let net = LoraNetwork::new(&model.unet, Some(&model.te), &spec, 0).unwrap();
        let d = data(1);
        let eval = |t: &Trainer| -> f32 {
            let mut r = Rng::new(99);
            let mut tot = 0.0;
            for k in 0..8 {
                let noise = r.normal_vec(d[0].pixels.len());
                let step = 100 + 100 * k;
                let xt = t.cfg.schedule.add_noise(&d[0].pixels, &noise, step);
                let ids = vec![t.tokenizer.encode(&d[0].caption).unwrap()];
                let nets: Vec<&LoraNetwork> = t.network().into_iter().collect();
                let mut g = Graph::inference();
                let mut ctx = LoraContext::eval(1.0);
                let c = t.model.te_forward(&mut g, &nets, &mut ctx, &ids).unwrap();
                let x = g.input(Tensor::from_vec(xt, &[1, 3, 16, 16]).unwrap());
                let y = t
                    .model
                    .unet_forward(&mut g, &nets, &mut ctx, x, &[step as f32], c)
                    .unwrap();
                let p = g.value(y).unwrap().to_vec_f32().unwrap();
                tot += p
                    .iter()
                    .zip(&noise)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    / p.len() as f32;
            }
            tot / 8.0
        };
        let before_weights = model
            .store
            .value(model.store.find("unet.conv_in.weight").unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let cfg = TrainConfig {
            max_train_steps: 300,
            learning_rate: 1e-2,
            seed: 1,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(
            model,
            Trainable::Lora(net),
            vec![],
            WordTokenizer::demo(),
            cfg,
        )
        .unwrap();
        let l0 = eval(&t);
        t.run(&d, |_, _| Ok(())).unwrap();
        let l1 = eval(&t);
        assert!(l1 < 0.8 * l0, "loss {l0} -> {l1}");
        let after = t
            .model
            .store
            .value(t.model.store.find("unet.conv_in.weight").unwrap())
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_eq!(before_weights, after, "the base model must stay frozen");
    }

    /// Split into micro-batches, a step is the whole batch's step: the same loss, and (with an ε so large that
    /// AdamW's update is proportional to the gradient) the same update, within float summation order.
    #[test]
    fn micro_batches_give_the_whole_batch_step() {
        let run = |parts: usize, batch: usize| {
            let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 4).unwrap();
            let cfg = TrainConfig {
                max_train_steps: 1,
                learning_rate: 1.0,
                train_batch_size: batch,
                min_snr_gamma: Some(5.0),
                micro_batches: parts,
                adamw: AdamWConfig {
                    eps: 1e3,
                    weight_decay: 0.0,
                    ..AdamWConfig::default()
                },
                seed: 3,
                ..TrainConfig::default()
            };
            let id = model.store.find("unet.conv_out.weight").unwrap();
            let before = model.store.value(id).unwrap().to_vec_f32().unwrap();
            let mut t =
                Trainer::new(model, Trainable::Full, vec![], WordTokenizer::demo(), cfg).unwrap();
            let mut loss = 0.0;
            t.run(&data(5), |_, i| {
                loss = i.loss;
                Ok(())
            })
            .unwrap();
            let after = t.model.store.value(id).unwrap().to_vec_f32().unwrap();
            let delta: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            (loss, delta)
        };
        for (parts, batch) in [(2, 4), (3, 5)] {
            let (l1, d1) = run(1, batch);
            let (l2, d2) = run(parts, batch);
            assert!((l1 - l2).abs() <= 1e-5 * l1.abs(), "loss {l1} vs {l2}");
            let scale = d1.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0);
            let diff = d1
                .iter()
                .zip(&d2)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "update differs by {diff} (scale {scale})"
            );
        }
    }

    #[test]
    fn full_training_updates_the_model_and_min_snr_runs() {
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 4).unwrap();
        let id = model.store.find("unet.conv_out.weight").unwrap();
        let before = model.store.value(id).unwrap().to_vec_f32().unwrap();
        let cfg = TrainConfig {
            max_train_steps: 2,
            learning_rate: 1e-3,
            min_snr_gamma: Some(5.0),
            train_batch_size: 2,
            noise_offset: Some(0.05),
            ..TrainConfig::default()
        };
        let mut t =
            Trainer::new(model, Trainable::Full, vec![], WordTokenizer::demo(), cfg).unwrap();
        let mut seen = Vec::new();
        t.run(&data(3), |_, i| {
            seen.push(i.step);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2]);
        let after = t.model.store.value(id).unwrap().to_vec_f32().unwrap();
        assert_ne!(before, after);
    }

    #[test]
    fn timesteps_are_drawn_from_the_min_max_range() {
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 4).unwrap();
        let cfg = TrainConfig {
            max_train_steps: 6,
            train_batch_size: 3,
            min_timestep: Some(100),
            max_timestep: Some(110),
            ..TrainConfig::default()
        };
        let mut t =
            Trainer::new(model, Trainable::Full, vec![], WordTokenizer::demo(), cfg).unwrap();
        let mut seen = Vec::new();
        t.run(&data(3), |t, _| {
            seen.extend_from_slice(t.last_timesteps());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 18);
        assert!(seen.iter().all(|&s| (100..110).contains(&s)), "{seen:?}");
        // Not one value: the range is sampled.
        assert!(seen.iter().any(|&s| s != seen[0]), "{seen:?}");
    }

    #[test]
    fn bad_settings_are_errors() {
        let model = SdModel::new_random(UNetConfig::tiny(), ClipConfig::tiny(), 4).unwrap();
        let cfg = TrainConfig {
            train_batch_size: 0,
            ..TrainConfig::default()
        };
        assert!(Trainer::new(
            model.clone(),
            Trainable::Full,
            vec![],
            WordTokenizer::demo(),
            cfg
        )
        .is_err());
        for (lo, hi) in [
            (Some(500), Some(500)),
            (None, Some(1001)),
            (Some(700), Some(600)),
        ] {
            let cfg = TrainConfig {
                min_timestep: lo,
                max_timestep: hi,
                ..TrainConfig::default()
            };
            let e = Trainer::new(
                model.clone(),
                Trainable::Full,
                vec![],
                WordTokenizer::demo(),
                cfg,
            );
            assert!(e.is_err(), "{lo:?}..{hi:?} accepted");
        }
        let mut cfg = TrainConfig::default();
        cfg.captions.caption_dropout_rate = 0.8;
        cfg.captions.random_caption_rate = 0.5;
        assert!(Trainer::new(
            model.clone(),
            Trainable::Full,
            vec![],
            WordTokenizer::demo(),
            cfg
        )
        .is_err());
        let mut t = Trainer::new(
            model,
            Trainable::Full,
            vec![],
            WordTokenizer::demo(),
            TrainConfig::default(),
        )
        .unwrap();
        assert!(t.run(&[], |_, _| Ok(())).is_err());
    }
}
