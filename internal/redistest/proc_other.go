//go:build !linux

package redistest

import "syscall"

// procAttr is empty where the kernel cannot be asked to kill a child
// with its parent: the test's cleanup kills it.
func procAttr() *syscall.SysProcAttr { return nil }
