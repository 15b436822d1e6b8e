//! Finite-difference gradient checking (central differences in f64), used by every op's tests.
use crate::{no_grad, DType, Error, Result, Rng, Tensor};

/// Tolerances of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    pub step: f64,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { step: 1e-6, atol: 1e-7, rtol: 1e-5 }
    }
}

/// Checks the analytic gradients of `f` at `inputs` (f64 tensors) against central differences.
///
/// The output is reduced to a scalar with fixed random weights, `L = Σ f(x) ⊙ w`, so every
/// output element's derivative is tested. `f` may build non-contiguous views of its inputs to test
/// strided paths. Returns the largest absolute error found, or an error describing the first
/// mismatch.
pub fn check_gradients(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], tol: GradCheck) -> Result<f64> {
    for (i, t) in inputs.iter().enumerate() {
        if t.dtype() != DType::F64 {
            return Err(Error::Msg(format!("gradcheck: input {i} is {}, expected f64", t.dtype())));
        }
    }
    let leaves: Vec<Tensor> = inputs.iter().map(|t| t.detach().contiguous().map(|c| c.requires_grad_(true))).collect::<Result<_>>()?;
    let out = f(&leaves)?;
    let mut rng = Rng::new(0x5eed);
    let w = Tensor::uniform(out.shape(), 0.5, 1.5, DType::F64, &mut rng);
    let loss = out.mul(&w)?.sum_all()?;
    loss.backward()?;
    let eval = |xs: &[Tensor]| -> Result<f64> { no_grad(|| f(xs)?.mul(&w)?.sum_all()?.to_scalar::<f64>()) };
    let mut worst = 0.0f64;
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic = match leaf.grad() {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; leaf.numel()],
        };
        let base = leaf.to_vec::<f64>()?;
        for j in 0..base.len() {
            let probe = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs: Vec<Tensor> = leaves.iter().map(|l| l.detach()).collect();
                xs[i] = Tensor::from_vec(v, leaf.shape())?;
                eval(&xs)
            };
            let numeric = (probe(tol.step)? - probe(-tol.step)?) / (2.0 * tol.step);
            let err = (numeric - analytic[j]).abs();
            worst = worst.max(err);
            if err > tol.atol + tol.rtol * numeric.abs().max(analytic[j].abs()) {
                return Err(Error::Msg(format!(
                    "gradcheck: input {i} (shape {:?}) element {j}: analytic {} vs numeric {numeric} (error {err:e})",
                    leaf.shape(),
                    analytic[j]
                )));
            }
        }
    }
    Ok(worst)
}
