//go:build linux

// Linux only: memory and CPU time are read from /proc/PID, the server
// child lowers its own RLIMIT_NOFILE, and children are tied to the test
// process with Pdeathsig (see startTestProcess).

package zmqhttp

// Hostile peers (issue 9, item 3): raw TCP peers that speak hand-written
// ZMTP against a Listener in a separate process, one test per class of
// attack, each with the target it must meet.
//
// The child is the test binary re-executed (TestHostileHelperProcess):
//
//	role "server": an http.Server on a Listener at tcp://127.0.0.1:0,
//	serving
//	    /echo        the request body back
//	    /slow?ms=N   waits N ms or until r.Context() ends; the handlers
//	                 running are counted
//	role "client": a Transport to ZMQHTTP_HOSTILE_ENDPOINT (a hostile
//	server run by the test).
//
// Both answer commands on stdin, one per line, "SEQ CMD [ARGS]", with one
// line "R SEQ RESULT" on stdout: heap (runtime.GC, then HeapAlloc),
// handlers (running /slow handlers), stats (server: Listener counters as
// key=value), nofile N (server: RLIMIT_NOFILE = open fds + N), get PATH MS
// (client: a GET with an MS timeout, answered when it ends: status or
// error, and how long it took). Stdin's EOF ends the child.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/ugorji/go/codec"
)

const (
	hostileEnvRole     = "ZMQHTTP_HOSTILE_ROLE"
	hostileEnvEndpoint = "ZMQHTTP_HOSTILE_ENDPOINT"
)

// TestHostileHelperProcess is not a test: it is the child process of the
// other TestHostile* tests. It runs only when ZMQHTTP_HOSTILE_ROLE is set.
func TestHostileHelperProcess(t *testing.T) {
	role := os.Getenv(hostileEnvRole)
	if role == "" {
		t.Skip("helper process for the TestHostile* tests; runs only when they re-execute the test binary")
	}
	switch role {
	case "server":
		hostileServerMain()
	case "client":
		hostileClientMain()
	}
	fmt.Fprintln(os.Stderr, "hostile helper: unknown role", role)
	os.Exit(2)
}

func hostileServerMain() {
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		fmt.Printf("%s %v\n", relListenErrorLine, err)
		os.Exit(2)
	}
	var running atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		running.Add(1)
		defer running.Add(-1)
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer timer.Stop()
		select {
		case <-timer.C:
			io.WriteString(w, "slept")
		case <-r.Context().Done():
		}
	})
	srv := &http.Server{Handler: mux}
	go func() {
		err := srv.Serve(l)
		fmt.Fprintln(os.Stderr, "hostile server: Serve returned:", err)
		os.Exit(1)
	}()
	fmt.Printf("%s pid=%d endpoint=%s\n", relReadyLine, os.Getpid(), l.Endpoint())
	hostileCommands(func(cmd string, args []string) string {
		switch cmd {
		case "handlers":
			return strconv.FormatInt(running.Load(), 10)
		case "stats":
			s := l.Stats()
			return fmt.Sprintf("acceptErrors=%d peers=%d handshakeFailed=%d evicted=%d rejected=%d bad=%d slow=%d requests=%d",
				s.AcceptErrors, s.Peers, s.HandshakeFailed, s.HandshakesEvicted, s.Rejected, s.BadMessages, s.SlowPeers, s.Requests)
		case "nofile":
			n, _ := strconv.Atoi(args[0])
			fds, err := os.ReadDir("/proc/self/fd")
			if err != nil {
				return "error " + err.Error()
			}
			var lim syscall.Rlimit
			syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
			lim.Cur = uint64(len(fds) + n)
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				return "error " + err.Error()
			}
			return strconv.FormatUint(lim.Cur, 10)
		}
		return "unknown command"
	})
}

func hostileClientMain() {
	tr, err := NewTransport(os.Getenv(hostileEnvEndpoint))
	if err != nil {
		fmt.Printf("%s %v\n", relListenErrorLine, err)
		os.Exit(2)
	}
	client := &http.Client{Transport: tr}
	fmt.Printf("%s pid=%d\n", relReadyLine, os.Getpid())
	hostileCommands(func(cmd string, args []string) string {
		if cmd != "get" {
			return "unknown command"
		}
		ms, _ := strconv.Atoi(args[1])
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(ms)*time.Millisecond)
		defer cancel()
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://hostile"+args[0], nil)
		resp, err := client.Do(req)
		took := time.Since(start).Milliseconds()
		if err != nil {
			return fmt.Sprintf("took=%d error %v", took, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return fmt.Sprintf("took=%d status %d", took, resp.StatusCode)
	})
}

// hostileCommands runs the child's command loop; "heap" is answered here,
// the rest by do. Commands run concurrently; each answer is one line.
func hostileCommands(do func(cmd string, args []string) string) {
	var mu sync.Mutex
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		go func() {
			var res string
			if f[1] == "profile" { // debugging aid: a heap profile to the path given
				if pf, err := os.Create(f[2]); err == nil {
					pprof.WriteHeapProfile(pf)
					pf.Close()
				}
			}
			if f[1] == "heapsys" { // the heap's memory from the OS: it never shrinks, so it is its peak
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				res = strconv.FormatUint(ms.HeapSys, 10)
			} else if f[1] == "heap" || f[1] == "profile" {
				runtime.GC()
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				res = strconv.FormatUint(ms.HeapAlloc, 10)
			} else {
				res = do(f[1], f[2:])
			}
			mu.Lock()
			fmt.Printf("R %s %s\n", f[0], res)
			mu.Unlock()
		}()
	}
	os.Exit(3) // stdin closed: the parent has gone
}

// ---------------------------------------------------------------------
// Parent side.

// hostileProc is a running child.
type hostileProc struct {
	*relChild
	pid  string
	addr string // the server's tcp address
	mu   sync.Mutex
	seq  int
}

func startHostile(t *testing.T, role string, env ...string) *hostileProc {
	t.Helper()
	c, err := startTestProcess(t, "hostile "+role, "TestHostileHelperProcess", append(env, hostileEnvRole+"="+role), true)
	if err != nil {
		t.Fatal(err)
	}
	p := &hostileProc{relChild: c, pid: strconv.Itoa(c.cmd.Process.Pid)}
	out := c.stdout.String()
	if i := strings.Index(out, "endpoint=tcp://"); i >= 0 {
		p.addr = strings.Fields(out[i+len("endpoint=tcp://"):])[0]
	}
	return p
}

// ask sends a command and waits up to d for its answer.
func (p *hostileProc) ask(t *testing.T, d time.Duration, cmd string) string {
	t.Helper()
	p.mu.Lock()
	p.seq++
	seq := p.seq
	_, err := fmt.Fprintf(p.stdin, "%d %s\n", seq, cmd)
	p.mu.Unlock()
	if err != nil {
		t.Fatalf("%s: command %q: %v", p.name, cmd, err)
	}
	prefix := fmt.Sprintf("R %d ", seq)
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(p.stdout.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				return rest
			}
		}
		if p.exited() {
			t.Fatalf("%s exited (%v) before answering %q\n%s", p.name, p.waitErr, cmd, p.output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: no answer to %q within %v\n%s", p.name, cmd, d, p.output())
	return ""
}

func (p *hostileProc) askInt(t *testing.T, cmd string) int64 {
	t.Helper()
	s := p.ask(t, 30*time.Second, cmd)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("%s: %q answered %q", p.name, cmd, s)
	}
	return n
}

// stat returns one of the server's Listener counters.
func (p *hostileProc) stat(t *testing.T, key string) int64 {
	t.Helper()
	for _, kv := range strings.Fields(p.ask(t, 10*time.Second, "stats")) {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in the stats", key)
	return 0
}

func (p *hostileProc) rssKB(t *testing.T, field string) int64 {
	t.Helper()
	kb, err := vmKB(p.pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return kb
}

// cpuTicks is the child's user + system time in clock ticks (1/100 s).
func (p *hostileProc) cpuTicks(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + p.pid + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// watchRSS samples the child's VmRSS every 10 ms until stop is called,
// which returns the largest value seen (kB).
func (p *hostileProc) watchRSS() (stop func() int64) {
	var peak atomic.Int64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			if kb, err := vmKB(p.pid, "VmRSS"); err == nil && kb > peak.Load() {
				peak.Store(kb)
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() int64 {
		close(done)
		<-finished
		return peak.Load()
	}
}

// hostilePeer is a hand-driven ZMTP peer on a raw TCP connection.
type hostilePeer struct {
	nc net.Conn
	br *bufio.Reader // after the handshake
	bw *bufio.Writer
}

func dialHostile(t *testing.T, addr string) *hostilePeer {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &hostilePeer{nc: nc, bw: bufio.NewWriter(nc)}
}

// greet runs the NULL handshake as a DEALER.
func (r *hostilePeer) greet() error {
	br, _, err := handshake(r.nc, zmq4.Dealer, false, 10*time.Second)
	r.br = br
	return err
}

// hello sends HELLO without the heartbeat capability (so the server
// neither pings nor times out this peer) and, if wait, reads the answer.
func (r *hostilePeer) hello(wait bool) error {
	if err := r.send(&envelope{Version: ProtocolVersion, Kind: KindHello, Flags: capCancel | capDrain}); err != nil {
		return err
	}
	if !wait {
		return nil
	}
	env, err := r.recv(10 * time.Second)
	if err == nil && env.Kind != KindHello {
		err = fmt.Errorf("answer to HELLO: %s", env.Kind)
	}
	return err
}

func (r *hostilePeer) send(e *envelope) error {
	b, err := appendEnvelope(nil, e)
	if err != nil {
		return err
	}
	return r.sendRaw(b)
}

// sendRaw sends b as an envelope frame, after the empty delimiter.
func (r *hostilePeer) sendRaw(b []byte) error {
	if err := writeEnvelopeMsg(r.bw, b); err != nil {
		return err
	}
	return r.bw.Flush()
}

func (r *hostilePeer) recv(d time.Duration) (*envelope, error) {
	r.nc.SetReadDeadline(time.Now().Add(d))
	defer r.nc.SetReadDeadline(time.Time{})
	frame, _, _, err := readEnvelopeFrame(r.br, 64<<20, nil, func([]byte) {}, nil)
	if err != nil {
		return nil, err
	}
	var env envelope
	if err := decodeEnvelope(frame, Limits{}, &env); err != nil {
		return nil, err
	}
	return &env, nil
}

func hostileRequest(id uint64, method, uri string, body []byte) *envelope {
	return &envelope{Version: ProtocolVersion, Kind: KindRequest, ID: id, Method: method, URI: uri,
		Host: "hostile", Body: body, ContentLength: int64(len(body))}
}

// parallel runs f(i) for i in [0, n) on k goroutines and returns the
// first error.
func parallel(n, k int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("#%d: %w", i, err)
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// timedGet makes one request on a new Transport (a new connection, so a
// new handshake) and returns how long it took.
func timedGet(t *testing.T, addr string) (time.Duration, error) {
	tr, err := NewTransport("tcp://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, "POST", "http://hostile/echo", strings.NewReader("hi"))
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return time.Since(start), err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && string(b) != "hi" {
		err = fmt.Errorf("status %d, body %q", resp.StatusCode, b)
	}
	return time.Since(start), err
}

// ---------------------------------------------------------------------
// 1. Silent and slow handshakes.

// TestHostileHandshakeFlood: new clients are served within 1 s while
// 1,000 connections never greet, while 1,000 trickle their greeting a
// byte at a time (reconnecting when closed), and while both are open.
func TestHostileHandshakeFlood(t *testing.T) {
	srv := startHostile(t, "server")
	const n = 1000
	check := func(phase string) {
		t.Helper()
		var worst time.Duration
		for i := 0; i < 5; i++ {
			d, err := timedGet(t, srv.addr)
			if err != nil {
				t.Fatalf("%s: a new client failed after %v: %v", phase, d, err)
			}
			worst = max(worst, d)
		}
		t.Logf("%s: slowest of 5 new clients %v", phase, worst.Round(time.Millisecond))
		if worst > time.Second {
			t.Errorf("%s: a new client took %v, want under 1 s", phase, worst)
		}
	}

	var silent []net.Conn
	for range n {
		nc, err := net.Dial("tcp", srv.addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, nc)
	}
	t.Cleanup(func() {
		for _, nc := range silent {
			nc.Close()
		}
	})
	check(fmt.Sprintf("%d silent connections", n))

	// The slowloris: each connection sends one byte of a valid greeting
	// every 100 ms, and dials again when the server closes it.
	greeting := make([]byte, 64)
	greeting[0], greeting[9], greeting[10], greeting[11] = 0xff, 0x7f, 3, 0
	copy(greeting[12:], "NULL")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var redials atomic.Int64
	for g := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns := make([]net.Conn, n/20)
			sent := make([]int, n/20)
			defer func() {
				for _, nc := range conns {
					if nc != nil {
						nc.Close()
					}
				}
			}()
			for tick := 0; ; tick++ {
				for i := range conns {
					if conns[i] == nil {
						nc, err := net.Dial("tcp", srv.addr)
						if err != nil {
							continue
						}
						conns[i], sent[i] = nc, 0
						if tick > 0 {
							redials.Add(1)
						}
					}
					if sent[i] < len(greeting)-1 { // never the last byte
						conns[i].SetWriteDeadline(time.Now().Add(time.Second))
						if _, err := conns[i].Write(greeting[sent[i] : sent[i]+1]); err != nil {
							conns[i].Close()
							conns[i] = nil
							continue
						}
						sent[i]++
					}
				}
				select {
				case <-stop:
					return
				case <-time.After(100*time.Millisecond + time.Duration(g)*time.Millisecond):
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // every slowloris connection open
	check(fmt.Sprintf("%d silent + %d slowloris connections", n, n))
	for _, nc := range silent {
		nc.Close()
	}
	silent = nil
	time.Sleep(time.Second) // the slowloris goes on trickling
	check(fmt.Sprintf("%d slowloris connections", n))
	close(stop)
	wg.Wait()
	t.Logf("slowloris redials: %d; server: %s", redials.Load(), srv.ask(t, 5*time.Second, "stats"))
}

// ---------------------------------------------------------------------
// 2. Many idle peers.

// TestHostileIdlePeers: 2,000 peers that greeted and sent HELLO cost at
// most 16 KiB of heap each (32 MiB in all) in the server.
func TestHostileIdlePeers(t *testing.T) {
	srv := startHostile(t, "server")
	const n = 2000
	// One peer first, so that what every server allocates once (pools,
	// the first connection's code paths) is in the baseline.
	first := dialHostile(t, srv.addr)
	if err := first.greet(); err != nil {
		t.Fatal(err)
	}
	if err := first.hello(true); err != nil {
		t.Fatal(err)
	}
	base := srv.askInt(t, "heap")
	if err := parallel(n, 8, func(i int) error {
		r := dialHostile(t, srv.addr)
		if err := r.greet(); err != nil {
			return err
		}
		return r.hello(true)
	}); err != nil {
		t.Fatal(err)
	}
	if got := srv.stat(t, "peers"); got != n+1 {
		t.Fatalf("server has %d peers, want %d", got, n+1)
	}
	heap := srv.askInt(t, "heap")
	if path := os.Getenv("ZMQHTTP_HOSTILE_PROFILE"); path != "" {
		srv.askInt(t, "profile "+path)
	}
	per := (heap - base) / n
	t.Logf("heap: %d KiB at rest with one peer, %d KiB with %d more idle peers: %d bytes per peer (limit %d)",
		base>>10, heap>>10, n, per, 16<<10)
	if heap-base > 32<<20 || per > 16<<10 {
		t.Errorf("%d idle peers cost %d KiB of heap (%d bytes each), want at most 32 MiB (16 KiB each)", n, (heap-base)>>10, per)
	}
}

// ---------------------------------------------------------------------
// 3. Bombs and peers that do not read.

// hostileRSSLimit is how much a process's RSS may grow over its RSS at
// rest under any attack.
const hostileRSSLimit = 64 << 20

// memWatch follows a child's memory during an attack: its peak RSS and,
// for -race binaries, the memory of its Go heap (HeapSys).
type memWatch struct {
	p        *hostileProc
	rss      int64 // VmRSS at rest, kB
	heapSys  int64 // HeapSys at rest, bytes
	stopPeak func() int64
}

func (p *hostileProc) watchMem(t *testing.T) *memWatch {
	t.Helper()
	return &memWatch{p: p, rss: p.rssKB(t, "VmRSS"), heapSys: p.askInt(t, "heapsys"), stopPeak: p.watchRSS()}
}

// check stops watching and fails t if the process grew by more than
// hostileRSSLimit: its peak RSS over its RSS at rest or, under the race
// detector (whose shadow memory grows with every heap address ever used,
// garbage included, several times over), its Go heap's memory from the OS.
func (w *memWatch) check(t *testing.T, what string) {
	t.Helper()
	peak := w.stopPeak()
	heapSys := w.p.askInt(t, "heapsys")
	t.Logf("%s: %s RSS %d KiB at rest, peak %d KiB (+%d KiB); heap from the OS %d KiB at rest, %d KiB after (+%d KiB); limit +%d KiB",
		what, w.p.name, w.rss, peak, peak-w.rss, w.heapSys>>10, heapSys>>10, (heapSys-w.heapSys)>>10, hostileRSSLimit>>10)
	if raceEnabled {
		if heapSys-w.heapSys > hostileRSSLimit {
			t.Errorf("%s: %s heap grew by %d KiB (race detector on: RSS not compared), want under %d KiB", what, w.p.name, (heapSys-w.heapSys)>>10, hostileRSSLimit>>10)
		}
		return
	}
	if (peak-w.rss)<<10 > hostileRSSLimit {
		t.Errorf("%s: %s RSS grew by %d KiB, want under %d KiB", what, w.p.name, peak-w.rss, hostileRSSLimit>>10)
	}
}

// TestHostilePingBomb: a peer sends 3,000 ZMTP PINGs with 64 KiB contexts
// and never reads: the server's RSS stays below its RSS at rest + 64 MiB,
// and it still serves others.
func TestHostilePingBomb(t *testing.T) {
	srv := startHostile(t, "server")
	if _, err := timedGet(t, srv.addr); err != nil {
		t.Fatal(err)
	}
	mem := srv.watchMem(t)
	r := dialHostile(t, srv.addr)
	if err := r.greet(); err != nil {
		t.Fatal(err)
	}
	ctx := make([]byte, 2+64<<10) // TTL, then the context
	for i := range 3000 {
		if err := writeCommand(r.bw, "PING", ctx); err != nil {
			t.Fatalf("PING %d: %v", i, err)
		}
	}
	if err := r.bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if d, err := timedGet(t, srv.addr); err != nil {
		t.Errorf("another client after the PING bomb: %v (after %v)", err, d)
	}
	mem.check(t, "3,000 PINGs of 64 KiB")
}

// TestHostileNonReaders: 3 peers each send 3,000 16 KiB echo requests and
// never read a reply: the server's RSS stays below its RSS at rest +
// 64 MiB.
func TestHostileNonReaders(t *testing.T) {
	srv := startHostile(t, "server")
	if _, err := timedGet(t, srv.addr); err != nil {
		t.Fatal(err)
	}
	mem := srv.watchMem(t)
	body := make([]byte, 16<<10)
	var sent atomic.Int64
	err := parallel(3, 3, func(int) error {
		r := dialHostile(t, srv.addr)
		if err := r.greet(); err != nil {
			return err
		}
		if err := r.hello(true); err != nil {
			return err
		}
		for id := uint64(1); id <= 3000; id++ {
			b, err := appendEnvelope(nil, hostileRequest(id, "POST", "/echo", body))
			if err != nil {
				return err
			}
			r.nc.SetWriteDeadline(time.Now().Add(3 * time.Second))
			if err := writeEnvelopeMsg(r.bw, b); err != nil {
				// The server stopped reading (backpressure) or
				// dropped the peer, which does not read.
				return nil
			}
			sent.Add(1)
		}
		r.bw.Flush()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if path := os.Getenv("ZMQHTTP_HOSTILE_PROFILE"); path != "" {
		t.Logf("live heap %d KiB, profile in %s", srv.askInt(t, "profile "+path)>>10, path)
	}
	time.Sleep(500 * time.Millisecond)
	// Another client is answered, by its handler or with 503 (the
	// workers are taken), or once the server dropped the peers that do
	// not read (a heartbeat timeout without progress).
	d, err := timedGet(t, srv.addr)
	t.Logf("another client while 3 peers do not read: %v after %v", err, d.Round(time.Millisecond))
	t.Logf("%d requests of 16 KiB written; server: %s", sent.Load(), srv.ask(t, 5*time.Second, "stats"))
	mem.check(t, "3 peers x 3,000 echoes of 16 KiB, never read")
}

// TestHostileServerPingBomb: a hostile server sends a Transport 3,000
// ZMTP PINGs with 64 KiB contexts and never reads: the client's RSS stays
// below its RSS at rest + 64 MiB.
func TestHostileServerPingBomb(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl := startHostile(t, "client", hostileEnvEndpoint+"=tcp://"+ln.Addr().String())
	mem := cl.watchMem(t)
	// A request, so that the Transport connects and has a call pending.
	cl.mu.Lock()
	fmt.Fprintf(cl.stdin, "999999 get /x 60000\n")
	cl.mu.Unlock()
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, _, err := handshake(nc, zmq4.Router, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriter(nc)
	ctx := make([]byte, 2+64<<10)
	for i := range 3000 {
		if err := writeCommand(bw, "PING", ctx); err != nil {
			t.Fatalf("PING %d: %v", i, err)
		}
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the client reads the last of them
	t.Logf("client heap after GC: %d KiB", cl.askInt(t, "heap")>>10)
	mem.check(t, "3,000 PINGs of 64 KiB from the server")
}

// ---------------------------------------------------------------------
// 4. Disconnects and duplicate ids.

// TestHostileResetCancelsHandlers: a peer sends 60 requests to a 15 s
// handler and resets the connection: every handler is cancelled within
// 2 s, whether it was running or still about to start when the reset came.
func TestHostileResetCancelsHandlers(t *testing.T) {
	srv := startHostile(t, "server")
	for _, waitRunning := range []bool{true, false} {
		r := dialHostile(t, srv.addr)
		if err := r.greet(); err != nil {
			t.Fatal(err)
		}
		if err := r.hello(true); err != nil {
			t.Fatal(err)
		}
		for id := uint64(1); id <= 60; id++ {
			b, _ := appendEnvelope(nil, hostileRequest(id, "GET", "/slow?ms=15000", nil))
			writeEnvelopeMsg(r.bw, b)
		}
		if err := r.bw.Flush(); err != nil {
			t.Fatal(err)
		}
		if waitRunning {
			deadline := time.Now().Add(5 * time.Second)
			for srv.askInt(t, "handlers") < 60 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
		}
		before := int64(-1) // not asked: the reset follows the requests at once
		if waitRunning {
			before = srv.askInt(t, "handlers")
		}
		r.nc.(*net.TCPConn).SetLinger(0)
		r.nc.Close()
		reset := time.Now()
		var n int64
		for {
			n = srv.askInt(t, "handlers")
			if n == 0 || time.Since(reset) > 3*time.Second {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(reset)
		time.Sleep(300 * time.Millisecond) // none starts late
		late := srv.askInt(t, "handlers")
		t.Logf("waited for handlers to run: %v; running at the reset: %d; 0 after %v; %d a moment later",
			waitRunning, before, took.Round(time.Millisecond), late)
		if n != 0 || took > 2*time.Second || late != 0 {
			t.Errorf("after the reset: %d handlers still running %v later (%d after another 300 ms), want 0 within 2 s", n, took, late)
		}
	}
}

// TestHostileDuplicateID: a second request with the id of one in flight
// is answered 400 and the first goes on.
func TestHostileDuplicateID(t *testing.T) {
	srv := startHostile(t, "server")
	r := dialHostile(t, srv.addr)
	if err := r.greet(); err != nil {
		t.Fatal(err)
	}
	if err := r.hello(true); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.send(hostileRequest(7, "GET", "/slow?ms=300", nil)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for range 2 {
		env, err := r.recv(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s id=%d status=%d body=%q", env.Kind, env.ID, env.Status, env.Body))
	}
	t.Logf("replies: %q", got)
	if len(got) != 2 || !strings.Contains(got[0], "status=400") || !strings.Contains(got[0], "already in flight") ||
		!strings.Contains(got[1], `status=200 body="slept"`) {
		t.Errorf("replies %q, want 400 (id already in flight), then the first request's 200", got)
	}
}

// ---------------------------------------------------------------------
// 5. File descriptors exhausted.

// TestHostileAcceptErrors: with the server out of file descriptors, its
// accept loop backs off (under 30% of a core over 2 s), counts the errors,
// and keeps serving the peers it has.
func TestHostileAcceptErrors(t *testing.T) {
	srv := startHostile(t, "server")
	tr, err := NewTransport("tcp://" + srv.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func() error {
		resp, err := client.Post("http://hostile/echo", "text/plain", strings.NewReader("x"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	srv.ask(t, 5*time.Second, "nofile 4")
	var conns []net.Conn
	for range 50 {
		nc, err := net.Dial("tcp", srv.addr) // completes in the kernel's backlog
		if err != nil {
			break
		}
		conns = append(conns, nc)
	}
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond) // the fd table fills
	cpu0, t0 := srv.cpuTicks(t), time.Now()
	time.Sleep(2 * time.Second)
	cpu1, t1 := srv.cpuTicks(t), time.Now()
	share := float64(cpu1-cpu0) / 100 / t1.Sub(t0).Seconds()
	errs := srv.stat(t, "acceptErrors")
	serveErr := get()
	t.Logf("server CPU with its fd table full: %.1f%% of a core over %v; accept errors %d; existing peer served: %v",
		100*share, t1.Sub(t0).Round(time.Millisecond), errs, serveErr)
	if share > 0.30 {
		t.Errorf("server used %.0f%% of a core while accepts failed, want under 30%%", 100*share)
	}
	if errs == 0 {
		t.Errorf("ListenerStats.AcceptErrors is 0, want > 0")
	}
	if serveErr != nil {
		t.Errorf("the existing peer was not served: %v", serveErr)
	}
}

// ---------------------------------------------------------------------
// 6. Wrong types and out-of-range values.

// hostileEnvelope encodes fields as a msgpack array, whatever their types.
func hostileEnvelope(t *testing.T, fields []any) []byte {
	t.Helper()
	var b []byte
	if err := codec.NewEncoderBytes(&b, mh).Encode(fields); err != nil {
		t.Fatal(err)
	}
	return b
}

// hostileRequestFields is a valid request to /echo as a field list, for
// the tests to spoil one field.
func hostileRequestFields(id uint64) []any {
	return []any{1, 1, id, "POST", "/echo", "hostile", 0, []string{}, []byte("hi"), []string{}, 2, 0, "", 0, 0, 0}
}

// TestHostileDecoding: requests with wrong msgpack types or out-of-range
// values get the documented answer (400, or error 501 for a kind that
// does not fit), never silence; a huge timeout is served.
func TestHostileDecoding(t *testing.T) {
	srv := startHostile(t, "server")
	r := dialHostile(t, srv.addr)
	if err := r.greet(); err != nil {
		t.Fatal(err)
	}
	if err := r.hello(true); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mod    func(f []any)
		kind   Kind
		status int
	}{
		{"kind 257 (1 in its low byte)", func(f []any) { f[1] = 257 }, KindError, errCodeUnsupported},
		{"kind 2^32+1", func(f []any) { f[1] = uint64(1)<<32 + 1 }, KindError, errCodeUnsupported},
		{"header list as a map", func(f []any) { f[7] = map[string]string{"X-A": "1"} }, KindResponse, 400},
		{"trailer list as a map", func(f []any) { f[9] = map[string]string{"X-A": "1"} }, KindResponse, 400},
		{"header values not strings", func(f []any) { f[7] = []any{"X-A", 1} }, KindResponse, 400},
		{"float timeout", func(f []any) { f[11] = 1e6 }, KindResponse, 400},
		{"float content length", func(f []any) { f[10] = 2.0 }, KindResponse, 400},
		{"float status", func(f []any) { f[6] = 200.0 }, KindResponse, 400},
		{"boolean flags", func(f []any) { f[14] = true }, KindResponse, 400},
		{"body as a map", func(f []any) { f[8] = map[string]int{"a": 1} }, KindResponse, 400},
		{"method as an integer", func(f []any) { f[3] = 7 }, KindResponse, 400},
		{"timeout 2^62 µs", func(f []any) { f[11] = int64(1) << 62 }, KindResponse, 200},
		{"timeout 2^63-1 µs", func(f []any) { f[11] = int64(1<<63 - 1) }, KindResponse, 200},
	}
	for i, c := range cases {
		id := uint64(100 + i)
		f := hostileRequestFields(id)
		c.mod(f)
		if err := r.sendRaw(hostileEnvelope(t, f)); err != nil {
			t.Fatal(err)
		}
		env, err := r.recv(3 * time.Second)
		switch {
		case err != nil:
			t.Errorf("%s: no answer: %v", c.name, err)
			return
		case env.ID != id || env.Kind != c.kind || env.Status != c.status:
			t.Errorf("%s: answered %s id=%d status=%d %q %q, want %s id=%d status=%d",
				c.name, env.Kind, env.ID, env.Status, env.Message, env.Body, c.kind, id, c.status)
		default:
			t.Logf("%s: %s %d %s%s", c.name, env.Kind, env.Status, env.Message, strings.TrimSpace(string(env.Body)))
		}
	}
}

// hostileCall runs one GET (5 s deadline) on a Transport against a
// hostile server that answers HELLO as a basic server would and answers
// each request with the bytes reply returns (written as they are, after
// the handshake). It returns the call's error and how long it took.
func hostileCall(t *testing.T, reply func(id uint64) []byte) (error, time.Duration, int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	var conns atomic.Int64
	go func() {
		defer close(served)
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				br, _, err := handshake(nc, zmq4.Router, true, 5*time.Second)
				if err != nil {
					return
				}
				bw := bufio.NewWriter(nc)
				for {
					frame, _, _, err := readEnvelopeFrame(br, 1<<20, nil, func([]byte) {}, nil)
					if err != nil {
						return
					}
					var env envelope
					if decodeEnvelope(frame, Limits{}, &env) != nil {
						continue
					}
					switch env.Kind {
					case KindHello:
						b, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindHello, Flags: capCancel})
						writeEnvelopeMsg(bw, b)
					case KindRequest:
						bw.Write(reply(env.ID))
					}
					bw.Flush()
				}
			}()
		}
	}()
	defer func() {
		ln.Close()
		<-served
	}()
	tr, err := NewTransport("tcp://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://hostile/x", nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	took := time.Since(start)
	if resp != nil {
		resp.Body.Close()
	}
	tr.Close() // ends the connection the hostile server holds
	return err, took, conns.Load()
}

// TestHostileHugeReplyFrame: a server whose reply frame announces 2^50
// bytes fails the call at once (well before its 5 s deadline), and so
// does one announcing 256 MiB and sending nothing after the first bytes.
func TestHostileHugeReplyFrame(t *testing.T) {
	for _, size := range []uint64{1 << 50, 256 << 20} {
		err, took, conns := hostileCall(t, func(id uint64) []byte {
			// An empty delimiter, then a frame announcing size bytes
			// and the start of a response envelope.
			head, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindResponse, ID: id, Status: 200})
			b := appendFrameHeader([]byte{flagMore, 0}, 0, 300)
			binary64(b[3:], size)
			return append(append(b, head...), make([]byte, 32)...)[:len(b)+32]
		})
		t.Logf("reply frame of %d bytes: the call failed after %v (%d connections): %v", size, took.Round(time.Millisecond), conns, err)
		if err == nil || errors.Is(err, context.DeadlineExceeded) || took > 2500*time.Millisecond {
			t.Errorf("reply frame of %d bytes: call ended after %v with %v, want an error well before the 5 s deadline", size, took, err)
		}
	}
}

// TestHostileReplyTypes: a reply with a wrong msgpack type (a float
// status, a header map) fails its call at once with the decoding error,
// not at the deadline. (A reply of kind 258 is no response, even if its
// low byte says 2: PROTOCOL.md section 5 has it dropped and counted.)
func TestHostileReplyTypes(t *testing.T) {
	cases := []struct {
		name string
		mod  func(f []any)
	}{
		{"float status", func(f []any) { f[6] = 200.0 }},
		{"header map", func(f []any) { f[7] = map[string]string{"X-A": "1"} }},
	}
	for _, c := range cases {
		err, took, _ := hostileCall(t, func(id uint64) []byte {
			f := []any{1, 2, id, "", "", "", 200, []string{}, []byte("ok"), []string{}, 2, 0, "", 0, 0, 0}
			c.mod(f)
			var env []byte
			if err := codec.NewEncoderBytes(&env, mh).Encode(f); err != nil {
				panic(err)
			}
			b := appendFrameHeader([]byte{flagMore, 0}, 0, len(env))
			return append(b, env...)
		})
		t.Logf("%s: the call failed after %v: %v", c.name, took.Round(time.Millisecond), err)
		if err == nil || errors.Is(err, context.DeadlineExceeded) || took > 2500*time.Millisecond {
			t.Errorf("%s: call ended after %v with %v, want a decoding error well before the 5 s deadline", c.name, took, err)
		}
	}
}

func binary64(b []byte, v uint64) {
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}
