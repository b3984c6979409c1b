//! How the seam takes a [`Storage`] apart: each backend's storage as the [`Backend`] it is,
//! the other operands of an op taken out for the same backend ([`the`], [`opt`]), and `on!`,
//! which runs one expression on whichever backend holds the first operand. With these, each
//! op in `storage.rs` is one line.

use super::Storage;
use crate::backend::BackendStorage;
use crate::cpu::storage::CpuStorage;
use crate::error::{Error, Result};
use crate::gpu::storage::GpuStorage;

pub(super) fn backends(op: &'static str) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: "a CPU tensor".into(),
        rhs: "a GPU tensor".into(),
    }
}

/// One backend's storage inside a [`Storage`]: how an operand is taken out for that backend's
/// method, so that each op below is one line whichever backend runs it.
pub(super) trait Backend: BackendStorage {
    fn of<'s>(s: &'s Storage, op: &'static str) -> Result<&'s Self>;
    fn of_mut<'s>(s: &'s mut Storage, op: &'static str) -> Result<&'s mut Self>;
    fn wrap(self) -> Storage;
}

impl Backend for CpuStorage {
    fn of<'s>(s: &'s Storage, op: &'static str) -> Result<&'s Self> {
        match s {
            Storage::Cpu(c) => Ok(c),
            Storage::Gpu(_) => Err(backends(op)),
        }
    }
    fn of_mut<'s>(s: &'s mut Storage, op: &'static str) -> Result<&'s mut Self> {
        match s {
            Storage::Cpu(c) => Ok(c),
            Storage::Gpu(_) => Err(backends(op)),
        }
    }
    fn wrap(self) -> Storage {
        Storage::Cpu(self)
    }
}

impl Backend for GpuStorage {
    fn of<'s>(s: &'s Storage, op: &'static str) -> Result<&'s Self> {
        match s {
            Storage::Gpu(g) => Ok(g),
            Storage::Cpu(_) => Err(backends(op)),
        }
    }
    fn of_mut<'s>(s: &'s mut Storage, op: &'static str) -> Result<&'s mut Self> {
        match s {
            Storage::Gpu(g) => Ok(g),
            Storage::Cpu(_) => Err(backends(op)),
        }
    }
    fn wrap(self) -> Storage {
        Storage::Gpu(self)
    }
}

/// `s` taken out for the backend `B` (`DeviceMismatch` if it is on the other one).
pub(super) fn the<'s, B: Backend>(s: &'s Storage, op: &'static str) -> Result<&'s B> {
    B::of(s, op)
}

/// [`the`] of an optional operand.
pub(super) fn opt<'s, B: Backend>(
    s: Option<&'s Storage>,
    op: &'static str,
) -> Result<Option<&'s B>> {
    s.map(|s| B::of(s, op)).transpose()
}

/// `$body` with `$x` bound to `$s`'s backend storage (the other operands taken out with
/// [`the`] and [`opt`], whose backend the body's method infers), its result `wrap`ped by `$w`.
macro_rules! on {
    ($s:expr, |$x:ident| $body:expr, $w:expr) => {
        match $s {
            Storage::Cpu($x) => $body.map($w),
            Storage::Gpu($x) => $body.map($w),
        }
    };
    ($s:expr, |$x:ident| $body:expr) => {
        on!($s, |$x| $body, Backend::wrap)
    };
}

/// Two results wrapped.
pub(super) fn wrap2<B: Backend>((a, b): (B, B)) -> (Storage, Storage) {
    (a.wrap(), b.wrap())
}

pub(super) use on;
