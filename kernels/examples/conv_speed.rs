//! Times the three CPU convolution kernels (forward, backward-data, backward-weight) at the fused
//! suite's WS-conv shapes, median of 31 calls each:
//!
//!     cargo run -p flamingo-kernels --release --example conv_speed
use flamingo_kernels::cpu::conv::{conv2d, conv2d_backward_input, conv2d_backward_weight, ConvGeom};
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..5 {
        f();
    }
    let mut t: Vec<f64> = (0..31)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

// Tensors start on a cache line (see `CacheLineAlloc`); FLAMINGO_ALIGNED_ALLOC=0 turns it off.
#[global_allocator]
static ALLOC: flamingo_kernels::alloc::CacheLineAlloc = flamingo_kernels::alloc::CacheLineAlloc;

fn main() {
    let mut geos = vec![
        ("3x3 g2 8x64x16x16->64".to_string(), ConvGeom { n: 8, c: 64, h: 16, w: 16, o: 64, kh: 3, kw: 3, stride: (1, 1), pad: (1, 1, 1, 1), groups: 2 }),
        ("1x1 8x128x8x8->256".to_string(), ConvGeom { n: 8, c: 128, h: 8, w: 8, o: 256, kh: 1, kw: 1, stride: (1, 1), pad: (0, 0, 0, 0), groups: 1 }),
    ];
    // CONV_GEO="n,c,h,w,o,k,stride,groups" times that geometry instead (square kernel, pad k/2).
    if let Ok(v) = std::env::var("CONV_GEO") {
        let f: Vec<usize> = v.split(',').map(|x| x.trim().parse().expect("CONV_GEO: n,c,h,w,o,k,stride,groups")).collect();
        assert_eq!(f.len(), 8, "CONV_GEO: n,c,h,w,o,k,stride,groups");
        let p = f[5] / 2;
        geos = vec![(
            v.clone(),
            ConvGeom { n: f[0], c: f[1], h: f[2], w: f[3], o: f[4], kh: f[5], kw: f[5], stride: (f[6], f[6]), pad: (p, p, p, p), groups: f[7] },
        )];
    }
    for (name, geo) in geos {
        let (ho, wo) = (geo.ho(), geo.wo());
        let x: Vec<f32> = (0..geo.n * geo.c * geo.h * geo.w).map(|i| ((i * 37) % 17) as f32 / 17.0 - 0.5).collect();
        let w: Vec<f32> = (0..geo.o * geo.c / geo.groups * geo.kh * geo.kw).map(|i| ((i * 13) % 11) as f32 / 11.0 - 0.5).collect();
        let dy: Vec<f32> = (0..geo.n * geo.o * ho * wo).map(|i| ((i * 7) % 5) as f32 / 5.0 - 0.5).collect();
        let mut out = vec![0f32; dy.len()];
        let mut dx = vec![0f32; x.len()];
        let f = median_ms(|| conv2d(&x, &w, None, &geo, &mut out));
        let bi = median_ms(|| conv2d_backward_input(&dy, &w, &geo, &mut dx));
        let bw = median_ms(|| {
            std::hint::black_box(conv2d_backward_weight(&x, &dy, &geo, true));
        });
        println!("{name}: forward {f:.3} ms, backward-data {bi:.3} ms, backward-weight {bw:.3} ms, total {:.3} ms", f + bi + bw);
    }
    if flamingo_kernels::cpu::gemm::stats::enabled() {
        eprint!("{}", flamingo_kernels::cpu::gemm::stats::report());
    }
}
