//! Training on several devices at once.
//!
//! [`DataParallel`] keeps one replica of a model on each device of a process (any mix of GPU
//! adapters and the CPU backend), splits every batch among them, runs each replica's forward and
//! backward on its own thread, averages the gradients as backward completes them (weighted by
//! each shard's rows, so the result is the gradient of the whole batch's mean loss), takes the
//! optimizer step once, on the
//! first device, and copies the new parameters to the other replicas: the replicas stay
//! identical bit for bit, whatever their devices compute in their last bits.
//!
//! Across processes and machines (feature `mpi`): [`DataParallel::across`] with [`Mpi`], one
//! process per rank as `mpirun -np N` starts them. The batch is split over every rank's
//! devices, each rank's weighted gradient sum is summed over the ranks in buckets, each bucket's
//! `MPI_Iallreduce` started while backward still runs, and
//! after the step rank 0's parameters are broadcast, so every replica of every rank holds the
//! same values. Nothing in kiln opens a socket of its own.
//!
//! ```no_run
//! use kiln::nn::{Activation, Linear, Module, Sequential, Sgd, cross_entropy};
//! use kiln::{Device, Tensor, UnaryOp};
//! use kiln_dist::DataParallel;
//!
//! let devices = vec![Device::cpu(), Device::gpu()?];
//! let build = |dev: &Device| -> kiln::Result<Sequential> {
//!     Ok(Sequential::new()
//!         .push(Linear::new(dev, 64, 128, 1)?)
//!         .push(Activation(UnaryOp::Relu))
//!         .push(Linear::new(dev, 128, 10, 2)?))
//! };
//! let mut dp = DataParallel::new(&devices, build, Box::new(Sgd::new(0.1)))?;
//! let (x, y): (Vec<f32>, Vec<u32>) = (vec![0.0; 256 * 64], vec![0; 256]);
//! let loss = dp.step(256, |model, dev, rows| {
//!     let xs = Tensor::from_vec(dev, x[rows.start * 64..rows.end * 64].to_vec(), &[rows.len(), 64])?;
//!     let ys = Tensor::from_vec_u32(dev, y[rows.clone()].to_vec(), &[rows.len()])?;
//!     cross_entropy(&model.forward(&xs)?, &ys)
//! })?;
//! # Ok::<(), kiln::Error>(())
//! ```

mod collective;
mod data_parallel;
mod devices;

#[cfg(feature = "mpi")]
pub use collective::Mpi;
pub use collective::{Collective, Fill, Single};
pub use data_parallel::{DEFAULT_BUCKET_BYTES, DataParallel, StepTimes};
pub use devices::{collective_from_flag, devices_from_list};
