package zmqhttp

// Servers behind a stock ZeroMQ device: libzmq's zmq_proxy(ROUTER, DEALER)
// from Debian's python3-zmq (peers/python/device.py), its DEALER connected
// to two Listeners. Every message reaches a server with the device's
// routing frame before the empty delimiter.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// deviceServer is one Listener behind the device, counting what it ran.
type deviceServer struct {
	name  string
	ts    *testServer
	hits  atomic.Int64
	posts runLog
}

func startDeviceServer(t *testing.T, name string) *deviceServer {
	ds := &deviceServer{name: name}
	ds.ts = startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ds.hits.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		if r.Method == http.MethodPost {
			ds.posts.add(string(body))
		}
		w.Header().Set("X-Server", ds.name)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), body)
	}))
	return ds
}

// device runs peers/python/device.py in front of the given endpoints.
type device struct {
	frontend string
	stdin    io.WriteCloser
	out      *bufio.Scanner
}

func startDevice(t *testing.T, backends ...string) *device {
	t.Helper()
	pyCheck(t)
	cmd := exec.Command(pyInterpreter, append([]string{"peers/python/device.py"}, backends...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	d := &device{stdin: stdin, out: bufio.NewScanner(stdout)}
	line, err := d.line(10 * time.Second)
	if err != nil || !strings.HasPrefix(line, "frontend ") {
		t.Fatalf("device did not start: %q %v; stderr: %s", line, err, stderr.String())
	}
	d.frontend = strings.TrimPrefix(line, "frontend ")
	return d
}

// line reads the device's next output line, within d.
func (d *device) line(within time.Duration) (string, error) {
	got := make(chan bool, 1)
	go func() { got <- d.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			return "", fmt.Errorf("device output ended: %v", d.out.Err())
		}
		return d.out.Text(), nil
	case <-time.After(within):
		return "", errors.New("no output from the device")
	}
}

// deviceCall is one request's outcome.
type deviceCall struct {
	post   bool
	id     string
	err    error
	status int
	body   string
	server string
}

// runDeviceLoad sends n requests from callers goroutines, every third a
// POST, and calls mid once, after half of them.
func runDeviceLoad(t *testing.T, c *http.Client, run string, n, callers int, mid func()) []deviceCall {
	var next atomic.Int64
	var midOnce sync.Once
	res := make([]deviceCall, n)
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if i == n/2 && mid != nil {
					midOnce.Do(func() { go mid() })
				}
				r := &res[i]
				r.id = fmt.Sprintf("%s-%d", run, i)
				var req *http.Request
				if i%3 == 0 {
					r.post = true
					req, _ = http.NewRequest(http.MethodPost, "http://svc/p/"+r.id, strings.NewReader(r.id))
					req.GetBody = nil // a plain POST: never replayed
				} else {
					req, _ = http.NewRequest(http.MethodGet, "http://svc/g/"+r.id, nil)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				resp, err := c.Do(req.WithContext(ctx))
				if err == nil {
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					r.status, r.body, r.server, err = resp.StatusCode, string(b), resp.Header.Get("X-Server"), rerr
				}
				cancel()
				r.err = err
			}
		}()
	}
	wg.Wait()
	return res
}

func (r *deviceCall) want() string {
	if r.post {
		return "POST /p/" + r.id + " " + r.id
	}
	return "GET /g/" + r.id + " "
}

// TestStockDevice: a Transport and REQ clients through zmq_proxy reach
// both servers, every answer the right one; then one server shuts down
// mid-run and no replayable request is lost, no POST runs twice, and a
// POST fails only as lost (it may have run).
func TestStockDevice(t *testing.T) {
	s1, s2 := startDeviceServer(t, "s1"), startDeviceServer(t, "s2")
	d := startDevice(t, s1.ts.L.Endpoint(), s2.ts.L.Endpoint())
	c, tr := newClient(t, d.frontend)

	res := runDeviceLoad(t, c, "first", 1000, 64, nil)
	for _, r := range res {
		if r.err != nil || r.status != 200 || r.body != r.want() {
			t.Fatalf("%s: err %v, status %d, body %q, want %q", r.id, r.err, r.status, r.body, r.want())
		}
	}
	h1, h2 := s1.hits.Load(), s2.hits.Load()
	t.Logf("1000 requests through the device: s1 ran %d, s2 ran %d; transport %+v", h1, h2, tr.Stats())
	if h1+h2 != 1000 || h1 < 200 || h2 < 200 {
		t.Errorf("requests ran s1 %d, s2 %d times: want 1000, spread over both", h1, h2)
	}

	// REQ clients (libzmq's, through the same device).
	fmt.Fprintln(d.stdin, "req 100 /req")
	line, err := d.line(60 * time.Second)
	if err != nil || line != "req 100 0" {
		var more []string
		for i := 0; i < 5; i++ {
			if l, err := d.line(time.Second); err == nil {
				more = append(more, l)
			}
		}
		t.Errorf("REQ clients through the device: %q %v %v", line, err, more)
	}

	// One server shuts down in the middle of a run.
	s1.hits.Store(0)
	s2.hits.Store(0)
	shutdownDone := make(chan error, 1)
	res = runDeviceLoad(t, c, "second", 1000, 64, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shutdownDone <- s1.ts.Srv.Shutdown(ctx)
	})
	if err := <-shutdownDone; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	var lostPosts int
	for _, r := range res {
		runs := 0
		if r.post {
			runs = s1.posts.count(r.id) + s2.posts.count(r.id)
			if runs > 1 {
				t.Errorf("%s ran %d times", r.id, runs)
			}
		}
		switch {
		case r.err == nil && r.status == 200 && r.body == r.want():
		case r.post && errors.Is(r.err, ErrConnectionLost):
			lostPosts++
		default:
			t.Errorf("%s: err %v, status %d, body %q (post %v, ran %d)", r.id, r.err, r.status, r.body, r.post, runs)
		}
	}
	t.Logf("with s1 shut down mid-run: s1 ran %d, s2 ran %d, %d POSTs failed as lost; transport %+v",
		s1.hits.Load(), s2.hits.Load(), lostPosts, tr.Stats())
}

// blackHole accepts ZeroMQ connections as a ROUTER and reads and drops
// every message: a server that a device sends requests to and that never
// answers nor acknowledges them.
func blackHole(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	var conns sync.Map
	t.Cleanup(func() {
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(nc, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				br, _, err := handshake(nc, zmq4.Router, true, 5*time.Second)
				if err != nil {
					return
				}
				io.Copy(io.Discard, br)
			}()
		}
	}()
	return "tcp://" + ln.Addr().String()
}

// TestStockDeviceLostInDevice: requests a device hands to a server that
// never takes them (no ACCEPTED) are sent again if replayable, and fail
// as lost (ErrConnectionLost) otherwise, within about a second and a half.
func TestStockDeviceLostInDevice(t *testing.T) {
	s1 := startDeviceServer(t, "s1")
	d := startDevice(t, s1.ts.L.Endpoint(), blackHole(t))
	// Each try of a GET has even odds of the black hole: enough replays
	// that none runs out.
	c, tr := newClient(t, d.frontend, WithMaxReplays(16))
	start := time.Now()
	res := runDeviceLoad(t, c, "lost", 30, 10, nil)
	var lost int
	for _, r := range res {
		switch {
		case r.err == nil && r.status == 200 && r.body == r.want():
		case r.post && errors.Is(r.err, ErrConnectionLost):
			lost++
		default:
			t.Errorf("%s: err %v, status %d, body %q (post %v)", r.id, r.err, r.status, r.body, r.post)
		}
		if r.post && s1.posts.count(r.id) > 1 {
			t.Errorf("%s ran twice", r.id)
		}
	}
	st := tr.Stats()
	t.Logf("30 requests, half of them handed to a black hole: %d POSTs lost, %d replays, %v; %+v", lost, st.Replays, time.Since(start), st)
	if lost == 0 || st.Replays == 0 {
		t.Errorf("want some POSTs lost and some GETs sent again (lost %d, replays %d)", lost, st.Replays)
	}
}
