// FMA throughput probe (session 6): independent AVX2 FMA chains on 1 and 2 threads.
// gcc -O2 -mavx2 -mfma -pthread benches/probes/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
// (the "add chain" line is a rough clock estimate only; the loop overhead makes it unreliable)
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#include <pthread.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define N 400000000L
void* fma_run(void* arg){
  __m256 a0=_mm256_set1_ps(1.0f),a1=a0,a2=a0,a3=a0,a4=a0,a5=a0,a6=a0,a7=a0,a8=a0,a9=a0,a10=a0,a11=a0;
  __m256 b=_mm256_set1_ps(0.9999999f), c=_mm256_set1_ps(1e-7f);
  for(long i=0;i<N/12;i++){
    a0=_mm256_fmadd_ps(a0,b,c);a1=_mm256_fmadd_ps(a1,b,c);a2=_mm256_fmadd_ps(a2,b,c);a3=_mm256_fmadd_ps(a3,b,c);
    a4=_mm256_fmadd_ps(a4,b,c);a5=_mm256_fmadd_ps(a5,b,c);a6=_mm256_fmadd_ps(a6,b,c);a7=_mm256_fmadd_ps(a7,b,c);
    a8=_mm256_fmadd_ps(a8,b,c);a9=_mm256_fmadd_ps(a9,b,c);a10=_mm256_fmadd_ps(a10,b,c);a11=_mm256_fmadd_ps(a11,b,c);
  }
  __m256 s=_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3)),_mm256_add_ps(_mm256_add_ps(a4,a5),_mm256_add_ps(a6,a7)));
  s=_mm256_add_ps(s,_mm256_add_ps(_mm256_add_ps(a8,a9),_mm256_add_ps(a10,a11)));
  float o[8];_mm256_storeu_ps(o,s);*(float*)arg=o[0];return 0;}
void* lat_run(void* arg){ long x=0; for(long i=0;i<N;i++){ __asm__ volatile("add $1, %0":"+r"(x)); } *(long*)arg=x; return 0;}
int main(){
  float r[2]; long l; double t=now(); lat_run(&l); double dt=now()-t; printf("add chain: %.2f GHz\n", N/dt/1e9);
  t=now(); fma_run(&r[0]); dt=now()-t; printf("1 thread FMA: %.1f GFLOP/s\n", N*16.0/dt/1e9);
  pthread_t th[2]; t=now(); for(int i=0;i<2;i++)pthread_create(&th[i],0,fma_run,&r[i]); for(int i=0;i<2;i++)pthread_join(th[i],0); dt=now()-t;
  printf("2 threads FMA: %.1f GFLOP/s\n", 2*N*16.0/dt/1e9);
}
