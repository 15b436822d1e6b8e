# Adds rdtsc phase marks to kernels/src/cpu/xattn.rs (at commit b8bbbee) for session 8 M-doubling accounting; not for committing.
p='kernels/src/cpu/xattn.rs'  # run from the repository root
s=open(p).read()
def rep(old,new,cnt=1):
    global s
    assert s.count(old)>=1, old
    s=s.replace(old,new,cnt)
rep("""                gather_heads(q.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.q);
                gather_heads(d_o.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.d_o);""","""                let mut tt = tsc();
                gather_heads(q.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.q);
                gather_heads(d_o.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.d_o);
                mark(0, &mut tt);""")
rep("""                // delta[g, i] = do · o""","""                mark(1, &mut tt);
                // delta[g, i] = do · o""")
rep("""                // dK/dV of each medium accumulate in a scratch slot""","""                mark(2, &mut tt);
                // dK/dV of each medium accumulate in a scratch slot""")
rep("""                    transpose(kc, n, d, &mut sc.kt);""","""                    mark(17, &mut tt);
                    transpose(kc, n, d, &mut sc.kt);""")
rep("""                    // S = Q Kᵀ (P = e^(scale·S − lse) below); dP = dO Vᵀ""","""                    mark(3, &mut tt);
                    // S = Q Kᵀ (P = e^(scale·S − lse) below); dP = dO Vᵀ""")
rep("""                    for (i, (prow, dprow)) in p.chunks_exact_mut(n).zip(dp.chunks_exact_mut(n)).enumerate() {""","""                    mark(4, &mut tt);
                    for (i, (prow, dprow)) in p.chunks_exact_mut(n).zip(dp.chunks_exact_mut(n)).enumerate() {""")
rep("""                    // dQ = (scale·dS) K, into the [len, hg·D] block""","""                    mark(5, &mut tt);
                    // dQ = (scale·dS) K, into the [len, hg·D] block""")
rep("""                    // dK (+)= (scale·dS)ᵀ Q, dV (+)= Pᵀ dO, into each medium's slot""","""                    mark(6, &mut tt);
                    // dK (+)= (scale·dS)ᵀ Q, dV (+)= Pᵀ dO, into each medium's slot""")
rep("""                scatter_rows(&sc.dq, len, hg * d, dqp.get().add(row0 + h0 * d), hd);""","""                mark(7, &mut tt);
                scatter_rows(&sc.dq, len, hg * d, dqp.get().add(row0 + h0 * d), hd);
                mark(8, &mut tt);""")
rep("""                        sc.free.push(slot);
                    }
                }""","""                        sc.free.push(slot);
                    }
                }
                mark(9, &mut tt);""")
rep("""            gather_heads(q.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.q);""","""            let mut tt = tsc();
            gather_heads(q.as_ptr().add(row0), len, hd, h0, hg, d, &mut sc.q);
            mark(10, &mut tt);""")
rep("""                transpose(kh, n, d, &mut sc.kt);""","""                mark(18, &mut tt);
                transpose(kh, n, d, &mut sc.kt);""")
rep("""            for g in 0..hg {
                let h = h0 + g;
                let (qh,""","""            mark(11, &mut tt);
            for g in 0..hg {
                let h = h0 + g;
                let (qh,""")
rep("""                let sc_s = &mut sc.s[..len * n];""","""                mark(12, &mut tt);
                let sc_s = &mut sc.s[..len * n];""")
rep("""                for (i, row) in sc_s.chunks_exact_mut(n).enumerate() {
                    *lp.get()""","""                mark(13, &mut tt);
                for (i, row) in sc_s.chunks_exact_mut(n).enumerate() {
                    *lp.get()""")
rep("""                // O = P V  [len × D], into the [len, hg·D] output block""","""                mark(14, &mut tt);
                // O = P V  [len × D], into the [len, hg·D] output block""")
rep("""            scatter_rows(&sc.o, len, hg * d, op.get().add(row0 + h0 * d), hd);""","""            mark(15, &mut tt);
            scatter_rows(&sc.o, len, hg * d, op.get().add(row0 + h0 * d), hd);
            mark(16, &mut tt);""")
s+='''
// INSTRUMENT-BEGIN
pub static PHASES: [std::sync::atomic::AtomicU64; 20] = [const { std::sync::atomic::AtomicU64::new(0) }; 20];
pub static PREB: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
#[inline(always)]
fn tsc() -> u64 { unsafe { std::arch::x86_64::_rdtsc() } }
#[inline(always)]
fn mark(i: usize, t: &mut u64) { let n = tsc(); PHASES[i].fetch_add(n - *t, std::sync::atomic::Ordering::Relaxed); *t = n; }
pub fn take_phases() -> Vec<u64> { PHASES.iter().map(|a| a.swap(0, std::sync::atomic::Ordering::Relaxed)).collect() }
'''
open(p,'w').write(s)
