/*
 * Test app for shadowfs (the app's root = image base + writable layer).
 * Reads a config file from the base, then - unless an earlier run of the same
 * instance already did - appends to it (copy-up), deletes a base file
 * (whiteout), renames one, and leaves a marker; with the argument "fill" it
 * also fills the writable layer until ENOSPC and checks that freeing space
 * makes writes work again.  Exits with a status whose bits say what it saw:
 *
 *   1   /data/conf/app.conf starts with the base's content
 *   2   pristine: no trace of an earlier run (marker absent, base files there)
 *   4   an earlier run's writes are there (marker, appended line, deletion)
 *   8   copy-up: the appended line reads back
 *  16   whiteout: the deleted base file is gone (stat and readdir)
 *  32   rename: the base file reads back under its new name only
 * 128   ENOSPC: filling the layer fails with ENOSPC; after freeing, writes work
 *
 * With the argument "serve" it instead listens on vsock port 5000 (for
 * clones of a template): each connection sends a line; "?" is answered with
 * the content of /data/conf/app.conf, any other line replaces that content
 * and is answered with what reads back.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../examples/apps/include/arrow_app.h"

#define BASE_CONF "greeting=hello\n"
#define EDIT "edited=1\n"
#define MARK "written by the first run\n"

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ssize_t n;

    if (fd < 0)
        return -1;
    n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    return (int)n;
}

static int write_file(const char *path, const char *s, int flags)
{
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
    ssize_t n;

    if (fd < 0)
        return -1;
    n = write(fd, s, strlen(s));
    if (fsync(fd) != 0)
        n = -1;
    close(fd);
    return n == (ssize_t)strlen(s) ? 0 : -1;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static int listed(const char *dir, const char *name)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int found = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, name) == 0)
            found = 1;
    closedir(d);
    return found;
}

static int fill_layer(void)
{
    static char chunk[1 << 16];
    int fd = open("/data/fill", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    long total = 0;
    int err = 0;

    if (fd < 0)
        return 0;
    memset(chunk, 'f', sizeof(chunk));
    for (;;) {
        ssize_t n = write(fd, chunk, sizeof(chunk));
        if (n < 0) {
            err = errno;
            break;
        }
        total += n;
        if (total > (1L << 30))
            break; /* no limit at all: not what the test set up */
    }
    close(fd);
    printf("SHADOWFS-APP: filled %ld KiB, then %s\n", total >> 10, err ? strerror(err) : "no error");
    if (err != ENOSPC)
        return 0;
    if (unlink("/data/fill") != 0)
        return 0;
    return write_file("/data/after-fill", "room again\n", O_TRUNC) == 0;
}

static void serve_conf(int c)
{
    char line[128], back[256];
    ssize_t n = 0;

    /* One line, read byte by byte (it is short). */
    while (n < (ssize_t)sizeof(line) - 1 && read(c, line + n, 1) == 1 && line[n] != '\n')
        n++;
    line[n] = 0;
    if (strcmp(line, "?") != 0) {
        strcat(line, "\n");
        if (write_file("/data/conf/app.conf", line, O_TRUNC) != 0)
            strcpy(back, "write failed\n");
    }
    if (read_file("/data/conf/app.conf", back, sizeof(back)) < 0)
        strcpy(back, "read failed\n");
    arrow_write_all(c, back, strlen(back));
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[argc - 1], "serve") == 0) {
        struct arrow_opts o = { 5000, 0 };
        arrow_serve_forever(arrow_listen(&o), serve_conf);
    }

    char buf[256];
    int status = 0;
    int fill = argc > 1 && strcmp(argv[argc - 1], "fill") == 0;

    if (read_file("/data/conf/app.conf", buf, sizeof(buf)) >= 0 &&
        strncmp(buf, BASE_CONF, strlen(BASE_CONF)) == 0)
        status |= 1;
    printf("SHADOWFS-APP: app.conf: %s", buf);

    if (exists("/data/marker")) {
        char mark[64];
        if (read_file("/data/marker", mark, sizeof(mark)) > 0 && strcmp(mark, MARK) == 0 &&
            strstr(buf, EDIT) && !exists("/data/delete-me") && exists("/data/renamed"))
            status |= 4;
        printf("SHADOWFS-APP: status %d\n", status);
        return status;
    }
    if (strcmp(buf, BASE_CONF) == 0 && exists("/data/delete-me") && exists("/data/rename-me") &&
        !exists("/data/renamed"))
        status |= 2;

    if (write_file("/data/conf/app.conf", EDIT, O_APPEND) == 0 &&
        read_file("/data/conf/app.conf", buf, sizeof(buf)) > 0 &&
        strcmp(buf, BASE_CONF EDIT) == 0)
        status |= 8;
    if (unlink("/data/delete-me") == 0 && !exists("/data/delete-me") &&
        !listed("/data", "delete-me") && listed("/data", "rename-me"))
        status |= 16;
    if (rename("/data/rename-me", "/data/renamed") == 0 && !exists("/data/rename-me") &&
        read_file("/data/renamed", buf, sizeof(buf)) > 0 && strcmp(buf, "r\n") == 0)
        status |= 32;
    if (write_file("/data/marker", MARK, O_TRUNC) != 0)
        printf("SHADOWFS-APP: cannot write the marker: %s\n", strerror(errno));
    if (fill && fill_layer())
        status |= 128;
    sync();
    printf("SHADOWFS-APP: status %d\n", status);
    return status;
}
