//! The processes a data-parallel run spans, and the collectives it needs: [`Single`] for one
//! process, [`Mpi`] (feature `mpi`) for ranks started by `mpirun`.

use kiln::{Error, Result};
use std::ops::Range;

/// `0..len` cut into consecutive ranges of `bucket` values (the last one shorter; at least one
/// value per bucket).
pub(crate) fn buckets(len: usize, bucket: usize) -> impl Iterator<Item = Range<usize>> {
    let bucket = bucket.max(1);
    (0..len.div_ceil(bucket)).map(move |i| i * bucket..len.min((i + 1) * bucket))
}

/// Writes this process's values of a range of a sum into the slice given
/// ([`Collective::sum_buckets`]).
pub type Fill<'f> = dyn FnMut(Range<usize>, &mut [f64]) -> Result<()> + 'f;

/// The processes a data-parallel run spans and the two collectives [`crate::DataParallel`]
/// needs. Every process calls each collective in the same order.
pub trait Collective {
    /// This process's place, `0..size()`.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn size(&self) -> usize;
    /// Sums `values` over every process, in place; every process ends with the same values.
    fn sum(&self, values: &mut [f64]) -> Result<()>;
    /// Sums `len` values over every process in buckets of at most `bucket` values and returns
    /// the sums. `fill(range, out)` writes this process's values of `range` into `out`; each
    /// bucket's sum starts as soon as it is filled, so where the transport can (MPI: one
    /// `MPI_Iallreduce` per bucket) filling the next buckets overlaps the sums in flight. An
    /// error from `fill` is treated as a failed step ([`Collective::fail`]) once the sums in
    /// flight allow. The default fills and sums each bucket in turn.
    fn sum_buckets(&self, len: usize, bucket: usize, fill: &mut Fill) -> Result<Vec<f64>> {
        let mut values = vec![0f64; len];
        for range in buckets(len, bucket) {
            let part = &mut values[range.clone()];
            fill(range, part)?;
            self.sum(part)?;
        }
        Ok(values)
    }
    /// Replaces `values` on every process by process 0's.
    fn broadcast(&self, values: &mut [f32]) -> Result<()>;
    /// Called when this process fails a step while others may be waiting in a collective:
    /// ends the whole run if the processes cannot go on without this one (MPI aborts the job;
    /// one process has nothing to end and returns).
    fn fail(&self, error: &Error);
}

/// One process: the collectives do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn fail(&self, _: &Error) {}
}

#[cfg(feature = "mpi")]
pub use self::mpi_ranks::Mpi;

#[cfg(feature = "mpi")]
mod mpi_ranks {
    use super::{Collective, Fill, buckets};
    use kiln::{Error, Result};
    use mpi::collective::SystemOperation;
    use mpi::traits::{Communicator, CommunicatorCollectives, Root};

    /// The ranks of `MPI_COMM_WORLD` (one process each, as `mpirun -np N` starts them, on one
    /// machine or many).
    ///
    /// MPI has no time-out: a rank that stops taking part leaves the others waiting in their
    /// next collective. So a failed step calls [`Collective::fail`], which aborts the job
    /// (`MPI_Abort`: mpirun ends every rank within about a second, with the failing rank's
    /// message printed first), and [`Mpi::init`] installs a panic hook that does the same
    /// after printing the panic (unwinding would finalize MPI on that rank and hang the others).
    pub struct Mpi {
        world: mpi::topology::SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }

    impl Mpi {
        /// Initializes MPI (once per process) and installs the abort-on-panic hook.
        /// `Error::Unsupported` when MPI is already initialized.
        pub fn init() -> Result<Mpi> {
            let universe = mpi::initialize().ok_or_else(|| Error::Unsupported {
                op: "Mpi::init",
                reason: "MPI is already initialized in this process".into(),
            })?;
            let world = universe.world();
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                previous(info);
                abort_job(70);
            }));
            log::info!("kiln-dist: rank {} of {}", world.rank(), world.size());
            Ok(Mpi {
                world,
                _universe: universe,
            })
        }

        /// Ends every rank of the job with `code` (`MPI_Abort`).
        pub fn abort(&self, code: i32) -> ! {
            abort_job(code)
        }
    }

    fn abort_job(code: i32) -> ! {
        // SAFETY: MPI is initialized (an `Mpi` exists, or the hook was installed by one), and
        // MPI_Abort may be called from any thread of an initialized process.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn sum(&self, values: &mut [f64]) -> Result<()> {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
        fn sum_buckets(&self, len: usize, bucket: usize, fill: &mut Fill) -> Result<Vec<f64>> {
            let mut send = vec![0f64; len];
            let mut sums = vec![0f64; len];
            let mut failed = None;
            mpi::request::scope(|scope| {
                let (mut send_rest, mut sums_rest) = (&mut send[..], &mut sums[..]);
                let mut in_flight = Vec::new();
                for range in buckets(len, bucket) {
                    let (mine, rest) = std::mem::take(&mut send_rest).split_at_mut(range.len());
                    send_rest = rest;
                    let (out, rest) = std::mem::take(&mut sums_rest).split_at_mut(range.len());
                    sums_rest = rest;
                    if let Err(e) = fill(range, mine) {
                        failed = Some(e);
                        break;
                    }
                    let mine: &[f64] = mine;
                    in_flight.push(self.world.immediate_all_reduce_into(
                        scope,
                        mine,
                        out,
                        SystemOperation::sum(),
                    ));
                }
                for request in in_flight {
                    request.wait_without_status();
                }
            });
            if let Some(e) = failed {
                // The other ranks wait for this one's remaining buckets: end the job.
                self.fail(&e);
                return Err(e);
            }
            Ok(sums)
        }
        fn broadcast(&self, values: &mut [f32]) -> Result<()> {
            self.world.process_at_rank(0).broadcast_into(values);
            Ok(())
        }
        fn fail(&self, error: &Error) {
            eprintln!(
                "kiln-dist: rank {} failed a step, aborting the job: {error}",
                self.rank()
            );
            abort_job(3)
        }
    }
}
