/* PIO and MMIO exit dispatch: read a 32-bit value from the test MMIO device,
 * write it back plus one at offset 4, write a byte to test port 0x510 and
 * read it back, report both on the console, reset. */
#include "common.inc"
.equ TEST_MMIO, 0xd0000000
.equ TEST_PORT, 0x510
.globl _start
.text
_start:
    mov $TEST_MMIO, %rbx
    mov (%rbx), %eax
    inc %eax
    mov %eax, 4(%rbx)
    mov $TEST_PORT, %dx
    mov $0x42, %al
    out %al, %dx
    in %dx, %al
    cmp $0x43, %al          /* the test device answers value + 1 */
    jne bad
    mov 8(%rbx), %eax       /* unclaimed offset inside the device: its choice */
    mov $0xdfff0000, %rbx   /* nobody here: reads all ones */
    mov (%rbx), %eax
    cmp $0xffffffff, %eax
    jne bad
    PUTS ok
    RESET
bad:
    PUTS fail
    RESET
#include "lib.inc"
ok: .asciz "devices: ok\n"
fail: .asciz "devices: FAIL\n"
