//go:build !linux

package answers

// returnMemory keeps the pages where the system has no madvise in
// package syscall: the ring then costs its size once it went round.
func returnMemory([]byte) {}
