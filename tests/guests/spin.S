/* Says hello, then spins forever without exits: only the host can stop it. */
#include "common.inc"
.globl _start
.text
_start:
    PUTS msg
1:  jmp 1b
#include "lib.inc"
msg: .asciz "spin: spinning\n"
