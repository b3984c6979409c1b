//! Training: loss functions and optimizers.

mod loss;
mod optim;

pub use loss::{cross_entropy, mse_loss};
pub use optim::{Adam, Optimizer, Sgd};
