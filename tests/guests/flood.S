/* Writes 4000 lines "0123456789abcdef\n" (68000 bytes) as fast as it can,
 * then "flood: done" and resets: nothing may be lost. */
#include "common.inc"
.globl _start
.text
_start:
    mov $4000, %r12d
1:  PUTS line
    dec %r12d
    jnz 1b
    PUTS done
    RESET
#include "lib.inc"
line: .asciz "0123456789abcdef\n"
done: .asciz "flood: done\n"
