/* Loads an empty IDT and raises #UD: no handler, #DF has none either, so the
 * CPU triple-faults (KVM_EXIT_SHUTDOWN). */
#include "common.inc"
.globl _start
.text
_start:
    PUTS msg
    lidt idtr(%rip)
    ud2
#include "lib.inc"
msg: .asciz "triple: faulting\n"
.align 8
idtr: .word 0
      .quad 0
