/* vsock-http: a tiny HTTP/1.1 server on vsock port 8080 (--port N / env PORT).
 *   GET /          200 "hello from Arrow\n"
 *   GET /healthz   200 "ok\n"
 *   GET /bytes/N   200 with N bytes of 'a' (N <= 16 MiB), for throughput benchmarks
 *   HEAD           same headers, no body; other methods 405; other paths 404.
 * Keep-alive per HTTP/1.1 (closed on "Connection: close" or HTTP/1.0). One forked child
 * per connection. `--tcp` listens on 127.0.0.1 instead, for testing on hosts without vsock. */
#include <ctype.h>
#include <signal.h>
#include "../include/arrow_app.h"

#define REQ_MAX 8192
#define BYTES_MAX (16ul << 20)

static int has_header_token(const char *head, const char *name, const char *token)
{
    size_t nlen = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nlen) == 0 && h[nlen] == ':') {
            const char *v = h + nlen + 1;
            const char *eol = strstr(v, "\r\n");
            size_t tlen = strlen(token);
            for (; v && eol && v + tlen <= eol; v++)
                if (strncasecmp(v, token, tlen) == 0)
                    return 1;
        }
    }
    return 0;
}

static int respond(int c, const char *status, const char *body, size_t body_len, int head_only,
                   int keep_alive)
{
    char hdr[256];
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n",
                     status, body_len, keep_alive ? "" : "Connection: close\r\n");
    if (arrow_write_all(c, hdr, (size_t)n) != 0)
        return -1;
    if (!head_only && body_len > 0)
        return arrow_write_all(c, body, body_len);
    return 0;
}

/* Serves requests on one connection until it closes. */
static void serve(int c)
{
    static char buf[REQ_MAX + 1];
    size_t have = 0;
    for (;;) {
        char *end;
        while (!(buf[have] = 0, end = strstr(buf, "\r\n\r\n"))) {
            if (have == REQ_MAX) {
                respond(c, "431 Request Header Fields Too Large", "", 0, 0, 0);
                return;
            }
            ssize_t n = read(c, buf + have, REQ_MAX - have);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return;
            have += (size_t)n;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        char method[16], path[1024], version[16];
        if (sscanf(buf, "%15s %1023s %15s", method, path, version) != 3) {
            respond(c, "400 Bad Request", "bad request\n", 12, 0, 0);
            return;
        }
        /* Look at this request's headers only, not at pipelined requests after it. */
        char saved = end[2];
        end[2] = 0;
        int keep = strcmp(version, "HTTP/1.1") == 0 && !has_header_token(buf, "Connection", "close");
        end[2] = saved;
        int head_only = strcmp(method, "HEAD") == 0;
        int rc;
        if (strcmp(method, "GET") != 0 && !head_only) {
            /* Request bodies are not read, so the connection cannot be reused. */
            rc = respond(c, "405 Method Not Allowed", "method not allowed\n", 19, 0, 0);
            return;
        } else if (strcmp(path, "/") == 0) {
            rc = respond(c, "200 OK", "hello from Arrow\n", 17, head_only, keep);
        } else if (strcmp(path, "/healthz") == 0) {
            rc = respond(c, "200 OK", "ok\n", 3, head_only, keep);
        } else if (strncmp(path, "/bytes/", 7) == 0 && isdigit((unsigned char)path[7])) {
            unsigned long len = strtoul(path + 7, NULL, 10);
            if (len > BYTES_MAX) {
                rc = respond(c, "400 Bad Request", "too many bytes\n", 15, head_only, keep);
            } else {
                char *body = malloc(len ? len : 1);
                if (!body)
                    return;
                memset(body, 'a', len);
                rc = respond(c, "200 OK", body, len, head_only, keep);
                free(body);
            }
        } else {
            rc = respond(c, "404 Not Found", "not found\n", 10, head_only, keep);
        }
        if (rc != 0 || !keep)
            return;
        /* Keep pipelined bytes that followed this request. */
        memmove(buf, buf + head_len, have - head_len);
        have -= head_len;
    }
}

int main(int argc, char **argv)
{
    struct arrow_opts o = arrow_parse_opts(argc, argv, 8080);
    signal(SIGPIPE, SIG_IGN);
    arrow_serve_forever(arrow_listen(&o), serve);
}
