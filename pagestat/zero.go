package pagestat

import (
	"bytes"
	"unsafe"
)

// zeroBlock is compared against page-sized chunks; bytes.Equal lowers to
// the runtime's vectorised memequal (AVX2 on amd64), and the zero block stays
// in L1, so the test runs at memory bandwidth.
var zeroBlock [64 << 10]byte

// IsZero reports whether every byte of b is zero.
func IsZero(b []byte) bool {
	for len(b) > len(zeroBlock) {
		if !bytes.Equal(b[:len(zeroBlock)], zeroBlock[:]) {
			return false
		}
		b = b[len(zeroBlock):]
	}
	return bytes.Equal(b, zeroBlock[:len(b)])
}

// isZeroWords is the portable word-wise test, kept as the reference the
// benchmark compares IsZero against and for the tests.
func isZeroWords(b []byte) bool {
	n := len(b) &^ 63
	if n > 0 {
		w := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(b))), n/8)
		for i := 0; i+8 <= len(w); i += 8 {
			if w[i]|w[i+1]|w[i+2]|w[i+3]|w[i+4]|w[i+5]|w[i+6]|w[i+7] != 0 {
				return false
			}
		}
	}
	for _, c := range b[n:] {
		if c != 0 {
			return false
		}
	}
	return true
}
