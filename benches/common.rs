//! Shared by the criterion benches: the devices to measure (the CPU backend, and the best wgpu
//! adapter if one opens; `KILN_DEVICE` narrows it to one).
#![allow(dead_code)]

use kiln::Device;

pub fn devices() -> Vec<Device> {
    if std::env::var("KILN_DEVICE").is_ok() {
        return Device::from_env().into_iter().collect();
    }
    let mut d = vec![Device::cpu()];
    d.extend(Device::gpu());
    d
}

pub fn label(dev: &Device) -> String {
    format!(
        "{}-{}",
        dev.info().backend,
        dev.info().name.split(' ').next().unwrap_or("gpu")
    )
}
