package zmqhttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// curLocked returns the live link of the Transport's first server address
// (the only one of a single-endpoint Transport), for white-box tests.
// t.mu is held.
func (t *Transport) curLocked() *clientLink {
	if len(t.members) == 0 {
		return nil
	}
	return t.members[0].cur
}

// TestEndpointList: comma lists parse; an empty item, a space or a bad
// item fails and the error names the item; a one-item list fails exactly
// as a single endpoint always did; Endpoint returns the string given.
func TestEndpointList(t *testing.T) {
	good := map[string]int{
		"tcp://127.0.0.1:5555":                              1,
		"tcp://a:1,tcp://b:2":                               2,
		"tcp://10.0.0.1:1,ipc:///tmp/zh.sock,tcp://[::1]:3": 3,
	}
	for list, n := range good {
		items, err := parseEndpointList(list)
		if err != nil || len(items) != n {
			t.Errorf("%q: %d items, err %v; want %d", list, len(items), err, n)
		}
	}
	bad := map[string]string{
		"tcp://a:1,bogus":            `zmqhttp: endpoint list "tcp://a:1,bogus": item 2 "bogus": want tcp://host:port or ipc://path`,
		"tcp://a:1,,tcp://b:2":       `item 2 "": empty item`,
		"tcp://a:1,":                 `item 2 "": empty item`,
		",tcp://a:1":                 `item 1 "": empty item`,
		",":                          `item 1 "": empty item`,
		"tcp://a:1, tcp://b:2":       `item 2 " tcp://b:2": spaces are not allowed`,
		"tcp://a:1 ,tcp://b:2":       `item 1 "tcp://a:1 ": spaces are not allowed`,
		"tcp://a:1,tcp://b:0":        `item 2 "tcp://b:0": a dial endpoint needs a host and a port`,
		"tcp://a:1,inproc://x":       `item 2 "inproc://x": inproc is not supported`,
		"tcp://a:1,udp://b:1,ipc://": `item 2 "udp://b:1": unsupported transport`,
	}
	for list, want := range bad {
		tr, err := NewTransport(list)
		if err == nil {
			tr.Close()
			t.Errorf("%q: no error", list)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q, want it to contain %q", list, err, want)
		}
	}
	// One item: parsed as a single endpoint always was (a space in an
	// ipc path is fine), and failing with the same error.
	if items, err := parseEndpointList("ipc:///tmp/my dir/s.sock"); err != nil || items[0].ep.addr != "/tmp/my dir/s.sock" {
		t.Errorf("ipc path with a space: %v, %v", items, err)
	}
	for _, ep := range []string{"", "bogus", "tcp://a", "tcp://a:0", "ipc://", "inproc://x", "udp://a:1"} {
		_, err := NewTransport(ep)
		_, want := parseEndpoint(ep, false)
		if err == nil || want == nil || err.Error() != want.Error() {
			t.Errorf("%q: error %v, want %v", ep, err, want)
		}
	}
	list := "tcp://127.0.0.1:1,tcp://127.0.0.1:2"
	tr, err := NewTransport(list)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Endpoint() != list {
		t.Errorf("Endpoint() = %q, want %q", tr.Endpoint(), list)
	}
	if n := len(tr.Stats().Servers); n != 2 {
		t.Errorf("%d servers in Stats, want 2", n)
	}
}

// balanceGroup is n in-process servers that count the requests each ran.
type balanceGroup struct {
	servers []*testServer
	runs    []atomic.Int64
	eps     []string
}

// startBalanceGroup starts n servers of network whose handler sleeps delay,
// counts the request, and replies with the server's index.
func startBalanceGroup(t *testing.T, network string, n int, delay time.Duration, opts ...Option) *balanceGroup {
	g := &balanceGroup{runs: make([]atomic.Int64, n)}
	for i := range n {
		ts := startServer(t, network, g.handler(i, delay), opts...)
		g.servers = append(g.servers, ts)
		g.eps = append(g.eps, ts.L.Endpoint())
	}
	return g
}

func (g *balanceGroup) handler(i int, delay time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if delay > 0 {
			time.Sleep(delay)
		}
		g.runs[i].Add(1)
		fmt.Fprintf(w, "%d", i)
	})
}

func (g *balanceGroup) list() string { return strings.Join(g.eps, ",") }

func (g *balanceGroup) counts() []int64 {
	out := make([]int64, len(g.runs))
	for i := range g.runs {
		out[i] = g.runs[i].Load()
	}
	return out
}

// balanceHammer runs callers goroutines that each send GETs (and, with posts,
// every other one a plain POST) until stop is closed; it returns the
// errors.
func balanceHammer(c *http.Client, callers int, posts bool, stop <-chan struct{}) (ok int64, errs []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var n atomic.Int64
	for k := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				var resp *http.Response
				if posts && i%2 == 1 {
					resp, err = c.Post(fmt.Sprintf("http://x/post?c=%d&i=%d", k, i), "text/plain", strings.NewReader("hello"))
				} else {
					resp, err = c.Get(fmt.Sprintf("http://x/get?c=%d&i=%d", k, i))
				}
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %s", resp.Status)
					}
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	return n.Load(), errs
}

// TestBalanceSpread: 64 callers over a 3-endpoint Transport; each of the 3
// servers runs a fair share of the requests (at least 20% each).
func TestBalanceSpread(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			g := startBalanceGroup(t, network, 3, time.Millisecond)
			c, tr := newClient(t, g.list())
			stop := make(chan struct{})
			time.AfterFunc(1500*time.Millisecond, func() { close(stop) })
			ok, errs := balanceHammer(c, 64, true, stop)
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			counts := g.counts()
			t.Logf("%d requests; per server %v; stats %+v", ok, counts, tr.Stats().Servers)
			for i, n := range counts {
				if float64(n) < 0.2*float64(ok) {
					t.Errorf("server %d ran %d of %d requests, want at least 20%%", i, n, ok)
				}
			}
			st := tr.Stats()
			if len(st.Servers) != 3 || st.Connects != 3 {
				t.Errorf("stats %+v, want 3 servers and 3 connects", st)
			}
		})
	}
}

// TestBalanceComeback: one of 3 servers goes away (Shutdown) and comes
// back at the same endpoint a second later, while 32 callers send GETs:
// no call fails, and the server that came back runs requests again
// within 3 s.
func TestBalanceComeback(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			g := startBalanceGroup(t, network, 3, time.Millisecond)
			c, tr := newClient(t, g.list())
			stop := make(chan struct{})
			var ok int64
			var errs []error
			done := make(chan struct{})
			go func() {
				ok, errs = balanceHammer(c, 32, false, stop)
				close(done)
			}()
			defer func() {
				select {
				case <-stop:
				default:
					close(stop)
				}
				<-done
			}()
			waitFor(t, 3*time.Second, "traffic on server 0", func() bool { return g.runs[0].Load() > 50 })
			// Shutdown, not Close: Close fails the requests it interrupts.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := g.servers[0].Srv.Shutdown(ctx)
			cancel()
			if err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
			time.Sleep(time.Second) // down for a while: the backoff grows
			before := g.runs[0].Load()
			l, err := listenRetry(g.eps[0])
			if err != nil {
				t.Fatal(err)
			}
			back := time.Now()
			srv := &http.Server{Handler: g.handler(0, time.Millisecond)}
			go srv.Serve(l)
			defer srv.Close()
			waitFor(t, 3*time.Second, "traffic on the server that came back", func() bool { return g.runs[0].Load() > before })
			t.Logf("server 0 back: first request after %v", time.Since(back).Round(time.Millisecond))
			close(stop)
			<-done
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			t.Logf("%d requests; per server %v; stats %+v", ok, g.counts(), tr.Stats())
		})
	}
}

// TestBalanceDrain: srv.Shutdown on one of 3 servers while 64 callers
// send GETs and plain POSTs: no call fails (what the draining server
// returned unprocessed goes to the others), and the others take all the
// traffic afterwards.
func TestBalanceDrain(t *testing.T) {
	for _, network := range testNetworks {
		t.Run(network, func(t *testing.T) {
			g := startBalanceGroup(t, network, 3, 2*time.Millisecond, WithWorkers(4))
			c, tr := newClient(t, g.list())
			stop := make(chan struct{})
			var ok int64
			var errs []error
			done := make(chan struct{})
			go func() {
				ok, errs = balanceHammer(c, 64, true, stop)
				close(done)
			}()
			waitFor(t, 3*time.Second, "traffic on server 1", func() bool { return g.runs[1].Load() > 50 })
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := g.servers[1].Srv.Shutdown(ctx)
			cancel()
			if err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			after := g.counts()
			time.Sleep(500 * time.Millisecond)
			close(stop)
			<-done
			if len(errs) > 0 {
				t.Fatalf("%d errors, first: %v", len(errs), errs[0])
			}
			final := g.counts()
			if final[1] != after[1] {
				t.Errorf("server 1 ran %d requests after its Shutdown returned", final[1]-after[1])
			}
			if final[0] == after[0] || final[2] == after[2] {
				t.Errorf("the other servers took no traffic after the drain: %v then %v", after, final)
			}
			t.Logf("%d requests; per server %v; stats %+v", ok, final, tr.Stats())
		})
	}
}

// balanceListenSamePort starts servers at the same tcp port on each of the
// loopback addresses ips, retrying with another port if one is taken. It
// returns the port and the servers, which cleanup closes.
func balanceListenSamePort(t *testing.T, g *balanceGroup, ips []string) (string, []*http.Server) {
	for try := 0; ; try++ {
		ln, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
		var ls []*Listener
		for _, ip := range ips {
			l, err := Listen("tcp://" + net.JoinHostPort(ip, port))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) < len(ips) {
			for _, l := range ls {
				l.Close()
			}
			if try > 20 {
				t.Fatalf("no port free on all of %v", ips)
			}
			continue
		}
		var srvs []*http.Server
		for i, l := range ls {
			srv := &http.Server{Handler: g.handler(i, time.Millisecond)}
			go srv.Serve(l)
			t.Cleanup(func() { srv.Close() })
			srvs = append(srvs, srv)
		}
		return port, srvs
	}
}

// TestBalanceResolve: a tcp host name that resolves to several addresses
// gets one connection per address; when the name is resolved again, an
// address that went away loses its connection (drained: no call fails)
// and a new one gets a connection and traffic.
func TestBalanceResolve(t *testing.T) {
	ips := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	g := &balanceGroup{runs: make([]atomic.Int64, 3)}
	port, _ := balanceListenSamePort(t, g, ips)
	var mu sync.Mutex
	answer := ips[:2]
	lookup := func(ctx context.Context, host string) ([]string, error) {
		if host != "svc.test" {
			return nil, errors.New("unknown host " + host)
		}
		mu.Lock()
		defer mu.Unlock()
		return answer, nil
	}
	c, tr := newClient(t, "tcp://svc.test:"+port, withResolver(lookup, 100*time.Millisecond))
	addrs := func() string {
		var s []string
		for _, sv := range tr.Stats().Servers {
			if sv.Connected {
				s = append(s, sv.Address)
			}
		}
		return strings.Join(s, " ")
	}
	want := func(ips ...string) string {
		var s []string
		for _, ip := range ips {
			s = append(s, net.JoinHostPort(ip, port))
		}
		return strings.Join(s, " ")
	}
	waitFor(t, 3*time.Second, "connections to .1 and .2", func() bool { return addrs() == want(ips[0], ips[1]) })
	stop := make(chan struct{})
	var errs []error
	done := make(chan struct{})
	go func() {
		_, errs = balanceHammer(c, 32, true, stop)
		close(done)
	}()
	waitFor(t, 3*time.Second, "traffic on .1 and .2", func() bool { return g.runs[0].Load() > 20 && g.runs[1].Load() > 20 })
	mu.Lock()
	answer = ips[1:]
	mu.Unlock()
	waitFor(t, 3*time.Second, "connections to .2 and .3 only", func() bool {
		return addrs() == want(ips[1], ips[2]) && len(tr.Stats().Servers) == 2
	})
	at := g.counts()
	waitFor(t, 3*time.Second, "traffic on .3", func() bool { return g.runs[2].Load() > at[2]+20 })
	close(stop)
	<-done
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	final := g.counts()
	if final[0] != at[0] {
		t.Errorf(".1 ran %d requests after it left the name", final[0]-at[0])
	}
	t.Logf("per address %v; stats %+v", final, tr.Stats())
}

// BenchmarkBalance measures throughput through one Transport whose
// endpoint list names 3 servers, each an in-process Listener with
// WithWorkers(8) in front of a handler that takes 5 ms, with 64 callers:
// up=3 with all three serving, up=1 with only the first (the other two
// endpoints refuse connections). A server can run at most 1600 req/s.
func BenchmarkBalance(b *testing.B) {
	for _, up := range []int{1, 3} {
		b.Run(fmt.Sprintf("up=%d", up), func(b *testing.B) {
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				time.Sleep(5 * time.Millisecond)
				io.WriteString(w, "done")
			})
			var eps []string
			for i := range 3 {
				if i < up {
					eps = append(eps, startServer(b, "tcp", h, WithWorkers(8)).L.Endpoint())
					continue
				}
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				eps = append(eps, "tcp://"+ln.Addr().String())
				ln.Close()
			}
			client, tr := newClient(b, strings.Join(eps, ","))
			waitFor(b, 5*time.Second, "connected", func() bool { return tr.Stats().Connects >= uint64(up) })
			b.SetParallelism(32)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Get("http://svc/")
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
		})
	}
}

// TestBalanceResolveOnDialFailure: a host name is looked up again soon
// after a member fails to dial (not only every resolve interval): when its
// only server goes away and the name now resolves elsewhere, requests go
// to the new address within a few seconds.
func TestBalanceResolveOnDialFailure(t *testing.T) {
	ips := []string{"127.0.0.1", "127.0.0.2"}
	g := &balanceGroup{runs: make([]atomic.Int64, 2)}
	var mu sync.Mutex
	var lookups int
	answer := ips[:1]
	lookup := func(ctx context.Context, host string) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		lookups++
		return answer, nil
	}
	// Only the first server listens at first; the second comes later.
	port, srvs := balanceListenSamePort(t, g, ips[:1])
	c, tr := newClient(t, "tcp://svc.test:"+port, withResolver(lookup, time.Hour))
	get := func() error {
		resp, err := c.Get("http://x/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	// The name moves to the second address; the first server goes.
	l2, err := Listen("tcp://" + net.JoinHostPort(ips[1], port))
	if err != nil {
		t.Skipf("port %s not free on %s: %v", port, ips[1], err)
	}
	srv2 := &http.Server{Handler: g.handler(1, 0)}
	go srv2.Serve(l2)
	t.Cleanup(func() { srv2.Close() })
	mu.Lock()
	answer = ips[1:]
	mu.Unlock()
	srvs[0].Close()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://x/", nil)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("after the move: %v (stats %+v)", err, tr.Stats())
	}
	resp.Body.Close()
	mu.Lock()
	n := lookups
	mu.Unlock()
	t.Logf("answered by the new address after %v, %d lookups", time.Since(start).Round(time.Millisecond), n)
	if g.runs[1].Load() != 1 {
		t.Errorf("the new address ran %d requests, want 1", g.runs[1].Load())
	}
}
