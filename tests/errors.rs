//! Error cases: asserted by variant and by message, on every device. No input panics.

mod common;

use common::*;
use kiln::{Device, Error, Tensor};

#[test]
fn length_mismatch_is_invalid_shape() {
    for dev in devices() {
        let e = Tensor::from_vec(&dev, vec![1.0; 5], &[2, 3]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidShape { op: "from_vec", .. }),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("5 values cannot fill shape [2, 3]"),
            "{e}"
        );
        let e = Tensor::from_slice(&dev, &[1.0; 7], &[7, 0]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidShape {
                    op: "from_slice",
                    ..
                }
            ),
            "{e:?}"
        );
        let t = Tensor::zeros(&dev, &[2, 3]).unwrap();
        let e = t.reshape(&[4, 2]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidShape { op: "reshape", .. }),
            "{e:?}"
        );
    }
}

#[test]
fn shape_mismatch_names_the_op_and_shapes() {
    for dev in devices() {
        let a = Tensor::zeros(&dev, &[300, 257]).unwrap();
        let b = Tensor::zeros(&dev, &[256, 129]).unwrap();
        let e = a.matmul(&b).unwrap_err();
        assert_eq!(
            e,
            Error::ShapeMismatch {
                op: "matmul",
                lhs: vec![300, 257],
                rhs: vec![256, 129]
            }
        );
        assert_eq!(
            e.to_string(),
            "matmul: shape mismatch between [300, 257] and [256, 129]"
        );
        let e = a.sub(&b).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { op: "sub", .. }), "{e:?}");
    }
}

#[test]
fn device_mismatch() {
    let cpu = Device::cpu();
    let x = Tensor::ones(&cpu, &[2, 2]).unwrap();
    for dev in gpus() {
        let y = Tensor::ones(&dev, &[2, 2]).unwrap();
        for e in [x.add(&y).unwrap_err(), y.matmul(&x).unwrap_err()] {
            assert!(matches!(e, Error::DeviceMismatch { .. }), "{e:?}");
            assert!(e.to_string().contains("different devices"), "{e}");
        }
    }
}

#[test]
fn sizes_over_the_device_limit_are_refused_before_wgpu_sees_them() {
    for dev in gpus() {
        let limit = dev.info().limits.unwrap().max_storage_buffer_binding_size;
        let too_many = (limit / 4 + 1) as usize;
        let e = Tensor::zeros(&dev, &[too_many]).unwrap_err();
        assert_eq!(
            e,
            Error::TooLarge {
                op: "fill",
                requested: too_many as u64 * 4,
                limit: limit.min(dev.info().limits.unwrap().max_buffer_size)
            }
        );
        assert!(e.to_string().contains("the device allows at most"), "{e}");
        // The device is still usable afterwards.
        assert_eq!(
            Tensor::ones(&dev, &[3]).unwrap().to_vec().unwrap(),
            vec![1.0; 3]
        );
        // An op whose output would be too large is refused too.
        let a = Tensor::zeros(&dev, &[1 << 16, 1]).unwrap();
        let b = Tensor::zeros(&dev, &[1, 1 << 16]).unwrap();
        assert!(matches!(
            a.matmul(&b).unwrap_err(),
            Error::TooLarge { op: "matmul", .. }
        ));
    }
}

#[test]
fn impossible_host_allocations_are_errors_not_aborts() {
    let cpu = Device::cpu();
    let e = Tensor::zeros(&cpu, &[1 << 31, 1 << 30]).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)), "{e:?}");
    let e = Tensor::zeros(&cpu, &[usize::MAX, 3]).unwrap_err();
    assert!(matches!(e, Error::InvalidShape { .. }), "{e:?}");
}

#[test]
fn environment_selection_rejects_unknown_values() {
    // Only this test sets KILN_DEVICE, in its own process (integration tests are separate
    // binaries, but tests within a binary share the environment, so restore it).
    // SAFETY: no other test in this binary reads or writes KILN_DEVICE.
    unsafe { std::env::set_var("KILN_DEVICE", "tpu") };
    let e = Device::from_env().unwrap_err();
    unsafe { std::env::set_var("KILN_DEVICE", "cpu") };
    let cpu = Device::from_env().unwrap();
    unsafe { std::env::remove_var("KILN_DEVICE") };
    assert!(e.to_string().contains("KILN_DEVICE=tpu"), "{e}");
    assert!(cpu.is_cpu());
    assert_eq!(cpu.info().reason, "KILN_DEVICE=cpu");
}

/// A GPU kernel's limit is `Unsupported` (the request is valid; the CPU backend serves it):
/// gather and its backward handle rank 8 on a GPU, any rank on the CPU.
#[test]
fn gpu_rank_caps_are_unsupported_not_invalid() {
    let dims = [2, 1, 1, 1, 1, 1, 1, 1, 3];
    let n: usize = dims.iter().product();
    for dev in devices() {
        let x = Tensor::from_vec(&dev, (0..n).map(|v| v as f32).collect(), &dims).unwrap();
        let idx = Tensor::from_vec_u32(&dev, vec![2, 0, 1, 2, 1, 0], &dims).unwrap();
        match x.gather(-1, &idx) {
            Ok(y) => {
                assert!(
                    dev.is_cpu(),
                    "{dev}: rank 9 gather ran on a GPU kernel capped at 8"
                );
                assert_eq!(y.to_vec().unwrap(), vec![2.0, 0.0, 1.0, 5.0, 4.0, 3.0]);
            }
            Err(e) => {
                assert!(!dev.is_cpu(), "{dev}: {e}");
                assert!(
                    matches!(e, Error::Unsupported { op: "gather", .. }),
                    "{dev}: {e:?}"
                );
            }
        }
    }
}

/// Scalar arguments and settings out of their domain are `InvalidArgument`, naming the op.
#[test]
fn bad_scalar_arguments_are_invalid_arguments() {
    for dev in devices() {
        let x = Tensor::ones(&dev, &[1, 1, 4, 4]).unwrap();
        let cases = [
            ("clamp", x.clamp(1.0, 0.0).unwrap_err()),
            ("layer_norm", x.layer_norm(None, None, -1.0).unwrap_err()),
            (
                "max_pool2d",
                x.max_pool2d((2, 2), (0, 1), (0, 0)).unwrap_err(),
            ),
        ];
        for (op, e) in cases {
            assert!(
                matches!(&e, Error::InvalidArgument { op: o, .. } if *o == op),
                "{dev}: {op}: {e:?}"
            );
        }
    }
}
