/* 64-bit entry (Linux boot protocol): RSI = zero page, RSP = boot stack. */
    .section .text.start, "ax"
    .code64
    .globl _start
_start:
    mov %rsi, %rdi
    call guest_main
1:  cli
    hlt
    jmp 1b

/* Application-processor trampoline, copied to 0x10000 and started in real
 * mode by INIT-SIPI-SIPI (vector 0x10). It prints 'A' on the serial port,
 * then counts itself in at 0x11000 with a locked increment and halts. The
 * 'A' goes first so that it cannot land inside the line the BSP prints once
 * the count is complete (a CI run saw "cpAus up: 2"). */
    .code16
    .globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
    cli
    mov $0x3f8, %dx
    mov $'A', %al
    outb %al, %dx
    mov $0x1000, %ax
    mov %ax, %ds
    lock incw 0x1000
2:  hlt
    jmp 2b
ap_tramp_end:
    .code64
    .section .note.GNU-stack, "", @progbits
