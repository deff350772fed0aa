/* The fdcost section's probe (shim-tests/src/bench/fdcost.rs): a tight
 * loop of libc calls on descriptors that are not wisp streams, timed with
 * clock_gettime. Compiled at bench time with `cc -O2`.
 *
 *   fdcost unix|pipe SIZE CALLS BLOCKS
 *
 * unix: send() then recv() of SIZE bytes on an AF_UNIX socketpair;
 * pipe: write() then read() of SIZE bytes on a pipe. Each block makes
 * CALLS calls (half of each kind). BLOCKS blocks of each of two variants
 * alternate: the loop as any program has it (through the PLT, so through
 * libwisp.so when it is preloaded), and the same loop calling libc's own
 * functions, found with dlsym on libc's handle (never the library's).
 * The program prints the fastest block of each in nanoseconds per call,
 * "PLT DIRECT": the minimum filters out preemption on a shared machine,
 * and the pairing in one process cancels what differs between processes
 * (CPU, neighbours).
 * Under callgrind, `--toggle-collect=measured_*` counts only the PLT
 * loop: the warm-up (lazy binding, first dlsym) runs in its own function.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
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

static ssize_t (*libc_send)(int, const void *, size_t, int);
static ssize_t (*libc_recv)(int, void *, size_t, int);
static ssize_t (*libc_write)(int, const void *, size_t);
static ssize_t (*libc_read)(int, void *, size_t);

LOOP(direct_unix, libc_send(o, buf, sz, 0), libc_recv(i, buf, sz, 0))
LOOP(direct_pipe, libc_write(o, buf, sz), libc_read(i, buf, sz))

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
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    if (!libc) { fprintf(stderr, "fdcost: %s\n", dlerror()); return 1; }
    libc_send = dlsym(libc, "send");
    libc_recv = dlsym(libc, "recv");
    libc_write = dlsym(libc, "write");
    libc_read = dlsym(libc, "read");
    if (!libc_send || !libc_recv || !libc_write || !libc_read) { fprintf(stderr, "fdcost: dlsym\n"); return 1; }
    if (is_unix) warm_unix(o, i, sz, 1000); else warm_pipe(o, i, sz, 1000);
    double best[2] = {1e300, 1e300};
    for (int b = 0; b < 2 * blocks; b++) {
        /* PLT, direct, direct, PLT, PLT, direct, ...: neither always first */
        int direct = (b & 1) ^ ((b >> 1) & 1);
        double t = now_ns();
        if (is_unix) (direct ? direct_unix : measured_unix)(o, i, sz, n);
        else (direct ? direct_pipe : measured_pipe)(o, i, sz, n);
        double per = (now_ns() - t) / (2.0 * n);
        if (per < best[direct]) best[direct] = per;
    }
    printf("%.3f %.3f\n", best[0], best[1]);
    return 0;
}
