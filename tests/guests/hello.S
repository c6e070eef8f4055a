#include "common.inc"
.globl _start
.text
_start:
    PUTS msg
    RESET
#include "lib.inc"
msg: .asciz "husk-test-guest: hello\n"
