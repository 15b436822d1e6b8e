// 6x16 GEMM micro-kernel on in-cache packed data (session 6): "bcast" is the shape of
// kernels/src/cpu/sgemm.rs; "perm" (in-register broadcasts) was slower and rejected.
// gcc -O3 -mavx2 -mfma benches/probes/microkernel_peak.c -o /tmp/mk && /tmp/mk  (two at once: /tmp/mk & /tmp/mk)
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define F _mm256_fmadd_ps
// A packed as 8 floats per k: [a0 a1 a2 a3 a4 a5 x x]; lanes duplicated by broadcastf128 loads.
__attribute__((noinline)) void mkperm(int kc,const float*a,const float*b,float*c){
  __m256 z=_mm256_setzero_ps(),c00=z,c01=z,c10=z,c11=z,c20=z,c21=z,c30=z,c31=z,c40=z,c41=z,c50=z,c51=z;
  for(int k=0;k<kc;k++){
    __m256 b0=_mm256_loadu_ps(b),b1=_mm256_loadu_ps(b+8);
    __m256 lo=_mm256_broadcast_ps((const __m128*)a), hi=_mm256_broadcast_ps((const __m128*)(a+4)),x;
    x=_mm256_permute_ps(lo,0x00);c00=F(x,b0,c00);c01=F(x,b1,c01);
    x=_mm256_permute_ps(lo,0x55);c10=F(x,b0,c10);c11=F(x,b1,c11);
    x=_mm256_permute_ps(lo,0xAA);c20=F(x,b0,c20);c21=F(x,b1,c21);
    x=_mm256_permute_ps(lo,0xFF);c30=F(x,b0,c30);c31=F(x,b1,c31);
    x=_mm256_permute_ps(hi,0x00);c40=F(x,b0,c40);c41=F(x,b1,c41);
    x=_mm256_permute_ps(hi,0x55);c50=F(x,b0,c50);c51=F(x,b1,c51);
    a+=8;b+=16;}
  __m256 r[12]={c00,c01,c10,c11,c20,c21,c30,c31,c40,c41,c50,c51};
  for(int i=0;i<12;i++)_mm256_storeu_ps(c+8*i,_mm256_add_ps(_mm256_loadu_ps(c+8*i),r[i]));
}
__attribute__((noinline)) void mk(int kc,const float*a,const float*b,float*c){
  __m256 z=_mm256_setzero_ps(),c00=z,c01=z,c10=z,c11=z,c20=z,c21=z,c30=z,c31=z,c40=z,c41=z,c50=z,c51=z;
  for(int k=0;k<kc;k++){
    __m256 b0=_mm256_loadu_ps(b),b1=_mm256_loadu_ps(b+8),x;
    x=_mm256_broadcast_ss(a);c00=F(x,b0,c00);c01=F(x,b1,c01);
    x=_mm256_broadcast_ss(a+1);c10=F(x,b0,c10);c11=F(x,b1,c11);
    x=_mm256_broadcast_ss(a+2);c20=F(x,b0,c20);c21=F(x,b1,c21);
    x=_mm256_broadcast_ss(a+3);c30=F(x,b0,c30);c31=F(x,b1,c31);
    x=_mm256_broadcast_ss(a+4);c40=F(x,b0,c40);c41=F(x,b1,c41);
    x=_mm256_broadcast_ss(a+5);c50=F(x,b0,c50);c51=F(x,b1,c51);
    a+=6;b+=16;}
  __m256 r[12]={c00,c01,c10,c11,c20,c21,c30,c31,c40,c41,c50,c51};
  for(int i=0;i<12;i++)_mm256_storeu_ps(c+8*i,_mm256_add_ps(_mm256_loadu_ps(c+8*i),r[i]));
}
float A[8*256] __attribute__((aligned(64))),B[16*256] __attribute__((aligned(64))),C[128] __attribute__((aligned(64)));
int main(){
  for(int i=0;i<8*256;i++)A[i]=1e-3f;for(int i=0;i<16*256;i++)B[i]=1e-3f;
  for(int rep=0;rep<4;rep++){
  long iters=400000; double t=now();
  for(long i=0;i<iters;i++) mkperm(256,A,B,C);
  double dt=now()-t; printf("perm: %.1f  ", iters*256*6*16*2.0/dt/1e9);
  t=now(); for(long i=0;i<iters;i++) mk(256,A,B,C); dt=now()-t; printf("bcast: %.1f GFLOP/s\n", iters*256*6*16*2.0/dt/1e9);
  }
}
