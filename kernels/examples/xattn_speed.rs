//! Timing of masked cross-attention forward+backward: the fused run-based kernel against the dense
//! masked reference (a development aid; PyTorch counterpart: benches/torch/masked_xattn.py).
//!
//! B=8, T=256, R=64, H=8, D=64, M ∈ {4, 8}; the T tokens are split into M equal runs (run j sees
//! medium j), the first 8 tokens of each batch row see no image. Median of 15 runs after 3 warm-up
//! runs. Run: `cargo run -p flamingo-kernels --release --example xattn_speed`
//! (RAYON_NUM_THREADS sets the thread count; XATTN_SKIP_NAIVE=1 times only the fused kernel).
use flamingo_kernels::cpu::xattn::*;
use std::time::Instant;

fn median_ms(mut f: impl FnMut(), warmup: usize, runs: usize) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[runs / 2]
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    let mode = XAttnMode::OnlyImmediate;
    for m in [4usize, 8] {
        let s = XAttnShape { b: 8, t: 256, m, r: 64, h: 8, d: 64 };
        let media: Vec<i64> = (0..s.b * s.t)
            .map(|i| {
                let t = i % s.t;
                if t < 8 { 0 } else { (t / (s.t / m) + 1) as i64 }
            })
            .collect();
        let (nq, nkv) = (s.b * s.t * s.h * s.d, s.b * m * s.r * s.h * s.d);
        let gen = |n: usize, seed: u64| -> Vec<f32> {
            let mut x = seed;
            (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        };
        let (q, k, v, d_o) = (gen(nq, 1), gen(nkv, 2), gen(nkv, 3), gen(nq, 4));
        let (mut o, mut lse) = (vec![0.0f32; nq], vec![0.0f32; s.b * s.t * s.h]);
        let (mut dq, mut dk, mut dv) = (vec![0.0f32; nq], vec![0.0f32; nkv], vec![0.0f32; nkv]);

        let mut fwd = || masked_xattn_forward(&s, mode, &q, &k, &v, &media, &mut o, &mut lse).unwrap();
        let fused_fwd = median_ms(&mut fwd, 3, 15);
        let fused = median_ms(
            || {
                masked_xattn_forward(&s, mode, &q, &k, &v, &media, &mut o, &mut lse).unwrap();
                masked_xattn_backward(&s, mode, &q, &k, &v, &media, &o, &lse, &d_o, &mut dq, &mut dk, &mut dv).unwrap();
            },
            3,
            15,
        );
        if std::env::var_os("XATTN_SKIP_NAIVE").is_some() {
            println!("B={} T={} M={m}: fused fwd+bwd {fused:8.2} ms (fwd {fused_fwd:.2})", s.b, s.t);
            continue;
        }
        let naive = median_ms(
            || {
                masked_xattn_forward_naive(&s, mode, &q, &k, &v, &media, &mut o);
                masked_xattn_backward_naive(&s, mode, &q, &k, &v, &media, &d_o, &mut dq, &mut dk, &mut dv);
            },
            3,
            15,
        );
        println!(
            "B={} T={} M={m} R={} H={} D={}: fused fwd+bwd {fused:8.2} ms (fwd {fused_fwd:.2}) | naive dense fwd+bwd {naive:8.2} ms",
            s.b, s.t, s.r, s.h, s.d
        );
    }
}
