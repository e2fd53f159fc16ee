//! The learning-rate schedules of sd-scripts (`get_scheduler_fix`, which uses diffusers' schedule
//! functions through torch's `LambdaLR`).
//!
//! `lr_at(step)` is the learning rate used for optimizer step `step` (0-based): sd-scripts calls
//! `optimizer.step()` then `lr_scheduler.step()`, so step 0 uses the factor at 0.

use crate::error::{Error, Result};

/// Which schedule (sd-scripts' `--lr_scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleKind {
    /// Constant factor 1 (warmup not allowed).
    Constant,
    /// Linear warmup, then constant.
    ConstantWithWarmup,
    /// Linear warmup, then linear decay to 0 at the last step.
    Linear,
    /// Linear warmup, then half a cosine down to 0.
    Cosine,
    /// Linear warmup, then `num_cycles` hard-restarted cosines.
    CosineWithRestarts,
    /// Linear warmup, then polynomial decay to `lr_end = 1e-7` with `power`.
    Polynomial,
}

impl ScheduleKind {
    /// Parses sd-scripts' names (`constant`, `constant_with_warmup`, `linear`, `cosine`,
    /// `cosine_with_restarts`, `polynomial`).
    pub fn parse(name: &str) -> Result<ScheduleKind> {
        Ok(match name {
            "constant" => ScheduleKind::Constant,
            "constant_with_warmup" => ScheduleKind::ConstantWithWarmup,
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            "cosine_with_restarts" => ScheduleKind::CosineWithRestarts,
            "polynomial" => ScheduleKind::Polynomial,
            other => return Err(Error::Schedule(format!("unknown lr_scheduler {other:?}"))),
        })
    }

    fn name(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::ConstantWithWarmup => "constant_with_warmup",
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::CosineWithRestarts => "cosine_with_restarts",
            ScheduleKind::Polynomial => "polynomial",
        }
    }
}

/// Warmup length: a step count, or a ratio of the training steps (`--lr_warmup_steps 0.1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    /// A number of steps.
    Steps(u64),
    /// A fraction in [0, 1) of the total steps, truncated like `int(ratio * total)`.
    Ratio(f64),
}

/// A configured schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    kind: ScheduleKind,
    base_lr: f64,
    warmup: u64,
    total: u64,
    num_cycles: f64,
    power: f64,
}

/// diffusers' default `lr_end` of the polynomial schedule.
pub const POLYNOMIAL_LR_END: f64 = 1e-7;

impl LrSchedule {
    /// A schedule over `total_steps` (sd-scripts: `max_train_steps · num_processes`).
    /// `num_cycles` is `--lr_scheduler_num_cycles` (default 1; used by cosine_with_restarts), `power` is
    /// `--lr_scheduler_power` (default 1; used by polynomial).
    ///
    /// Errors as sd-scripts does: constant with a nonzero warmup raises
    /// "constant does not require `num_warmup_steps`. Set None or 0.".
    pub fn new(
        kind: ScheduleKind,
        base_lr: f64,
        warmup: Warmup,
        total_steps: u64,
        num_cycles: f64,
        power: f64,
    ) -> Result<LrSchedule> {
        let w = match warmup {
            Warmup::Steps(s) => s,
            Warmup::Ratio(r) => {
                if !(0.0..1.0).contains(&r) {
                    return Err(Error::Schedule(format!(
                        "warmup ratio {r} is not in [0, 1)"
                    )));
                }
                (r * total_steps as f64) as u64
            }
        };
        if kind == ScheduleKind::Constant && w != 0 {
            return Err(Error::Schedule(format!(
                "{} does not require `num_warmup_steps`. Set None or 0.",
                kind.name()
            )));
        }
        if !base_lr.is_finite() || base_lr < 0.0 {
            return Err(Error::Schedule(format!(
                "learning rate {base_lr} must be finite and non-negative"
            )));
        }
        if kind == ScheduleKind::Polynomial && base_lr <= POLYNOMIAL_LR_END {
            return Err(Error::Schedule(format!(
                "lr_end ({POLYNOMIAL_LR_END}) must be smaller than initial lr ({base_lr})"
            )));
        }
        Ok(LrSchedule {
            kind,
            base_lr,
            warmup: w,
            total: total_steps,
            num_cycles,
            power,
        })
    }

    /// The warmup in steps.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup
    }

    /// The multiplier of the base learning rate at `step` (the `LambdaLR` lambda).
    pub fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        if self.kind != ScheduleKind::Constant && step < self.warmup {
            return s / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let p = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * p).cos())).max(0.0)
            }
            ScheduleKind::CosineWithRestarts => {
                let p = (s - w) / (t - w).max(1.0);
                if p >= 1.0 {
                    0.0
                } else {
                    (0.5 * (1.0 + (std::f64::consts::PI * ((self.num_cycles * p) % 1.0)).cos()))
                        .max(0.0)
                }
            }
            ScheduleKind::Polynomial => {
                let lr_init = self.base_lr;
                if step > self.total {
                    POLYNOMIAL_LR_END / lr_init
                } else {
                    let range = lr_init - POLYNOMIAL_LR_END;
                    let decay_steps = t - w;
                    let remaining = 1.0 - (s - w) / decay_steps;
                    (range * remaining.powf(self.power) + POLYNOMIAL_LR_END) / lr_init
                }
            }
        }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}
