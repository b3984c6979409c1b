//! Recurrent layers (RNN, GRU, LSTM), unrolled over the sequence on kiln's ops: the input
//! projection of every time step is one matmul up front, then each step is a matmul with the
//! recurrent weight and a few elementwise ops (which fusion joins on the GPU). `sequence_lens`
//! masks the padded steps: the state stops changing and the output is zero there, in either
//! direction.

use super::{Args, Ctx};
use crate::value::Value;
use kiln::Result;
use kiln::{Device, Tensor};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rnn,
    Gru,
    Lstm,
}

impl Kind {
    /// Gates per hidden unit (rows of W per direction, in multiples of `hidden_size`).
    fn gates(self) -> usize {
        match self {
            Kind::Rnn => 1,
            Kind::Gru => 3,
            Kind::Lstm => 4,
        }
    }

    /// The default activations (f, g, h in ONNX's equations).
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Kind::Rnn => &["Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
        }
    }
}

/// One activation function of the `activations` attribute, with its alpha and beta.
#[derive(Clone)]
struct Act {
    name: String,
    alpha: Option<f32>,
    beta: Option<f32>,
}

impl Act {
    fn apply(&self, ctx: &Ctx, t: &Tensor) -> Result<Tensor> {
        let need = |v: Option<f32>, what: &str| {
            v.ok_or_else(|| ctx.invalid(format!("activation {} needs {what}", self.name)))
        };
        match self.name.as_str() {
            "Sigmoid" => t.sigmoid(),
            "Tanh" => t.tanh(),
            "Relu" => t.relu(),
            "LeakyRelu" => t.leaky_relu(self.alpha.unwrap_or(0.01)),
            "HardSigmoid" => t.hard_sigmoid(self.alpha.unwrap_or(0.2), self.beta.unwrap_or(0.5)),
            "Affine" => t
                .mul_scalar(need(self.alpha, "alpha")?)?
                .add_scalar(need(self.beta, "beta")?),
            "ScaledTanh" => t
                .mul_scalar(need(self.beta, "beta")?)?
                .tanh()?
                .mul_scalar(need(self.alpha, "alpha")?),
            other => Err(ctx.unsupported(format!("activation {other}"))),
        }
    }
}

/// The node's activations for direction `d` of `dirs`.
fn activations(ctx: &Ctx, kind: Kind, d: usize, dirs: usize) -> Result<Vec<Act>> {
    let per = kind.default_activations().len();
    let attr = |name: &str| ctx.node.attribute.iter().find(|a| a.name == name);
    let names: Vec<String> = match attr("activations") {
        Some(a) => a
            .strings
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        None => {
            let defaults = kind.default_activations().iter().map(|s| s.to_string());
            defaults.clone().chain(defaults).take(per * dirs).collect()
        }
    };
    if names.len() != per * dirs {
        return Err(ctx.invalid(format!(
            "{} activations for {dirs} direction(s) of {per}",
            names.len()
        )));
    }
    let floats = |name: &str| attr(name).map(|a| a.floats.clone()).unwrap_or_default();
    let (alphas, betas) = (floats("activation_alpha"), floats("activation_beta"));
    Ok((d * per..(d + 1) * per)
        .map(|i| Act {
            name: names[i].clone(),
            alpha: alphas.get(i).copied(),
            beta: betas.get(i).copied(),
        })
        .collect())
}

/// `RNN`, `GRU` and `LSTM` (opsets 7–22: directions, `layout`, `clip`, `sequence_lens`,
/// initial states, peepholes, `linear_before_reset`, every activation ONNX names but the
/// deprecated ones). `input_forget` is refused.
pub(super) fn recurrent(ctx: &Ctx, args: &Args) -> Result<Vec<Value>> {
    let kind = match ctx.node.op_type.as_str() {
        "RNN" => Kind::Rnn,
        "GRU" => Kind::Gru,
        _ => Kind::Lstm,
    };
    if ctx.int("input_forget", 0) != 0 {
        return Err(ctx.unsupported("input_forget"));
    }
    let optional = |i: usize| -> Result<Option<&Tensor>> {
        args.get(i)
            .and_then(Option::as_ref)
            .map(|v| v.tensor("onnx"))
            .transpose()
    };
    let batch_first = ctx.int("layout", 0) == 1;
    let mut x = ctx.float_input(args, 0)?.clone();
    if batch_first {
        x = x.transpose(0, 1)?;
    }
    let (w, r) = (ctx.float_input(args, 1)?, ctx.float_input(args, 2)?);
    let [seq, batch, input] = x.shape()[..] else {
        return Err(ctx.invalid(format!("X must be 3-D, not {:?}", x.shape())));
    };
    let dirs = match ctx.string("direction", "forward").as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(ctx.invalid(format!("direction {other}"))),
    };
    let g = kind.gates();
    let hidden = match ctx.int("hidden_size", 0) {
        0 => r.shape().last().copied().unwrap_or(0),
        h => usize::try_from(h).map_err(|_| ctx.invalid(format!("hidden_size {h}")))?,
    };
    if w.shape() != [dirs, g * hidden, input] || r.shape() != [dirs, g * hidden, hidden] {
        return Err(ctx.invalid(format!(
            "W {:?} and R {:?} for {dirs} direction(s), {g} gate(s) of {hidden} and input {input}",
            w.shape(),
            r.shape()
        )));
    }
    let lens = match ctx.int_input(args, 4)? {
        Some(l) if l.data.len() == batch => Some(l.data),
        Some(l) => return Err(ctx.invalid(format!("sequence_lens {:?}", l.shape))),
        None => None,
    };
    let mut states = vec![optional(5)?];
    if kind == Kind::Lstm {
        states.push(optional(6)?);
    }
    let layer = Layer {
        ctx,
        kind,
        hidden,
        batch,
        clip: ctx.attr_present("clip").then(|| ctx.float("clip", 0.0)),
        linear_before_reset: ctx.int("linear_before_reset", 0) != 0,
    };
    let reverse = ctx.string("direction", "forward") == "reverse";
    let mut ys = Vec::new();
    let mut finals: Vec<Vec<Tensor>> = vec![Vec::new(); states.len()];
    for d in 0..dirs {
        let per_dir = |t: &Tensor, rows: usize| -> Result<Tensor> {
            let mut shape = t.shape()[1..].to_vec();
            shape[0] = rows;
            t.narrow(0, d, 1)?.reshape(&shape)
        };
        let init: Vec<Tensor> = states
            .iter()
            .map(|s| match s {
                Some(s) => per_dir(s, batch),
                None => Tensor::zeros(ctx.dev, &[batch, hidden]),
            })
            .collect::<Result<_>>()?;
        let weights = Weights {
            w: per_dir(w, g * hidden)?,
            r: per_dir(r, g * hidden)?,
            b: optional(3)?
                .map(|b| b.narrow(0, d, 1)?.reshape(&[2 * g * hidden]))
                .transpose()?,
            p: optional(7)?
                .map(|p| p.narrow(0, d, 1)?.reshape(&[3 * hidden]))
                .transpose()?,
            acts: activations(ctx, kind, d, dirs)?,
        };
        let backward = reverse || d == 1;
        let (y, last) = layer.run(&x, &weights, init, lens.as_deref(), backward)?;
        ys.push(y.reshape(&[seq, 1, batch, hidden])?);
        for (f, s) in finals.iter_mut().zip(last) {
            f.push(s.reshape(&[1, batch, hidden])?);
        }
    }
    let mut y = Tensor::cat(&ys.iter().collect::<Vec<_>>(), 1)?;
    if batch_first {
        y = y.permute(&[2, 0, 1, 3])?;
    }
    let mut out = vec![Value::Float(y)];
    for f in finals {
        let mut s = Tensor::cat(&f.iter().collect::<Vec<_>>(), 0)?;
        if batch_first {
            s = s.transpose(0, 1)?;
        }
        out.push(Value::Float(s));
    }
    out.truncate(ctx.node.output.len().max(1));
    Ok(out)
}

/// One direction's operands.
struct Weights {
    /// `[gates·hidden, input]`.
    w: Tensor,
    /// `[gates·hidden, hidden]`.
    r: Tensor,
    /// `[2·gates·hidden]`: W's bias, then R's.
    b: Option<Tensor>,
    /// LSTM peepholes `[3·hidden]` (input, output, forget).
    p: Option<Tensor>,
    acts: Vec<Act>,
}

struct Layer<'c, 'a> {
    ctx: &'c Ctx<'a>,
    kind: Kind,
    hidden: usize,
    batch: usize,
    clip: Option<f32>,
    linear_before_reset: bool,
}

impl Layer<'_, '_> {
    fn dev(&self) -> &Device {
        self.ctx.dev
    }

    /// Gate `k` (of width `hidden`) of `t` `[batch, gates·hidden]`.
    fn gate(&self, t: &Tensor, k: usize) -> Result<Tensor> {
        t.narrow(1, k * self.hidden, self.hidden)
    }

    /// `act(clip(t))`.
    fn act(&self, a: &Act, t: &Tensor) -> Result<Tensor> {
        match self.clip {
            Some(c) => a.apply(self.ctx, &t.clamp(-c, c)?),
            None => a.apply(self.ctx, t),
        }
    }

    /// The direction over `x` `[seq, batch, input]`: its outputs `[seq, batch, hidden]` and
    /// final states (H, and C for an LSTM).
    fn run(
        &self,
        x: &Tensor,
        wt: &Weights,
        mut state: Vec<Tensor>,
        lens: Option<&[i64]>,
        backward: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (seq, batch, h, g) = (x.shape()[0], self.batch, self.hidden, self.kind.gates());
        // Biases added to the input projection: W's, and R's except the GRU candidate's
        // with linear_before_reset (which goes inside the reset gate's product).
        let (in_bias, candidate_bias) = match &wt.b {
            None => (None, None),
            Some(b) => {
                let (wb, rb) = (b.narrow(0, 0, g * h)?, b.narrow(0, g * h, g * h)?);
                if self.kind == Kind::Gru && self.linear_before_reset {
                    let zr = Tensor::cat(
                        &[&rb.narrow(0, 0, 2 * h)?, &Tensor::zeros(self.dev(), &[h])?],
                        0,
                    )?;
                    (Some(wb.add(&zr)?), Some(rb.narrow(0, 2 * h, h)?))
                } else {
                    (Some(wb.add(&rb)?), None)
                }
            }
        };
        let xw = x
            .reshape(&[seq * batch, x.shape()[2]])?
            .linear(&wt.w, in_bias.as_ref(), None)?
            .reshape(&[seq, batch, g * h])?;
        let mut ys: Vec<Option<Tensor>> = vec![None; seq];
        let order: Vec<usize> = if backward {
            (0..seq).rev().collect()
        } else {
            (0..seq).collect()
        };
        for t in order {
            let xt = xw.narrow(0, t, 1)?.reshape(&[batch, g * h])?;
            let next = self.step(&xt, wt, &state, candidate_bias.as_ref())?;
            let mask = match lens {
                Some(l) if l.iter().any(|&n| (t as i64) >= n) => {
                    let m: Vec<f32> = l
                        .iter()
                        .map(|&n| f32::from(u8::from((t as i64) < n)))
                        .collect();
                    Some(Tensor::from_vec(self.dev(), m, &[batch, 1])?)
                }
                _ => None,
            };
            let next = match &mask {
                // A padded step: the state holds, the output is zero.
                Some(m) => next
                    .iter()
                    .zip(&state)
                    .map(|(n, s)| s.add(&n.sub(s)?.mul(m)?))
                    .collect::<Result<Vec<_>>>()?,
                None => next,
            };
            ys[t] = Some(match &mask {
                Some(m) => next[0].mul(m)?,
                None => next[0].clone(),
            });
            state = next;
        }
        let ys: Vec<Tensor> = ys
            .into_iter()
            .map(|y| y.expect("every step ran").reshape(&[1, batch, h]))
            .collect::<Result<_>>()?;
        let y = if ys.is_empty() {
            Tensor::zeros(self.dev(), &[0, batch, h])?
        } else {
            Tensor::cat(&ys.iter().collect::<Vec<_>>(), 0)?
        };
        Ok((y, state))
    }

    /// One time step from the projected input `xt` `[batch, gates·hidden]`: the new states.
    fn step(
        &self,
        xt: &Tensor,
        wt: &Weights,
        state: &[Tensor],
        candidate_bias: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        let h = self.hidden;
        let hs = &state[0];
        let a = &wt.acts;
        match self.kind {
            Kind::Rnn => Ok(vec![
                self.act(&a[0], &xt.add(&hs.linear(&wt.r, None, None)?)?)?,
            ]),
            Kind::Lstm => {
                let c = &state[1];
                let pre = xt.add(&hs.linear(&wt.r, None, None)?)?;
                let peep = |k: usize, c: &Tensor, gate: Tensor| -> Result<Tensor> {
                    match &wt.p {
                        Some(p) => gate.add(&c.mul(&p.narrow(0, k * h, h)?)?),
                        None => Ok(gate),
                    }
                };
                // Gate order i, o, f, c; peepholes i, o, f.
                let i = self.act(&a[0], &peep(0, c, self.gate(&pre, 0)?)?)?;
                let f = self.act(&a[0], &peep(2, c, self.gate(&pre, 2)?)?)?;
                let cand = self.act(&a[1], &self.gate(&pre, 3)?)?;
                let c_next = f.mul(c)?.add(&i.mul(&cand)?)?;
                let o = self.act(&a[0], &peep(1, &c_next, self.gate(&pre, 1)?)?)?;
                let h_next = o.mul(&a[2].apply(self.ctx, &c_next)?)?;
                Ok(vec![h_next, c_next])
            }
            Kind::Gru => {
                // Gate order z, r, h.
                let r_zr = wt.r.narrow(0, 0, 2 * h)?;
                let r_h = wt.r.narrow(0, 2 * h, h)?;
                let zr = self.gate_pair(xt, &hs.linear(&r_zr, None, None)?)?;
                let z = self.act(&a[0], &zr.0)?;
                let r = self.act(&a[0], &zr.1)?;
                let xh = self.gate(xt, 2)?;
                let inner = if self.linear_before_reset {
                    r.mul(&hs.linear(&r_h, candidate_bias, None)?)?
                } else {
                    r.mul(hs)?.linear(&r_h, None, None)?
                };
                let cand = self.act(&a[1], &xh.add(&inner)?)?;
                // (1 - z)·cand + z·H = cand + z·(H - cand)
                Ok(vec![cand.add(&z.mul(&hs.sub(&cand)?)?)?])
            }
        }
    }

    /// The z and r pre-activations of a GRU: the input projection's first two gates plus the
    /// recurrent product `hr` `[batch, 2·hidden]`.
    fn gate_pair(&self, xt: &Tensor, hr: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.hidden;
        Ok((
            self.gate(xt, 0)?.add(&hr.narrow(1, 0, h)?)?,
            self.gate(xt, 1)?.add(&hr.narrow(1, h, h)?)?,
        ))
    }
}
