//! Decoding from Flamingo: greedy, temperature/top-k sampling and beam search over the KV caches,
//! stopping at `<|endofchunk|>`, and closed-ended scoring (rank classification by mean token
//! log-likelihood). Every image is encoded once; its cross-attention keys/values are cached.
use crate::flamingo::{DecodeState, Flamingo};
use flamingo_engine::{no_grad, Error, ParamStore, Result, Rng, Tensor};

/// How the next token is chosen.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    Greedy,
    /// Sample from softmax(logits / temperature), optionally restricted to the `top_k` best.
    Sample {
        temperature: f64,
        top_k: Option<usize>,
        seed: u64,
    },
    /// Beam search keeping `width` hypotheses, ranked by total log-probability divided by
    /// length^`length_penalty` (0 = no normalisation).
    Beam {
        width: usize,
        length_penalty: f64,
    },
}

/// Log-softmax of the last position's logits of row `r` (`logits [b, l, v]`), as f64.
fn last_log_probs(logits: &Tensor, r: usize) -> Result<Vec<f64>> {
    let l = logits.shape()[1];
    logits.narrow(0, r, 1)?.narrow(1, l - 1, 1)?.log_softmax(-1)?.to_vec::<f64>()
}

fn sample(logp: &[f64], temperature: f64, top_k: Option<usize>, rng: &mut Rng) -> i64 {
    let mut idx: Vec<usize> = (0..logp.len()).collect();
    idx.sort_by(|&a, &b| logp[b].partial_cmp(&logp[a]).unwrap_or(std::cmp::Ordering::Equal));
    if let Some(k) = top_k {
        idx.truncate(k.max(1));
    }
    let m = logp[idx[0]];
    let w: Vec<f64> = idx.iter().map(|&i| ((logp[i] - m) / temperature.max(1e-8)).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.uniform() * total;
    for (j, &i) in idx.iter().enumerate() {
        u -= w[j];
        if u <= 0.0 {
            return i as i64;
        }
    }
    idx[idx.len() - 1] as i64
}

impl Flamingo {
    /// Generates up to `max_new` tokens after `prompt [b, l]` for each row, over visual tokens
    /// `media [b, m, R, dv]`. Rows stop at `<|endofchunk|>` (included in the output).
    pub fn generate(&self, p: &ParamStore, prompt: &Tensor, media: &Tensor, max_new: usize, strategy: &Strategy) -> Result<Vec<Vec<i64>>> {
        match strategy {
            Strategy::Greedy => self.generate_greedy(p, prompt, media, max_new),
            Strategy::Sample { temperature, .. } => no_grad(|| {
                if *temperature <= 0.0 {
                    return Err(Error::Msg(format!("generate: temperature must be positive, got {temperature}")));
                }
                let mut state = self.start_decoding(p, media)?;
                let first = self.decode_step(p, &mut state, prompt)?;
                self.continue_decoding(p, state, first, max_new, strategy)
            }),
            Strategy::Beam { width, length_penalty } => {
                let b = prompt.shape()[0];
                (0..b).map(|r| self.beam_one(p, &prompt.narrow(0, r, 1)?, &media.narrow(0, r, 1)?, max_new, (*width).max(1), *length_penalty)).collect()
            }
        }
    }

    /// Generates for prompts of different lengths: they are left-padded with `pad_id` into one
    /// batch (padding is masked out and positions start at each row's first real token), so each
    /// row gets what it would get alone. Beam search runs row by row on the unpadded prompts.
    pub fn generate_batch(
        &self,
        p: &ParamStore,
        prompts: &[Vec<i64>],
        media: &Tensor,
        max_new: usize,
        strategy: &Strategy,
        pad_id: i64,
    ) -> Result<Vec<Vec<i64>>> {
        let b = prompts.len();
        if b != media.shape()[0] || prompts.iter().any(|r| r.is_empty()) {
            return Err(Error::Msg(format!("generate_batch: {b} non-empty prompts needed for {} media rows", media.shape()[0])));
        }
        if let Strategy::Beam { width, length_penalty } = strategy {
            return prompts
                .iter()
                .enumerate()
                .map(|(r, pr)| {
                    self.beam_one(p, &Tensor::from_vec(pr.clone(), &[1, pr.len()])?, &media.narrow(0, r, 1)?, max_new, (*width).max(1), *length_penalty)
                })
                .collect();
        }
        let l = prompts.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * l);
        let mut valid = Vec::with_capacity(b * l);
        for r in prompts {
            ids.extend(std::iter::repeat_n(pad_id, l - r.len()).chain(r.iter().copied()));
            valid.extend(std::iter::repeat_n(false, l - r.len()).chain(std::iter::repeat_n(true, r.len())));
        }
        no_grad(|| {
            let mut state = self.start_decoding(p, media)?;
            let first = self.decode_step_padded(p, &mut state, &Tensor::from_vec(ids, &[b, l])?, Some(&valid))?;
            self.continue_decoding(p, state, first, max_new, strategy)
        })
    }

    /// The token-by-token loop shared by greedy decoding and sampling.
    pub(crate) fn continue_decoding(
        &self,
        p: &ParamStore,
        mut state: DecodeState,
        mut logits: Tensor,
        max_new: usize,
        strategy: &Strategy,
    ) -> Result<Vec<Vec<i64>>> {
        let b = logits.shape()[0];
        let mut rng = match strategy {
            Strategy::Sample { seed, .. } => Rng::new(*seed),
            _ => Rng::new(0),
        };
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for _ in 0..max_new {
            let mut next = Vec::with_capacity(b);
            for r in 0..b {
                let logp = last_log_probs(&logits, r)?;
                let t = match strategy {
                    Strategy::Sample { temperature, top_k, .. } => sample(&logp, *temperature, *top_k, &mut rng),
                    _ => (0..logp.len()).fold(0, |best, i| if logp[i] > logp[best] { i } else { best }) as i64,
                };
                if !done[r] {
                    out[r].push(t);
                    done[r] = t == self.eoc_token_id();
                }
                next.push(t);
            }
            if done.iter().all(|&d| d) {
                break;
            }
            logits = self.decode_step(p, &mut state, &Tensor::from_vec(next, &[b, 1])?)?;
        }
        Ok(out)
    }

    /// Beam search for one row.
    fn beam_one(&self, p: &ParamStore, prompt: &Tensor, media: &Tensor, max_new: usize, width: usize, length_penalty: f64) -> Result<Vec<i64>> {
        no_grad(|| {
            let mut state = self.start_decoding(p, media)?;
            let logits = self.decode_step(p, &mut state, prompt)?;
            // Live beams: (tokens, total log-prob, state, last logits row 0).
            let mut beams: Vec<(Vec<i64>, f64, DecodeState, Tensor)> = vec![(Vec::new(), 0.0, state, logits)];
            let mut finished: Vec<(Vec<i64>, f64)> = Vec::new();
            let score = |toks: &[i64], lp: f64| lp / (toks.len().max(1) as f64).powf(length_penalty);
            for _ in 0..max_new {
                let mut cand: Vec<(usize, i64, f64)> = Vec::new();
                for (bi, (_, lp, _, lg)) in beams.iter().enumerate() {
                    let logp = last_log_probs(lg, 0)?;
                    let mut idx: Vec<usize> = (0..logp.len()).collect();
                    idx.sort_by(|&a, &b| logp[b].partial_cmp(&logp[a]).unwrap_or(std::cmp::Ordering::Equal));
                    for &i in idx.iter().take(width) {
                        cand.push((bi, i as i64, lp + logp[i]));
                    }
                }
                cand.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
                let mut next = Vec::new();
                for (bi, tok, lp) in cand {
                    if next.len() >= width {
                        break;
                    }
                    let mut toks = beams[bi].0.clone();
                    toks.push(tok);
                    if tok == self.eoc_token_id() {
                        finished.push((toks, lp));
                        continue;
                    }
                    let mut st = beams[bi].2.clone();
                    let lg = self.decode_step(p, &mut st, &Tensor::from_vec(vec![tok], &[1, 1])?)?;
                    next.push((toks, lp, st, lg));
                }
                beams = next;
                if beams.is_empty() || finished.len() >= width {
                    break;
                }
            }
            finished.extend(beams.into_iter().map(|(t, lp, _, _)| (t, lp)));
            let best = finished
                .into_iter()
                .max_by(|a, b| score(&a.0, a.1).partial_cmp(&score(&b.0, b.1)).unwrap_or(std::cmp::Ordering::Equal))
                .map(|(t, _)| t)
                .unwrap_or_default();
            Ok(best)
        })
    }

    /// Closed-ended scoring: the mean log-likelihood of each candidate continuation after
    /// `prompt [1, l]` (one row) and `media [1, m, R, dv]`. The prompt is processed once and its
    /// cache shared by all candidates. Rank classification picks the argmax.
    pub fn score_candidates(&self, p: &ParamStore, prompt: &Tensor, media: &Tensor, candidates: &[Vec<i64>]) -> Result<Vec<f64>> {
        if prompt.shape()[0] != 1 {
            return Err(Error::Msg(format!("score_candidates: one prompt row at a time, got {:?}", prompt.shape())));
        }
        no_grad(|| {
            let mut base = self.start_decoding(p, media)?;
            let prompt_logits = self.decode_step(p, &mut base, prompt)?;
            let first = last_log_probs(&prompt_logits, 0)?;
            candidates
                .iter()
                .map(|c| {
                    if c.is_empty() {
                        return Err(Error::Msg("score_candidates: empty candidate".into()));
                    }
                    let mut total = first[c[0] as usize];
                    if c.len() > 1 {
                        let mut st = base.clone();
                        let lg = self.decode_step(p, &mut st, &Tensor::from_vec(c[..c.len() - 1].to_vec(), &[1, c.len() - 1])?)?;
                        let lp = lg.log_softmax(-1)?.to_vec::<f64>()?;
                        let v = lg.shape()[2];
                        for (j, &tok) in c[1..].iter().enumerate() {
                            total += lp[j * v + tok as usize];
                        }
                    }
                    Ok(total / c.len() as f64)
                })
                .collect()
        })
    }
}
