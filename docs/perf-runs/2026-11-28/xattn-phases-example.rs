//! Per-phase cycle accounting of the fused masked cross-attention (session 8). To use: apply
//! `python3 docs/perf-runs/2026-11-28/xattn-phases-instrument.py` at commit b8bbbee, copy this file
//! to kernels/examples/xattn_phases.rs, `cargo run --release -p flamingo-kernels --example xattn_phases`.
//! VARIANTS=0,1 alternates a second variant via the `PREB` flag the patch defines (unused at b8bbbee).
use flamingo_kernels::cpu::xattn::*;
use std::sync::atomic::Ordering::Relaxed;
fn gen(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n).map(|_| { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 }).collect()
}
struct P { s: XAttnShape, media: Vec<i64>, q: Vec<f32>, k: Vec<f32>, v: Vec<f32>, d_o: Vec<f32>, o: Vec<f32>, lse: Vec<f32>, dq: Vec<f32>, dk: Vec<f32>, dv: Vec<f32> }
impl P {
    fn new(m: usize) -> P {
        let s = XAttnShape { b: 8, t: 256, m, r: 64, h: 8, d: 64 };
        let media: Vec<i64> = (0..s.b * s.t).map(|i| { let t = i % s.t; if t < 8 { 0 } else { (t / (s.t / m) + 1) as i64 } }).collect();
        let (nq, nkv) = (s.b * s.t * s.h * s.d, s.b * m * s.r * s.h * s.d);
        P { s, media, q: gen(nq, 1), k: gen(nkv, 2), v: gen(nkv, 3), d_o: gen(nq, 4), o: vec![0.0; nq], lse: vec![0.0; s.b * s.t * s.h], dq: vec![0.0; nq], dk: vec![0.0; nkv], dv: vec![0.0; nkv] }
    }
    fn run(&mut self) {
        let p = self;
        masked_xattn_forward(&p.s, XAttnMode::OnlyImmediate, &p.q, &p.k, &p.v, &p.media, &mut p.o, &mut p.lse).unwrap();
        masked_xattn_backward(&p.s, XAttnMode::OnlyImmediate, &p.q, &p.k, &p.v, &p.media, &p.o, &p.lse, &p.d_o, &mut p.dq, &mut p.dk, &mut p.dv).unwrap();
    }
}
fn main() {
    let names = ["b:gather q,dO", "b:gather k,v", "b:delta", "b:transp", "b:S,dP", "b:probgrad", "b:dQ", "b:dK,dV(last head)", "b:scat dq", "b:scat dkdv", "f:gather q", "f:gather kv", "f:transp", "f:S", "f:softmax", "f:O(last head)", "f:scat o", "b:dK,dV(other heads)", "f:O(other heads)"];
    let variants: Vec<bool> = match std::env::var("VARIANTS") { Ok(v) => v.split(',').map(|x| x == "1").collect(), Err(_) => vec![false] };
    let mut ps = [P::new(4), P::new(8)];
    let nc = 2 * variants.len();
    let mut acc = vec![vec![0f64; 19]; nc];
    let mut wall = vec![Vec::new(); nc];
    let rounds = 60;
    for round in 0..rounds + 5 {
        for (vi, &var) in variants.iter().enumerate() {
            PREB.store(var, Relaxed);
            for (mi, p) in ps.iter_mut().enumerate() {
                take_phases();
                let t = std::time::Instant::now();
                p.run();
                let w = t.elapsed().as_secs_f64() * 1e3;
                let ph = take_phases();
                if round >= 5 {
                    let c = vi * 2 + mi;
                    wall[c].push(w);
                    for i in 0..19 { acc[c][i] += ph[i] as f64 / rounds as f64 / 1e6; }
                }
            }
        }
    }
    for (vi, var) in variants.iter().enumerate() {
        println!("variant {var}: phase Mcycles (summed over threads) M=4, M=8, delta");
        let (a, b) = (&acc[vi * 2], &acc[vi * 2 + 1]);
        for i in 0..19 { println!("  {:14} {:8.3} {:8.3} {:+8.3}", names[i], a[i], b[i], b[i] - a[i]); }
        let (ta, tb): (f64, f64) = (a.iter().sum(), b.iter().sum());
        let med = |v: &mut Vec<f64>| { v.sort_by(|x, y| x.partial_cmp(y).unwrap()); v[v.len() / 2] };
        let (wa, wb) = (med(&mut wall[vi * 2].clone()), med(&mut wall[vi * 2 + 1].clone()));
        println!("  total {:8.3} {:8.3} {:+.1}%   wall median {:.2} / {:.2} ms {:+.1}%", ta, tb, (tb / ta - 1.0) * 100.0, wa, wb, (wb / wa - 1.0) * 100.0);
    }
}
