//! Neural-network building blocks: modules and layers, losses, optimizers, safetensors I/O and
//! checkpoints.

mod checkpoint;
mod layers;
mod loss;
mod module;
mod optim;
mod weights;

pub use checkpoint::{OptimizerState, load_checkpoint, save_checkpoint};
pub use layers::{
    Activation, Conv2d, Dropout, Embedding, Flatten, LayerNorm, Linear, MaxPool2d, Sequential,
};
pub use loss::{cross_entropy, mse_loss};
pub use module::Module;
pub use optim::{Adam, Optimizer, Sgd};
pub use weights::{load as load_safetensors, save as save_safetensors};
