/*
 * Test app for volumes: reads a file from a directory volume and a
 * single-file volume, prints both, and tries to write into each.  The paths
 * come from argv (default: /config/app.conf in the directory /config, and
 * the file /etc/token); with a fourth argument it also writes that file (a
 * writable volume).  Exits with a status whose bits say what it saw:
 *
 *   1   the directory volume's file reads (printed as VOLUME-APP: FILE=...)
 *   2   the single-file volume reads (printed the same way)
 *   4   creating a file in the directory volume fails with EROFS
 *   8   opening the single-file volume for writing fails with EROFS
 *  16   the single-file volume's mount point is a regular file
 *  32   the file named by argv[4] was written
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Prints the first line of @path; 0 when it could be read. */
static int show(const char *path)
{
    char buf[256];
    ssize_t n;
    int fd = open(path, O_RDONLY);

    if (fd < 0) {
        printf("VOLUME-APP: read %s: %s\n", path, strerror(errno));
        return -1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        printf("VOLUME-APP: read %s: %s\n", path, strerror(errno));
        return -1;
    }
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    printf("VOLUME-APP: %s=%s\n", path, buf);
    return 0;
}

/* Tries to write @path; 1 when that fails with EROFS. */
static int refused(const char *path, int flags)
{
    int fd = open(path, O_WRONLY | flags, 0644);
    int err = errno;

    if (fd >= 0) {
        printf("VOLUME-APP: write %s: allowed\n", path);
        close(fd);
        return 0;
    }
    printf("VOLUME-APP: write %s: %s\n", path, strerror(err));
    return err == EROFS;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/config";
    const char *file = argc > 2 ? argv[2] : "/config/app.conf";
    const char *single = argc > 3 ? argv[3] : "/etc/token";
    char created[512];
    struct stat st;
    int status = 0;

    snprintf(created, sizeof(created), "%s/new-file", dir);
    if (show(file) == 0)
        status |= 1;
    if (show(single) == 0)
        status |= 2;
    if (refused(created, O_CREAT))
        status |= 4;
    if (refused(single, 0))
        status |= 8;
    if (stat(single, &st) == 0 && S_ISREG(st.st_mode))
        status |= 16;
    if (argc > 4) {
        int fd = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const char *msg = "written by the guest\n";

        if (fd >= 0 && write(fd, msg, strlen(msg)) == (ssize_t)strlen(msg) &&
            fsync(fd) == 0)
            status |= 32;
        printf("VOLUME-APP: wrote %s: %s\n", argv[4],
               status & 32 ? "ok" : strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    printf("VOLUME-APP: status %d\n", status);
    fflush(stdout);
    return status;
}
