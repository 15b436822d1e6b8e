//! Our own f32 GEMM for AVX2 + FMA machines, in the BLIS/GotoBLAS structure: packed panels of
//! the operands and a 6 × 16 register-blocked micro-kernel (on AVX-512 CPUs, a 6 × 32 kernel over
//! two neighbouring B slivers of the same packing, which gives the same bits). By default
//! `gemm::use_ours` sends products here only on CPUs without AVX-512 (see there why).
//!
//! Why: on the development VM (AMD EPYC, AVX2) the `gemm` crate's f32 products ran at 70–100
//! GFLOP/s on two threads, while the two vCPUs can do 240–285 GFLOP/s of FMAs (measured with
//! independent FMA chains; each vCPU has its own FMA units) and this micro-kernel alone ~75–95 per
//! thread. The training steps spend ~80 % of their time in GEMMs. See docs/PERF.md, "Our own f32
//! GEMM", for what it changed.
//!
//! Layout of the computation, for `C (m×n) [+]= A (m×k) · B (k×n)`:
//! - `jc` loop over column panels of `NC` columns, `pc` loop over depth slices of at most `KC`
//!   (equal slices; one slice for products up to `KC_MAX` deep);
//! - B's `KC × NC` panel is packed once into slivers of `NR` columns (k-major, zero-padded), in
//!   parallel; it stays in L3 and each sliver in L1/L2 while used;
//! - the rows are split into blocks of at most `MC` rows, one task each (rayon); a task packs its
//!   `MC × KC` block of A into slivers of `MR` rows (k-major) that stay in L2, then runs the
//!   micro-kernel over every (B sliver, A sliver) pair.
//!
//! Products under `SPLIT_MAX_MACS` are instead cut at the top into bands of rows (or columns),
//! each band a whole serial product on one rayon task: one fork-join per product instead of two
//! per depth slice, which is what the tiny training step's products need.
//!
//! Every output element is summed in the same order whatever the thread count (depth slices in
//! order, each slice sequentially in the micro-kernel), so results do not depend on threads.
//! Operands are given by strides, so transposed views multiply without copies.
#![cfg(target_arch = "x86_64")]
use super::avx2::transpose8;
use super::gemm::MatRef;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Rows of the micro-kernel tile.
const MR: usize = 6;
/// Columns of the micro-kernel tile (two AVX registers), and of a packed B sliver.
pub const NR: usize = 16;
/// Depth of one packed slice (an A sliver is 6 KB, a B sliver 16 KB: both stay in L1/L2).
const KC: usize = 256;
/// Deepest single slice: products up to this deep are not sliced at all (a 256 + 32 split of
/// the 3 × 3 conv's k = 288 re-read and re-wrote C for a 32-deep remainder).
const KC_MAX: usize = 320;

/// Depth of the packed slices of a k-deep product: one slice up to [`KC_MAX`], otherwise equal
/// slices of at most [`KC`] (576 as 3 × 192, not 256 + 256 + 64).
fn slice_depth(k: usize) -> usize {
    if k <= KC_MAX {
        k
    } else {
        k.div_ceil(k.div_ceil(KC))
    }
}
/// Most rows in one A block (MC × KC × 4 bytes = 120 KB, in L2).
const MC: usize = 120;
/// Columns in one B panel (KC × NC × 4 bytes = 4 MB, in L3).
const NC: usize = 4096;

/// Whether this CPU runs this GEMM (AVX2 and FMA).
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Whether the 6 × 32 AVX-512 micro-kernel runs (this CPU has AVX-512F, and `FLAMINGO_SGEMM_AVX512`
/// is not `0`, which keeps the AVX2 kernel for side-by-side measurements). Both kernels sum every
/// output element over the depth in the same order with the same FMAs, so they give the same bits.
pub fn wide_available() -> bool {
    use std::sync::OnceLock;
    static WIDE: OnceLock<bool> = OnceLock::new();
    *WIDE.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::env::var("FLAMINGO_SGEMM_AVX512").as_deref() != Ok("0"))
}

thread_local! {
    /// Reusable packing buffers of this thread (taken while in use, so a nested call on the same
    /// thread through rayon's work stealing simply allocates its own).
    static A_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static B_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

fn take_buf(which: &'static std::thread::LocalKey<Cell<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut v = which.with(|c| c.take());
    if v.len() < len {
        v = vec![0.0; len];
    }
    v
}

fn give_buf(which: &'static std::thread::LocalKey<Cell<Vec<f32>>>, v: Vec<f32>) {
    which.with(|c| c.set(v));
}

/// A raw pointer that may cross threads (each task writes a disjoint set of output rows).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. Closures must use this, not `.0`: a field access would make the closure
    /// capture the bare (non-`Send`) raw pointer instead of the wrapper.
    #[inline]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A right operand B (k × n) that packs its own slivers instead of being read at strides: e.g. a
/// convolution's im2col matrix, packed straight from the input image (implicit GEMM).
pub trait PackB: Sync {
    /// Writes rows `p0 .. p0 + kc` of columns `j0 .. j0 + cols` (`cols ≤ NR`) k-major into
    /// `out[p·NR + j]` (`out.len() == kc·NR`), with zeros in the columns `cols .. NR`.
    fn pack(&self, p0: usize, kc: usize, j0: usize, cols: usize, out: &mut [f32]);
}

/// The right operand of a [`Product`].
#[derive(Clone, Copy)]
enum Rhs<'a> {
    /// Element (p, j) at `data[r.offset + p·r.rs + j·r.cs]`.
    Strided(&'a [f32], MatRef),
    /// Packed by the operand itself; column j of this product is column `j0 + j` of the operand.
    Packer(&'a dyn PackB, usize),
}

/// `dst (m×n, row stride dst_rs, column stride 1) [+]= lhs (m×k) · rhs (k×n)`, operands at the
/// strides of `l` and `r` inside `lhs` and `rhs`. Uses both threads when `parallel`.
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]); `dst` must be writable for the m×n region,
/// not alias the operands, and the operand layouts must stay inside their slices. `k ≥ 1`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: &[f32],
    l: MatRef,
    rhs: &[f32],
    r: MatRef,
    parallel: bool,
) {
    product(m, n, k, dst, dst_rs, accumulate, lhs, l, Rhs::Strided(rhs, r), parallel)
}

/// [`sgemm`] with a B that packs itself ([`PackB`]): `dst (m×n) [+]= lhs (m×k) · rhs (k×n)`.
///
/// # Safety
/// As [`sgemm`] for `dst` and `lhs`; `rhs` must pack in-bounds data for every requested block.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_packed_rhs(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    lhs: &[f32],
    l: MatRef,
    rhs: &dyn PackB,
    parallel: bool,
) {
    product(m, n, k, dst, dst_rs, accumulate, lhs, l, Rhs::Packer(rhs, 0), parallel)
}

#[allow(clippy::too_many_arguments)]
unsafe fn product(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: isize, accumulate: bool, lhs: &[f32], l: MatRef, rhs: Rhs<'_>, parallel: bool) {
    debug_assert!(k >= 1 && m >= 1 && n >= 1);
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let macs = m * n * k;
    // Tasks: up to 4 per thread (rayon balances them when a vCPU is descheduled), each at least
    // ~2M multiply-adds, each a whole serial product on a band of rows (or of columns when the
    // output is wider than tall). One fork-join per product; the cost is that every row band
    // packs all of B (every column band all of A): k·n per band against m·n·k/bands of work.
    // Bands of at least 8 tiles, since each band repacks the other operand (128 × 128 × 1280
    // in 8 bands of 18 rows ran at 54 GFLOP/s), and a multiple of the thread count.
    let by_rows = m.div_ceil(MR) >= n.div_ceil(NR);
    let (len, unit) = if by_rows { (m, MR) } else { (n, NR) };
    let per_thread = (len / (8 * unit * threads)).clamp(1, 4);
    let tasks = if threads > 1 { (per_thread * threads).min(macs >> 21).max(1) } else { 1 };
    // Large products keep one shared packed B per depth slice and split rows inside the blocked
    // loops (the top-level split measured no better on the `small` step's 2048 × 512 × 512
    // products, and it repacks B per band); smaller ones split at the top (tiny step: 69–80 →
    // 67–72 ms, alternating runs).
    let whole = Product { m, n, k, dst: SendPtr(dst), dst_rs, accumulate, lhs, l, rhs };
    if tasks <= 1 || macs >= SPLIT_MAX_MACS {
        return whole.blocked(if tasks <= 1 { 1 } else { threads });
    }
    let band = len.div_ceil(tasks).div_ceil(unit) * unit;
    (0..len.div_ceil(band)).into_par_iter().for_each(|t| {
        let start = t * band;
        let size = (len - start).min(band);
        whole.band(by_rows, start, size).blocked(1);
    });
}

/// Products with at least this many multiply-adds parallelise inside the blocked loops.
const SPLIT_MAX_MACS: usize = 1 << 26;

/// One product `dst (m×n) [+]= lhs (m×k) · rhs (k×n)`, as [`sgemm`] takes it.
#[derive(Clone, Copy)]
struct Product<'a> {
    m: usize,
    n: usize,
    k: usize,
    dst: SendPtr,
    dst_rs: isize,
    accumulate: bool,
    lhs: &'a [f32],
    l: MatRef,
    rhs: Rhs<'a>,
}

impl Product<'_> {
    /// Rows (or, when `!rows`, columns) `start .. start + size` of the output as a product of
    /// its own.
    unsafe fn band(self, rows: bool, start: usize, size: usize) -> Self {
        let l = self.l;
        if rows {
            let l = MatRef { offset: (l.offset as isize + start as isize * l.rs) as usize, ..l };
            Product { m: size, dst: SendPtr(self.dst.get().offset(start as isize * self.dst_rs)), l, ..self }
        } else {
            let rhs = match self.rhs {
                Rhs::Strided(data, r) => Rhs::Strided(data, MatRef { offset: (r.offset as isize + start as isize * r.cs) as usize, ..r }),
                Rhs::Packer(p, j0) => Rhs::Packer(p, j0 + start),
            };
            Product { n: size, dst: SendPtr(self.dst.get().add(start)), rhs, ..self }
        }
    }

    /// The blocked product on `threads` threads (1: entirely on the calling thread).
    unsafe fn blocked(self, threads: usize) {
        let Product { m, n, k, dst, dst_rs, accumulate, lhs, l, rhs } = self;
        // Row blocks: at most MC rows, and enough blocks to keep every thread busy.
        let want_blocks = if threads > 1 { 3 * threads } else { 1 };
        let mc = (m.div_ceil(want_blocks).div_ceil(MR) * MR).clamp(MR, MC);
        let row_blocks = m.div_ceil(mc);
        // Equal column panels (8194 columns as 2 × 4097, not 4096 + 4096 + 2: every panel
        // repacks A), each a whole number of slivers.
        let nc_even = n.div_ceil(n.div_ceil(NC)).div_ceil(NR) * NR;
        let kc_all = slice_depth(k);
        let mut bbuf = take_buf(&B_BUF, nc_even * kc_all);
        let lhs_ptr = lhs.as_ptr().add(l.offset);
        let wide = wide_available();
        for jc in (0..n).step_by(nc_even) {
            let nc = (n - jc).min(nc_even);
            let slivers = nc.div_ceil(NR);
            for pc in (0..k).step_by(kc_all) {
                let kc = (k - pc).min(kc_all);
                let load_c = accumulate || pc > 0;
                // Pack B[pc.., jc..] into slivers of NR columns.
                {
                    let pack = |s: usize, out: &mut [f32]| {
                        let cols = (nc - s * NR).min(NR);
                        match rhs {
                            Rhs::Strided(data, r) => {
                                let at = data.as_ptr().add(r.offset).offset(pc as isize * r.rs + (jc + s * NR) as isize * r.cs);
                                pack_b(kc, cols, at, r.rs, r.cs, out)
                            }
                            Rhs::Packer(p, j0) => p.pack(pc, kc, j0 + jc + s * NR, cols, out),
                        }
                    };
                    let bslice = &mut bbuf[..slivers * NR * kc];
                    if threads > 1 && slivers >= 4 && kc * nc >= 1 << 15 {
                        bslice.par_chunks_mut(NR * kc).enumerate().for_each(|(s, out)| pack(s, out));
                    } else {
                        bslice.chunks_mut(NR * kc).enumerate().for_each(|(s, out)| pack(s, out));
                    }
                }
                let bpacked: &[f32] = &bbuf[..slivers * NR * kc];
                let a_at = SendPtr(lhs_ptr.offset(pc as isize * l.cs) as *mut f32);
                let block = |ib: usize| {
                    let ic = ib * mc;
                    let rows = (m - ic).min(mc);
                    let asl = rows.div_ceil(MR);
                    let mut abuf = take_buf(&A_BUF, MC.div_ceil(MR) * MR * kc_all);
                    if l.rs == 1 && l.cs != 1 {
                        pack_a_columns(kc, rows, a_at.get().add(ic), l.cs, &mut abuf[..asl * MR * kc]);
                    } else {
                        for s in 0..asl {
                            let r0 = ic + s * MR;
                            pack_a(kc, (m - r0).min(MR), a_at.get().offset(r0 as isize * l.rs), l.rs, l.cs, &mut abuf[s * MR * kc..(s + 1) * MR * kc]);
                        }
                    }
                    let mut js = 0;
                    while js < slivers {
                        let bp = bpacked.as_ptr().add(js * NR * kc);
                        // With AVX-512, two neighbouring slivers at once (a 6 × 32 tile) while
                        // the second is full; the last sliver of a panel may go alone.
                        let pair = wide && js + 1 < slivers && nc - js * NR >= 2 * NR;
                        let cols = (nc - js * NR).min(if pair { 2 * NR } else { NR });
                        for s in 0..asl {
                            let r0 = ic + s * MR;
                            let rws = (m - r0).min(MR);
                            let c = dst.get().offset(r0 as isize * dst_rs + (jc + js * NR) as isize);
                            let a = abuf.as_ptr().add(s * MR * kc);
                            if pair {
                                tile_wide(kc, a, bp, c, dst_rs, rws, load_c);
                            } else {
                                tile(kc, a, bp, c, dst_rs, rws, cols, load_c);
                            }
                        }
                        js += if pair { 2 } else { 1 };
                    }
                    give_buf(&A_BUF, abuf);
                };
                if threads > 1 && row_blocks > 1 {
                    (0..row_blocks).into_par_iter().for_each(block);
                } else {
                    (0..row_blocks).for_each(block);
                }
            }
        }
        give_buf(&B_BUF, bbuf);
    }
}

/// Packs `rows ≤ MR` rows × `kc` columns of A (element (i, p) at `a + i·rs + p·cs`) k-major into
/// `out[p·MR + i]`, zero-filling missing rows.
#[inline]
unsafe fn pack_a(kc: usize, rows: usize, a: *const f32, rs: isize, cs: isize, out: &mut [f32]) {
    let out = &mut out[..kc * MR];
    if rows < MR {
        out.fill(0.0);
    }
    if cs == 1 && rows == MR {
        pack_a_rows(kc, a, rs, out);
    } else if cs == 1 {
        // Row-major A: one sequential stream per row.
        for i in 0..rows {
            let src = std::slice::from_raw_parts(a.offset(i as isize * rs), kc);
            for (p, &v) in src.iter().enumerate() {
                *out.get_unchecked_mut(p * MR + i) = v;
            }
        }
    } else if rs == 1 {
        // Column-major A (a transposed view): each depth step is `rows` contiguous values.
        for p in 0..kc {
            let src = a.offset(p as isize * cs);
            for i in 0..rows {
                *out.get_unchecked_mut(p * MR + i) = *src.add(i);
            }
        }
    } else {
        for p in 0..kc {
            for i in 0..rows {
                *out.get_unchecked_mut(p * MR + i) = *a.offset(i as isize * rs + p as isize * cs);
            }
        }
    }
}

/// Full-height pack of a row-major A: 8 depth steps of the 6 rows at a time, transposed in
/// registers (the scalar version spent ~60 % of its time on scattered single-float stores).
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a_rows(kc: usize, a: *const f32, rs: isize, out: &mut [f32]) {
    let o = out.as_mut_ptr();
    let mut p = 0;
    // Each transposed column is stored as 8 floats (6 wanted + 2 that the next store
    // overwrites), so stop while the last store still fits in this sliver.
    while p + 8 < kc {
        let row = |i: usize| _mm256_loadu_ps(a.offset(i as isize * rs + p as isize));
        let z = _mm256_setzero_ps();
        let t = transpose8([row(0), row(1), row(2), row(3), row(4), row(5), z, z]);
        for (q, v) in t.iter().enumerate() {
            _mm256_storeu_ps(o.add((p + q) * MR), *v);
        }
        p += 8;
    }
    for pp in p..kc {
        for i in 0..MR {
            *o.add(pp * MR + i) = *a.offset(i as isize * rs + pp as isize);
        }
    }
}

/// Packs a whole block of `rows` rows × `kc` columns of a column-major A (element (i, p) at
/// `a + i + p·cs`, a transposed view) into its slivers: each depth step reads `rows` contiguous
/// values once (packing sliver by sliver would touch every cache line of the block ~3 times).
#[inline]
unsafe fn pack_a_columns(kc: usize, rows: usize, a: *const f32, cs: isize, out: &mut [f32]) {
    let slivers = rows.div_ceil(MR);
    if !rows.is_multiple_of(MR) {
        out[(slivers - 1) * MR * kc..slivers * MR * kc].fill(0.0);
    }
    let o = out.as_mut_ptr();
    for p in 0..kc {
        let src = std::slice::from_raw_parts(a.offset(p as isize * cs), rows);
        for (s, chunk) in src.chunks(MR).enumerate() {
            let dst = o.add(s * MR * kc + p * MR);
            for (i, &v) in chunk.iter().enumerate() {
                *dst.add(i) = v;
            }
        }
    }
}

/// Packs `kc` rows × `cols ≤ NR` columns of B (element (p, j) at `b + p·rs + j·cs`) k-major into
/// `out[p·NR + j]`, zero-filling missing columns.
#[inline]
unsafe fn pack_b(kc: usize, cols: usize, b: *const f32, rs: isize, cs: isize, out: &mut [f32]) {
    let out = &mut out[..kc * NR];
    if cols < NR {
        out.fill(0.0);
    }
    if cs == 1 {
        for p in 0..kc {
            let src = b.offset(p as isize * rs);
            if cols == NR {
                copy16(src, out.as_mut_ptr().add(p * NR));
            } else {
                std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(p * NR), cols);
            }
        }
    } else if rs == 1 {
        // B is a transposed view (B = Wᵀ with W row-major): one sequential stream per column.
        if cols == NR {
            transpose_pack_b(kc, b, cs, out);
        } else {
            for j in 0..cols {
                let src = std::slice::from_raw_parts(b.offset(j as isize * cs), kc);
                for (p, &v) in src.iter().enumerate() {
                    *out.get_unchecked_mut(p * NR + j) = v;
                }
            }
        }
    } else {
        for p in 0..kc {
            for j in 0..cols {
                *out.get_unchecked_mut(p * NR + j) = *b.offset(p as isize * rs + j as isize * cs);
            }
        }
    }
}

/// Copies 16 floats with two AVX moves (as a `copy_nonoverlapping`, LLVM merged it with the
/// variable-length branch into one `memcpy` call per row: 2.5 % of the tiny training step).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn copy16(src: *const f32, dst: *mut f32) {
    _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
    _mm256_storeu_ps(dst.add(8), _mm256_loadu_ps(src.add(8)));
}

/// Full-width pack of a transposed B: 8 × 8 register transposes of the 16 column streams.
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose_pack_b(kc: usize, b: *const f32, cs: isize, out: &mut [f32]) {
    let o = out.as_mut_ptr();
    let mut p = 0;
    while p + 8 <= kc {
        for half in 0..2 {
            let col = |j: usize| _mm256_loadu_ps(b.offset((half * 8 + j) as isize * cs + p as isize));
            let t = transpose8([col(0), col(1), col(2), col(3), col(4), col(5), col(6), col(7)]);
            for (q, v) in t.iter().enumerate() {
                _mm256_storeu_ps(o.add((p + q) * NR + half * 8), *v);
            }
        }
        p += 8;
    }
    for pp in p..kc {
        for j in 0..NR {
            *o.add(pp * NR + j) = *b.offset(j as isize * cs + pp as isize);
        }
    }
}

/// One MR × NR tile: `C[..rows, ..cols] (=|+=) Apack · Bpack` over depth `kc`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: isize, rows: usize, cols: usize, load_c: bool) {
    if rows == MR && cols == NR {
        kernel_6x16(kc, a, b, c, rsc, load_c);
    } else {
        // Edge tile: compute into a scratch tile, then copy the valid part.
        let mut t = [0.0f32; MR * NR];
        kernel_6x16(kc, a, b, t.as_mut_ptr(), NR as isize, false);
        store_part(&t, NR, c, rsc, rows, cols, load_c);
    }
}

/// Writes (or adds, with `load_c`) the top-left `rows × cols` of a scratch tile `t` (row stride
/// `ld`) into C.
#[inline]
unsafe fn store_part(t: &[f32], ld: usize, c: *mut f32, rsc: isize, rows: usize, cols: usize, load_c: bool) {
    for i in 0..rows {
        let row = c.offset(i as isize * rsc);
        for (j, &v) in t[i * ld..i * ld + cols].iter().enumerate() {
            *row.add(j) = if load_c { *row.add(j) + v } else { v };
        }
    }
}

/// A 6 × 32 tile from one A sliver and two neighbouring full B slivers (`b` and `b + NR·kc`), on
/// AVX-512: `rows ≤ MR` valid rows (the rest go to a scratch tile).
///
/// # Safety
/// The CPU must have AVX-512F ([`wide_available`]); both slivers must be packed `kc` deep.
#[inline]
unsafe fn tile_wide(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: isize, rows: usize, load_c: bool) {
    if rows == MR {
        kernel_6x32(kc, a, b, c, rsc, load_c);
    } else {
        let mut t = [0.0f32; MR * 2 * NR];
        kernel_6x32(kc, a, b, t.as_mut_ptr(), 2 * NR as isize, false);
        store_part(&t, 2 * NR, c, rsc, rows, 2 * NR, load_c);
    }
}

/// The AVX-512 micro-kernel: 6 × 32 tile in 6 zmm accumulators per sliver (12 in all); per depth
/// step one 16-wide load from each B sliver, six broadcasts of A and twelve FMAs. Same packed
/// layout as [`kernel_6x16`]; each output element is the same FMA chain over p in order.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_6x32(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: isize, load_c: bool) {
    let z = _mm512_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    for i in 0..MR {
        let row = c.offset(i as isize * rsc) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(row);
        _mm_prefetch::<_MM_HINT_T0>(row.add(64));
        _mm_prefetch::<_MM_HINT_T0>(row.add(124));
    }
    let mut a = a;
    let mut b0p = b;
    let mut b1p = b.add(NR * kc);
    macro_rules! row {
        ($i:expr, $b0:ident, $b1:ident, $lo:ident, $hi:ident) => {{
            let x = _mm512_set1_ps(*a.add($i));
            $lo = _mm512_fmadd_ps(x, $b0, $lo);
            $hi = _mm512_fmadd_ps(x, $b1, $hi);
        }};
    }
    macro_rules! step {
        () => {{
            let b0 = _mm512_loadu_ps(b0p);
            let b1 = _mm512_loadu_ps(b1p);
            row!(0, b0, b1, c00, c01);
            row!(1, b0, b1, c10, c11);
            row!(2, b0, b1, c20, c21);
            row!(3, b0, b1, c30, c31);
            row!(4, b0, b1, c40, c41);
            row!(5, b0, b1, c50, c51);
            a = a.add(MR);
            b0p = b0p.add(NR);
            b1p = b1p.add(NR);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)];
    for (i, (lo, hi)) in rows.into_iter().enumerate() {
        let row = c.offset(i as isize * rsc);
        if load_c {
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), lo));
            _mm512_storeu_ps(row.add(NR), _mm512_add_ps(_mm512_loadu_ps(row.add(NR)), hi));
        } else {
            _mm512_storeu_ps(row, lo);
            _mm512_storeu_ps(row.add(NR), hi);
        }
    }
}

/// The micro-kernel: 12 accumulator registers hold the 6 × 16 tile; per depth step two loads of
/// B, six broadcasts of A and twelve FMAs.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, rsc: isize, load_c: bool) {
    let z = _mm256_setzero_ps();
    let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21) = (z, z, z, z, z, z);
    let (mut c30, mut c31, mut c40, mut c41, mut c50, mut c51) = (z, z, z, z, z, z);
    // The C tile is read (or written) only after the loop: ask for its lines now.
    for i in 0..MR {
        let row = c.offset(i as isize * rsc) as *const i8;
        _mm_prefetch::<_MM_HINT_T0>(row);
        _mm_prefetch::<_MM_HINT_T0>(row.add(60));
    }
    let mut a = a;
    let mut b = b;
    // Row i of the tile: broadcast A[i] and multiply-add it with both halves of the B row.
    macro_rules! row {
        ($i:expr, $b0:ident, $b1:ident, $lo:ident, $hi:ident) => {{
            let x = _mm256_broadcast_ss(&*a.add($i));
            $lo = _mm256_fmadd_ps(x, $b0, $lo);
            $hi = _mm256_fmadd_ps(x, $b1, $hi);
        }};
    }
    macro_rules! step {
        () => {{
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            row!(0, b0, b1, c00, c01);
            row!(1, b0, b1, c10, c11);
            row!(2, b0, b1, c20, c21);
            row!(3, b0, b1, c30, c31);
            row!(4, b0, b1, c40, c41);
            row!(5, b0, b1, c50, c51);
            a = a.add(MR);
            b = b.add(NR);
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!();
        step!();
        step!();
        step!();
        p += 4;
    }
    while p < kc {
        step!();
        p += 1;
    }
    let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)];
    for (i, (lo, hi)) in rows.into_iter().enumerate() {
        let row = c.offset(i as isize * rsc);
        if load_c {
            _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), lo));
            _mm256_storeu_ps(row.add(8), _mm256_add_ps(_mm256_loadu_ps(row.add(8)), hi));
        } else {
            _mm256_storeu_ps(row, lo);
            _mm256_storeu_ps(row.add(8), hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive f64 product with general strides.
    fn naive(m: usize, n: usize, k: usize, a: &[f32], l: MatRef, b: &[f32], r: MatRef) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = a[(l.offset as isize + i as isize * l.rs + p as isize * l.cs) as usize] as f64;
                    let bv = b[(r.offset as isize + p as isize * r.rs + j as isize * r.cs) as usize] as f64;
                    s += av * bv;
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    fn check(m: usize, n: usize, k: usize, ta: bool, tb: bool, accumulate: bool, parallel: bool) {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        let a: Vec<f32> = (0..m * k + 3).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13).collect();
        let b: Vec<f32> = (0..k * n + 5).map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.07).collect();
        let l = if ta { MatRef { offset: 3, rs: 1, cs: m as isize } } else { MatRef { offset: 3, rs: k as isize, cs: 1 } };
        let r = if tb { MatRef { offset: 5, rs: 1, cs: k as isize } } else { MatRef { offset: 5, rs: n as isize, cs: 1 } };
        // Output with a wider row stride than n, and a sentinel in the gap.
        let ld = n + 3;
        let init: Vec<f32> = (0..m * ld).map(|i| (i % 13) as f32 * 0.5).collect();
        let mut c = init.clone();
        unsafe { sgemm(m, n, k, c.as_mut_ptr(), ld as isize, accumulate, &a, l, &b, r, parallel) };
        let want = naive(m, n, k, &a, l, &b, r);
        for i in 0..m {
            for j in 0..ld {
                let got = c[i * ld + j] as f64;
                if j >= n {
                    assert_eq!(got, init[i * ld + j] as f64, "wrote outside the tile at ({i}, {j})");
                    continue;
                }
                let w = want[i * n + j] + if accumulate { init[i * ld + j] as f64 } else { 0.0 };
                assert!((got - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(), "({m}x{n}x{k} ta={ta} tb={tb}) at ({i},{j}): {got} vs {w}");
            }
        }
    }

    #[test]
    fn matches_naive_on_edges_layouts_and_depth_slices() {
        for &(m, n, k) in &[(1, 1, 1), (6, 16, 4), (7, 17, 5), (13, 35, 300), (130, 40, 513), (5, 33, 257), (190, 50, 700), (20, 300, 800)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(m, n, k, ta, tb, false, true);
                }
            }
            check(m, n, k, false, true, true, true);
            check(m, n, k, true, false, true, false);
        }
    }

    #[test]
    fn does_not_depend_on_threads() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        let (m, n, k) = (250, 70, 600);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.07).collect();
        let l = MatRef { offset: 0, rs: k as isize, cs: 1 };
        let r = MatRef { offset: 0, rs: n as isize, cs: 1 };
        let mut one = vec![0.0f32; m * n];
        let mut two = vec![0.0f32; m * n];
        unsafe { sgemm(m, n, k, one.as_mut_ptr(), n as isize, false, &a, l, &b, r, false) };
        unsafe { sgemm(m, n, k, two.as_mut_ptr(), n as isize, false, &a, l, &b, r, true) };
        assert_eq!(one, two);
    }

    /// The AVX-512 6 × 32 kernel gives the same bits as the AVX2 6 × 16 kernel on each of its two
    /// slivers, full and edge rows, overwriting and accumulating.
    #[test]
    fn wide_kernel_matches_the_avx2_kernel_bit_for_bit() {
        if !available() || !std::is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512F (the 6 × 32 kernel does not run here)");
            return;
        }
        for (kc, rows) in [(1, 6), (7, 6), (64, 6), (130, 4), (33, 1)] {
            let a: Vec<f32> = (0..MR * kc).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13).collect();
            let b: Vec<f32> = (0..2 * NR * kc).map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.07).collect();
            for load_c in [false, true] {
                let start: Vec<f32> = (0..MR * 2 * NR).map(|i| (i % 11) as f32 * 0.25).collect();
                let mut wide = start.clone();
                let mut narrow = start.clone();
                unsafe {
                    tile_wide(kc, a.as_ptr(), b.as_ptr(), wide.as_mut_ptr(), 2 * NR as isize, rows, load_c);
                    for s in 0..2 {
                        tile(kc, a.as_ptr(), b.as_ptr().add(s * NR * kc), narrow.as_mut_ptr().add(s * NR), 2 * NR as isize, rows, NR, load_c);
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&wide), bits(&narrow), "kc {kc}, rows {rows}, load_c {load_c}");
            }
        }
    }
}
