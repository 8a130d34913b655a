/* Shared helpers for the Arrow sample apps: vsock definitions, option parsing, listening.
 * (Readiness needs no code here: the guest kernel reports APP_READY to the VMM when PID 1
 * first listens on a vsock port.) Header-only so that each app stays one .c
 * file that `asdk build app.c` compiles with `musl-gcc -static`.
 *
 * musl-gcc does not see the kernel's <linux/vm_sockets.h>, so the few vsock definitions
 * needed are repeated here (values from the Linux UAPI). */
#ifndef ARROW_APP_H
#define ARROW_APP_H

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define ARROW_VMADDR_CID_ANY 0xFFFFFFFFu

struct arrow_sockaddr_vm {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_flags;
    unsigned char svm_zero[3];
};

struct arrow_opts {
    unsigned port; /* vsock (or TCP) port to listen on */
    int tcp;       /* listen on TCP 127.0.0.1 instead: for testing on hosts without vsock */
};

static unsigned arrow_parse_port(const char *s, const char *what)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > 0xFFFFFFul) {
        fprintf(stderr, "invalid %s '%s': expected a port number 0..16777215\n", what, s);
        exit(2);
    }
    return (unsigned)v;
}

/* Options: --port N (or env PORT), --tcp (or env ARROW_TCP=1). */
static struct arrow_opts arrow_parse_opts(int argc, char **argv, unsigned default_port)
{
    struct arrow_opts o = { default_port, 0 };
    const char *env_port = getenv("PORT");
    if (env_port && *env_port)
        o.port = arrow_parse_port(env_port, "PORT");
    const char *env_tcp = getenv("ARROW_TCP");
    if (env_tcp && strcmp(env_tcp, "1") == 0)
        o.tcp = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            o.port = arrow_parse_port(argv[++i], "--port");
        } else if (strncmp(argv[i], "--port=", 7) == 0) {
            o.port = arrow_parse_port(argv[i] + 7, "--port");
        } else if (strcmp(argv[i], "--tcp") == 0) {
            o.tcp = 1;
        } else {
            fprintf(stderr, "unknown argument '%s'; usage: %s [--port N] [--tcp]\n", argv[i], argv[0]);
            exit(2);
        }
    }
    return o;
}

/* Creates the listening socket and prints "listening on <kind> port N".
 * Exits with status 1 and a message on failure. */
static int arrow_listen(struct arrow_opts *o)
{
    int fd;
    if (o->tcp) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((unsigned short)o->port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        if (fd >= 0)
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
            perror("tcp listen");
            exit(1);
        }
        if (getsockname(fd, (struct sockaddr *)&a, &len) == 0)
            o->port = ntohs(a.sin_port);
    } else {
        struct arrow_sockaddr_vm a;
        memset(&a, 0, sizeof a);
        a.svm_family = AF_VSOCK;
        a.svm_port = o->port;
        a.svm_cid = ARROW_VMADDR_CID_ANY;
        fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (fd < 0) {
            perror("socket(AF_VSOCK) (no vsock on this host? try --tcp)");
            exit(1);
        }
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
            perror("vsock listen");
            exit(1);
        }
    }
    printf("listening on %s port %u\n", o->tcp ? "tcp" : "vsock", o->port);
    fflush(stdout);
    return fd;
}

/* Writes all of buf; returns 0 or -1. */
static int arrow_write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Accepts connections on fd forever, each served by handler(conn) in a
 * child process (in this process if fork fails). Children are reaped
 * automatically: the app may be PID 1. */
static void arrow_serve_forever(int fd, void (*handler)(int))
{
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) {
            if (errno != EINTR)
                perror("accept");
            continue;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(fd);
            handler(c);
            _exit(0);
        }
        if (pid < 0)
            handler(c);
        close(c);
    }
}

#endif
