package zmqhttp

// Graceful restarts and server timeouts: a request is answered, or
// returned unprocessed and sent again, or fails with an error, but never
// runs twice; idle connections timing out as requests arrive lose nothing.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// logLines is an http.Server ErrorLog destination that counts lines and
// keeps the first few.
type logLines struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.n++
		if len(l.first) < 5 {
			l.first = append(l.first, line)
		}
	}
	return len(p), nil
}

func (l *logLines) summary() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		return "none"
	}
	return fmt.Sprintf("%d lines, first: %q", l.n, l.first)
}

// runLog records each run of a handler by request id.
type runLog struct {
	mu   sync.Mutex
	runs map[string]int
}

func (r *runLog) add(id string) {
	r.mu.Lock()
	if r.runs == nil {
		r.runs = make(map[string]int)
	}
	r.runs[id]++
	r.mu.Unlock()
}

func (r *runLog) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs[id]
}

// restartServer is one generation of the server at a fixed endpoint.
type restartServer struct {
	l        *Listener
	srv      *http.Server
	serveErr chan error
}

// listenRetry binds ep, retrying for up to 2s while the port is still
// held (by the previous generation's closing Listener).
func listenRetry(ep string, opts ...Option) (*Listener, error) {
	var err error
	for deadline := time.Now().Add(2 * time.Second); ; {
		var l *Listener
		if l, err = Listen(ep, opts...); err == nil {
			return l, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func startRestartServer(ep string, mk func() *http.Server, opts ...Option) (*restartServer, error) {
	return startRestartServerMode(ep, mk, false, opts...)
}

// startRestartServerMode is startRestartServer on the standard path or,
// with direct, on the direct one (Serve).
func startRestartServerMode(ep string, mk func() *http.Server, direct bool, opts ...Option) (*restartServer, error) {
	l, err := listenRetry(ep, opts...)
	if err != nil {
		return nil, err
	}
	rs := &restartServer{l: l, srv: mk(), serveErr: make(chan error, 1)}
	go func() {
		if direct {
			rs.serveErr <- Serve(l, rs.srv)
		} else {
			rs.serveErr <- rs.srv.Serve(l)
		}
	}()
	return rs, nil
}

// stop shuts the server down gracefully and waits for Serve to return.
func (rs *restartServer) stop(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := rs.srv.Shutdown(ctx)
	if err != nil {
		rs.srv.Close()
		err = fmt.Errorf("Shutdown: %w", err)
	}
	select {
	case serr := <-rs.serveErr:
		if !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = fmt.Errorf("Serve returned %v", serr)
		}
	case <-time.After(timeout):
		if err == nil {
			err = errors.New("Serve did not return after Shutdown")
		}
	}
	return err
}

// ---------------------------------------------------------------------

type restartCase struct {
	name                                   string
	readTimeout, writeTimeout, idleTimeout time.Duration
	panicEvery                             int  // every panicEvery-th call of a caller goes to a handler that panics; 0: none
	direct                                 bool // served by Serve (the direct path)
}

// TestGracefulRestartLoop restarts the server at one endpoint 100 times
// in a row (srv.Shutdown, then a new Listen and http.Server on the same
// endpoint) while 32 callers on two Transports loop over GETs and plain
// POSTs (no Idempotency-Key) with unique ids. Every call must succeed and
// every successful POST must have run exactly once; with server timeouts
// set likewise; with a handler that panics on some calls, those fail with
// an error and never run twice, and the others all succeed.
func TestGracefulRestartLoop(t *testing.T) {
	restarts := 100
	if testing.Short() {
		restarts = 20
	}
	for _, tc := range []restartCase{
		{name: "plain"},
		{name: "WriteTimeout", writeTimeout: 2 * time.Second},
		{name: "ReadTimeout", readTimeout: 2 * time.Second},
		{name: "IdleTimeout", idleTimeout: 50 * time.Millisecond},
		{name: "panics", panicEvery: 8},
		{name: "direct", direct: true},
		{name: "direct-WriteTimeout", writeTimeout: 2 * time.Second, direct: true},
		{name: "direct-panics", panicEvery: 8, direct: true},
	} {
		t.Run(tc.name, func(t *testing.T) { restartLoop(t, tc, restarts) })
	}
}

type restartCall struct {
	kind   string // GET, POST, PANIC-GET, PANIC-POST
	id     string
	status int
	body   string
	err    error
}

func (c *restartCall) ok() bool { return c.err == nil && c.status == 200 && c.body == c.id }

func restartLoop(t *testing.T, tc restartCase, restarts int) {
	const (
		callers     = 32
		transports  = 2
		serveFor    = 20 * time.Millisecond // each generation serves this long
		callTimeout = 10 * time.Second
		// Bounds on one Shutdown and on the whole restart loop (the test
		// takes about 2.5s per 100 restarts when all goes well).
		shutdownLimit = 3 * time.Second
		budget        = 15 * time.Second
	)
	ep := relFreeEndpoint(t)
	var runs runLog
	mux := http.NewServeMux()
	mux.HandleFunc("GET /get", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		runs.add(id)
		io.WriteString(w, id)
	})
	mux.HandleFunc("POST /post", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		id := r.Header.Get("X-Req-Id")
		runs.add(id)
		io.WriteString(w, id)
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		runs.add(r.Header.Get("X-Req-Id"))
		panic("planned handler panic")
	})
	var errLog logLines
	mk := func() *http.Server {
		return &http.Server{Handler: mux, ReadTimeout: tc.readTimeout, WriteTimeout: tc.writeTimeout,
			IdleTimeout: tc.idleTimeout, ErrorLog: log.New(&errLog, "", 0)}
	}
	cur, err := startRestartServerMode(ep, mk, tc.direct)
	if err != nil {
		t.Fatal(err)
	}

	var trs []*Transport
	for i := 0; i < transports; i++ {
		tr, err := NewTransport(ep, WithReconnectBackoff(10*time.Millisecond, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		trs = append(trs, tr)
	}

	var (
		mu    sync.Mutex
		calls []restartCall
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: trs[g%transports]}
			var mine []restartCall
			defer func() {
				mu.Lock()
				calls = append(calls, mine...)
				mu.Unlock()
			}()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := restartCall{id: fmt.Sprintf("%s-c%d-i%d", tc.name, g, i)}
				var req *http.Request
				ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
				switch {
				case tc.panicEvery > 0 && i%tc.panicEvery == tc.panicEvery-1:
					c.kind = "PANIC-POST"
					method := http.MethodPost
					if (i/tc.panicEvery)%2 == 0 {
						c.kind, method = "PANIC-GET", http.MethodGet
					}
					req, _ = http.NewRequestWithContext(ctx, method, "http://svc/panic", nil)
					if method == http.MethodPost {
						req, _ = http.NewRequestWithContext(ctx, method, "http://svc/panic", strings.NewReader("payload"))
					}
				case i%2 == 0:
					c.kind = "GET"
					req, _ = http.NewRequestWithContext(ctx, http.MethodGet, "http://svc/get?id="+c.id, nil)
				default:
					c.kind = "POST"
					req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://svc/post", strings.NewReader("payload of "+c.id))
				}
				req.Header.Set("X-Req-Id", c.id)
				resp, err := client.Do(req)
				if err == nil {
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					c.status, c.body, err = resp.StatusCode, string(b), rerr
				}
				cancel()
				c.err = err
				mine = append(mine, c)
			}
		}()
	}

	start := time.Now()
	var stopTimes, gaps []time.Duration
	done := 0
	for r := 0; r < restarts; r++ {
		if time.Since(start) > budget {
			t.Errorf("gave up after %d restarts: over %v", r, budget)
			break
		}
		time.Sleep(serveFor)
		t0 := time.Now()
		if err := cur.stop(shutdownLimit); err != nil {
			t.Errorf("restart %d: %v", r+1, err)
		}
		t1 := time.Now()
		next, err := startRestartServerMode(ep, mk, tc.direct)
		if err != nil {
			t.Errorf("restart %d: Listen %s again: %v", r+1, ep, err)
			break
		}
		stopTimes = append(stopTimes, t1.Sub(t0))
		gaps = append(gaps, time.Since(t1))
		cur = next
		done++
	}
	time.Sleep(100 * time.Millisecond) // load on the last generation
	close(stop)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout+5*time.Second)
	defer cancel()
	if !relWaitGroup(ctx, &wg) {
		t.Errorf("HANG: callers still running %v after the load stopped", callTimeout+5*time.Second)
		for _, tr := range trs {
			tr.Close()
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	if err := cur.stop(10 * time.Second); err != nil {
		t.Errorf("final Shutdown: %v", err)
	}

	var (
		byKind                           = map[string]int{}
		failed, dupPOST, okNotOnce       int
		panicOK, panicTwice, panicRemote int
		dupGET                           int
		examples                         []string
	)
	example := func(format string, args ...any) {
		if len(examples) < 10 {
			examples = append(examples, fmt.Sprintf(format, args...))
		}
	}
	for i := range calls {
		c := &calls[i]
		byKind[c.kind]++
		n := runs.count(c.id)
		switch c.kind {
		case "PANIC-GET", "PANIC-POST":
			var re *RemoteError
			switch {
			case c.err == nil:
				panicOK++
				example("%s %s: got status %d body %q from a handler that panics", c.kind, c.id, c.status, c.body)
			case errors.As(c.err, &re):
				panicRemote++
			}
			if n > 1 {
				panicTwice++
				example("%s %s ran %d times (%v)", c.kind, c.id, n, c.err)
			}
			continue
		}
		if !c.ok() {
			failed++
			example("%s %s: status %d body %q err %v (ran %d times)", c.kind, c.id, c.status, c.body, c.err, n)
		}
		switch {
		case c.kind == "POST" && n > 1:
			dupPOST++
			example("POST %s ran %d times (%v)", c.id, n, c.err)
		case c.kind == "POST" && c.ok() && n != 1:
			okNotOnce++
			example("POST %s succeeded but ran %d times", c.id, n)
		case c.kind == "GET" && n > 1:
			dupGET++
		}
	}
	t.Logf("%s: %d restarts in %v; %d calls (%v) by %d callers on %d Transports: %d failed; POSTs run twice %d; successful POSTs not run exactly once %d; GETs run twice %d",
		tc.name, done, elapsed.Round(time.Millisecond), len(calls), byKind, callers, transports, failed, dupPOST, okNotOnce, dupGET)
	t.Logf("Shutdown took %s; Listen again took %s", relDurations(stopTimes), relDurations(gaps))
	if tc.panicEvery > 0 {
		t.Logf("panicking calls: %d failed with a RemoteError, %d with another error, %d succeeded, %d ran twice",
			panicRemote, byKind["PANIC-GET"]+byKind["PANIC-POST"]-panicRemote-panicOK, panicOK, panicTwice)
	}
	for i, tr := range trs {
		t.Logf("Transport %d stats: %+v", i, tr.Stats())
	}
	t.Logf("http.Server ErrorLog: %s", errLog.summary())
	for _, e := range examples {
		t.Log("  " + e)
	}
	if done != restarts {
		t.Errorf("only %d of %d restarts done", done, restarts)
	}
	if failed > 0 {
		t.Errorf("%d of %d calls failed; want none", failed, len(calls)-byKind["PANIC-GET"]-byKind["PANIC-POST"])
	}
	if dupPOST > 0 || okNotOnce > 0 {
		t.Errorf("%d POSTs ran more than once, %d successful POSTs did not run exactly once", dupPOST, okNotOnce)
	}
	if panicOK > 0 || panicTwice > 0 {
		t.Errorf("calls to the panicking handler: %d succeeded, %d ran twice; want all to fail, none to run twice", panicOK, panicTwice)
	}
	if byKind["POST"] == 0 || byKind["GET"] == 0 {
		t.Errorf("no load: %v", byKind)
	}
}

// ---------------------------------------------------------------------

// TestWriteTimeoutShutdownNoDoubleRun: a POST whose handler (300 ms)
// outlives the server's WriteTimeout (100 ms) is running when the server
// is shut down and a second server starts at the same endpoint. The
// handler runs exactly once overall; the caller gets the response or an
// error, never a second run.
func TestWriteTimeoutShutdownNoDoubleRun(t *testing.T) {
	const rounds = 3
	for round := 0; round < rounds; round++ {
		ep := relFreeEndpoint(t)
		var runs atomic.Int32
		entered := make(chan struct{}, 4)
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			runs.Add(1)
			entered <- struct{}{}
			time.Sleep(300 * time.Millisecond)
			io.WriteString(w, "done")
		})
		var errLog logLines
		mk := func() *http.Server {
			return &http.Server{Handler: h, WriteTimeout: 100 * time.Millisecond, ErrorLog: log.New(&errLog, "", 0)}
		}
		srv1, err := startRestartServer(ep, mk)
		if err != nil {
			t.Fatal(err)
		}
		tr, err := NewTransport(ep, WithReconnectBackoff(10*time.Millisecond, 100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		type result struct {
			status int
			body   string
			err    error
			at     time.Time
		}
		res := make(chan result, 1)
		start := time.Now()
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://svc/work", strings.NewReader("once only"))
			var r result
			resp, err := tr.RoundTrip(req)
			if err == nil {
				b, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				r.status, r.body, err = resp.StatusCode, string(b), rerr
			}
			r.err, r.at = err, time.Now()
			res <- r
		}()
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			tr.Close()
			srv1.stop(time.Second)
			t.Fatalf("round %d: the handler was not entered within 5s", round)
		}
		shutdownAt := time.Now()
		stopped := make(chan error, 1)
		go func() { stopped <- srv1.stop(5 * time.Second) }()
		// The first Listener closes at the start of Shutdown; the second
		// server binds as soon as the port is free.
		srv2, err := startRestartServer(ep, mk)
		if err != nil {
			t.Errorf("round %d: second server: %v", round, err)
		}
		var r result
		select {
		case r = <-res:
		case <-time.After(10 * time.Second):
			t.Errorf("round %d: the call had not returned after 10s", round)
		}
		if err := <-stopped; err != nil {
			t.Logf("round %d: first server: %v", round, err)
		}
		// A second run, if any, would start right after the call was
		// returned unprocessed or replayed: give it time to show.
		time.Sleep(500 * time.Millisecond)
		n := runs.Load()
		outcome := fmt.Sprintf("status %d body %q", r.status, r.body)
		if r.err != nil {
			outcome = "error: " + r.err.Error()
		}
		t.Logf("round %d: Shutdown %v after the start; the call returned %v after the start with %s; the handler ran %d times; Transport stats %+v; ErrorLog: %s",
			round, shutdownAt.Sub(start).Round(time.Millisecond), r.at.Sub(start).Round(time.Millisecond), outcome, n, tr.Stats(), errLog.summary())
		if n != 1 {
			t.Errorf("round %d: the handler ran %d times, want exactly once", round, n)
		}
		if r.err == nil && (r.status != 200 || r.body != "done") {
			t.Errorf("round %d: got status %d body %q: neither the handler's response nor an error", round, r.status, r.body)
		}
		tr.Close()
		if srv2 != nil {
			if err := srv2.stop(5 * time.Second); err != nil {
				t.Errorf("round %d: second server: %v", round, err)
			}
		}
	}
}

// ---------------------------------------------------------------------

// TestIdleTimeoutVsReclaim: an http.Server with an IdleTimeout of 2 ms on
// a Listener with 2 workers, and 6 peers (Transports) sending requests in
// waves spaced around that timeout, so that idle server connections time
// out, and are reclaimed for other peers, exactly as requests arrive.
// After a few thousand requests none has failed, the Listener has nothing
// in flight, and once everything is closed the goroutines are back to
// where they were.
func TestIdleTimeoutVsReclaim(t *testing.T) {
	const (
		peers     = 6
		perPeer   = 2 // concurrent requests per peer in each wave
		waves     = 250
		idle      = 2 * time.Millisecond
		maxPause  = 4 * time.Millisecond
		callLimit = 10 * time.Second
	)
	baseline := runtime.NumGoroutine()
	l, err := Listen("tcp://127.0.0.1:0", WithWorkers(2))
	if err != nil {
		t.Fatal(err)
	}
	var errLog logLines
	// Connections the server closed while idle: its IdleTimeout firing
	// (or the Listener reclaiming the slot), what this test is about.
	var (
		stateMu    sync.Mutex
		lastState  = map[net.Conn]http.ConnState{}
		newConns   int
		idleClosed int
	)
	srv := &http.Server{IdleTimeout: idle, ErrorLog: log.New(&errLog, "", 0),
		ConnState: func(c net.Conn, s http.ConnState) {
			stateMu.Lock()
			defer stateMu.Unlock()
			switch s {
			case http.StateNew:
				newConns++
			case http.StateClosed, http.StateHijacked:
				if lastState[c] == http.StateIdle {
					idleClosed++
				}
				delete(lastState, c)
				return
			}
			lastState[c] = s
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			w.Header().Set("X-Id", r.URL.Query().Get("id"))
			w.Write(b)
		})}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	var trs []*Transport
	for i := 0; i < peers; i++ {
		tr, err := NewTransport(l.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		trs = append(trs, tr)
	}
	closeAll := func() {
		for _, tr := range trs {
			tr.Close()
		}
		srv.Close()
	}
	defer closeAll()

	rng := rand.New(rand.NewSource(1))
	var (
		failed   atomic.Int64
		mu       sync.Mutex
		examples []string
		lat      []time.Duration
	)
	start := time.Now()
	for w := 0; w < waves; w++ {
		var wg sync.WaitGroup
		for p := 0; p < peers; p++ {
			for k := 0; k < perPeer; k++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := fmt.Sprintf("w%d-p%d-k%d", w, p, k)
					ctx, cancel := context.WithTimeout(context.Background(), callLimit)
					defer cancel()
					var body io.Reader
					method := http.MethodGet
					if k%2 == 1 {
						method, body = http.MethodPost, strings.NewReader(id)
					}
					req, _ := http.NewRequestWithContext(ctx, method, "http://svc/x?id="+id, body)
					t0 := time.Now()
					resp, err := trs[p].RoundTrip(req)
					var got []byte
					if err == nil {
						got, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						if err == nil && (resp.StatusCode != 200 || resp.Header.Get("X-Id") != id ||
							(method == http.MethodPost && !bytes.Equal(got, []byte(id)))) {
							err = fmt.Errorf("status %d X-Id %q body %q", resp.StatusCode, resp.Header.Get("X-Id"), got)
						}
					}
					d := time.Since(t0)
					mu.Lock()
					lat = append(lat, d)
					if err != nil {
						failed.Add(1)
						if len(examples) < 10 {
							examples = append(examples, fmt.Sprintf("%s %s: %v", method, id, err))
						}
					}
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		time.Sleep(time.Duration(rng.Int63n(int64(maxPause))))
	}
	elapsed := time.Since(start)

	deadline := time.Now().Add(time.Second)
	for l.Stats().InFlight != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := l.Stats()
	t.Logf("%d requests in %d waves from %d peers in %v: %d failed; latency %s", waves*peers*perPeer, waves, peers,
		elapsed.Round(time.Millisecond), failed.Load(), relDurations(lat))
	stateMu.Lock()
	t.Logf("server connections: %d opened, %d closed while idle (IdleTimeout %v, pauses between waves 0..%v)", newConns, idleClosed, idle, maxPause)
	if idleClosed == 0 {
		t.Errorf("no server connection was closed while idle: the test did not exercise the idle timeout")
	}
	stateMu.Unlock()
	var replays uint64
	for _, tr := range trs {
		replays += tr.Stats().Replays
	}
	t.Logf("Listener stats: %+v; Transports' replays %d; http.Server ErrorLog: %s", st, replays, errLog.summary())
	for _, e := range examples {
		t.Log("  " + e)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests failed; want none", n, waves*peers*perPeer)
	}
	if st.InFlight != 0 {
		t.Errorf("Listener InFlight is %d after every request was answered, want 0", st.InFlight)
	}

	closeAll()
	select {
	case err := <-serveErr:
		if !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("Serve did not return after Close")
	}
	var now int
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= baseline || time.Now().After(end) {
			break
		}
	}
	t.Logf("goroutines: %d before, %d after closing", baseline, now)
	if now > baseline {
		t.Errorf("%d goroutines after closing everything, %d before", now, baseline)
	}
	checkNoLeaks(t)
}

// ---------------------------------------------------------------------

// TestRestartDropBeforeCloseRace: the server reads a request's head, finds
// it is shutting down and closes the connection, before the Listener's
// Close begins; the Listener's whole Close then runs before the goroutine
// that closed the connection gets to the verdict (as under load). The
// request never ran: it goes back as not processed, not as error 500.
func TestRestartDropBeforeCloseRace(t *testing.T) {
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tr, err := NewTransport(l.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://svc/post", strings.NewReader("once"))
		if resp, err := tr.RoundTrip(req); err == nil {
			resp.Body.Close()
		}
	}()
	// Play the http.Server: take the connection, read the head, drop it.
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	n, err := c.Read(head)
	if err != nil || !bytes.HasSuffix(head[:n], []byte("\r\n\r\n")) {
		t.Fatalf("read %q, %v; want the request head", head[:n], err)
	}
	testHookHold = func() { l.Close() }
	defer func() { testHookHold = nil }()
	c.Close()
	if st := l.Stats(); st.NoResponse != 0 || st.ClosedUnanswered != 1 {
		t.Errorf("NoResponse %d, ClosedUnanswered %d; want 0 and 1: a request the server dropped unrun before Close got an error",
			st.NoResponse, st.ClosedUnanswered)
	}
}

// TestCloseDuringHandshake: a client whose handshake completed on its
// side (it writes its requests at once) while the server's side was still
// finishing when Shutdown began is served as a draining peer: its plain
// POST goes back unprocessed and runs once on the next server. Before,
// Close ended the connections still in their handshake and the POST
// failed with ErrConnectionLost though it never ran.
func TestCloseDuringHandshake(t *testing.T) {
	ep := relFreeEndpoint(t)
	var runs runLog
	mux := http.NewServeMux()
	mux.HandleFunc("POST /post", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		runs.add(r.Header.Get("X-Req-Id"))
		io.WriteString(w, "done")
	})
	mk := func() *http.Server { return &http.Server{Handler: mux} }
	reached, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func() {
		once.Do(func() {
			close(reached)
			<-release
		})
	}
	testHookHandshook.Store(&hook)
	defer testHookHandshook.Store(nil)
	first, err := startRestartServer(ep, mk)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTransport(ep, WithReconnectBackoff(10*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://svc/post", strings.NewReader("payload"))
		req.Header.Set("X-Req-Id", "only")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{string(b), err}
	}()
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatal("no handshake reached the server")
	}
	// The client's side is done: let it write HELLO and the POST.
	time.Sleep(100 * time.Millisecond)
	stopped := make(chan error, 1)
	go func() { stopped <- first.stop(10 * time.Second) }()
	for !first.l.closing.Load() {
		time.Sleep(time.Millisecond)
	}
	second, err := startRestartServer(ep, mk)
	if err != nil {
		t.Fatal(err)
	}
	defer second.stop(10 * time.Second)
	close(release)
	select {
	case r := <-done:
		if r.err != nil || r.body != "done" {
			t.Errorf("POST: %q, %v; want it answered by the next server (it never ran on the first)", r.body, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("POST not answered")
	}
	if n := runs.count("only"); n != 1 {
		t.Errorf("the POST ran %d times, want 1", n)
	}
	if err := <-stopped; err != nil {
		t.Errorf("first server: %v", err)
	}
}
