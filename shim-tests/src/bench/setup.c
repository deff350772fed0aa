/* Connection set-up timing for wisp-bench's `setup` section.
 *
 *   setup serve PORT
 *       Listen on PORT (all addresses); for every connection accepted,
 *       send one byte and close. Prints "listening" once listen() has
 *       returned (under libwisp.so with WISP_NAME, after the name is
 *       registered).
 *
 *   setup connect HOST PORT N
 *       N times: getaddrinfo(HOST, PORT), socket, connect, recv the one
 *       byte the server sends, close. One line per connection:
 *       "conn <us to connect() returning> <us to the first byte>", both
 *       counted from just before getaddrinfo. With libwisp.so preloaded and
 *       HOST a wisp name, getaddrinfo answers from the name map and
 *       connect() sets the connection up with an INVITE; otherwise it is
 *       plain TCP.
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int serve(const char *port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in a;
    if (s < 0) {
        perror("socket");
        return 1;
    }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(port));
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 128) < 0) {
        perror("bind/listen");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (send(c, "x", 1, 0) != 1)
            perror("send");
        close(c);
    }
}

static int connect_n(const char *host, const char *port, int n)
{
    for (int i = 0; i < n; i++) {
        struct addrinfo hints, *res = NULL;
        char b;
        double t0 = now_us(), t1, t2;
        int s, rc;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        rc = getaddrinfo(host, port, &hints, &res);
        if (rc != 0) {
            fprintf(stderr, "getaddrinfo %s: %s\n", host, gai_strerror(rc));
            return 1;
        }
        s = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
        if (s < 0 || connect(s, res->ai_addr, res->ai_addrlen) < 0) {
            perror("connect");
            return 1;
        }
        t1 = now_us();
        if (recv(s, &b, 1, 0) != 1) {
            perror("recv");
            return 1;
        }
        t2 = now_us();
        close(s);
        freeaddrinfo(res);
        printf("conn %.1f %.1f\n", t1 - t0, t2 - t0);
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(argv[2]);
    if (argc == 5 && strcmp(argv[1], "connect") == 0)
        return connect_n(argv[2], argv[3], atoi(argv[4]));
    fprintf(stderr, "usage: setup serve PORT | setup connect HOST PORT N\n");
    return 2;
}
