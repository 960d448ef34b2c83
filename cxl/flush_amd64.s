#include "textflag.h"

// func cpuid(leaf, sub uint32) (a, b, c, d uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, a+8(FP)
	MOVL BX, b+12(FP)
	MOVL CX, c+16(FP)
	MOVL DX, d+20(FP)
	RET

// The line loops take a line-aligned address of off-heap (mmap'd) memory and
// a line count. They are leaf functions: no stack, no preemption points.

// func clwbLines(addr uintptr, lines int64)
TEXT ·clwbLines(SB), NOSPLIT, $0-16
	MOVQ addr+0(FP), AX
	MOVQ lines+8(FP), CX
	TESTQ CX, CX
	JLE clwbdone
clwbloop:
	CLWB (AX)
	ADDQ $64, AX
	DECQ CX
	JNZ clwbloop
clwbdone:
	RET

// func clflushoptLines(addr uintptr, lines int64)
TEXT ·clflushoptLines(SB), NOSPLIT, $0-16
	MOVQ addr+0(FP), AX
	MOVQ lines+8(FP), CX
	TESTQ CX, CX
	JLE optdone
optloop:
	CLFLUSHOPT (AX)
	ADDQ $64, AX
	DECQ CX
	JNZ optloop
optdone:
	RET

// func clflushLines(addr uintptr, lines int64)
TEXT ·clflushLines(SB), NOSPLIT, $0-16
	MOVQ addr+0(FP), AX
	MOVQ lines+8(FP), CX
	TESTQ CX, CX
	JLE fldone
flloop:
	CLFLUSH (AX)
	ADDQ $64, AX
	DECQ CX
	JNZ flloop
fldone:
	RET

// func sfence()
TEXT ·sfence(SB), NOSPLIT, $0-0
	SFENCE
	RET

// func mfence()
TEXT ·mfence(SB), NOSPLIT, $0-0
	MFENCE
	RET
