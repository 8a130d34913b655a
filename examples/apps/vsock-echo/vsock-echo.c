/* vsock-echo: echoes every byte back until EOF, on vsock port 5000 (--port N / env PORT).
 * Each connection is served by a forked child; falls back to serving inline if fork fails.
 * `--tcp` listens on 127.0.0.1 instead, for testing on hosts without vsock. */
#include <signal.h>
#include "../include/arrow_app.h"

static void echo(int c)
{
    char buf[16384];
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || arrow_write_all(c, buf, (size_t)n) != 0)
            return;
    }
}

int main(int argc, char **argv)
{
    struct arrow_opts o = arrow_parse_opts(argc, argv, 5000);
    arrow_serve_forever(arrow_listen(&o), echo);
}
