/* memhp-app: the guest side of the memory-hotplug end-to-end test (PID 1).
 *
 *   memhp-app --grow-mib G --touch-mib T [--file-mib F] [--touch-any]
 *   (T = 0: 8 MiB more than it booted with; --touch-any: T may be less,
 *   for the benchmark, where only the hotplug timings matter)
 *
 * 1. prints the memory it booted with;
 * 2. waits until the kernel has G MiB more (the host plugged virtio-mem
 *    blocks and they came online by themselves);
 * 3. allocates T MiB (more than it booted with), writes and checks every
 *    page, frees them;
 * 3b. with F > 0 (a virtio-fs volume at /data, vhost-user-fs test): waits
 *    for the host to create /data/go, then writes an F MiB buffer (more than
 *    it booted with, so most of it lies in plugged memory) to
 *    /data/memhp.bin (O_DIRECT when the file system takes it; with
 *    virtiofsd's --cache never the user pages are the virtio buffers
 *    either way), reads it back into the zeroed buffer, checks it and
 *    frees it. Page i of the file holds the byte (i * 7 + 1) & 0xff;
 * 4. waits until the memory is back near the boot size (the host asked for
 *    it back and the driver unplugged it);
 * 5. allocates and checks 2 MiB once more, and exits 0.
 * Any failure or a wait longer than 600 s exits non-zero with the reason. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#include <sys/sysinfo.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define WAIT_S 600

static unsigned long total_mib(void)
{
    struct sysinfo si;
    if (sysinfo(&si) != 0) {
        perror("memhp: sysinfo");
        exit(10);
    }
    return (unsigned long)si.totalram * si.mem_unit / MIB;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Polls until cond(total) holds; exits 3 after WAIT_S. */
static unsigned long wait_total(const char *what, int grow, unsigned long limit)
{
    long start = now_ms();
    for (;;) {
        unsigned long t = total_mib();
        if (grow ? t >= limit : t <= limit)
            return t;
        if (now_ms() - start > WAIT_S * 1000L) {
            printf("memhp: FAIL: %s: total %lu MiB, waited for %s %lu MiB\n", what, t,
                   grow ? ">=" : "<=", limit);
            fflush(stdout);
            exit(3);
        }
        usleep(100 * 1000);
    }
}

static void touch(unsigned long mib, const char *what)
{
    long start = now_ms();
    size_t len = mib * MIB;
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        printf("memhp: FAIL: cannot map %lu MiB\n", mib);
        fflush(stdout);
        exit(4);
    }
    /* Populate in one system call: on nested-PVM hosts every page fault
     * is a slow trip through the emulated guest kernel, a populate loop
     * inside the kernel is much cheaper. Writes and checks then run at
     * user level. */
    if (madvise(p, len, MADV_POPULATE_WRITE) != 0) {
        printf("memhp: FAIL: cannot populate %lu MiB: %m\n", mib);
        fflush(stdout);
        exit(4);
    }
    long populated = now_ms() - start;
    for (size_t off = 0; off < len; off += 4096)
        p[off] = (unsigned char)(off >> 12);
    for (size_t off = 0; off < len; off += 4096) {
        if (p[off] != (unsigned char)(off >> 12)) {
            printf("memhp: FAIL: page at %zu lost its content\n", off);
            fflush(stdout);
            exit(5);
        }
    }
    munmap(p, len);
    printf("memhp: %s: touched %lu MiB ok in %ld ms (populate %ld ms)\n", what, mib,
           now_ms() - start, populated);
    fflush(stdout);
}

/* Step 3b: file I/O on the volume from a buffer in plugged memory. */
static void file_io(unsigned long mib)
{
    const char *path = "/data/memhp.bin";
    size_t len = mib * MIB, chunk = MIB;
    long start = now_ms();
    while (access("/data/go", F_OK) != 0) {
        if (now_ms() - start > WAIT_S * 1000L) {
            printf("memhp: FAIL: no /data/go\n");
            fflush(stdout);
            exit(7);
        }
        usleep(100 * 1000);
    }
    start = now_ms();
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || madvise(p, len, MADV_POPULATE_WRITE) != 0) {
        printf("memhp: FAIL: cannot get a %lu MiB buffer\n", mib);
        fflush(stdout);
        exit(7);
    }
    for (size_t off = 0; off < len; off += 4096)
        memset(p + off, (int)(((off >> 12) * 7 + 1) & 0xff), 4096);
    int direct = 1;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
    if (fd < 0) {
        direct = 0;
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    }
    if (fd < 0) {
        printf("memhp: FAIL: create %s: %m\n", path);
        fflush(stdout);
        exit(8);
    }
    for (size_t off = 0; off < len; off += chunk)
        if (write(fd, p + off, chunk) != (ssize_t)chunk) {
            printf("memhp: FAIL: write at %zu: %m\n", off);
            fflush(stdout);
            exit(8);
        }
    if (fsync(fd) != 0 || close(fd) != 0) {
        printf("memhp: FAIL: fsync/close: %m\n");
        fflush(stdout);
        exit(8);
    }
    memset(p, 0, len);
    fd = open(path, O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        printf("memhp: FAIL: open %s: %m\n", path);
        fflush(stdout);
        exit(8);
    }
    for (size_t off = 0; off < len; off += chunk)
        if (read(fd, p + off, chunk) != (ssize_t)chunk) {
            printf("memhp: FAIL: read at %zu: %m\n", off);
            fflush(stdout);
            exit(8);
        }
    close(fd);
    for (size_t off = 0; off < len; off += 4096)
        if (p[off] != (((off >> 12) * 7 + 1) & 0xff) || p[off + 4095] != p[off]) {
            printf("memhp: FAIL: page %zu of the file read back wrong\n", off >> 12);
            fflush(stdout);
            exit(9);
        }
    munmap(p, len);
    printf("memhp: file: wrote and read back %lu MiB (%s) in %ld ms\n", mib,
           direct ? "O_DIRECT" : "buffered", now_ms() - start);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    unsigned long grow = 256, touch_mib = 160, file_mib = 0;
    int touch_any = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--touch-any") == 0)
            touch_any = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--grow-mib") == 0)
            grow = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--touch-mib") == 0)
            touch_mib = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--file-mib") == 0)
            file_mib = strtoul(argv[i + 1], NULL, 10);
    }
    unsigned long boot = total_mib();
    printf("memhp: boot total %lu MiB\n", boot);
    fflush(stdout);
    long t0 = now_ms();
    unsigned long t = wait_total("grow", 1, boot + grow * 9 / 10);
    printf("memhp: grown to %lu MiB after %ld ms\n", t, now_ms() - t0);
    fflush(stdout);
    if (touch_mib == 0)
        touch_mib = boot + 8;
    if (touch_mib <= boot && !touch_any) {
        printf("memhp: FAIL: --touch-mib %lu is not more than the boot memory\n", touch_mib);
        return 6;
    }
    touch(touch_mib, "grown");
    if (file_mib > 0)
        file_io(file_mib);
    t0 = now_ms();
    t = wait_total("shrink", 0, boot + grow / 10);
    printf("memhp: shrunk to %lu MiB after %ld ms\n", t, now_ms() - t0);
    fflush(stdout);
    touch(2, "after shrink");
    printf("memhp: done\n");
    fflush(stdout);
    return 0;
}
