//! Seeded shuffling and batching token sequences with padding.
use flamingo_engine::{Result, Rng, Tensor};

/// A seeded permutation of `0..n` (the data order of one epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
    order
}

/// Right-pads sequences to the longest (or truncates to `max_len`): returns ids `[b, l]` (i64)
/// and the 0/1 validity mask `[b, l]` (f32).
pub fn pad_batch(seqs: &[Vec<i64>], pad: i64, max_len: usize) -> Result<(Tensor, Tensor)> {
    let l = seqs.iter().map(|s| s.len().min(max_len)).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * l);
    let mut mask = Vec::with_capacity(seqs.len() * l);
    for s in seqs {
        let s = &s[..s.len().min(max_len)];
        ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad, l - s.len())));
        mask.extend(std::iter::repeat_n(1.0f32, s.len()).chain(std::iter::repeat_n(0.0, l - s.len())));
    }
    Ok((Tensor::from_vec(ids, &[seqs.len(), l])?, Tensor::from_vec(mask, &[seqs.len(), l])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_order() {
        let (ids, mask) = pad_batch(&[vec![5, 6, 7], vec![8]], 0, 10).unwrap();
        assert_eq!(ids.to_vec::<i64>().unwrap(), vec![5, 6, 7, 8, 0, 0]);
        assert_eq!(mask.to_vec::<f32>().unwrap(), vec![1., 1., 1., 1., 0., 0.]);
        let a = epoch_order(10, 1, 0);
        assert_eq!(a, epoch_order(10, 1, 0));
        assert_ne!(a, epoch_order(10, 1, 1));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
}
