package redistest

import "syscall"

// procAttr has the kernel kill the server should the test binary die
// without cleaning up (a go test -timeout, say), so that no redis-server
// outlives its test.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
