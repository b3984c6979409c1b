//! Devices named on a command line: what `--data-parallel` takes in the examples.

use crate::collective::{Collective, Single};
use kiln::{Device, Error, Result};

/// The processes of a run, as a `--mpi` flag chooses them: the MPI job's ranks
/// ([`crate::Mpi::init`], feature `mpi`) when `mpi` is set, else this process alone. `--mpi`
/// in a build without the feature is `Error::Unsupported`.
pub fn collective_from_flag(mpi: bool) -> Result<Box<dyn Collective>> {
    if !mpi {
        return Ok(Box::new(Single));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(crate::Mpi::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    Err(Error::Unsupported {
        op: "--mpi",
        reason: "this build has no MPI: build with --features mpi".into(),
    })
}

/// The devices a comma-separated list names: `cpu` (the CPU backend), `gpu` (a device of its
/// own on the best adapter, each time it is named), `software` (a software adapter), or `all`
/// alone: one device on every GPU adapter wgpu can open (the CPU backend where none opens).
/// An unknown name is `Error::InvalidArgument`.
pub fn devices_from_list(list: &str) -> Result<Vec<Device>> {
    if list.trim() == "all" {
        let gpus: Vec<Device> = Device::all_gpus()
            .into_iter()
            .filter_map(|d| d.map_err(|e| log::warn!("kiln-dist: {e}")).ok())
            .collect();
        return Ok(if gpus.is_empty() {
            vec![Device::cpu()]
        } else {
            gpus
        });
    }
    list.split(',')
        .map(|name| match name.trim() {
            "cpu" => Ok(Device::cpu()),
            "gpu" => Device::gpu(),
            "software" => Device::software(),
            other => Err(Error::InvalidArgument {
                op: "devices_from_list",
                reason: format!("{other:?} is not one of cpu, gpu, software (or all, alone)"),
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_name_devices_and_refuse_unknown_names() {
        let d = devices_from_list("cpu, cpu").unwrap();
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(Device::is_cpu));
        assert!(!devices_from_list("all").unwrap().is_empty());
        let e = devices_from_list("cpu,tpu").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { ref reason, .. } if reason.contains("tpu")));
    }
}
