//! Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW. Each step updates the
//! parameters and the optimizer state in place on their device with fused kernels
//! (`shaders/optim.wgsl`, or its CPU twin), several parameters per dispatch on a GPU.

use super::Module;
use super::checkpoint::OptimizerState;
use crate::error::{Error, Result};
use crate::optim_params::{DECOUPLED, FIRST_STEP, NESTEROV, OptimParams, Replayed};
use crate::tensor::Tensor;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

/// Updates parameters from their gradients.
///
/// Parameters are passed to every step in the same order (the optimizer keeps its state by
/// position). A parameter without a gradient is skipped. Updates happen in place when the
/// parameter's values are not shared with another tensor, and copy-on-write otherwise, so a
/// tensor cloned before the step keeps its old values.
pub trait Optimizer {
    /// One update of every parameter that has a gradient.
    fn step(&mut self, params: &mut [&mut Tensor]) -> Result<()>;

    /// The state to save in a checkpoint ([`save_checkpoint`](super::save_checkpoint)).
    fn state(&self) -> OptimizerState;

    /// Continue from a saved state. `params` are the parameters in step order (their devices
    /// and shapes are the state's); on an error (another optimizer's state, a shape that does
    /// not match) nothing changes.
    fn load_state(&mut self, state: &OptimizerState, params: &[&Tensor]) -> Result<()>;

    /// Clears the gradients of `params` (backward adds to them).
    fn zero_grad(&self, params: &mut [&mut Tensor]) {
        for p in params.iter() {
            p.zero_grad();
        }
    }

    /// One update of every parameter of `model` (in [`Module::parameters_mut`] order), then
    /// clears their gradients.
    fn step_module(&mut self, model: &mut dyn Module) -> Result<()> {
        let mut params: Vec<&mut Tensor> =
            model.parameters_mut().into_iter().map(|(_, p)| p).collect();
        self.step(&mut params)?;
        self.zero_grad(&mut params);
        Ok(())
    }
}

/// Checks that the state kept for a parameter still matches it (the same parameters must be
/// passed to every step, in the same order).
fn check_state(param: &Tensor, state: &Tensor) -> Result<()> {
    if state.shape() != param.shape() || !state.device().same(param.device()) {
        return Err(Error::ShapeMismatch {
            op: "optimizer step",
            lhs: state.shape().to_vec(),
            rhs: param.shape().to_vec(),
        });
    }
    Ok(())
}

/// One update of every parameter that has a gradient, in as few batched updates as its device
/// allows ([`Tensor::optimizer_update_all`]); `states[i]` holds parameter `i`'s `S` state
/// tensors, zeros when it has none yet. `hp(fresh)` gives the hyper-parameters for parameters
/// whose state is new (`true`) or kept from earlier steps, and `replay` those of each replay of
/// a captured step (`None`: the captured ones). Every parameter is checked against its state
/// before anything changes; on an error the kept states are as they were.
fn step_all<const S: usize>(
    params: &mut [&mut Tensor],
    states: &mut Vec<Option<[Tensor; S]>>,
    hp: impl Fn(bool) -> OptimParams,
    replay: Option<&Arc<Replayed>>,
) -> Result<()> {
    if states.len() < params.len() {
        states.resize(params.len(), None);
    }
    let mut work = Vec::with_capacity(params.len());
    for (p, s) in params.iter().zip(states.iter()) {
        let Some(g) = p.grad() else {
            work.push(None);
            continue;
        };
        let fresh = match s {
            Some(kept) => {
                kept.iter().try_for_each(|t| check_state(p, t))?;
                None
            }
            None => {
                // Made once: a replay of a captured step keeps updating these in place.
                let zeros = p
                    .device()
                    .capture_once(|| (0..S).map(|_| p.zeros_like()).collect::<Result<Vec<_>>>())?;
                Some(<[Tensor; S]>::try_from(zeros).expect("S zero tensors"))
            }
        };
        work.push(Some((g, fresh)));
    }
    // Nothing has failed: take the kept states (unshared, so they update in place).
    let mut work: Vec<Option<(Tensor, [Tensor; S], bool)>> = work
        .into_iter()
        .zip(states.iter_mut())
        .map(|(w, s)| {
            w.map(|(g, fresh)| match fresh {
                Some(zeros) => (g, zeros, true),
                None => (g, s.take().expect("checked above"), false),
            })
        })
        .collect();
    let mut result = Ok(());
    for fresh in [false, true] {
        let mut items: Vec<(&mut Tensor, Tensor, &mut [Tensor])> = params
            .iter_mut()
            .zip(work.iter_mut())
            .filter_map(|(p, w)| match w {
                Some((g, s, f)) if *f == fresh => Some((&mut **p, g.clone(), &mut s[..])),
                _ => None,
            })
            .collect();
        if !items.is_empty() && result.is_ok() {
            result = Tensor::optimizer_update_all(&mut items, &hp(fresh), replay);
        }
    }
    for (s, w) in states.iter_mut().zip(work) {
        if let Some((_, state, fresh)) = w
            && (result.is_ok() || !fresh)
        {
            *s = Some(state);
        }
    }
    result
}

/// Stochastic gradient descent, as `torch.optim.SGD` (dampening 0):
/// `d = g + wd·p; buf = momentum·buf + d; p -= lr·(nesterov ? d + momentum·buf : buf)`.
#[derive(Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 for plain SGD, which keeps no state).
    pub momentum: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    buffers: Vec<Option<[Tensor; 1]>>,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(lr: f32) -> Sgd {
        Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            buffers: Vec::new(),
        }
    }

    /// With momentum.
    pub fn momentum(mut self, momentum: f32) -> Sgd {
        self.momentum = momentum;
        self
    }

    /// With an L2 weight-decay term.
    pub fn weight_decay(mut self, weight_decay: f32) -> Sgd {
        self.weight_decay = weight_decay;
        self
    }

    /// With Nesterov momentum.
    pub fn nesterov(mut self, on: bool) -> Sgd {
        self.nesterov = on;
        self
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [&mut Tensor]) -> Result<()> {
        let hp = |first: bool| OptimParams {
            lr: self.lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            flags: if self.nesterov { NESTEROV } else { 0 } | if first { FIRST_STEP } else { 0 },
            ..OptimParams::default()
        };
        if self.momentum == 0.0 {
            return step_all::<0>(params, &mut Vec::new(), hp, None);
        }
        // A replayed step continues the momentum its capture started.
        let kept = hp(false);
        let replay: Arc<Replayed> = Arc::new(move || kept);
        step_all(params, &mut self.buffers, hp, Some(&replay))
    }

    fn state(&self) -> OptimizerState {
        let mut s = OptimizerState::default();
        s.values.insert("kind".into(), "sgd".into());
        for (i, b) in self.buffers.iter().enumerate() {
            if let Some([b]) = b {
                s.tensors.insert(format!("{i}.momentum"), b.clone());
            }
        }
        s
    }

    fn load_state(&mut self, state: &OptimizerState, params: &[&Tensor]) -> Result<()> {
        state.expect_kind("sgd")?;
        state.check_positions(params.len())?;
        let buffers = params
            .iter()
            .enumerate()
            .map(|(i, p)| Ok(state.tensor_for(&format!("{i}.momentum"), p)?.map(|b| [b])))
            .collect::<Result<Vec<_>>>()?;
        self.buffers = buffers;
        Ok(())
    }
}

/// Adam (`torch.optim.Adam`, L2 weight decay added to the gradient) or AdamW
/// (`torch.optim.AdamW`, decoupled weight decay), with bias-corrected moments.
#[derive(Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Weight decay (L2 for Adam, decoupled for AdamW).
    pub weight_decay: f32,
    /// AdamW's decoupled weight decay.
    pub decoupled: bool,
    /// Steps taken (shared with the refresh of a captured step, which advances it on replay).
    step: Arc<AtomicI32>,
    moments: Vec<Option<[Tensor; 2]>>,
}

impl Adam {
    /// Adam with learning rate `lr` and PyTorch's defaults (betas 0.9, 0.999; eps 1e-8; no
    /// weight decay).
    pub fn new(lr: f32) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            step: Arc::default(),
            moments: Vec::new(),
        }
    }

    /// AdamW with learning rate `lr` and decoupled weight decay (PyTorch's default 0.01).
    pub fn adamw(lr: f32, weight_decay: f32) -> Adam {
        Adam {
            weight_decay,
            decoupled: true,
            ..Adam::new(lr)
        }
    }

    /// With other moment decays.
    pub fn betas(mut self, beta1: f32, beta2: f32) -> Adam {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }

    /// With another epsilon.
    pub fn eps(mut self, eps: f32) -> Adam {
        self.eps = eps;
        self
    }

    /// With weight decay (L2 for Adam, decoupled for AdamW).
    pub fn weight_decay(mut self, weight_decay: f32) -> Adam {
        self.weight_decay = weight_decay;
        self
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [&mut Tensor]) -> Result<()> {
        let step = self.step.fetch_add(1, Ordering::SeqCst) + 1;
        let (beta1, beta2) = (self.beta1, self.beta2);
        let corrections = move |step: i32| [1.0 - beta1.powi(step), 1.0 - beta2.powi(step)];
        let [bc1, bc2] = corrections(step);
        let hp = OptimParams {
            lr: self.lr,
            weight_decay: self.weight_decay,
            beta1,
            beta2,
            eps: self.eps,
            bc1,
            bc2,
            flags: if self.decoupled { DECOUPLED } else { 0 },
            ..OptimParams::default()
        };
        // A replayed step is the next step: its bias correction moves on with the count.
        let count = self.step.clone();
        let replay: Arc<Replayed> = Arc::new(move || {
            let [bc1, bc2] = corrections(count.fetch_add(1, Ordering::SeqCst) + 1);
            OptimParams { bc1, bc2, ..hp }
        });
        let result = step_all(params, &mut self.moments, |_| hp, Some(&replay));
        if result.is_err() {
            self.step.fetch_sub(1, Ordering::SeqCst); // nothing changed
        }
        result
    }

    fn state(&self) -> OptimizerState {
        let mut s = OptimizerState::default();
        s.values.insert("kind".into(), "adam".into());
        s.values
            .insert("step".into(), self.step.load(Ordering::SeqCst).to_string());
        for (i, m) in self.moments.iter().enumerate() {
            if let Some([m, v]) = m {
                s.tensors.insert(format!("{i}.m"), m.clone());
                s.tensors.insert(format!("{i}.v"), v.clone());
            }
        }
        s
    }

    fn load_state(&mut self, state: &OptimizerState, params: &[&Tensor]) -> Result<()> {
        state.expect_kind("adam")?;
        state.check_positions(params.len())?;
        let step: i32 = state.value("step")?;
        let moments = params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let m = state.tensor_for(&format!("{i}.m"), p)?;
                let v = state.tensor_for(&format!("{i}.v"), p)?;
                Ok(m.zip(v).map(|(m, v)| [m, v]))
            })
            .collect::<Result<Vec<_>>>()?;
        self.step.store(step, Ordering::SeqCst);
        self.moments = moments;
        Ok(())
    }
}
