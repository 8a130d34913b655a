/* vsock-peer: test helper for arrow-vmm's vsock end-to-end test and bench.
 *
 * Runs as the guest's PID 1 and starts, as forked children:
 *   --dial P      connect to the host (CID 2) port P, echo everything back
 *                 until EOF, then dial again (up to --dials N times, default 1);
 *   --bulk P      serve port P with one command per connection:
 *                   'S' + u64 len  sink: read len bytes (or to EOF), answer
 *                                  the byte count (u64);
 *                   'G' + u64 len  source: send len bytes, then close;
 *                 (u64 little endian; no half-close needed, which
 *                 Firecracker's vsock does not pass on)
 *   --spin P N    a hostile peer: open N connections to host port P and hold
 *                 them, then dial port P+1 (nobody listens there) N times;
 *                 prints "vsock-peer: spin held H refused R other O", closes
 *                 everything and prints "vsock-peer: spin done";
 * and finally execs `--exec PATH [ARGS...]` (e.g. /vsock-echo --port 5000), so
 * that program stays PID 1. Progress goes to stdout (the console) as lines
 * starting with "vsock-peer:".
 *
 * Built with `musl-gcc -static -O2`. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

struct vm_addr {
    unsigned short family;
    unsigned short reserved1;
    unsigned int port;
    unsigned int cid;
    unsigned char flags;
    unsigned char zero[3];
};

static char buf[1 << 16];

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_full(int fd, char *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static uint64_t echo(int c)
{
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(c, buf, (size_t)n) != 0)
            return total;
        total += (uint64_t)n;
    }
}

static void dialer(unsigned port, unsigned dials)
{
    for (unsigned i = 0; i < dials; i++) {
        int c = -1;
        for (int attempt = 0; attempt < 600; attempt++) {
            struct vm_addr a;
            memset(&a, 0, sizeof a);
            a.family = AF_VSOCK;
            a.port = port;
            a.cid = 2;
            c = socket(AF_VSOCK, SOCK_STREAM, 0);
            if (c < 0) {
                perror("vsock-peer: socket");
                _exit(1);
            }
            if (connect(c, (struct sockaddr *)&a, sizeof a) == 0)
                break;
            close(c);
            c = -1;
            usleep(200 * 1000);
        }
        if (c < 0) {
            printf("vsock-peer: dial %u: host port %u never answered\n", i, port);
            fflush(stdout);
            _exit(1);
        }
        printf("vsock-peer: dial %u connected to host port %u\n", i, port);
        fflush(stdout);
        uint64_t n = echo(c);
        close(c);
        printf("vsock-peer: dial %u echoed %llu bytes\n", i, (unsigned long long)n);
        fflush(stdout);
    }
    _exit(0);
}

static int vsock_dial(unsigned port)
{
    struct vm_addr a;
    memset(&a, 0, sizeof a);
    a.family = AF_VSOCK;
    a.port = port;
    a.cid = 2;
    int c = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (c < 0)
        return -1;
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(c);
        errno = e;
        return -1;
    }
    return c;
}

static void spinner(unsigned port, unsigned n)
{
    static int held_fds[1000];
    unsigned held = 0, refused = 0, other = 0;
    for (unsigned i = 0; i < n; i++) {
        int c = vsock_dial(port);
        if (c >= 0 && held < sizeof held_fds / sizeof held_fds[0])
            held_fds[held++] = c;
        else if (c >= 0)
            close(c);
        else if (errno == ECONNRESET || errno == ECONNREFUSED)
            refused++;
        else
            other++;
    }
    for (unsigned i = 0; i < n; i++) {
        int c = vsock_dial(port + 1);
        if (c >= 0)
            close(c);
        else if (errno == ECONNRESET || errno == ECONNREFUSED)
            refused++;
        else
            other++;
    }
    printf("vsock-peer: spin held %u refused %u other %u\n", held, refused, other);
    fflush(stdout);
    for (unsigned i = 0; i < held; i++)
        close(held_fds[i]);
    printf("vsock-peer: spin done\n");
    fflush(stdout);
    _exit(0);
}

static void bulk_conn(int c)
{
    char cmd;
    if (read_full(c, &cmd, 1) != 0)
        return;
    if (cmd == 'S') {
        unsigned char want[8];
        if (read_full(c, (char *)want, 8) != 0)
            return;
        uint64_t len = 0, total = 0;
        for (int i = 0; i < 8; i++)
            len |= (uint64_t)want[i] << (8 * i);
        while (total < len) {
            uint64_t left = len - total;
            ssize_t n = read(c, buf, left < sizeof buf ? (size_t)left : sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            total += (uint64_t)n;
        }
        unsigned char le[8];
        for (int i = 0; i < 8; i++)
            le[i] = (unsigned char)(total >> (8 * i));
        write_all(c, (char *)le, 8);
    } else if (cmd == 'G') {
        unsigned char le[8];
        if (read_full(c, (char *)le, 8) != 0)
            return;
        uint64_t len = 0;
        for (int i = 0; i < 8; i++)
            len |= (uint64_t)le[i] << (8 * i);
        for (size_t i = 0; i < sizeof buf; i++)
            buf[i] = (char)(i * 7 + 1);
        while (len > 0) {
            size_t n = len < sizeof buf ? (size_t)len : sizeof buf;
            if (write_all(c, buf, n) != 0)
                return;
            len -= n;
        }
    }
}

static void bulk_server(unsigned port)
{
    struct vm_addr a;
    memset(&a, 0, sizeof a);
    a.family = AF_VSOCK;
    a.port = port;
    a.cid = 0xFFFFFFFFu;
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
        perror("vsock-peer: bulk listen");
        _exit(1);
    }
    printf("vsock-peer: bulk listening on port %u\n", port);
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0)
            continue;
        bulk_conn(c);
        close(c);
    }
}

int main(int argc, char **argv)
{
    unsigned dial = 0, dials = 1, bulk = 0, spin = 0, spins = 0;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--dial") == 0 && i + 1 < argc)
            dial = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--dials") == 0 && i + 1 < argc)
            dials = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--bulk") == 0 && i + 1 < argc)
            bulk = (unsigned)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--spin") == 0 && i + 2 < argc) {
            spin = (unsigned)strtoul(argv[++i], NULL, 10);
            spins = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--exec") == 0 && i + 1 < argc)
            break;
        else {
            fprintf(stderr, "usage: %s [--dial P [--dials N]] [--bulk P] [--spin P N] --exec PATH [ARGS...]\n",
                    argv[0]);
            return 2;
        }
    }
    if (dial && fork() == 0)
        dialer(dial, dials);
    if (bulk && fork() == 0)
        bulk_server(bulk);
    if (spin && fork() == 0)
        spinner(spin, spins);
    if (i < argc) {
        execv(argv[i + 1], argv + i + 1);
        perror("vsock-peer: exec");
        return 127;
    }
    /* Nothing to exec: stay alive as PID 1 and reap children. */
    signal(SIGCHLD, SIG_IGN);
    for (;;)
        pause();
}
