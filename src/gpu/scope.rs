//! Waiting on wgpu's futures: error scopes and device creation.
//!
//! Natively a future of wgpu resolves when the device is polled, so kiln blocks on it. In the
//! browser (wasm32) it resolves only through the page's event loop, which a blocked caller
//! would never give back to: there no error scope is pushed (an error reaches the device's
//! uncaptured-error handler, and the next fallible call returns it), and the blocking entry
//! points return `Error::Unsupported`, naming their asynchronous twin.

#[cfg(target_arch = "wasm32")]
use crate::error::Error;
use crate::error::Result;

/// `f()`, and the error of `filter`'s kind that it raised, where that can be known at once.
pub(crate) fn catch<T>(
    device: &wgpu::Device,
    filter: wgpu::ErrorFilter,
    f: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let scope = device.push_error_scope(filter);
        let out = f();
        (out, pollster::block_on(scope.pop()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (device, filter);
        (f(), None)
    }
}

/// The output of `future`, waited for on this thread; in the browser, `Unsupported` naming
/// `instead`, the call to await there.
pub(crate) fn block_on<F: std::future::Future>(
    op: &'static str,
    instead: &str,
    future: F,
) -> Result<F::Output> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (op, instead);
        Ok(pollster::block_on(future))
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(future);
        Err(Error::Unsupported {
            op,
            reason: format!("a browser cannot block while the GPU works; await {instead} instead"),
        })
    }
}
