/* The memory section's client (shim-tests/src/bench/memory.rs): one
 * process that opens TCP connections to HOST:PORT and reports its own
 * resident memory as it goes. Compiled at bench time with `cc -O2`.
 *
 *   memclient hold HOST PORT N LOADED
 *   memclient stream HOST PORT N SECONDS
 *
 * HOST is a wisp name (libwisp.so preloaded: every connection is a wisp
 * stream) or an address (plain TCP, the baseline). Output, one "key value"
 * per line:
 *   wmem        net.ipv4.tcp_wmem's default (bytes), in this namespace
 *   rss0        KiB resident before the first connection
 *   rss1        ... after the first connection
 *   rssN        ... with all N connections open and idle
 *   connect_ms  time to open the N connections
 * hold: the first LOADED connections are sent to until the kernel (or the
 * library) takes no more, the peer never reading, so every byte the peer
 * has not acknowledged is held (by the library too: its replay ring);
 * stream: all N are sent to for SECONDS as fast as they take it, the peer
 * reading everything. Then
 *   rss_loaded  KiB resident at the end of that
 *   sent        bytes accepted per loaded connection (mean)
 *   sndbuf      SO_SNDBUF of the loaded connections (mean, bytes)
 *   outq        unacknowledged bytes in their send queues (mean, SIOCOUTQ)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>

static long rss_kib(void) {
    long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &size, &resident) != 2) {
        perror("statm");
        exit(1);
    }
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void pause_ms(int ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, 0);
}

static char chunk[65536];

int main(int argc, char **argv) {
    if (argc != 6 || (strcmp(argv[1], "hold") && strcmp(argv[1], "stream"))) {
        fprintf(stderr, "usage: memclient hold|stream HOST PORT N LOADED|SECONDS\n");
        return 2;
    }
    int streaming = strcmp(argv[1], "stream") == 0;
    argv++;
    int n = atoi(argv[3]), loaded = streaming ? n : atoi(argv[4]);
    int seconds = streaming ? atoi(argv[4]) : 0;
    if (n < 2 || loaded < 0 || loaded > n) {
        fprintf(stderr, "memclient: bad counts\n");
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    long wmem[3] = {0, 0, 0};
    FILE *w = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
    if (w && fscanf(w, "%ld %ld %ld", &wmem[0], &wmem[1], &wmem[2]) == 3)
        printf("wmem %ld\n", wmem[1]);
    if (w) fclose(w);
    memset(chunk, 'x', sizeof chunk);

    struct addrinfo hints = {0}, *ai;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(argv[1], argv[2], &hints, &ai);
    if (rc) {
        fprintf(stderr, "memclient: %s: %s\n", argv[1], gai_strerror(rc));
        return 1;
    }
    int *fds = calloc(n, sizeof *fds);
    printf("rss0 %ld\n", rss_kib());
    double t0 = now_ms();
    for (int i = 0; i < n; i++) {
        fds[i] = socket(ai->ai_family, SOCK_STREAM, 0);
        if (fds[i] < 0 || connect(fds[i], ai->ai_addr, ai->ai_addrlen)) {
            fprintf(stderr, "memclient: connection %d: %s\n", i, strerror(errno));
            return 1;
        }
        if (i == 0) printf("rss1 %ld\n", rss_kib());
    }
    printf("connect_ms %.1f\n", now_ms() - t0);
    /* Let the library's SIP side finish with the last ACKs. */
    pause_ms(300);
    printf("rssN %ld\n", rss_kib());
    fflush(stdout);

    if (loaded == 0) return 0;
    long long sent = 0;
    for (int i = 0; i < loaded; i++)
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    if (streaming) {
        /* Send on every connection as fast as each takes it. */
        struct pollfd *p = calloc(n, sizeof *p);
        for (int i = 0; i < n; i++) p[i] = (struct pollfd){fds[i], POLLOUT, 0};
        double end = now_ms() + seconds * 1e3;
        while (now_ms() < end) {
            if (poll(p, n, 100) < 0 && errno != EINTR) { perror("poll"); return 1; }
            for (int i = 0; i < n; i++) {
                if (!(p[i].revents & POLLOUT)) continue;
                ssize_t k = send(fds[i], chunk, sizeof chunk, 0);
                if (k > 0) sent += k;
                else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                    fprintf(stderr, "memclient: send: %s\n", strerror(errno));
                    return 1;
                }
            }
        }
    } else {
        /* Passes until none takes a byte more: the first EAGAIN can come
         * while acknowledgements are still on their way. */
        for (int pass = 0; pass < 100; pass++) {
            long long this_pass = 0;
            for (int i = 0; i < loaded; i++) {
                for (;;) {
                    ssize_t k = send(fds[i], chunk, sizeof chunk, 0);
                    if (k > 0) {
                        this_pass += k;
                        continue;
                    }
                    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                    fprintf(stderr, "memclient: send: %s\n", k < 0 ? strerror(errno) : "0");
                    return 1;
                }
            }
            sent += this_pass;
            if (this_pass == 0 && pass > 0) break;
            pause_ms(50);
        }
    }
    long long sndbuf = 0, outq = 0;
    for (int i = 0; i < loaded; i++) {
        int v = 0;
        socklen_t len = sizeof v;
        if (getsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &v, &len) == 0) sndbuf += v;
        v = 0;
        if (ioctl(fds[i], SIOCOUTQ, &v) == 0) outq += v;
    }
    printf("rss_loaded %ld\n", rss_kib());
    printf("sent %lld\n", sent / loaded);
    printf("sndbuf %lld\n", sndbuf / loaded);
    printf("outq %lld\n", outq / loaded);
    return 0;
}
