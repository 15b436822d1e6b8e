//! Development timing of the `small` preset's Perceiver Resampler alone, forward + backward, on
//! visual features of the training step's shape (`[8, 4, 1, 16, 512]`: batch, media, frames, tokens, width): a loop for A/B runs of its
//! attention path (`FLAMINGO_REFERENCE_KERNELS=1` for the composition of primitive ops).
//!
//! `cargo run --release -p flamingo-benches --example perceiver_speed -- 20`
use flamingo_engine::{DType, ParamStore, Rng, Tensor};
use flamingo_model::config::preset;
use flamingo_model::flamingo::Flamingo;
use std::time::Instant;

// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_engine::CacheLineAlloc = flamingo_engine::CacheLineAlloc;

fn main() {
    flamingo_engine::tune_allocator();
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let times = flamingo_engine::on_pool(|| {
        let cfg = preset("small").and_then(|p| p.flamingo).expect("the small preset");
        let mut rng = Rng::new(3);
        let mut store = ParamStore::new();
        let model = Flamingo::new(&mut store, &cfg, &mut rng).expect("model");
        let feats = Tensor::randn(&[8, 4, 1, 16, 512], DType::F32, &mut rng);
        let mut times = Vec::new();
        for i in 0..reps + 2 {
            let t = Instant::now();
            let media = model.encode_media(&store, &feats).expect("resampler");
            media.sum_all().and_then(|s| s.backward()).expect("backward");
            for (_, p) in store.iter() {
                p.zero_grad();
            }
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times
    });
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!("perceiver (small) forward + backward: median {:.2} ms over {reps}", sorted[sorted.len() / 2]);
}
