/*
 * Test app for the end-to-end tests: a static binary run as PID 1 by ainit.
 * Prints what it was given, checks what ainit prepared, and exits with the
 * status named by its last argument (default 3); "segv" makes it fault.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv)
{
    struct utsname u;
    struct stat st;
    char **e;
    int i;

    uname(&u);
    printf("ARROW-E2E: hello pid=%d host=%s argc=%d\n", (int)getpid(), u.nodename, argc);
    for (i = 0; i < argc; i++)
        printf("ARROW-E2E: argv[%d]=%s\n", i, argv[i]);
    for (e = environ; *e; e++)
        printf("ARROW-E2E: env %s\n", *e);
    printf("ARROW-E2E: mounts proc=%d sys=%d dev=%d tmp=%d console=%d\n",
           stat("/proc/self", &st) == 0, stat("/sys/kernel", &st) == 0,
           stat("/dev/null", &st) == 0, stat("/tmp", &st) == 0 && (st.st_mode & 01777) == 01777,
           stat("/dev/console", &st) == 0);
    printf("ARROW-E2E: cpus online=%ld\n", sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
    if (argc > 1 && strcmp(argv[argc - 1], "segv") == 0)
        *(volatile int *)0 = 0;
    return argc > 1 ? atoi(argv[argc - 1]) : 3;
}
