// Host read bandwidth at 1, 4, 8, 12 and 16 threads: OpenMP threads XOR-sum a 4 GiB array, best of 5 passes.
// The ceiling for experts computed on the CPU (bench/NOTES.md, session 10). Build and run:
//   gcc -O3 -march=native -fopenmp bench/host_bw.c -o /tmp/host_bw && /tmp/host_bw
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <omp.h>
int main(int argc, char** argv) {
    size_t n = (size_t)4 << 30 >> 3;
    uint64_t* a = aligned_alloc(64, n * 8);
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] = i;
    int threads[] = {1, 4, 8, 12, 16};
    for (int ti = 0; ti < 5; ti++) {
        omp_set_num_threads(threads[ti]);
        double best = 1e9; uint64_t sink = 0;
        for (int r = 0; r < 5; r++) {
            double t0 = omp_get_wtime(); uint64_t s = 0;
            #pragma omp parallel for reduction(+:s) schedule(static)
            for (size_t i = 0; i < n; i += 4) s += a[i] ^ a[i + 1] ^ a[i + 2] ^ a[i + 3];
            double dt = omp_get_wtime() - t0; if (dt < best) best = dt; sink += s;
        }
        printf("threads %2d: %.1f GB/s (%llu)\n", threads[ti], n * 8 / best / 1e9, (unsigned long long)(sink & 1));
    }
    return 0;
}
