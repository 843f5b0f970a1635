/* The CPU's arithmetic peak, for the sizes bench (edge_stream/bench/sizes.py): independent
 * chains of one instruction per thread, nothing else in the loop.
 *   vnni: AVX-512 VNNI vpdpbusd on zmm (64 u8 x s8 products, 128 integer ops per instruction)
 *   fma:  AVX-512 vfmadd231ps on zmm (16 fp32 fused multiply-adds, 32 float ops)
 * Prints one line: "<mode> <threads> <giga-ops per second>". Twelve accumulators hide the
 * instructions' latency (4-5 cycles) at up to two per cycle. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N_ACC 12  /* accumulators per thread (CHAINS below) */
static long long iters = 50000000LL;
static int mode_fma = 0;
static volatile int sink;

/* Twelve named accumulators (an array would live on the stack), each a chain of OP. */
#define CHAINS(OP) do { c0 = OP(c0); c1 = OP(c1); c2 = OP(c2); c3 = OP(c3); c4 = OP(c4); c5 = OP(c5); \
                         c6 = OP(c6); c7 = OP(c7); c8 = OP(c8); c9 = OP(c9); c10 = OP(c10); c11 = OP(c11); } while (0)
#define SUM(ADD) ADD(ADD(ADD(ADD(c0, c1), ADD(c2, c3)), ADD(ADD(c4, c5), ADD(c6, c7))), ADD(ADD(c8, c9), ADD(c10, c11)))

static void *run(void *arg) {
    int seed = (int)(long)arg;
    if (mode_fma) {
        __m512 a = _mm512_set1_ps(1.0001f + seed), b = _mm512_set1_ps(0.9999f);
        __m512 c0 = _mm512_set1_ps(seed), c1 = _mm512_set1_ps(seed + 1), c2 = _mm512_set1_ps(seed + 2),
               c3 = _mm512_set1_ps(seed + 3), c4 = _mm512_set1_ps(seed + 4), c5 = _mm512_set1_ps(seed + 5),
               c6 = _mm512_set1_ps(seed + 6), c7 = _mm512_set1_ps(seed + 7), c8 = _mm512_set1_ps(seed + 8),
               c9 = _mm512_set1_ps(seed + 9), c10 = _mm512_set1_ps(seed + 10), c11 = _mm512_set1_ps(seed + 11);
#define FMA(c) _mm512_fmadd_ps(a, b, c)
        for (long long i = 0; i < iters; i++) CHAINS(FMA);
        sink = (int)_mm512_reduce_add_ps(SUM(_mm512_add_ps));
    } else {
        __m512i a = _mm512_set1_epi8(1 + seed), b = _mm512_set1_epi8(2);
        __m512i c0 = _mm512_set1_epi32(seed), c1 = _mm512_set1_epi32(seed + 1), c2 = _mm512_set1_epi32(seed + 2),
                c3 = _mm512_set1_epi32(seed + 3), c4 = _mm512_set1_epi32(seed + 4), c5 = _mm512_set1_epi32(seed + 5),
                c6 = _mm512_set1_epi32(seed + 6), c7 = _mm512_set1_epi32(seed + 7), c8 = _mm512_set1_epi32(seed + 8),
                c9 = _mm512_set1_epi32(seed + 9), c10 = _mm512_set1_epi32(seed + 10), c11 = _mm512_set1_epi32(seed + 11);
#define DP(c) _mm512_dpbusd_epi32(c, a, b)
        for (long long i = 0; i < iters; i++) CHAINS(DP);
        sink = _mm512_reduce_add_epi32(SUM(_mm512_add_epi32));
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: peak vnni|fma THREADS [ITERS]\n"); return 2; }
    mode_fma = strcmp(argv[1], "fma") == 0;
    int threads = atoi(argv[2]);
    if (argc > 3) iters = atoll(argv[3]);
    pthread_t th[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, run, (void *)(long)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    double ops_per_insn = mode_fma ? 32.0 : 128.0;
    printf("%s %d %.1f\n", argv[1], threads, iters * N_ACC * (double)threads * ops_per_insn / s / 1e9);
    return 0;
}
