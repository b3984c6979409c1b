//! The digits classifier trained where the page runs: the `digits` example's data, split,
//! model (64 → 128 → ReLU → 10), Adam schedule and batch size, with every value read back
//! asynchronously (once per epoch), which is how a page must read a GPU.

use crate::data::{Dataset, digits, shuffled, split};
use kiln::nn::{Activation, Adam, Linear, Module, Optimizer, Sequential, cross_entropy};
use kiln::{Device, Result, Tensor, UnaryOp};

/// The examples' split: 20% held out, this seed (`examples/digits.rs`).
const SPLIT_SEED: u64 = 42;
/// Examples per step.
const BATCH: usize = 32;

/// What one epoch did.
#[derive(Debug, Clone)]
pub struct Epoch {
    /// 1-based epoch number.
    pub epoch: usize,
    /// The loss of every step of the epoch, before its update.
    pub losses: Vec<f32>,
    /// Held-out accuracy after the epoch, in [0, 1].
    pub accuracy: f64,
}

/// The training set's size and the held-out set's.
pub fn sizes() -> (usize, usize) {
    let (train, test) = split(&digits(), 0.2, SPLIT_SEED);
    (train.len(), test.len())
}

/// The digits example's learning rate: Adam at 3e-3, then 1e-3 for the last third of the
/// epochs and 3e-4 for the last tenth.
fn learning_rate(epoch: usize, epochs: usize) -> f32 {
    match epoch {
        e if e * 10 > epochs * 9 => 3e-4,
        e if e * 3 > epochs * 2 => 1e-3,
        _ => 3e-3,
    }
}

/// Trains the classifier on `dev` for `epochs` epochs, calling `on_epoch` after each; returns
/// the trained model's held-out accuracy.
pub async fn train(dev: &Device, epochs: usize, mut on_epoch: impl FnMut(&Epoch)) -> Result<f64> {
    let (train, test) = split(&digits(), 0.2, SPLIT_SEED);
    let mut model = Sequential::new()
        .push(Linear::new(dev, 64, 128, 1)?)
        .push(Activation(UnaryOp::Relu))
        .push(Linear::new(dev, 128, 10, 2)?);
    let mut opt = Adam::new(3e-3);
    let mut accuracy = 0.0;
    for epoch in 1..=epochs {
        opt.lr = learning_rate(epoch, epochs);
        model.set_training(true);
        let mut losses = Vec::new();
        for idx in shuffled(train.len(), epoch as u64).chunks(BATCH) {
            let (x, y) = batch(dev, &train, idx)?;
            let loss = cross_entropy(&model.forward(&x)?, &y)?;
            loss.backward()?;
            opt.step_module(&mut model)?;
            losses.push(loss.detach().reshape(&[1])?);
        }
        // One readback for the epoch's losses: each would cost a round trip to the GPU.
        let losses = Tensor::cat(&losses.iter().collect::<Vec<_>>(), 0)?
            .to_vec_async()
            .await?;
        accuracy = held_out(&mut model, &test, dev).await?;
        on_epoch(&Epoch {
            epoch,
            losses,
            accuracy,
        });
    }
    Ok(accuracy)
}

/// The rows `idx` of `data` as an input batch and its labels.
fn batch(dev: &Device, data: &Dataset, idx: &[usize]) -> Result<(Tensor, Tensor)> {
    let part = data.subset(idx);
    Ok((
        Tensor::from_vec(dev, part.x, &[idx.len(), data.features])?,
        Tensor::from_vec_u32(dev, part.y, &[idx.len()])?,
    ))
}

/// The fraction of `data` that `model` classifies correctly.
async fn held_out(model: &mut Sequential, data: &Dataset, dev: &Device) -> Result<f64> {
    model.set_training(false);
    let all: Vec<usize> = (0..data.len()).collect();
    let (x, _) = batch(dev, data, &all)?;
    let predicted = kiln::no_grad(|| model.forward(&x)?.argmax(-1, false))?
        .to_vec_u32_async()
        .await?;
    model.set_training(true);
    let correct = predicted
        .iter()
        .zip(&data.y)
        .filter(|(p, y)| p == y)
        .count();
    Ok(correct as f64 / data.len().max(1) as f64)
}
