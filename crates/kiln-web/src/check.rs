//! kiln's op table on one device, as a page can run it: every op's samples against the op's
//! f64 reference within its tolerance (the native suite's check, `tests/ops.rs`), the same
//! samples on the CPU backend beside it, and every error case. Results are read back
//! asynchronously; nothing panics on a failed case, so one bad op cannot end the page.

use crate::common::check_close;
use crate::optable::{OpInfo, half_table, input, table};
use kiln::{DType, Device, Error, Tensor};

/// What one op of the table did on the device.
#[derive(Debug, Clone)]
pub struct OpResult {
    /// The op's name in the table.
    pub name: &'static str,
    /// Samples checked against the reference.
    pub samples: usize,
    /// Samples checked with their float inputs in f16 and in bf16 (each type counted).
    pub half_samples: usize,
    /// Error cases checked.
    pub error_cases: usize,
    /// The largest |device − CPU backend| / max(1, |CPU backend|) over the samples' values
    /// (NaN agreeing with NaN).
    pub max_vs_cpu: f64,
    /// The first failure, if any.
    pub failure: Option<String>,
    /// Whether that failure is kiln refusing to block in the browser (an op that reads a
    /// device tensor back on the host, such as the table's index inputs made from device
    /// values): the op could not run there, rather than running wrong.
    pub needs_blocking_read: bool,
}

/// The number of ops in the table.
pub fn op_count() -> usize {
    table().len()
}

/// An op's computation, as the table holds it: the sample's inputs on the device in, the
/// result out.
pub type OpRun = fn(&[Tensor]) -> kiln::Result<Tensor>;

/// Runs the whole table on `dev`, calling `on_op` after each op.
pub async fn run(dev: &Device, on_op: impl FnMut(usize, &OpResult)) -> Vec<OpResult> {
    run_table(dev, table(), on_op).await
}

/// [`run`] with the op named `name` computed by `run` instead: how the checker itself is
/// tested (a planted wrong answer must be reported, naming the op).
pub async fn run_replaced(
    dev: &Device,
    name: &str,
    run: OpRun,
    on_op: impl FnMut(usize, &OpResult),
) -> Vec<OpResult> {
    let mut ops = table();
    for op in ops.iter_mut().filter(|op| op.name == name) {
        op.run = run;
    }
    run_table(dev, ops, on_op).await
}

async fn run_table(
    dev: &Device,
    ops: Vec<OpInfo>,
    mut on_op: impl FnMut(usize, &OpResult),
) -> Vec<OpResult> {
    let mut results = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let result = run_op(op, dev).await;
        on_op(i, &result);
        results.push(result);
    }
    results
}

async fn run_op(op: &OpInfo, dev: &Device) -> OpResult {
    let mut result = OpResult {
        name: op.name,
        samples: 0,
        half_samples: 0,
        error_cases: 0,
        max_vs_cpu: 0.0,
        failure: None,
        needs_blocking_read: false,
    };
    let checked = check_op(op, dev, &mut result).await;
    if let Err(failure) = checked {
        result.needs_blocking_read = failure.1;
        result.failure = Some(failure.0);
    }
    result
}

/// A failure's description, and whether it is the browser's refusal to block.
type Failure = (String, bool);

fn failed(what: &str, e: &Error) -> Failure {
    let blocking =
        matches!(e, Error::Unsupported { reason, .. } if reason.contains("cannot block"));
    (format!("{what}: {e}"), blocking)
}

async fn check_op(op: &OpInfo, dev: &Device, result: &mut OpResult) -> Result<(), Failure> {
    let cpu = Device::cpu();
    for (si, sample) in (op.samples)().into_iter().enumerate() {
        let shapes: Vec<&Vec<usize>> = sample.inputs.iter().map(|i| &i.0).collect();
        let what = format!("{} sample {si} {shapes:?}", op.name);
        let refs = sample.refs();
        let want = (op.reference)(&refs);
        let (atol, rtol) = (op.tol)(&refs);
        let mut values = Vec::new();
        for d in [dev, &cpu] {
            let inputs = sample
                .inputs
                .iter()
                .enumerate()
                .map(|(k, (s, v))| input(op, k, d, s, v))
                .collect::<kiln::Result<Vec<Tensor>>>()
                .map_err(|e| failed(&what, &e))?;
            let got = (op.run)(&inputs).map_err(|e| failed(&what, &e))?;
            if got.shape() != want.shape.as_slice() {
                return Err((
                    format!("{what}: shape {:?}, want {:?}", got.shape(), want.shape),
                    false,
                ));
            }
            let v = read(&got).await.map_err(|e| failed(&what, &e))?;
            let on = format!("{what} on {}", d.info().name);
            check_close(&on, &v, &want.data, atol, rtol).map_err(|e| (e, false))?;
            values.push(v);
        }
        let diff = values[0]
            .iter()
            .zip(&values[1])
            .filter(|(a, b)| !(a.is_nan() && b.is_nan()))
            .map(|(a, b)| f64::from((a - b).abs()) / f64::from(b.abs()).max(1.0))
            .fold(0.0, f64::max);
        result.max_vs_cpu = result.max_vs_cpu.max(diff);
        result.samples += 1;
    }
    for dtype in [DType::F16, DType::BF16] {
        check_half(op, dev, dtype, result).await?;
    }
    for (what, outcome, check) in (op.errors)(dev) {
        match outcome {
            Ok(t) => {
                return Err((
                    format!(
                        "{} {what}: expected an error, got a tensor of shape {:?}",
                        op.name,
                        t.shape()
                    ),
                    false,
                ));
            }
            Err(e) if !check(&e) => {
                return Err((format!("{} {what}: unexpected error {e}", op.name), false));
            }
            Err(_) => result.error_cases += 1,
        }
    }
    Ok(())
}

/// The op's samples on `dev` with their float inputs in `dtype` (the native suite's half run,
/// `half_table`): results of the type within one step of its grid of the reference, or the
/// typed refusal of an op that does not take halves.
async fn check_half(
    op: &OpInfo,
    dev: &Device,
    dtype: DType,
    result: &mut OpResult,
) -> Result<(), Failure> {
    for (si, sample) in (op.samples)().into_iter().enumerate() {
        let what = format!("{} sample {si} in {dtype}", op.name);
        let Some(sample) = half_table::sample(op, sample, dtype) else {
            return Ok(());
        };
        let inputs = (sample.inputs.iter().enumerate())
            .map(|(k, (s, v))| half_table::input_in(op, k, dev, s, v, dtype))
            .collect::<kiln::Result<Vec<Tensor>>>()
            .map_err(|e| failed(&what, &e))?;
        let outcome = (op.run)(&inputs);
        if half_table::REFUSES_HALF
            .iter()
            .any(|n| op.name.starts_with(n))
        {
            match outcome {
                Err(Error::Unsupported { reason, .. }) if reason.contains(dtype.name()) => {
                    result.half_samples += 1;
                    continue;
                }
                other => {
                    let got = other.map(|t| t.shape().to_vec());
                    return Err((format!("{what}: expected a refusal, got {got:?}"), false));
                }
            }
        }
        let got = outcome.map_err(|e| failed(&what, &e))?;
        let refs = sample.refs();
        let want = (op.reference)(&refs);
        if got.shape() != want.shape.as_slice() {
            let shape = got.shape();
            return Err((
                format!("{what}: shape {shape:?}, want {:?}", want.shape),
                false,
            ));
        }
        let expected = half_table::result_type(op, dtype);
        let wide = match got.dtype() {
            DType::U32 => got,
            d if d == expected => got.to_dtype(DType::F32).map_err(|e| failed(&what, &e))?,
            other => return Err((format!("{what}: the result is {other}"), false)),
        };
        let v = read(&wide).await.map_err(|e| failed(&what, &e))?;
        let (want, atol, rtol) = half_table::reference(&want, dtype, (op.tol)(&refs));
        let on = format!("{what} on {}", dev.info().name);
        check_close(&on, &v, &want, atol, rtol).map_err(|e| (e, false))?;
        result.half_samples += 1;
    }
    Ok(())
}

/// A result's values as f32, read asynchronously.
async fn read(t: &Tensor) -> kiln::Result<Vec<f32>> {
    match t.dtype() {
        DType::U32 => Ok(t
            .to_vec_u32_async()
            .await?
            .into_iter()
            .map(|v| v as f32)
            .collect()),
        _ => t.to_vec_async().await,
    }
}
