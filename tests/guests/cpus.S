/* Counts processor entries in the MP table the VMM wrote at 0x9fc00 and the
 * e820 entries in the zero page, prints "cpus=N e820=M", resets. */
#include "common.inc"
.globl _start
.text
_start:
    mov %rsi, %r12                /* zero page */
    mov $0x9fc00, %rbx
    cmpl $0x5f504d5f, (%rbx)      /* "_MP_" */
    jne bad
    mov 4(%rbx), %ebx             /* config table */
    cmpl $0x504d4350, (%rbx)      /* "PCMP" */
    jne bad
    movzwl 34(%rbx), %ecx         /* entry count */
    lea 44(%rbx), %rdi
    xor %r8d, %r8d                /* processors */
next:
    test %ecx, %ecx
    jz done
    movzbl (%rdi), %eax
    test %eax, %eax
    jnz other
    inc %r8d
    add $20, %rdi
    dec %ecx
    jmp next
other:
    add $8, %rdi
    dec %ecx
    jmp next
done:
    PUTS cpus
    mov %r8d, %eax
    call putdigit
    PUTS e820
    movzbl 0x1e8(%r12), %eax
    call putdigit
    PUTS nl
    RESET
bad:
    PUTS fail
    RESET
#include "lib.inc"
cpus: .asciz "cpus="
e820: .asciz " e820="
nl: .asciz "\n"
fail: .asciz "cpus: no MP table\n"
