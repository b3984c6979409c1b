//! `kiln::nn` modules and safetensors I/O on every device: shapes, parameter names, dropout in
//! training and evaluation, and loading errors (missing name, wrong shape, wrong dtype).

mod common;

use common::*;
use kiln::nn::{
    Activation, Conv2d, Dropout, Embedding, Flatten, LayerNorm, Linear, MaxPool2d, Module,
    Sequential, load_safetensors, save_safetensors,
};
use kiln::{Conv2dOptions, Device, Error, Tensor, UnaryOp};
use std::path::PathBuf;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-nn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn net(dev: &Device) -> Sequential {
    Sequential::new()
        .push(Conv2d::new(dev, 1, 4, (3, 3), Conv2dOptions::default(), 1).unwrap())
        .push(Activation(UnaryOp::Relu))
        .push(MaxPool2d {
            kernel: (2, 2),
            stride: (2, 2),
        })
        .push(Flatten)
        .push(LayerNorm::new(dev, 36).unwrap())
        .push(Dropout::new(0.5, 9).unwrap())
        .push(Linear::new(dev, 36, 3, 2).unwrap())
}

#[test]
fn modules_have_shapes_names_and_gradients() {
    for dev in devices() {
        let mut m = net(&dev);
        let names: Vec<String> = m.parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"
            ],
            "{dev}"
        );
        assert_eq!(m.num_parameters(), 4 * 9 + 4 + 36 * 2 + 36 * 3 + 3);
        let x = Tensor::randn(&dev, &[2, 1, 8, 8], 3).unwrap();
        let y = m.forward(&x).unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        y.sum_all().unwrap().backward().unwrap();
        for (name, p) in m.parameters() {
            let g = p
                .grad()
                .unwrap_or_else(|| panic!("{name} has no gradient on {dev}"));
            assert_eq!(g.shape(), p.shape(), "{name}");
        }
        m.zero_grad();
        assert!(m.parameters().iter().all(|(_, p)| p.grad().is_none()));
        // Evaluation is deterministic (dropout off); training is not.
        m.set_training(false);
        let a = m.forward(&x).unwrap().to_vec().unwrap();
        let b = m.forward(&x).unwrap().to_vec().unwrap();
        assert_eq!(a, b);
        // Embedding: u32 ids of any shape.
        let e = Embedding::new(&dev, 5, 3, 4).unwrap();
        let ids = Tensor::from_vec_u32(&dev, vec![0, 4, 4, 1], &[2, 2]).unwrap();
        assert_eq!(e.forward(&ids).unwrap().shape(), &[2, 2, 3]);
    }
}

#[test]
fn dropout_zeroes_and_rescales_in_training_only() {
    assert!(matches!(
        Dropout::new(1.0, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Dropout::new(-0.1, 0),
        Err(Error::InvalidArgument { .. })
    ));
    let mut reference = None;
    for dev in devices() {
        let mut d = Dropout::new(0.25, 7).unwrap();
        let x = Tensor::ones(&dev, &[4000]).unwrap();
        let y = d.forward(&x).unwrap().to_vec().unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count();
        assert!(
            (800..1200).contains(&zeros),
            "{zeros} of 4000 dropped on {dev}"
        );
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        // The same seed gives the same mask on every device.
        match &reference {
            None => reference = Some(y),
            Some(r) => assert_eq!(r, &y, "mask on {dev}"),
        }
        d.set_training(false);
        assert_eq!(d.forward(&x).unwrap().to_vec().unwrap(), vec![1.0; 4000]);
    }
}

#[test]
fn safetensors_round_trip_and_errors() {
    for dev in devices() {
        let path = temp(&format!("net-{}.safetensors", dev.info().name.len()));
        let mut a = net(&dev);
        a.set_training(false);
        a.save_safetensors(&path).unwrap();
        let all = load_safetensors(&path, &Device::cpu()).unwrap();
        assert_eq!(all.len(), 6);
        // A freshly initialised model with other seeds loads the same values.
        let mut b = Sequential::new()
            .push(Conv2d::new(&dev, 1, 4, (3, 3), Conv2dOptions::default(), 50).unwrap())
            .push(Activation(UnaryOp::Relu))
            .push(MaxPool2d {
                kernel: (2, 2),
                stride: (2, 2),
            })
            .push(Flatten)
            .push(LayerNorm::new(&dev, 36).unwrap())
            .push(Dropout::new(0.5, 9).unwrap())
            .push(Linear::new(&dev, 36, 3, 51).unwrap());
        b.set_training(false);
        b.load_safetensors(&path).unwrap();
        let x = Tensor::randn(&dev, &[2, 1, 8, 8], 3).unwrap();
        assert_eq!(
            a.forward(&x).unwrap().to_vec().unwrap(),
            b.forward(&x).unwrap().to_vec().unwrap()
        );
        assert!(b.parameters().iter().all(|(_, p)| p.is_leaf()));

        // Missing name: a model with a parameter the file lacks.
        let mut bigger = Sequential::new().push(Linear::new(&dev, 2, 2, 1).unwrap());
        let err = bigger.load_safetensors(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Checkpoint { name, .. } if name == "0.weight"),
            "{err:?}"
        );
        // Wrong shape: same names, other sizes; nothing changes.
        let mut other = Sequential::new()
            .push(Conv2d::new(&dev, 1, 5, (3, 3), Conv2dOptions::default(), 1).unwrap());
        let before = other.parameters()[0].1.to_vec().unwrap();
        let err = other.load_safetensors(&path).unwrap_err();
        assert!(err.to_string().contains("shape [4, 1, 3, 3]"), "{err}");
        assert_eq!(other.parameters()[0].1.to_vec().unwrap(), before);
        // Missing file.
        assert!(matches!(
            bigger.load_safetensors(&temp("nope.safetensors")),
            Err(Error::Io { .. })
        ));
    }
    // Wrong dtype: an f64 tensor written by the safetensors crate itself.
    let path = temp("f64.safetensors");
    let data: Vec<u8> = [1.0f64, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &data).unwrap();
    safetensors::serialize_to_file([("weight", view)], None, &path).unwrap();
    let mut e = Embedding::new(&Device::cpu(), 2, 1, 0).unwrap();
    let err = e.load_safetensors(&path).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint { .. }), "{err:?}");
    // shape [2] vs [2, 1] is caught first; a matching shape reports the dtype.
    let mut one = Embedding::new(&Device::cpu(), 2, 1, 0).unwrap();
    one.weight = Tensor::zeros(&Device::cpu(), &[2]).unwrap();
    let err = one.load_safetensors(&path).unwrap_err();
    assert!(err.to_string().contains("F64"), "{err}");
    // Garbage is an Io error, not a panic.
    std::fs::write(temp("junk.safetensors"), b"not a safetensors file").unwrap();
    assert!(matches!(
        load_safetensors(&temp("junk.safetensors"), &Device::cpu()),
        Err(Error::Io { .. })
    ));
    // save_safetensors of loose tensors.
    let t = Tensor::ones(&Device::cpu(), &[3]).unwrap();
    save_safetensors(&temp("loose.safetensors"), &[("t".to_string(), &t)]).unwrap();
    let back = load_safetensors(&temp("loose.safetensors"), &Device::cpu()).unwrap();
    assert_eq!(back["t"].to_vec().unwrap(), vec![1.0; 3]);
}

/// `backward_reporting` names each leaf once, when its gradient is complete (every use of it
/// already differentiated), leaves out a leaf the output does not depend on, and stops at an
/// error from the callback; on every device.
#[test]
fn backward_reports_each_leaf_when_its_gradient_is_complete() {
    for dev in devices() {
        let leaf = |v: &[f32]| {
            Tensor::from_slice(&dev, v, &[v.len()])
                .unwrap()
                .with_grad()
                .unwrap()
        };
        let (a, b, unused) = (leaf(&[1.0, 2.0]), leaf(&[3.0, -1.0]), leaf(&[5.0]));
        // a is used twice, the second time at the very end of the forward pass.
        let loss = || {
            let h = a.mul(&b).unwrap().tanh().unwrap();
            h.add(&a).unwrap().sum(0, false).unwrap()
        };
        let mut seen = Vec::new();
        loss()
            .backward_reporting(&[&a, &b, &unused], &mut |i| {
                let t = [&a, &b, &unused][i];
                seen.push((i, t.grad().unwrap().to_vec().unwrap()));
                Ok(())
            })
            .unwrap();
        let mut order: Vec<usize> = seen.iter().map(|s| s.0).collect();
        order.sort_unstable();
        assert_eq!(order, [0, 1], "on {dev}: {seen:?}");
        for (i, at_report) in &seen {
            let t = [&a, &b][*i];
            assert_eq!(
                at_report,
                &t.grad().unwrap().to_vec().unwrap(),
                "on {dev}: leaf {i}"
            );
        }
        // d/da = b·(1 − tanh²(ab)) + 1: the +1 from the last use is in the reported value.
        let want: Vec<f32> = [(1.0f32, 3.0f32), (2.0, -1.0)]
            .iter()
            .map(|&(x, y)| y * (1.0 - (x * y).tanh().powi(2)) + 1.0)
            .collect();
        let got = &seen.iter().find(|s| s.0 == 0).unwrap().1;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "on {dev}: {got:?} vs {want:?}");
        }
        a.zero_grad();
        b.zero_grad();
        let stop = loss().backward_reporting(&[&a, &b], &mut |_| {
            Err(Error::InvalidArgument {
                op: "test",
                reason: "stop".into(),
            })
        });
        assert!(
            matches!(stop, Err(Error::InvalidArgument { op: "test", .. })),
            "on {dev}"
        );
    }
}
