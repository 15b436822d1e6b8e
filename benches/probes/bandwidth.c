// Memory-bandwidth probe (one thread): streaming read (sum over 256 MiB), memcpy, and a
// non-temporal copy, three times each. Behind docs/PERF.md's bandwidth figures (session 7).
// Build and run: gcc -O2 -mavx2 -o /tmp/bw benches/probes/bandwidth.c && /tmp/bw
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){size_t n=64<<20; float*a=aligned_alloc(64,n*4); float*b=aligned_alloc(64,n*4); memset(a,1,n*4); memset(b,1,n*4);
for(int it=0;it<3;it++){double t=now(); __m256 s=_mm256_setzero_ps(); for(size_t i=0;i<n;i+=8) s=_mm256_add_ps(s,_mm256_load_ps(a+i)); t=now()-t; float r[8]; _mm256_storeu_ps(r,s);
printf("read %.1f GB/s (%g)\n", n*4/t/1e9, r[0]);
t=now(); memcpy(b,a,n*4); t=now()-t; printf("memcpy %.1f GB/s (r+w)\n", 2*n*4/t/1e9);
t=now(); for(size_t i=0;i<n;i+=8) _mm256_stream_ps(b+i,_mm256_load_ps(a+i)); t=now()-t; printf("nt copy %.1f GB/s (r+w)\n", 2*n*4/t/1e9);}
}
