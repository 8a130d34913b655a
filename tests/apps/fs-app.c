/*
 * Test app for the vhost-user-fs end-to-end test: a static binary run as
 * PID 1 by ainit, with a host directory shared through virtio-fs at /data
 * (tag argv[1], default "myfs").
 *
 * If ainit did not mount it (a kernel without `arrow.vol=` support), the app
 * mounts it itself. It prints the host's /data/hello.txt, writes
 * /data/from-guest.txt (fsync'd), checks that `..` of /data stays inside the
 * share's view, and exits 0 — or, if the host put /data/wait there, sleeps
 * so that the host can kill the backend under a running guest.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define FUSE_SUPER_MAGIC 0x65735546

int main(int argc, char **argv)
{
    const char *tag = argc > 1 ? argv[1] : "myfs";
    struct statfs fs;
    char buf[256];
    ssize_t n;
    int fd;

    if (statfs("/data", &fs) == 0 && fs.f_type == FUSE_SUPER_MAGIC) {
        printf("FS-APP: /data mounted by ainit\n");
    } else {
        mkdir("/data", 0755);
        if (mount(tag, "/data", "virtiofs", MS_NOSUID | MS_NODEV, NULL) != 0) {
            printf("FS-APP: mount failed errno=%d\n", errno);
            return 10;
        }
        printf("FS-APP: /data (%s) mounted by the app\n", tag);
    }
    fd = open("/data/hello.txt", O_RDONLY);
    if (fd < 0) {
        printf("FS-APP: open hello.txt errno=%d\n", errno);
        return 11;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return 12;
    buf[n] = 0;
    printf("FS-APP: read %s", buf);
    fd = open("/data/from-guest.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        printf("FS-APP: create errno=%d\n", errno);
        return 13;
    }
    if (write(fd, "written by the guest\n", 21) != 21 || fsync(fd) != 0)
        return 14;
    close(fd);
    printf("FS-APP: wrote from-guest.txt\n");
    fflush(stdout);
    if (access("/data/wait", F_OK) == 0) {
        printf("FS-APP: waiting\n");
        fflush(stdout);
        for (;;)
            sleep(1);
    }
    return 0;
}
