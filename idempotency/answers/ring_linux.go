package answers

import "syscall"

// returnMemory tells the system that b, mapped by allocRing, holds
// nothing worth keeping: its pages are freed, and come back zeroed when
// written again.
func returnMemory(b []byte) { _ = syscall.Madvise(b, syscall.MADV_DONTNEED) }
