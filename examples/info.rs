//! Lists every adapter wgpu can see, with backend, type, driver, key limits and features, then
//! what `Device::auto()` (or `KILN_DEVICE`) picks and why.
//!
//! `cargo run --example info`

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let adapters = kiln::Device::adapters();
    println!("{} adapter(s):", adapters.len());
    for (i, a) in adapters.iter().enumerate() {
        println!(
            "  [{i}] {} — {:?}, backend {}, type {}",
            a.name, a.kind, a.backend, a.device_type
        );
        println!(
            "      driver: {}",
            if a.driver.is_empty() {
                "(not reported)"
            } else {
                &a.driver
            }
        );
        if let Some(l) = a.limits {
            println!(
                "      limits: buffer {} MiB, storage binding {} MiB, {} storage buffers/stage, {} workgroups/dim, {} invocations/workgroup, {} KiB workgroup memory",
                l.max_buffer_size >> 20,
                l.max_storage_buffer_binding_size >> 20,
                l.max_storage_buffers_per_shader_stage,
                l.max_compute_workgroups_per_dimension,
                l.max_compute_invocations_per_workgroup,
                l.max_compute_workgroup_storage_size >> 10
            );
        }
        println!("      optional features offered: {:?}", a.features);
    }
    match kiln::Device::auto() {
        Ok(dev) => {
            let info = dev.info();
            println!(
                "auto picks: {} ({:?}, {})",
                info.name, info.kind, info.backend
            );
            println!("  why: {}", info.reason);
            if !info.features.is_empty() {
                println!("  features granted: {:?}", info.features);
            }
        }
        Err(e) => println!("auto failed: {e}"),
    }
}
