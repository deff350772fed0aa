/* The fdcost section's probe (shim-tests/src/bench/fdcost.rs): a tight
 * loop of libc calls on descriptors that are not wisp streams, timed with
 * clock_gettime. Compiled at bench time with `cc -O2`.
 *
 *   fdcost unix|pipe SIZE CALLS BLOCKS
 *
 * unix: send() then recv() of SIZE bytes on an AF_UNIX socketpair;
 * pipe: write() then read() of SIZE bytes on a pipe. Each block makes
 * CALLS calls (half of each kind); the program prints the fastest block's
 * nanoseconds per call (the minimum filters out preemption on a shared
 * machine). Under callgrind, `--toggle-collect=measured_*` counts only the
 * timed loops: the warm-up (lazy binding, first dlsym) runs in its own
 * function.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char buf[4096];

#define LOOP(name, out_call, in_call)                                         \
    __attribute__((noinline)) void name(int o, int i, size_t sz, long n) {    \
        for (long k = 0; k < n; k++) {                                        \
            if (out_call != (ssize_t)sz) abort();                             \
            if (in_call != (ssize_t)sz) abort();                              \
        }                                                                     \
    }

LOOP(warm_unix, send(o, buf, sz, 0), recv(i, buf, sz, 0))
LOOP(measured_unix, send(o, buf, sz, 0), recv(i, buf, sz, 0))
LOOP(warm_pipe, write(o, buf, sz), read(i, buf, sz))
LOOP(measured_pipe, write(o, buf, sz), read(i, buf, sz))

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: fdcost unix|pipe SIZE CALLS BLOCKS\n");
        return 2;
    }
    int is_unix = strcmp(argv[1], "unix") == 0;
    size_t sz = strtoul(argv[2], 0, 10);
    long n = strtol(argv[3], 0, 10) / 2;
    int blocks = atoi(argv[4]);
    if (sz == 0 || sz > sizeof buf || n <= 0 || blocks <= 0) {
        fprintf(stderr, "fdcost: bad arguments\n");
        return 2;
    }
    int fds[2], o, i;
    if (is_unix) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) { perror("socketpair"); return 1; }
        o = fds[0];
        i = fds[1];
    } else {
        if (pipe(fds)) { perror("pipe"); return 1; }
        o = fds[1];
        i = fds[0];
    }
    if (is_unix) warm_unix(o, i, sz, 1000); else warm_pipe(o, i, sz, 1000);
    double best = 1e300;
    for (int b = 0; b < blocks; b++) {
        double t = now_ns();
        if (is_unix) measured_unix(o, i, sz, n); else measured_pipe(o, i, sz, n);
        double per = (now_ns() - t) / (2.0 * n);
        if (per < best) best = per;
    }
    printf("%.3f\n", best);
    return 0;
}
