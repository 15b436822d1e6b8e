//! Timing of masked cross-attention forward+backward: the fused run-based kernel against the dense
//! masked reference (a development aid; PyTorch counterpart: benches/torch/masked_xattn.py).
//!
//! B=8, T=256, R=64, H=8, D=64, M ∈ {4, 8}; the T tokens are split into M equal runs (run j sees
//! medium j), the first 8 tokens of each batch row see no image. The M=4 and M=8 problems are timed
//! in alternating rounds (so drift on a shared machine hits both alike): 5 warm-up rounds, then the
//! median of 21 rounds (fused) or 11 rounds (naive).
//! Run: `cargo run -p flamingo-kernels --release --example xattn_speed`
//! (RAYON_NUM_THREADS sets the thread count; XATTN_SKIP_NAIVE=1 times only the fused kernel;
//! XATTN_M=8 or XATTN_M=4,8,16 picks the M values, e.g. to profile one of them; XATTN_RUNS=8
//! splits the tokens into 8 runs whatever M is, cycling over the media; XATTN_CPU_TIME=1
//! times process CPU time instead of wall-clock time, for comparisons on a busy machine).
use flamingo_kernels::cpu::xattn::*;
use std::time::Instant;

struct Problem {
    s: XAttnShape,
    media: Vec<i64>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_o: Vec<f32>,
    o: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

const MODE: XAttnMode = XAttnMode::OnlyImmediate;

fn gen(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

impl Problem {
    /// M media; the tokens split into `runs` equal runs, run j seeing medium j mod M.
    fn new(m: usize, runs: usize) -> Self {
        let s = XAttnShape { b: 8, t: 256, m, r: 64, h: 8, d: 64 };
        let media = (0..s.b * s.t)
            .map(|i| {
                let t = i % s.t;
                if t < 8 {
                    0
                } else {
                    ((t / (s.t / runs)) % m + 1) as i64
                }
            })
            .collect();
        let (nq, nkv) = (s.b * s.t * s.h * s.d, s.b * m * s.r * s.h * s.d);
        Problem {
            s,
            media,
            q: gen(nq, 1),
            k: gen(nkv, 2),
            v: gen(nkv, 3),
            d_o: gen(nq, 4),
            o: vec![0.0; nq],
            lse: vec![0.0; s.b * s.t * s.h],
            dq: vec![0.0; nq],
            dk: vec![0.0; nkv],
            dv: vec![0.0; nkv],
        }
    }
    fn fwd(&mut self) {
        let p = self;
        masked_xattn_forward(&p.s, MODE, &p.q, &p.k, &p.v, &p.media, &mut p.o, &mut p.lse).unwrap();
    }
    fn fused(&mut self) {
        self.fwd();
        let p = self;
        masked_xattn_backward(&p.s, MODE, &p.q, &p.k, &p.v, &p.media, &p.o, &p.lse, &p.d_o, &mut p.dq, &mut p.dk, &mut p.dv).unwrap();
    }
    fn naive(&mut self) {
        let p = self;
        masked_xattn_forward_naive(&p.s, MODE, &p.q, &p.k, &p.v, &p.media, &mut p.o);
        masked_xattn_backward_naive(&p.s, MODE, &p.q, &p.k, &p.v, &p.media, &p.d_o, &mut p.dq, &mut p.dk, &mut p.dv);
    }
}

#[cfg(target_os = "linux")]
#[repr(C)]
struct Timespec {
    sec: i64,
    nsec: i64,
}
#[cfg(target_os = "linux")]
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// Seconds of CPU time used by the whole process (all threads), from `CLOCK_PROCESS_CPUTIME_ID`.
#[cfg(target_os = "linux")]
fn cpu_seconds() -> f64 {
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid out-pointer; clock 2 is CLOCK_PROCESS_CPUTIME_ID on Linux.
    unsafe { clock_gettime(2, &mut ts) };
    ts.sec as f64 + ts.nsec as f64 * 1e-9
}

/// Seconds since the first call (wall clock), or of process CPU time with XATTN_CPU_TIME=1: on a
/// busy shared machine CPU time is much less disturbed by other processes (it counts rayon's idle
/// spinning, though).
fn now() -> f64 {
    static START: std::sync::OnceLock<(Instant, bool)> = std::sync::OnceLock::new();
    let (t0, cpu) = *START.get_or_init(|| (Instant::now(), std::env::var_os("XATTN_CPU_TIME").is_some()));
    #[cfg(target_os = "linux")]
    if cpu {
        return cpu_seconds();
    }
    let _ = cpu;
    t0.elapsed().as_secs_f64()
}

/// Median and minimum ms per problem of `f`, in alternating rounds over the problems.
fn median_ms(ps: &mut [Problem], f: fn(&mut Problem), warmup: usize, rounds: usize) -> Vec<(f64, f64)> {
    let mut t = vec![Vec::with_capacity(rounds); ps.len()];
    for round in 0..warmup + rounds {
        for (i, p) in ps.iter_mut().enumerate() {
            let s = now();
            f(p);
            if round >= warmup {
                t[i].push((now() - s) * 1e3);
            }
        }
    }
    t.into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (v[v.len() / 2], v[0])
        })
        .collect()
}

// Cache-line-aligned tensors, as the `flamingo` program has (FLAMINGO_ALIGNED_ALLOC=0: glibc's).
#[global_allocator]
static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    let ms: Vec<usize> = match std::env::var("XATTN_M") {
        Ok(v) => v.split(',').map(|x| x.trim().parse().expect("XATTN_M: comma-separated M values")).collect(),
        Err(_) => vec![4, 8],
    };
    // XATTN_RUNS=8 splits the tokens into 8 runs whatever M is (runs cycle over the media), to
    // separate the cost of more, shorter runs from that of more K/V data.
    let runs: Option<usize> = std::env::var("XATTN_RUNS").ok().map(|v| v.trim().parse().expect("XATTN_RUNS: a number"));
    let mut ps: Vec<Problem> = ms.into_iter().map(|m| Problem::new(m, runs.unwrap_or(m))).collect();
    let fused = median_ms(&mut ps, Problem::fused, 5, 21);
    let fwd = median_ms(&mut ps, Problem::fwd, 5, 21);
    let naive = if std::env::var_os("XATTN_SKIP_NAIVE").is_some() { None } else { Some(median_ms(&mut ps, Problem::naive, 1, 11)) };
    for (i, p) in ps.iter().enumerate() {
        let s = p.s;
        print!(
            "B={} T={} M={} runs={} R={} H={} D={}: fused fwd+bwd {:8.2} ms (fwd {:.2}; min {:.2} / {:.2})",
            s.b,
            s.t,
            s.m,
            runs.unwrap_or(s.m),
            s.r,
            s.h,
            s.d,
            fused[i].0,
            fwd[i].0,
            fused[i].1,
            fwd[i].1
        );
        match &naive {
            Some(n) => println!(" | naive dense fwd+bwd {:8.2} ms", n[i].0),
            None => println!(),
        }
    }
}
