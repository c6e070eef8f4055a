#include "common.inc"
.globl _start
.text
_start:
    PUTS msg
    RESET
#include "lib.inc"
msg: .asciz "Kernel panic - not syncing: test guest panics on purpose\n"
