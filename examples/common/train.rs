//! Training and evaluation loops for the examples.

use super::data::{Dataset, Rng, shuffled};
use kiln::nn::{Module, Optimizer, cross_entropy};
use kiln::{Device, Result, Tensor};

/// One epoch of minibatch training on a classifier; `shape` is one example's shape (`[64]` for
/// the MLP, `[1, 8, 8]` for the convnet). Calls `on_batch(batch, batches, loss)` after each
/// step and returns the batch losses. With `replay`, the epoch's first full batch is captured
/// (`Device::capture`) and the other full batches replay it.
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &mut dyn Module,
    opt: &mut dyn Optimizer,
    data: &Dataset,
    shape: &[usize],
    batch: usize,
    seed: u64,
    replay: bool,
    mut on_batch: impl FnMut(usize, usize, f32),
) -> Result<Vec<f32>> {
    let dev = device_of(model);
    let dev = &dev;
    model.set_training(true);
    let order = shuffled(data.len(), seed);
    let batches = data.len().div_ceil(batch);
    let mut losses = Vec::with_capacity(batches);
    let tensors = |idx: &[usize]| -> Result<(Tensor, Tensor)> {
        let part = data.subset(idx);
        let mut dims = vec![idx.len()];
        dims.extend_from_slice(shape);
        Ok((
            Tensor::from_vec(dev, part.x, &dims)?,
            Tensor::from_vec_u32(dev, part.y, &[idx.len()])?,
        ))
    };
    let mut report = |i: usize, loss: &Tensor| -> Result<()> {
        let value = loss.to_vec()?[0];
        losses.push(value);
        on_batch(i + 1, batches, value);
        Ok(())
    };
    let mut chunks = order.chunks(batch).enumerate().peekable();
    let full = |c: &(usize, &[usize])| c.1.len() == batch;
    if replay && let Some((i, idx)) = chunks.next_if(full) {
        // Full batches: the first is captured (it runs as a step), the rest replay it. A
        // ragged last batch has another shape: it runs as an ordinary step below.
        let (x, y) = tensors(idx)?;
        let (mut graph, out) = dev.capture(&[&x, &y], |io| {
            Ok(vec![step(&mut *model, &mut *opt, &io[0], &io[1])?])
        })?;
        report(i, &out[0])?;
        while let Some((i, idx)) = chunks.next_if(full) {
            let (x, y) = tensors(idx)?;
            report(i, &graph.run(&[&x, &y])?[0])?;
        }
    }
    for (i, idx) in chunks {
        let (x, y) = tensors(idx)?;
        report(i, &step(model, opt, &x, &y)?)?;
    }
    Ok(losses)
}

/// One training step of `model` on the batch (x, y); returns the loss before the update.
fn step(model: &mut dyn Module, opt: &mut dyn Optimizer, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let loss = cross_entropy(&model.forward(x)?, y)?;
    loss.backward()?;
    opt.step_module(model)?;
    Ok(loss.detach())
}

/// The digits example's schedule: Adam at 3e-3, stepped down to 1e-3 for the last third of
/// the epochs and to 3e-4 for the last tenth.
pub fn digits_lr(epoch: usize, epochs: usize) -> f32 {
    match epoch {
        e if e * 10 > epochs * 9 => 3e-4,
        e if e * 3 > epochs * 2 => 1e-3,
        _ => 3e-3,
    }
}

/// The device a model's parameters live on.
pub fn device_of(model: &dyn Module) -> Device {
    model
        .parameters()
        .first()
        .map_or_else(Device::cpu, |(_, p)| p.device().clone())
}

/// Fraction of `data` the model classifies correctly (evaluation mode, no graph).
pub fn accuracy(
    model: &mut dyn Module,
    data: &Dataset,
    shape: &[usize],
    dev: &Device,
) -> Result<f64> {
    model.set_training(false);
    let mut correct = 0;
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(256) {
        let part = data.subset(chunk);
        let mut dims = vec![chunk.len()];
        dims.extend_from_slice(shape);
        let x = Tensor::from_vec(dev, part.x, &dims)?;
        let pred = kiln::no_grad(|| model.forward(&x)?.argmax(-1, false))?.to_vec_u32()?;
        correct += pred.iter().zip(&part.y).filter(|(a, b)| a == b).count();
    }
    model.set_training(true);
    Ok(correct as f64 / data.len().max(1) as f64)
}

/// The vocabulary of a text (sorted unique characters) and the text as ids.
pub fn encode(text: &str) -> (Vec<char>, Vec<u32>) {
    let mut vocab: Vec<char> = text.chars().collect();
    vocab.sort_unstable();
    vocab.dedup();
    let ids = text
        .chars()
        .map(|c| vocab.binary_search(&c).expect("in the vocabulary") as u32)
        .collect();
    (vocab, ids)
}

/// A batch of `batch` random windows of `len + 1` ids: inputs `[batch, len]` and the next-id
/// targets, flattened to `[batch · len]`.
pub fn text_batch(
    ids: &[u32],
    batch: usize,
    len: usize,
    rng: &mut Rng,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let (mut x, mut y) = (
        Vec::with_capacity(batch * len),
        Vec::with_capacity(batch * len),
    );
    for _ in 0..batch {
        let start = rng.below((ids.len() - len - 1) as u64) as usize;
        x.extend_from_slice(&ids[start..start + len]);
        y.extend_from_slice(&ids[start + 1..start + len + 1]);
    }
    Ok((
        Tensor::from_vec_u32(dev, x, &[batch, len])?,
        Tensor::from_vec_u32(dev, y, &[batch * len])?,
    ))
}

/// One training step of a next-character model; returns the loss.
pub fn text_step(
    model: &mut dyn Module,
    opt: &mut dyn Optimizer,
    x: &Tensor,
    y: &Tensor,
    vocab: usize,
) -> Result<f32> {
    Ok(text_step_loss(model, opt, x, y, vocab)?.to_vec()?[0])
}

/// [`text_step`] without the readback: the loss as a tensor (a step `Device::capture` can keep).
pub fn text_step_loss(
    model: &mut dyn Module,
    opt: &mut dyn Optimizer,
    x: &Tensor,
    y: &Tensor,
    vocab: usize,
) -> Result<Tensor> {
    let logits = model.forward(x)?;
    let rows = y.numel();
    let loss = cross_entropy(&logits.reshape(&[rows, vocab])?, y)?;
    loss.backward()?;
    opt.step_module(model)?;
    Ok(loss.detach())
}

/// What to sample: `n` characters after `prompt`, at temperature `temp`, seeded.
pub struct SampleOptions<'a> {
    pub prompt: &'a str,
    pub n: usize,
    pub temp: f64,
    pub seed: u64,
}

/// Characters sampled from a next-character model, one forward pass each (no graph).
pub fn sample(
    model: &dyn Module,
    vocab: &[char],
    context: usize,
    o: &SampleOptions,
) -> Result<String> {
    let dev = &device_of(model);
    let (prompt, n, temp, seed) = (o.prompt, o.n, o.temp, o.seed);
    let mut ids: Vec<u32> = prompt
        .chars()
        .filter_map(|c| vocab.binary_search(&c).ok().map(|i| i as u32))
        .collect();
    if ids.is_empty() {
        ids.push(0);
    }
    let mut rng = Rng(seed);
    let mut out = String::new();
    for _ in 0..n {
        let window = &ids[ids.len().saturating_sub(context)..];
        let x = Tensor::from_vec_u32(dev, window.to_vec(), &[1, window.len()])?;
        let logits = kiln::no_grad(|| model.forward(&x))?.to_vec()?;
        let last = &logits[logits.len() - vocab.len()..];
        let m = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = last
            .iter()
            .map(|&v| (f64::from(v - m) / temp).exp())
            .collect();
        let mut r = rng.unit() * w.iter().sum::<f64>();
        let mut pick = w.len() - 1;
        for (i, &p) in w.iter().enumerate() {
            if r < p {
                pick = i;
                break;
            }
            r -= p;
        }
        ids.push(pick as u32);
        out.push(vocab[pick]);
    }
    Ok(out)
}
