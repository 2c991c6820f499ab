//go:build unix

package answers

import "syscall"

// allocRing maps size bytes of anonymous memory, outside Go's heap; the
// heap is the fallback when the system refuses, for at most heapRing.
func allocRing(size int) ([]byte, func()) {
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]byte, min(size, heapRing)), nil
	}
	return b, func() { _ = syscall.Munmap(b) }
}
