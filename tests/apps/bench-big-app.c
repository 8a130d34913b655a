/*
 * Benchmark app for shadowfs: a static binary with 8 MiB of read-only data
 * (its "text"), which it reads page by page as a real app runs its code,
 * then reports and idles until the VM is stopped.
 */
#include <stdio.h>
#include <unistd.h>

#define BIG (8 << 20)
/* Initialized, so it is in the file (.rodata), not in .bss. */
static const unsigned char big[BIG] = { 1, 2, 3 };

int main(void)
{
    unsigned long sum = 0;
    for (unsigned long i = 0; i < BIG; i += 4096)
        sum += ((volatile const unsigned char *)big)[i];
    printf("BENCH-READY %lu\n", sum);
    fflush(stdout);
    for (;;)
        pause();
}
