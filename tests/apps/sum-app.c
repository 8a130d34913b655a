/*
 * Second test app for the generic-template test: a different program from
 * e2e-app.  Prints its hostname and exits with the sum of its numeric
 * arguments plus $N (mod 256), so the status shows it got its own argv/env.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/utsname.h>

int main(int argc, char **argv)
{
    struct utsname u;
    const char *n = getenv("N");
    int sum = n ? atoi(n) : 0;
    int i;

    for (i = 1; i < argc; i++)
        sum += atoi(argv[i]);
    uname(&u);
    printf("SUM-APP: host=%s argc=%d sum=%d\n", u.nodename, argc, sum);
    fflush(stdout);
    return sum & 0xff;
}
