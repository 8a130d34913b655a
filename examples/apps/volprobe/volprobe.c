/* volprobe: runs the file operations its arguments name, in order, and prints one
 * "VOLPROBE ..." line per operation on the console; the volume tests (and
 * docs/volumes.md's examples) read those lines. Operations:
 *   cat PATH           print PATH's content (first 200 bytes, newlines as '|')
 *   write PATH TEXT    create/truncate PATH and write TEXT
 *   wait PATH SECONDS  wait until PATH exists (another instance writes it)
 *   ls PATH            list PATH's entries
 *   bench DIR MIB N    sequential write then read of MIB MiB in DIR, then N
 *                      open+close of small files: prints MB/s and us/open
 *   read PATH          read PATH sequentially: prints MB/s
 *   opens DIR N        N open+close of DIR/small-0 .. DIR/small-99: prints us/open
 *   sleep SECONDS
 * Errors print "error <text>" and do not stop the run; the exit code is 0 unless the
 * arguments are malformed (2). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void op_cat(const char *path)
{
    char buf[201];
    int fd = open(path, O_RDONLY);
    ssize_t n;

    if (fd < 0) {
        printf("VOLPROBE cat %s error %s\n", path, strerror(errno));
        return;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0) {
        printf("VOLPROBE cat %s error %s\n", path, strerror(errno));
        return;
    }
    buf[n] = 0;
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == '\n')
            buf[i] = '|';
    printf("VOLPROBE cat %s = %s\n", path, buf);
}

static void op_write(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    size_t len = strlen(text);

    if (fd < 0) {
        printf("VOLPROBE write %s error %s\n", path, strerror(errno));
        return;
    }
    if (write(fd, text, len) != (ssize_t)len) {
        printf("VOLPROBE write %s error %s\n", path, strerror(errno));
        close(fd);
        return;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        printf("VOLPROBE write %s error %s\n", path, strerror(errno));
        return;
    }
    printf("VOLPROBE write %s ok\n", path);
}

static void op_wait(const char *path, int seconds)
{
    struct stat st;

    for (int i = 0; i < seconds * 10; i++) {
        if (stat(path, &st) == 0) {
            printf("VOLPROBE wait %s ok\n", path);
            return;
        }
        usleep(100000);
    }
    printf("VOLPROBE wait %s error timeout\n", path);
}

static void op_ls(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;

    if (!d) {
        printf("VOLPROBE ls %s error %s\n", path, strerror(errno));
        return;
    }
    printf("VOLPROBE ls %s =", path);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            printf(" %s", e->d_name);
    printf("\n");
    closedir(d);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void op_bench(const char *dir, int mib, int files)
{
    static char block[1 << 16];
    char path[512];
    double t0, t1, t2, t3;
    int fd;

    memset(block, 'a', sizeof(block));
    snprintf(path, sizeof(path), "%s/volprobe-bench", dir);
    t0 = now_s();
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        printf("VOLPROBE bench %s error %s\n", dir, strerror(errno));
        return;
    }
    for (int i = 0; i < mib * 16; i++)
        if (write(fd, block, sizeof(block)) != (ssize_t)sizeof(block))
            break;
    fsync(fd);
    close(fd);
    t1 = now_s();
    fd = open(path, O_RDONLY);
    if (fd >= 0) {
        while (read(fd, block, sizeof(block)) > 0)
            ;
        close(fd);
    }
    t2 = now_s();
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof(path), "%s/small-%d", dir, i % 100);
        fd = open(path, O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    t3 = now_s();
    printf("VOLPROBE bench %s write_mbps=%.1f read_mbps=%.1f open_us=%.1f\n", dir,
           mib / (t1 - t0), mib / (t2 - t1), files ? (t3 - t2) * 1e6 / files : 0.0);
}

static void op_read(const char *path)
{
    static char block[1 << 16];
    double t0 = now_s();
    long long total = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY);

    if (fd < 0) {
        printf("VOLPROBE read %s error %s\n", path, strerror(errno));
        return;
    }
    while ((n = read(fd, block, sizeof(block))) > 0)
        total += n;
    close(fd);
    printf("VOLPROBE read %s bytes=%lld mbps=%.1f\n", path, total,
           total / 1048576.0 / (now_s() - t0));
}

static void op_opens(const char *dir, int n)
{
    char path[512];
    double t0 = now_s();
    int failed = 0;

    for (int i = 0; i < n; i++) {
        int fd;

        snprintf(path, sizeof(path), "%s/small-%d", dir, i % 100);
        fd = open(path, O_RDONLY);
        if (fd < 0)
            failed++;
        else
            close(fd);
    }
    printf("VOLPROBE opens %s n=%d failed=%d open_us=%.1f\n", dir, n, failed,
           n ? (now_s() - t0) * 1e6 / n : 0.0);
}

int main(int argc, char **argv)
{
    int i = 1;

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (i < argc) {
        const char *op = argv[i];
        if (!strcmp(op, "cat") && i + 1 < argc) {
            op_cat(argv[i + 1]);
            i += 2;
        } else if (!strcmp(op, "write") && i + 2 < argc) {
            op_write(argv[i + 1], argv[i + 2]);
            i += 3;
        } else if (!strcmp(op, "wait") && i + 2 < argc) {
            op_wait(argv[i + 1], atoi(argv[i + 2]));
            i += 3;
        } else if (!strcmp(op, "ls") && i + 1 < argc) {
            op_ls(argv[i + 1]);
            i += 2;
        } else if (!strcmp(op, "bench") && i + 3 < argc) {
            op_bench(argv[i + 1], atoi(argv[i + 2]), atoi(argv[i + 3]));
            i += 4;
        } else if (!strcmp(op, "read") && i + 1 < argc) {
            op_read(argv[i + 1]);
            i += 2;
        } else if (!strcmp(op, "opens") && i + 2 < argc) {
            op_opens(argv[i + 1], atoi(argv[i + 2]));
            i += 3;
        } else if (!strcmp(op, "sleep") && i + 1 < argc) {
            sleep(atoi(argv[i + 1]));
            i += 2;
        } else {
            fprintf(stderr, "volprobe: bad operation '%s' (see the source)\n", op);
            return 2;
        }
    }
    printf("VOLPROBE done\n");
    return 0;
}
