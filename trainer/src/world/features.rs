//! Frozen vision features of a pool of images, computed once: the vision encoder is frozen in
//! Flamingo training, so running it again every step would only cost time.
use flamingo_engine::{no_grad, ParamStore, Result, Tensor};
use flamingo_model::nfnet::NfNet;

/// Grid features `[n, tokens, dim]` of `n` images, kept on the host for fast gathering.
#[derive(Clone, Debug)]
pub struct Features {
    pub tokens: usize,
    pub dim: usize,
    data: Vec<f32>,
}

impl Features {
    /// Runs `net` over `images` (`[3, size, size]` each) in batches of `batch`.
    pub fn compute(net: &NfNet, p: &ParamStore, images: &[Vec<f32>], size: usize, batch: usize) -> Result<Features> {
        let (mut data, mut tokens, mut dim) = (Vec::new(), 0, 0);
        for chunk in images.chunks(batch.max(1)) {
            let flat: Vec<f32> = chunk.iter().flat_map(|im| im.iter().copied()).collect();
            let x = Tensor::from_vec(flat, &[chunk.len(), 3, size, size])?;
            let t = no_grad(|| net.forward_tokens(p, &x))?;
            tokens = t.shape()[1];
            dim = t.shape()[2];
            data.extend(t.to_vec::<f32>()?);
        }
        Ok(Features { tokens, dim, data })
    }

    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.tokens * self.dim).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `i`'s `[tokens·dim]` features.
    pub fn row(&self, i: usize) -> &[f32] {
        let w = self.tokens * self.dim;
        &self.data[i * w..(i + 1) * w]
    }

    /// Mean over the grid tokens, `[dim]` (for similarity-based example selection).
    pub fn pooled(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; self.dim];
        for t in self.row(i).chunks(self.dim) {
            for (o, v) in out.iter_mut().zip(t) {
                *o += v / self.tokens as f32;
            }
        }
        out
    }

    /// Gathers `[b, m, frames, tokens, dim]`: row r's medium j is frames
    /// `media[r][j]·frames .. +frames`; rows with fewer than `m` media are zero-filled (those
    /// slots are never attended to).
    pub fn gather(&self, media: &[Vec<usize>], frames: usize) -> Result<Tensor> {
        let m = media.iter().map(|v| v.len()).max().unwrap_or(0).max(1);
        let w = self.tokens * self.dim;
        let mut out = vec![0.0f32; media.len() * m * frames * w];
        for (r, row) in media.iter().enumerate() {
            for (j, &idx) in row.iter().enumerate() {
                for f in 0..frames {
                    let dst = ((r * m + j) * frames + f) * w;
                    out[dst..dst + w].copy_from_slice(self.row(idx * frames + f));
                }
            }
        }
        Tensor::from_vec(out, &[media.len(), m, frames, self.tokens, self.dim])
    }
}
