//! The processes a data-parallel run spans, and the collectives it needs: [`Single`] for one
//! process, [`Mpi`] (feature `mpi`) for ranks started by `mpirun`.

use kiln::{Error, Result};

/// The processes a data-parallel run spans and the two collectives [`crate::DataParallel`]
/// needs. Every process calls each collective in the same order.
pub trait Collective {
    /// This process's place, `0..size()`.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn size(&self) -> usize;
    /// Sums `values` over every process, in place; every process ends with the same values.
    fn sum(&self, values: &mut [f64]) -> Result<()>;
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
    use super::Collective;
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
