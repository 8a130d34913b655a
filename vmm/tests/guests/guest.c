/*
 * Freestanding test guest for arrow-vmm. Runs at CPL0, which on nested-PVM
 * hosts is emulated at ~1M instructions/s: keep every path short and use
 * plain integer instructions only.
 *
 * The scenario is chosen by the kernel command line (zero page, hdr.cmd_line_ptr):
 *   hello            print a greeting, exit 0 through the notify device
 *   exit=N           exit with status N;  signal=N: killed by signal N
 *   info             print the command line and the e820 RAM total
 *   smp              start the other vCPUs (MP table + INIT/SIPI), count them
 *   triple           load an empty IDT and fault: triple fault
 *   ports            poke unknown ports and MMIO, check what reads return
 *   panic            report GUEST_PANIC
 *   reset            i8042 CPU reset
 *   halt             hlt with interrupts off (no notify)
 *   count=N          print N numbered lines
 *   popcnt           run popcnt at CPL0 (nested-PVM hosts cannot emulate it)
 *   tick=N           print "tick K gen G" for K = 1..N with a delay between,
 *                    a counter in memory checked against one in a register
 *   clonetest        wait until the notify device reports a clone nonce, then
 *                    show a memory cell, write the nonce into it, read it back
 *   idle             sleep in HLT with interrupts on, forever (an idle app)
 *   cloneidle        wait until cloned, print "clone gen G nonce N cid C" (C from
 *                    the vsock device's config space), then idle like `idle`
 *   virtio           read the identification registers of the virtio-mmio
 *                    device at 0xd0000000
 *   pmem             for each virtio-pmem device: print its config window,
 *                    map it (2 MiB page), print its first bytes, write one
 *                    byte and read it back
 *   pmemclone        wait until cloned or restored with a nonce (as
 *                    clonetest), then do what `pmem` does
 *   core             send a 32-byte "core dump" of PID 1 in two CORE_CHUNK
 *                    events (notify 0x06, descriptor ABI of devices/coredump.rs),
 *                    print each status, then exit as killed by SIGSEGV
 *   garbage=N        a hostile driver: N rounds over every virtio-mmio device
 *                    (random register writes, queues set up on random memory
 *                    with random descriptors, every queue notified), printing
 *                    "garbage round K" as it goes; exit 0 if the VMM is still
 *                    serving it at the end
 */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define NOTIFY_PORT 0xae0
#define EV_STARTED 0x01
#define EV_EXITED 0x03
#define EV_PANIC 0x04

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc(char c) { outb(0x3f8, (u8)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void putu(u64 v) {
    char buf[24];
    int i = 0;
    do { buf[i++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (i) putc(buf[--i]);
}
static void puthex(u64 v) {
    puts("0x");
    for (int i = 60; i >= 0; i -= 4) putc("0123456789abcdef"[(v >> i) & 0xf]);
}

static void notify(u32 event, u32 payload) { outl(NOTIFY_PORT, (event << 24) | (payload & 0xffffff)); }
static void __attribute__((noreturn)) halt_forever(void) { for (;;) __asm__ volatile("cli; hlt"); }
static void __attribute__((noreturn)) exit_with(u32 status) { notify(EV_EXITED, status & 0xff); halt_forever(); }

static int starts_with(const char *s, const char *p) { while (*p) if (*s++ != *p++) return 0; return 1; }
static u64 slen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }
static u64 parse_u(const char *s) { u64 v = 0; while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0'); return v; }
/* Finds the word "key" on the command line; returns what follows it. A key
 * ending in '=' matches the start of a word ("exit=" in "exit=3"), any other
 * key only a whole word (so "panic" does not match "panic=-1"). */
static const char *find_word(const char *cl, const char *key) {
    const char *w = cl;
    u64 n = slen(key);
    int prefix = n && key[n - 1] == '=';
    while (*w) {
        while (*w == ' ') w++;
        if (starts_with(w, key) && (prefix || w[n] == ' ' || w[n] == 0)) return w + n;
        while (*w && *w != ' ') w++;
    }
    return 0;
}

static void info(const u8 *zp, const char *cl) {
    puts("cmdline: ");
    puts(cl);
    putc('\n');
    u8 n = zp[0x1e8];
    u64 ram = 0;
    for (u32 i = 0; i < n && i < 128; i++) {
        const u8 *e = zp + 0x2d0 + 20 * i;
        u64 size = *(const u64 *)(e + 8);
        u32 type = *(const u32 *)(e + 16);
        if (type == 1) ram += size;
    }
    puts("e820 entries: ");
    putu(n);
    puts(" ram bytes: ");
    putu(ram);
    putc('\n');
}

/* Counts processor entries in the MP table the VMM wrote at 0x9fc00. */
static u32 mp_cpus(void) {
    const u8 *fp = (const u8 *)0x9fc00;
    if (!(fp[0] == '_' && fp[1] == 'M' && fp[2] == 'P' && fp[3] == '_')) return 0;
    const u8 *t = (const u8 *)(u64)(*(const u32 *)(fp + 4));
    u16 count = *(const u16 *)(t + 34);
    const u8 *e = t + 44;
    u32 cpus = 0;
    for (u16 i = 0; i < count; i++) {
        if (e[0] == 0) { cpus++; e += 20; } else e += 8;
    }
    return cpus;
}

extern char ap_tramp_start[], ap_tramp_end[];
#define LAPIC ((volatile u32 *)0xfee00000)
static void lapic_icr(u32 hi, u32 lo) {
    LAPIC[0x310 / 4] = hi;
    LAPIC[0x300 / 4] = lo;
    while (LAPIC[0x300 / 4] & (1 << 12)) {}
}
static void delay(u32 n) { for (volatile u32 i = 0; i < n; i++) {} }

static void smp(void) {
    u32 cpus = mp_cpus();
    puts("mp table cpus: ");
    putu(cpus);
    putc('\n');
    u8 *dst = (u8 *)0x10000;
    for (char *p = ap_tramp_start; p < ap_tramp_end; p++) *dst++ = (u8)*p;
    volatile u16 *counter = (volatile u16 *)0x11000;
    *counter = 0;
    LAPIC[0xf0 / 4] |= 0x100; /* software enable */
    lapic_icr(0, 0x000c4500);  /* INIT to all but self */
    delay(100);
    lapic_icr(0, 0x000c4610);  /* SIPI, vector 0x10 -> 0x10000 */
    delay(100);
    lapic_icr(0, 0x000c4610);
    for (u32 spin = 0; spin < 2000000 && *counter + 1u < cpus; spin++) {}
    puts("\ncpus up: ");
    putu(*counter + 1u);
    putc('\n');
}

static void ports(void) {
    outb(0x80, 0x12);
    outw(0x1234, 0xbeef);
    outl(0x5678, 0xdeadbeef);
    u8 b = inb(0x1235);
    u32 l = inl(0x5678);
    volatile u32 *mmio = (volatile u32 *)0xd0000000UL;
    *mmio = 0x1234;
    u32 m = *mmio;
    puts("unknown port reads: ");
    puthex(b);
    putc(' ');
    puthex(l);
    puts(" mmio: ");
    puthex(m);
    putc('\n');
    /* An event the ABI does not define must be ignored. */
    notify(0x7f, 1);
    puts("still running\n");
}

static u32 clone_generation(void) { return inl(NOTIFY_PORT); }
static u32 clone_nonce(void) { return inl(NOTIFY_PORT + 4); }

static volatile u64 tick_counter;
/* Maps guest-physical [addr, addr + 2 MiB) at the same virtual address
 * with one 2 MiB page (the VMM identity-maps only the first 4 GiB): a page
 * directory at 0xf000 (free: the VMM's tables end there) under PDPT entry
 * addr >> 30. Each call reuses that directory, so one window at a time. */
static void map_2m(u64 addr) {
    volatile u64 *pdpt = (volatile u64 *)0xa000UL;
    volatile u64 *pd = (volatile u64 *)0xf000UL;
    for (int i = 0; i < 512; i++) pd[i] = 0;
    pd[(addr >> 21) & 511] = (addr & ~0x1fffffUL) | 0x83; /* P, RW, PS */
    pdpt[(addr >> 30) & 511] = 0xf000UL | 0x3;
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(cr3)::"memory");
}

static void __attribute__((noreturn)) pmem(void) {
    for (u64 slot = 0; slot < 19; slot++) {
        volatile u32 *regs = (volatile u32 *)(0xd0000000UL + slot * 0x1000);
        if (regs[0] != 0x74726976) break;
        if (regs[2] != 27) continue;
        u64 start = (u64)regs[0x40] | ((u64)regs[0x41] << 32);
        u64 size = (u64)regs[0x42] | ((u64)regs[0x43] << 32);
        puts("pmem start ");
        puthex(start);
        puts(" size ");
        puthex(size);
        map_2m(start);
        volatile u8 *p = (volatile u8 *)start;
        puts(" data '");
        for (int i = 0; i < 32 && p[i] >= ' ' && p[i] < 127; i++) putc((char)p[i]);
        puts("'");
        p[1] = 'W';
        puts(" after write '");
        putc((char)p[1]);
        puts("'\n");
    }
    exit_with(0);
}

static void tick(u64 limit) {
    register u64 doubled = 0;
    for (;;) {
        tick_counter++;
        doubled += 2;
        if (doubled != 2 * tick_counter) {
            puts("MISMATCH\n");
            exit_with(98);
        }
        puts("tick ");
        putu(tick_counter);
        puts(" gen ");
        putu(clone_generation());
        putc('\n');
        if (tick_counter >= limit) exit_with(0);
        delay(10000);
    }
}

static volatile u32 clone_mark;
static void clonetest(void) {
    puts("waiting to be cloned\n");
    for (;;) {
        u32 nonce = clone_nonce();
        if (nonce) {
            puts("cloned gen ");
            putu(clone_generation());
            puts(" nonce ");
            puthex(nonce);
            puts(" mark ");
            puthex(clone_mark);
            putc('\n');
            clone_mark = nonce;
            delay(2000);
            puts("after mark ");
            puthex(clone_mark);
            putc('\n');
            exit_with(clone_mark == nonce ? 0 : 97);
        }
        delay(1000);
    }
}

/* A long-running clone that says who it is once, then sleeps. */
static void cloneidle(void) {
    puts("waiting to be cloned\n");
    while (!clone_nonce()) delay(1000);
    volatile u32 *vsock_config = (volatile u32 *)0xd0000100UL;
    puts("clone gen ");
    putu(clone_generation());
    puts(" nonce ");
    puthex(clone_nonce());
    puts(" cid ");
    putu(vsock_config[0]);
    putc('\n');
    for (;;) __asm__ volatile("sti; hlt");
}

/* The core dump protocol (docs/arrow-vmm.md "Core dumps"), as the guest kernel speaks it. */
static u8 core_desc[4096] __attribute__((aligned(4096)));
static u8 core_data[16];
static void put32(u8 *p, u32 v) { for (int i = 0; i < 4; i++) p[i] = (u8)(v >> (8 * i)); }
static void put64(u8 *p, u64 v) { put32(p, (u32)v); put32(p + 4, (u32)(v >> 32)); }
static u32 get32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

static void __attribute__((noreturn)) core(void) {
    const char *body = "ARROW-TEST-CORE-0123456789abcdef";
    for (u32 c = 0; c < 2; c++) {
        for (int i = 0; i < 16; i++) core_data[i] = (u8)body[c * 16 + i];
        put32(core_desc + 0, 0x45524f43);
        put32(core_desc + 4, 1);
        put32(core_desc + 8, 1);             /* pid */
        put32(core_desc + 12, 11);           /* SIGSEGV */
        put64(core_desc + 16, c * 16);       /* offset */
        put64(core_desc + 24, 32);           /* total */
        put64(core_desc + 32, (u64)core_data);
        put32(core_desc + 40, 16);
        put32(core_desc + 44, c == 0 ? 1 : 2); /* FIRST, then LAST */
        put32(core_desc + 48, 0xffffffff);
        notify(0x06, (u32)((u64)core_desc >> 12));
        puts("core chunk status ");
        putu(get32(core_desc + 48));
        putc('\n');
    }
    notify(EV_EXITED, 0x100 | 11);
    halt_forever();
}


/* A hostile virtio driver (scenario garbage=N). xorshift64: repeatable. */
static u64 rng_state = 0x9e3779b97f4a7c15UL;
static u64 rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
/* Queue memory the devices will parse: 4 pages of random bytes. */
static u8 garbage_ring[4][4096] __attribute__((aligned(4096)));
static const u32 garbage_regs[] = {0x014, 0x020, 0x024, 0x030, 0x038, 0x044, 0x050, 0x064,
                                   0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc,
                                   0x100, 0x104, 0x108, 0x110, 0x118, 0x120, 0x1fc, 0xffc};

/* A value a fuzzing driver would write: small, a guest address (sometimes
 * inside the random rings), or anything. */
static u32 garbage_value(void) {
    u64 r = rnd();
    switch (r & 3) {
    case 0: return (u32)(r >> 8) & 0x3ff;
    case 1: return (u32)(u64)garbage_ring[(r >> 8) & 3] + ((u32)(r >> 16) & 0xfff);
    default: return (u32)(r >> 32);
    }
}

static void garbage(u64 rounds) {
    for (u64 round = 1; round <= rounds; round++) {
        /* New random descriptors, avail and used rings every round. */
        for (u32 p = 0; p < 4; p++)
            for (u32 i = 0; i < 4096; i += 8) *(volatile u64 *)&garbage_ring[p][i] = rnd();
        u32 devices = 0;
        for (u32 d = 0; d < 16; d++) {
            volatile u32 *regs = (volatile u32 *)(0xd0000000UL + d * 0x1000UL);
            if (regs[0] != 0x74726976) continue; /* "virt" */
            devices++;
            /* A plausible bring-up on garbage memory... */
            regs[0x070 / 4] = 0;
            regs[0x070 / 4] = 1 | 2;
            regs[0x024 / 4] = 1;
            regs[0x020 / 4] = 1; /* VIRTIO_F_VERSION_1 */
            regs[0x070 / 4] = 1 | 2 | 8;
            for (u32 q = 0; q < 4; q++) {
                regs[0x030 / 4] = q;
                regs[0x038 / 4] = (u32)(rnd() & 0x1ff);
                regs[0x080 / 4] = (u32)(u64)garbage_ring[0];
                regs[0x084 / 4] = 0;
                regs[0x090 / 4] = (u32)(u64)garbage_ring[1];
                regs[0x094 / 4] = 0;
                regs[0x0a0 / 4] = (u32)(u64)garbage_ring[2 + (q & 1)];
                regs[0x0a4 / 4] = 0;
                regs[0x044 / 4] = 1;
            }
            regs[0x070 / 4] = 1 | 2 | 4 | 8;
            for (u32 q = 0; q < 4; q++) regs[0x050 / 4] = q;
            /* ...then random writes and reads anywhere in the window. */
            for (u32 k = 0; k < 48; k++) {
                u64 r = rnd();
                u32 off = garbage_regs[(r >> 3) % (sizeof(garbage_regs) / sizeof(garbage_regs[0]))];
                regs[off / 4] = garbage_value();
                (void)regs[(u32)(r >> 40) & 0x3ff];
                if (r & 1) regs[0x050 / 4] = (u32)(r >> 20) & 7;
            }
            regs[0x064 / 4] = 0xffffffff;
        }
        puts("garbage round ");
        putu(round);
        puts(" devices ");
        putu(devices);
        putc('\n');
    }
}

struct idt_ptr { u16 limit; u64 base; } __attribute__((packed));

void guest_main(const u8 *zp) {
    const char *cl = (const char *)(u64)(*(const u32 *)(zp + 0x228));
    const char *v;
    notify(EV_STARTED, 0);
    if (find_word(cl, "core")) core();
    if (find_word(cl, "hello")) {
        puts("hello from the arrow test guest\n");
        exit_with(0);
    }
    if ((v = find_word(cl, "exit="))) exit_with((u32)parse_u(v));
    if ((v = find_word(cl, "signal="))) { notify(EV_EXITED, 0x100 | (u32)parse_u(v)); halt_forever(); }
    if (find_word(cl, "info")) { info(zp, cl); exit_with(0); }
    if (find_word(cl, "smp")) { smp(); exit_with(0); }
    if (find_word(cl, "ports")) { ports(); exit_with(0); }
    if (find_word(cl, "panic")) { notify(EV_PANIC, 0); halt_forever(); }
    if (find_word(cl, "reset")) { outb(0x64, 0xfe); halt_forever(); }
    if (find_word(cl, "halt")) halt_forever();
    if ((v = find_word(cl, "count="))) {
        u64 n = parse_u(v);
        for (u64 i = 1; i <= n; i++) { puts("count "); putu(i); putc('\n'); }
        exit_with(0);
    }
    if ((v = find_word(cl, "tick="))) tick(parse_u(v));
    if ((v = find_word(cl, "garbage="))) { garbage(parse_u(v)); exit_with(0); }
    if (find_word(cl, "clonetest")) clonetest();
    if (find_word(cl, "cloneidle")) cloneidle();
    if (find_word(cl, "idle")) {
        puts("idle\n");
        for (;;) __asm__ volatile("sti; hlt");
    }
    if (find_word(cl, "virtio")) {
        volatile u32 *regs = (volatile u32 *)0xd0000000UL;
        puts("virtio magic ");
        puthex(regs[0]);
        puts(" version ");
        putu(regs[1]);
        puts(" device ");
        putu(regs[2]);
        puts("\ncmdline: ");
        puts(cl);
        putc('\n');
        exit_with(0);
    }
    if (find_word(cl, "pmemclone")) {
        puts("waiting to be cloned\n");
        while (!clone_nonce()) delay(1000);
        pmem();
    }
    if (find_word(cl, "pmem")) pmem();
    if (find_word(cl, "popcnt")) {
        u64 x = 0xff;
        __asm__ volatile(".byte 0xf3, 0x48, 0x0f, 0xb8, 0xc0" : "+a"(x)); /* popcnt %rax, %rax */
        puts("popcnt: ");
        putu(x);
        putc('\n');
        exit_with(0);
    }
    if (find_word(cl, "triple")) {
        struct idt_ptr empty = {0, 0};
        __asm__ volatile("lidt %0" ::"m"(empty));
        __asm__ volatile("ud2");
    }
    puts("unknown scenario\n");
    exit_with(99);
}
