/* hello: prints its argv and environment, then exits with the code given by `--exit N`
 * (or env EXIT_CODE; default 0). The smallest Arrow app: boot-time and exit-code tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

static int parse_code(const char *s)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 255) {
        fprintf(stderr, "hello: invalid exit code '%s': expected 0..255\n", s);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    int code = 0;
    const char *env_code = getenv("EXIT_CODE");
    if (env_code && *env_code)
        code = parse_code(env_code);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--exit") == 0 && i + 1 < argc)
            code = parse_code(argv[++i]);
        else if (strncmp(argv[i], "--exit=", 7) == 0)
            code = parse_code(argv[i] + 7);
    }
    printf("hello from Arrow\n");
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = environ; *e; e++)
        printf("env %s\n", *e);
    printf("exit %d\n", code);
    fflush(stdout);
    return code;
}
