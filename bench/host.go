package main

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// What the harness does with the host itself: it runs the proxies as
// child process groups, and reads CPU time (its own, the proxy's,
// everybody else's), SYNs on the loopback interface, and the kernel's
// failed-connect counter.

// children tracks every process the harness started, so all of them die
// on the way out, errors and interrupts included.
type children struct {
	mu    sync.Mutex
	procs map[*exec.Cmd]chan struct{}
}

func newChildren() *children { return &children{procs: map[*exec.Cmd]chan struct{}{}} }

// start runs cmd in its own process group, which kill takes down whole
// (nginx workers included); the kernel kills the leader if the harness
// dies first.
func (c *children) start(cmd *exec.Cmd) (exited <-chan struct{}, err error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs == nil {
		return nil, errors.New("shutting down")
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	c.procs[cmd] = done
	go func() {
		cmd.Wait()
		close(done)
	}()
	return done, nil
}

// kill ends cmd's process group and waits for the leader.
func (c *children) kill(cmd *exec.Cmd) {
	c.mu.Lock()
	done, ok := c.procs[cmd]
	delete(c.procs, cmd)
	c.mu.Unlock()
	if !ok {
		return
	}
	killGroup(cmd, done)
}

// release forgets cmd, which has exited by itself: nothing to kill.
func (c *children) release(cmd *exec.Cmd) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.procs, cmd)
}

// crash kills cmd's process group at once (SIGKILL), as a crash would,
// and waits for the leader.
func (c *children) crash(cmd *exec.Cmd) {
	c.mu.Lock()
	done, ok := c.procs[cmd]
	delete(c.procs, cmd)
	c.mu.Unlock()
	if !ok {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// killGroup asks the leader to stop (SIGTERM: Caddy and HAProxy stop,
// nginx's master stops and reaps its workers), then kills the whole
// group with SIGKILL, whatever is left of it.
func killGroup(cmd *exec.Cmd, done chan struct{}) {
	pid := cmd.Process.Pid
	if pid <= 0 {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
}

// killAll ends every child; later starts are refused.
func (c *children) killAll() {
	c.mu.Lock()
	procs := c.procs
	c.procs = nil
	c.mu.Unlock()
	var wg sync.WaitGroup
	for cmd, done := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			killGroup(cmd, done)
		}()
	}
	wg.Wait()
}

// tcpAttemptFails reads the kernel's count of failed TCP connects
// (Tcp AttemptFails in /proc/net/snmp). On loopback with nothing else
// running, its growth while the upstream refuses is the number of
// connects the proxies tried: refused connects never reach a handler.
func tcpAttemptFails() (int64, bool) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, false
	}
	var names []string
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.HasPrefix(line, "Tcp:") {
			continue
		}
		fields := strings.Fields(line)[1:]
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "AttemptFails" && i < len(fields) {
				v, err := strconv.ParseInt(fields[i], 10, 64)
				return v, err == nil
			}
		}
	}
	return 0, false
}

// cpuStat is a CPU-time reading, to tell how much of the machine the
// proxy, the harness and everything else used during a run.
type cpuStat struct {
	busy, self, proxy time.Duration
	// steal is time the hypervisor gave the CPUs to other guests
	steal time.Duration
}

// clockTick is USER_HZ, the unit of /proc CPU times on Linux.
const clockTick = 10 * time.Millisecond

// readCPU reads the machine's CPU time, the harness's, and the proxy's:
// the processes of the groups pgids.
func readCPU(pgids ...int) cpuStat {
	var c cpuStat
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is already counted in user
		for i := 1; i < len(f) && i <= 8; i++ {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			switch i {
			case 4, 5: // idle, iowait
			case 8:
				c.steal = time.Duration(v) * clockTick
			default:
				c.busy += time.Duration(v) * clockTick
			}
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	for _, pgid := range pgids {
		c.proxy += groupCPU(pgid)
	}
	return c
}

// groupCPU sums the CPU time of the processes in a process group.
func groupCPU(pgid int) time.Duration {
	ents, _ := os.ReadDir("/proc")
	var total time.Duration
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// the command may hold spaces; fields restart after its ')'
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		// f[0] is field 3 (state): pgrp is field 5, utime 14, stime 15
		if len(f) < 13 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+st) * clockTick
	}
	return total
}

// synCounter sees, on the loopback interface, every TCP SYN sent to one
// port: each is a connect attempt, answered or refused. It needs a raw
// packet socket (root or CAP_NET_RAW).
type synCounter struct {
	fd    int
	port  uint16
	start time.Time
	mu    sync.Mutex
	at    []time.Duration // since start
	quit  atomic.Bool
	done  chan struct{}
}

func startSynCounter(port int, start time.Time) (*synCounter, error) {
	const ethPAll = 0x0003
	proto := int(ethPAll>>8 | (ethPAll&0xff)<<8) // htons
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, proto)
	if err != nil {
		return nil, err
	}
	lo, err := net.InterfaceByName("lo")
	if err == nil {
		err = syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: lo.Index})
	}
	if err == nil {
		tv := syscall.NsecToTimeval(int64(50 * time.Millisecond))
		err = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	}
	if err != nil {
		syscall.Close(fd)
		return nil, err
	}
	c := &synCounter{fd: fd, port: uint16(port), start: start, done: make(chan struct{})}
	go c.read()
	return c, nil
}

func (c *synCounter) read() {
	defer close(c.done)
	buf := make([]byte, 128) // headers are enough; the rest is cut off
	for {
		if c.quit.Load() {
			return
		}
		n, from, err := syscall.Recvfrom(c.fd, buf, syscall.MSG_TRUNC)
		if err != nil {
			if err == syscall.EAGAIN || err == syscall.EINTR {
				continue
			}
			return
		}
		// each loopback packet shows up twice: going out and coming in
		if ll, ok := from.(*syscall.SockaddrLinklayer); !ok || ll.Pkttype == syscall.PACKET_OUTGOING {
			continue
		}
		n = min(n, len(buf))
		const eth = 14
		if n < eth+20 || buf[12] != 0x08 || buf[13] != 0x00 || buf[eth+9] != syscall.IPPROTO_TCP {
			continue
		}
		tcp := eth + int(buf[eth]&0x0f)*4
		if n < tcp+14 {
			continue
		}
		dst := uint16(buf[tcp+2])<<8 | uint16(buf[tcp+3])
		flags := buf[tcp+13]
		if dst == c.port && flags&0x02 != 0 && flags&0x10 == 0 {
			c.mu.Lock()
			c.at = append(c.at, time.Since(c.start))
			c.mu.Unlock()
		}
	}
}

// stop ends the capture and returns when each SYN was seen.
func (c *synCounter) stop() []time.Duration {
	c.quit.Store(true)
	<-c.done // within the receive timeout
	syscall.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.at...)
}
