//! Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW. Each step is one fused
//! kernel per parameter (`shaders/optim.wgsl`, or its CPU twin) that updates the parameter and
//! the optimizer state in place on the parameter's device.

use super::Module;
use super::checkpoint::OptimizerState;
use crate::error::{Error, Result};
use crate::optim_params::{DECOUPLED, FIRST_STEP, NESTEROV, OptimParams};
use crate::tensor::Tensor;

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
    buffers: Vec<Option<Tensor>>,
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
        if self.buffers.len() < params.len() {
            self.buffers.resize(params.len(), None);
        }
        for (i, p) in params.iter_mut().enumerate() {
            let Some(g) = p.grad() else { continue };
            let mut hp = OptimParams {
                lr: self.lr,
                weight_decay: self.weight_decay,
                momentum: self.momentum,
                flags: if self.nesterov { NESTEROV } else { 0 },
                ..OptimParams::default()
            };
            if self.momentum == 0.0 {
                p.optimizer_update(&g, &mut [], &hp)?;
                continue;
            }
            let buf = match self.buffers[i].take() {
                Some(b) => {
                    check_state(p, &b)?;
                    b
                }
                None => {
                    hp.flags |= FIRST_STEP;
                    p.zeros_like()?
                }
            };
            let mut state = [buf];
            p.optimizer_update(&g, &mut state, &hp)?;
            let [buf] = state;
            self.buffers[i] = Some(buf);
        }
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let mut s = OptimizerState::default();
        s.values.insert("kind".into(), "sgd".into());
        for (i, b) in self.buffers.iter().enumerate() {
            if let Some(b) = b {
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
            .map(|(i, p)| state.tensor_for(&format!("{i}.momentum"), p))
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
    step: i32,
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
            step: 0,
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
        if self.moments.len() < params.len() {
            self.moments.resize(params.len(), None);
        }
        self.step += 1;
        let hp = OptimParams {
            lr: self.lr,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            bc1: 1.0 - self.beta1.powi(self.step),
            bc2: 1.0 - self.beta2.powi(self.step),
            flags: if self.decoupled { DECOUPLED } else { 0 },
            ..OptimParams::default()
        };
        for (i, p) in params.iter_mut().enumerate() {
            let Some(g) = p.grad() else { continue };
            let mut state = match self.moments[i].take() {
                Some(s) => {
                    check_state(p, &s[0])?;
                    s
                }
                None => [p.zeros_like()?, p.zeros_like()?],
            };
            p.optimizer_update(&g, &mut state, &hp)?;
            self.moments[i] = Some(state);
        }
        Ok(())
    }

    fn state(&self) -> OptimizerState {
        let mut s = OptimizerState::default();
        s.values.insert("kind".into(), "adam".into());
        s.values.insert("step".into(), self.step.to_string());
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
        self.step = step;
        self.moments = moments;
        Ok(())
    }
}
