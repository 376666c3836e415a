//go:build linux

// Linux only: the harness freezes server processes with SIGSTOP and has
// the kernel kill them if the test process dies (Pdeathsig), so that no
// server outlives a crashed run.

package zmqhttp

// Reliability tests (issue 3: nothing hangs, nothing is lost silently,
// servers may die and restart).
//
// The server of the kill/restart tests runs as a separate OS process: the
// test binary re-executes itself with -test.run=^TestRelServerProcess$ and
// ZMQHTTP_REL_SERVER=1 in its environment. That child serves
//
//	GET  /get?caller=N&i=M  echoes "caller=N i=M"
//	POST /post              appends its X-Req-Id as one line to the log
//	                        file (one unbuffered O_APPEND write) before
//	                        replying with the id
//	ANY  /slow?ms=N         sleeps N ms (or until r.Context() ends), then
//	                        logs X-Req-Id (if any) like /post and replies
//
// prints relReadyLine on stdout once it listens, exits 0 after a graceful
// http.Server.Shutdown on SIGTERM, and exits by itself if its parent goes
// away (its stdin, a pipe from the parent, reaches EOF; and Pdeathsig,
// which also ends a child that is stopped), so a crashed test run leaves
// no server behind.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	relEnvServer   = "ZMQHTTP_REL_SERVER"
	relEnvEndpoint = "ZMQHTTP_REL_ENDPOINT"
	relEnvLog      = "ZMQHTTP_REL_LOG"

	relReadyLine       = "ZMQHTTP-REL-READY"
	relListenErrorLine = "ZMQHTTP-REL-LISTEN-ERROR"

	// Heartbeats used by both ends in the kill tests.
	relHBInterval = 200 * time.Millisecond
	relHBTimeout  = time.Second
)

// ---------------------------------------------------------------------
// The server child.

// TestRelServerProcess is not a test: it is the server process the other
// TestRel* tests start. It runs only when ZMQHTTP_REL_SERVER=1.
func TestRelServerProcess(t *testing.T) {
	if os.Getenv(relEnvServer) != "1" {
		t.Skip("helper process for the TestRel* tests; runs only when they re-execute the test binary")
	}
	relServerMain() // never returns
}

func relServerMain() {
	ep, logPath := os.Getenv(relEnvEndpoint), os.Getenv(relEnvLog)
	// The parent holds the other end of stdin: EOF means it has gone.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		fmt.Fprintln(os.Stderr, "rel server: stdin closed (parent gone), exiting")
		os.Exit(3)
	}()
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rel server: open log:", err)
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	l, err := Listen(ep, WithHeartbeat(relHBInterval, relHBTimeout))
	if err != nil {
		fmt.Printf("%s %v\n", relListenErrorLine, err)
		os.Exit(2)
	}
	srv := &http.Server{Handler: CallerDeadline(relHandler(logf))}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	fmt.Printf("%s pid=%d endpoint=%s\n", relReadyLine, os.Getpid(), ep)
	select {
	case <-sigs:
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := srv.Shutdown(ctx)
		cancel()
		// Exit right after Shutdown, as a typical main does: replies the
		// server accepted must be on the wire by now.
		fmt.Fprintf(os.Stderr, "rel server: Shutdown took %v, err=%v, listener stats %+v\n",
			time.Since(start).Round(time.Millisecond), err, l.Stats())
		logf.Close()
		if err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	case err := <-serveErr:
		fmt.Fprintln(os.Stderr, "rel server: Serve returned:", err)
		os.Exit(1)
	}
}

func relHandler(logf *os.File) http.Handler {
	logID := func(w http.ResponseWriter, id string) bool {
		// One unbuffered write per request: once it returns the line is
		// in the file, whatever happens to the process afterwards.
		if _, err := logf.Write([]byte(id + "\n")); err != nil {
			http.Error(w, "log: "+err.Error(), http.StatusInternalServerError)
			return false
		}
		return true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/get", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		fmt.Fprintf(w, "caller=%s i=%s", q.Get("caller"), q.Get("i"))
	})
	mux.HandleFunc("/post", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		id := r.Header.Get("X-Req-Id")
		if id == "" || strings.ContainsAny(id, "\r\n") {
			http.Error(w, "bad X-Req-Id", http.StatusBadRequest)
			return
		}
		if logID(w, id) {
			io.WriteString(w, id)
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		ms = min(max(ms, 0), 60000)
		timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return // the caller gone: not processed, not logged
		}
		id := r.Header.Get("X-Req-Id")
		if id != "" && !strings.ContainsAny(id, "\r\n") && !logID(w, id) {
			return
		}
		io.WriteString(w, "slept "+id)
	})
	// Every reply says what deadline the handler's r.Context() had (the
	// server runs with CallerDeadline), so the parent can check that the
	// caller's deadline arrived intact, also for requests that waited
	// for a connection or were replayed.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dl := "none"
		if d, ok := r.Context().Deadline(); ok {
			dl = strconv.FormatInt(d.UnixNano(), 10)
		}
		w.Header().Set("X-Deadline", dl)
		mux.ServeHTTP(w, r)
	})
}

// ---------------------------------------------------------------------
// Parent side: starting, killing and stopping children.

// relOutput collects a child's output and notices its ready line.
type relOutput struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	ready chan struct{} // closed when relReadyLine appears; nil for stderr
	seen  bool
}

func (o *relOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	if o.ready != nil && !o.seen && bytes.Contains(o.buf.Bytes(), []byte(relReadyLine+" ")) {
		o.seen = true
		close(o.ready)
	}
	return len(p), nil
}

func (o *relOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// relChild is one server process.
type relChild struct {
	name    string
	ep      string
	logPath string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stdout  *relOutput
	stderr  *relOutput
	done    chan struct{} // closed when Wait returned
	waitErr error         // Wait's result, set before done is closed
	readyAt time.Time
}

func (c *relChild) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the child to exit.
func (c *relChild) wait(d time.Duration) bool {
	select {
	case <-c.done:
		return true
	case <-time.After(d):
		return false
	}
}

// kill sends SIGKILL and waits for the process to be reaped.
func (c *relChild) kill() error {
	if c.exited() {
		return nil
	}
	c.cmd.Process.Kill()
	if !c.wait(10 * time.Second) {
		return fmt.Errorf("%s (pid %d) not reaped 10s after SIGKILL", c.name, c.cmd.Process.Pid)
	}
	return nil
}

func (c *relChild) exitCode() int {
	if c.cmd.ProcessState == nil {
		return -1
	}
	return c.cmd.ProcessState.ExitCode()
}

func (c *relChild) output() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", c.stdout.String(), c.stderr.String())
}

// relStartChild starts one server child at ep and waits until it is
// listening. Cleanup kills it if it is still running.
func relStartChild(t *testing.T, name, ep, logPath string) (*relChild, error) {
	t.Helper()
	c, err := startTestProcess(t, name, "TestRelServerProcess",
		[]string{relEnvServer + "=1", relEnvEndpoint + "=" + ep, relEnvLog + "=" + logPath}, true)
	if c != nil {
		c.ep, c.logPath = ep, logPath
	}
	return c, err
}

// relFreeEndpoint returns a tcp endpoint on 127.0.0.1 with a port that was
// free a moment ago.
func relFreeEndpoint(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := "tcp://" + ln.Addr().String()
	ln.Close()
	return ep
}

// relStartFirst starts the first server child at a fresh port, trying
// other ports if the chosen one got taken meanwhile.
func relStartFirst(t *testing.T, logPath string) *relChild {
	t.Helper()
	var last error
	for attempt := 0; attempt < 4; attempt++ {
		c, err := relStartChild(t, "server#1", relFreeEndpoint(t), logPath)
		if err == nil {
			return c
		}
		last = err
		t.Logf("starting the server child failed (attempt %d), trying another port: %v", attempt+1, err)
	}
	t.Fatalf("could not start the server child: %v", last)
	return nil
}

// relRestart starts another server child at the same endpoint, retrying a
// few times if the port is busy (e.g. still held by a dying process).
func relRestart(t *testing.T, name, ep, logPath string) (*relChild, error) {
	t.Helper()
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		c, err := relStartChild(t, name, ep, logPath)
		if err == nil {
			return c, nil
		}
		last = err
		t.Logf("restarting at %s failed (attempt %d): %v", ep, attempt+1, err)
		time.Sleep(200 * time.Millisecond)
	}
	return nil, last
}

// relReadLogs counts each id over the children's log files, and which
// file each id is in.
func relReadLogs(t *testing.T, paths ...string) (count map[string]int, where map[string][]int) {
	t.Helper()
	count, where = make(map[string]int), make(map[string][]int)
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line == "" {
				continue
			}
			count[line]++
			where[line] = append(where[line], i)
		}
	}
	return count, where
}

// relCall is one request made by a caller, and what came of it.
type relCall struct {
	caller     int
	method     string
	id         string // X-Req-Id of a POST; "caller=N i=M" (the expected echo) of a GET
	start, end time.Time
	deadline   time.Time
	status     int
	body       string
	err        error
	serverDL   time.Time // the handler's r.Context().Deadline(), from X-Deadline; zero if none
}

// serverDLLate is how much later than the caller's deadline the handler's
// deadline was (negative: earlier), if the handler reported one.
func (c *relCall) serverDLLate() (time.Duration, bool) {
	if c.serverDL.IsZero() {
		return 0, false
	}
	return c.serverDL.Sub(c.deadline), true
}

func (c *relCall) ok() bool { return c.err == nil && c.status == http.StatusOK && c.body == c.id }

// relDo sends one request with the given timeout and records it.
func relDo(client *http.Client, caller int, method, url, id string, timeout time.Duration) relCall {
	rc := relCall{caller: caller, method: method, id: id, start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	rc.deadline, _ = ctx.Deadline()
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("payload of " + id)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		rc.err, rc.end = err, time.Now()
		return rc
	}
	if method == http.MethodPost {
		req.Header.Set("X-Req-Id", id)
	}
	resp, err := client.Do(req)
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		rc.status, rc.body, err = resp.StatusCode, string(b), rerr
		if n, perr := strconv.ParseInt(resp.Header.Get("X-Deadline"), 10, 64); perr == nil {
			rc.serverDL = time.Unix(0, n)
		}
		// /slow answers "slept ID"
		rc.body = strings.TrimPrefix(rc.body, "slept ")
	}
	rc.err, rc.end = err, time.Now()
	return rc
}

// relDurations summarises durations as min/median/max.
func relDurations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("min %v median %v max %v (n=%d)", s[0], s[len(s)/2], s[len(s)-1], len(s))
}

// relDeadlineTolerance bounds how much later than the caller's deadline
// the handler's r.Context() deadline may be: the server counts the
// caller's timeout from the request's arrival, so the transit time adds
// to it, and a burst of hundreds of queued requests through a loaded
// -race process took over 100 ms to cross. The defects this catches (a
// timeout not shortened by the time a call waited for a server) are
// seconds late in these tests.
var relDeadlineTolerance = map[bool]time.Duration{false: 100 * time.Millisecond, true: 500 * time.Millisecond}[raceEnabled]

// relCheckServerDeadlines checks, over the successful calls, that every
// handler saw a deadline and none later than the caller's by more than
// relDeadlineTolerance (a later one means a handler may run on for a
// caller that has given up). It logs the spread and returns the number of
// offending calls.
func relCheckServerDeadlines(t *testing.T, calls []relCall) int {
	t.Helper()
	var lates []time.Duration
	none, late := 0, 0
	var worst *relCall
	for i := range calls {
		c := &calls[i]
		if !c.ok() {
			continue
		}
		d, ok := c.serverDLLate()
		if !ok {
			none++
			continue
		}
		lates = append(lates, d)
		if d > relDeadlineTolerance {
			late++
			if worst == nil || d > worst.serverDL.Sub(worst.deadline) {
				worst = c
			}
		}
	}
	t.Logf("handler's deadline minus the caller's, over successful calls: %s; handlers with no deadline %d; later by over %v: %d",
		relDurations(lates), none, relDeadlineTolerance, late)
	if worst != nil {
		t.Logf("  worst: %s %s started %v before its deadline, took %v; the handler's deadline was %v after the caller's",
			worst.method, worst.id, worst.deadline.Sub(worst.start).Round(time.Millisecond),
			worst.end.Sub(worst.start).Round(time.Millisecond), worst.serverDL.Sub(worst.deadline).Round(time.Millisecond))
	}
	return none + late
}

// relWaitGroup waits for wg until ctx ends; it reports whether wg finished.
func relWaitGroup(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// ---------------------------------------------------------------------
// 1. kill -9 and restart under load.

// TestRelKillRestart kills the server process (kill -9) under load and
// starts a new one at the same endpoint after a delay. The "freeze"
// variant first stops the server (SIGSTOP: its connections stay open but
// silent, as with a hung machine or a lost network) so that only the
// heartbeat can notice, then kills it and restarts.
func TestRelKillRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("about 27s of kills and restarts; skipped with -short")
	}
	for _, tc := range []struct {
		delay  time.Duration
		freeze bool
	}{
		{2 * time.Second, false},
		{10 * time.Second, false},
		{2 * time.Second, true},
	} {
		name := "kill9-restart-after-" + tc.delay.String()
		if tc.freeze {
			name = "freeze-then-kill9-restart-after-" + tc.delay.String()
		}
		t.Run(name, func(t *testing.T) { relKillRestart(t, tc.delay, tc.freeze) })
	}
}

func relKillRestart(t *testing.T, delay time.Duration, freeze bool) {
	const (
		callers     = 64
		before      = 2 * time.Second // load before the kill
		after       = 2 * time.Second // load after the new server is ready
		callTimeout = 30 * time.Second
		failMargin  = 2 * time.Second // on top of the heartbeat timeout
	)
	window := before + delay + after
	// Every caller must be done by then: the window, one call's deadline
	// and some slack. A caller still running later is hung.
	ctx, cancelAll := context.WithTimeout(context.Background(), window+callTimeout+15*time.Second)
	defer cancelAll()

	dir := t.TempDir()
	log1, log2 := filepath.Join(dir, "server1.log"), filepath.Join(dir, "server2.log")
	child1 := relStartFirst(t, log1)
	ep := child1.ep

	tr, err := NewTransport(ep, WithHeartbeat(relHBInterval, relHBTimeout),
		WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	client := &http.Client{Transport: tr}

	var (
		mu       sync.Mutex
		calls    []relCall
		seq      atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		finished atomic.Int64
	)
	loadStart := time.Now()
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			var mine []relCall
			defer func() {
				mu.Lock()
				calls = append(calls, mine...)
				mu.Unlock()
			}()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				if (g+i)%2 == 0 {
					want := fmt.Sprintf("caller=%d i=%d", g, i)
					mine = append(mine, relDo(client, g, http.MethodGet,
						fmt.Sprintf("http://svc/get?caller=%d&i=%d", g, i), want, callTimeout))
				} else {
					id := fmt.Sprintf("kr%v-c%d-i%d-n%d", delay.Seconds(), g, i, seq.Add(1))
					mine = append(mine, relDo(client, g, http.MethodPost, "http://svc/post", id, callTimeout))
				}
				time.Sleep(2 * time.Millisecond) // pace a little: the box is shared
			}
		}()
	}

	// Mid-load: kill -9, wait, start a new server at the same endpoint.
	time.Sleep(before)
	statsBeforeKill := tr.Stats()
	killTime := time.Now() // the moment the server stopped answering
	if freeze {
		if err := child1.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Errorf("SIGSTOP: %v", err)
		}
		t.Logf("froze %s (pid %d, SIGSTOP) at +%v", child1.name, child1.cmd.Process.Pid,
			killTime.Sub(loadStart).Round(time.Millisecond))
		time.Sleep(delay)
		if err := child1.kill(); err != nil {
			t.Error(err)
		}
		t.Logf("killed the frozen %s at +%v: %v", child1.name, time.Since(loadStart).Round(time.Millisecond), child1.waitErr)
	} else {
		if err := child1.kill(); err != nil {
			t.Error(err)
		}
		t.Logf("killed %s (pid %d) at +%v: %v", child1.name, child1.cmd.Process.Pid,
			killTime.Sub(loadStart).Round(time.Millisecond), child1.waitErr)
		time.Sleep(delay)
	}
	child2, err := relRestart(t, "server#2", ep, log2)
	var restartReady time.Time
	if err != nil {
		t.Errorf("could not restart the server: %v", err)
	} else {
		restartReady = child2.readyAt
		t.Logf("%s ready at +%v (%v after the kill)", child2.name,
			restartReady.Sub(loadStart).Round(time.Millisecond), restartReady.Sub(killTime).Round(time.Millisecond))
		select {
		case <-time.After(after):
		case <-ctx.Done():
		}
	}
	close(stop)
	stopTime := time.Now()
	if !relWaitGroup(ctx, &wg) {
		t.Errorf("HANG: %d of %d callers still running %v after the load stopped (test deadline reached)",
			callers-int(finished.Load()), callers, time.Since(stopTime).Round(time.Millisecond))
		cancelAll()
		// Close the Transport so the hung calls end before the logs are read.
		tr.Close()
		wg.Wait()
	}
	t.Logf("all callers finished %v after the load stopped", time.Since(stopTime).Round(time.Millisecond))
	if child2 != nil && child2.exited() {
		t.Errorf("%s exited during the test: %v\n%s", child2.name, child2.waitErr, child2.output())
	}

	// Analysis.
	logCount, logWhere := relReadLogs(t, log1, log2)
	var (
		getOK, getFail, postOK, postLost, postOther int
		lostButLogged, okNotLogged, overran         int
		postLostAfter                               []time.Duration
		firstOKAfterRestart                         time.Time
		maxCall                                     time.Duration
		examples                                    []string
	)
	example := func(format string, args ...any) {
		if len(examples) < 10 {
			examples = append(examples, fmt.Sprintf(format, args...))
		}
	}
	hbTimeout := relHBTimeout
	for i := range calls {
		c := &calls[i]
		d := c.end.Sub(c.start)
		maxCall = max(maxCall, d)
		if c.end.After(c.deadline.Add(time.Second)) {
			overran++
			example("call overran its deadline by %v: %s %s err=%v", c.end.Sub(c.deadline), c.method, c.id, c.err)
		}
		if c.ok() && !restartReady.IsZero() && c.start.After(killTime) &&
			(firstOKAfterRestart.IsZero() || c.end.Before(firstOKAfterRestart)) {
			firstOKAfterRestart = c.end
		}
		switch c.method {
		case http.MethodGet:
			if c.ok() {
				getOK++
			} else {
				getFail++
				example("GET %q (started +%v, ended +%v): status %d body %q err %v", c.id,
					c.start.Sub(loadStart).Round(time.Millisecond), c.end.Sub(loadStart).Round(time.Millisecond), c.status, c.body, c.err)
			}
		case http.MethodPost:
			switch {
			case c.ok():
				postOK++
				if logCount[c.id] == 0 {
					okNotLogged++
					example("POST %s succeeded but is in no server log", c.id)
				}
			case c.err != nil && errors.Is(c.err, ErrConnectionLost):
				postLost++
				since := c.end.Sub(killTime)
				postLostAfter = append(postLostAfter, since)
				if since < 0 || since > hbTimeout+failMargin {
					example("POST %s failed with ErrConnectionLost %v after the kill (allowed 0..%v): %v", c.id, since.Round(time.Millisecond), hbTimeout+failMargin, c.err)
				}
				if logCount[c.id] > 0 {
					lostButLogged++
				}
			default:
				postOther++
				example("POST %s (started +%v, ended +%v): status %d body %q err %v", c.id,
					c.start.Sub(loadStart).Round(time.Millisecond), c.end.Sub(loadStart).Round(time.Millisecond), c.status, c.body, c.err)
			}
		}
	}
	dups := 0
	for id, n := range logCount {
		if n > 1 {
			dups++
			example("X-Req-Id %s logged %d times (in logs %v)", id, n, logWhere[id])
		}
	}
	lostLate := 0
	for _, d := range postLostAfter {
		if d < 0 || d > hbTimeout+failMargin {
			lostLate++
		}
	}
	in1, in2 := 0, 0
	for _, w := range logWhere {
		for _, i := range w {
			if i == 0 {
				in1++
			} else {
				in2++
			}
		}
	}

	st := tr.Stats()
	t.Logf("restart delay %v (freeze first: %v): %d calls by %d callers; GETs ok %d, GETs failed %d; POSTs ok %d, POSTs failed with ErrConnectionLost %d (of which the server had logged %d), POSTs failed otherwise %d",
		delay, freeze, len(calls), callers, getOK, getFail, postOK, postLost, lostButLogged, postOther)
	t.Logf("ErrConnectionLost came after the server stopped answering: %s", relDurations(postLostAfter))
	badDL := relCheckServerDeadlines(t, calls)
	t.Logf("server logs: %d lines in server#1, %d in server#2; duplicate ids %d; successful POSTs missing from the logs %d; calls overrunning their deadline %d; longest call %v",
		in1, in2, dups, okNotLogged, overran, maxCall.Round(time.Millisecond))
	if !firstOKAfterRestart.IsZero() {
		t.Logf("first success of a call started after the kill: %v after the new server was ready", firstOKAfterRestart.Sub(restartReady).Round(time.Millisecond))
	}
	t.Logf("Transport.Stats before the kill: %+v", statsBeforeKill)
	t.Logf("Transport.Stats at the end:      %+v", st)
	for _, e := range examples {
		t.Log("  " + e)
	}

	if getFail > 0 {
		t.Errorf("%d GETs failed; every GET must succeed (replayed after the reconnect or sent once connected)", getFail)
	}
	if postOther > 0 {
		t.Errorf("%d POSTs failed with something other than ErrConnectionLost", postOther)
	}
	if lostLate > 0 {
		t.Errorf("%d POSTs failed with ErrConnectionLost outside 0..%v after the kill", lostLate, hbTimeout+failMargin)
	}
	if dups > 0 {
		t.Errorf("%d X-Req-Ids were processed more than once (a non-idempotent request was replayed)", dups)
	}
	if okNotLogged > 0 {
		t.Errorf("%d successful POSTs are in no server log", okNotLogged)
	}
	if overran > 0 {
		t.Errorf("%d calls ended more than 1s after their deadline", overran)
	}
	if getOK == 0 || postOK == 0 {
		t.Errorf("no load got through (GETs ok %d, POSTs ok %d)", getOK, postOK)
	}
	if st.Pending != 0 {
		t.Errorf("Transport still has %d pending calls after every caller returned", st.Pending)
	}
	if badDL > 0 {
		t.Errorf("%d successful calls ran in a handler whose r.Context() deadline was missing or over %v later than the caller's (stale timeout after waiting or replay?)", badDL, relDeadlineTolerance)
	}
	if t.Failed() {
		if child2 != nil {
			t.Logf("%s output:\n%s", child2.name, child2.output())
		}
	}
}

// ---------------------------------------------------------------------
// 2. Clients start before any server exists.

func TestRelClientsFirst(t *testing.T) {
	const (
		callers     = 16
		callTimeout = 15 * time.Second
		serverAfter = 3 * time.Second
	)
	ctx, cancelAll := context.WithTimeout(context.Background(), serverAfter+2*callTimeout+10*time.Second)
	defer cancelAll()
	ep := relFreeEndpoint(t)
	logPath := filepath.Join(t.TempDir(), "server.log")

	tr, err := NewTransport(ep) // default options: backoff 50ms..2s
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	client := &http.Client{Transport: tr}

	start := time.Now()
	var mu sync.Mutex
	var calls []relCall
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The first request is made with no server up; the rest
			// follow on the connection.
			for i, method := range []string{http.MethodGet, http.MethodPost, http.MethodGet} {
				var rc relCall
				if method == http.MethodGet {
					rc = relDo(client, g, method, fmt.Sprintf("http://svc/get?caller=%d&i=%d", g, i),
						fmt.Sprintf("caller=%d i=%d", g, i), callTimeout)
				} else {
					rc = relDo(client, g, method, "http://svc/post", fmt.Sprintf("cf-c%d-i%d", g, i), callTimeout)
				}
				mu.Lock()
				calls = append(calls, rc)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(serverAfter)
	pendingBefore := tr.Stats()
	var child *relChild
	for attempt := 0; attempt < 5 && child == nil; attempt++ {
		if child, err = relStartChild(t, "server", ep, logPath); err != nil {
			t.Logf("starting the server at %s failed (attempt %d): %v", ep, attempt+1, err)
			time.Sleep(200 * time.Millisecond)
		}
	}
	if child == nil {
		t.Errorf("could not start the server at %s", ep)
	}
	if !relWaitGroup(ctx, &wg) {
		t.Errorf("HANG: callers still running at the test deadline")
		tr.Close()
		wg.Wait()
	}
	served, failed := 0, 0
	var latency []time.Duration
	for i := range calls {
		c := &calls[i]
		if c.ok() {
			served++
			if child != nil {
				latency = append(latency, c.end.Sub(child.readyAt))
			}
		} else {
			failed++
			t.Errorf("%s %s: status %d body %q err %v (after %v)", c.method, c.id, c.status, c.body, c.err, c.end.Sub(c.start).Round(time.Millisecond))
		}
	}
	if child != nil {
		t.Logf("server started %v after the callers", child.readyAt.Sub(start).Round(time.Millisecond))
	}
	t.Logf("%d callers, %d requests: %d served, %d failed", callers, len(calls), served, failed)
	t.Logf("replies arrived after the server was ready: %s", relDurations(latency))
	t.Logf("Transport.Stats before the server started: %+v", pendingBefore)
	t.Logf("Transport.Stats at the end:                %+v", tr.Stats())
	if served != callers*3 {
		t.Errorf("served %d of %d requests", served, callers*3)
	}
	if bad := relCheckServerDeadlines(t, calls); bad > 0 {
		t.Errorf("%d requests ran in a handler whose r.Context() deadline was missing or over %v later than the caller's: the time spent waiting for the connection was not taken off", bad, relDeadlineTolerance)
	}
}

// ---------------------------------------------------------------------
// 3. Graceful shutdown (SIGTERM) under load, then a new server.

func TestRelShutdownUnderLoad(t *testing.T) {
	const (
		callers     = 32
		callTimeout = 30 * time.Second
		before      = time.Second             // load before SIGTERM
		gap         = time.Second             // SIGTERM to the new server's start
		after       = 1500 * time.Millisecond // load after the new server is ready
	)
	ctx, cancelAll := context.WithTimeout(context.Background(), before+gap+after+callTimeout+15*time.Second)
	defer cancelAll()
	dir := t.TempDir()
	log1, log2 := filepath.Join(dir, "server1.log"), filepath.Join(dir, "server2.log")
	child1 := relStartFirst(t, log1)
	ep := child1.ep

	tr, err := NewTransport(ep, WithHeartbeat(relHBInterval, relHBTimeout),
		WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	client := &http.Client{Transport: tr}

	var (
		mu    sync.Mutex
		calls []relCall
		seq   atomic.Int64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	loadStart := time.Now()
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []relCall
			defer func() {
				mu.Lock()
				calls = append(calls, mine...)
				mu.Unlock()
			}()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				id := fmt.Sprintf("sd-c%d-i%d-n%d", g, i, seq.Add(1))
				mine = append(mine, relDo(client, g, http.MethodPost, "http://svc/slow?ms=50", id, callTimeout))
			}
		}()
	}
	time.Sleep(before)
	termTime := time.Now()
	if err := child1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	if !child1.wait(gap + 10*time.Second) {
		t.Errorf("%s did not exit within %v of SIGTERM\n%s", child1.name, gap+10*time.Second, child1.output())
		child1.kill()
	} else {
		t.Logf("%s exited %v after SIGTERM with code %d; its stderr: %s", child1.name,
			time.Since(termTime).Round(time.Millisecond), child1.exitCode(), strings.TrimSpace(child1.stderr.String()))
		if child1.exitCode() != 0 {
			t.Errorf("%s exited with %v after SIGTERM, want 0\n%s", child1.name, child1.waitErr, child1.output())
		}
	}
	time.Sleep(time.Until(termTime.Add(gap)))
	child2, err := relRestart(t, "server#2", ep, log2)
	if err != nil {
		t.Errorf("could not start the second server: %v", err)
	} else {
		t.Logf("%s ready %v after SIGTERM", child2.name, child2.readyAt.Sub(termTime).Round(time.Millisecond))
		select {
		case <-time.After(after):
		case <-ctx.Done():
		}
	}
	close(stop)
	if !relWaitGroup(ctx, &wg) {
		t.Errorf("HANG: callers still running at the test deadline")
		cancelAll()
		tr.Close()
		wg.Wait()
	}

	logCount, logWhere := relReadLogs(t, log1, log2)
	ok, failed, dups, missing, by1, by2 := 0, 0, 0, 0, 0, 0
	var waitedAcross []time.Duration // calls in progress at SIGTERM: how long they took
	for i := range calls {
		c := &calls[i]
		if c.ok() {
			ok++
			if logCount[c.id] == 0 {
				missing++
				t.Errorf("POST %s succeeded but is in no server log", c.id)
			} else if logWhere[c.id][0] == 0 {
				by1++
			} else {
				by2++
			}
		} else {
			failed++
			if failed <= 10 {
				t.Errorf("POST %s (started +%v, ended +%v; SIGTERM at +%v): status %d body %q err %v", c.id,
					c.start.Sub(loadStart).Round(time.Millisecond), c.end.Sub(loadStart).Round(time.Millisecond),
					termTime.Sub(loadStart).Round(time.Millisecond), c.status, c.body, c.err)
			}
		}
		if c.start.Before(termTime) && c.end.After(termTime) {
			waitedAcross = append(waitedAcross, c.end.Sub(c.start))
		}
	}
	for id, n := range logCount {
		if n > 1 {
			dups++
			if dups <= 10 {
				t.Errorf("X-Req-Id %s processed %d times (logs %v)", id, n, logWhere[id])
			}
		}
	}
	t.Logf("%d calls by %d callers: ok %d (answered by server#1 %d, by server#2 %d), failed %d; duplicate ids %d; ok but not logged %d",
		len(calls), callers, ok, by1, by2, failed, dups, missing)
	t.Logf("calls in progress at SIGTERM took %s", relDurations(waitedAcross))
	badDL := relCheckServerDeadlines(t, calls)
	t.Logf("Transport.Stats: %+v", tr.Stats())
	if failed > 0 {
		t.Errorf("%d of %d calls failed; want none", failed, len(calls))
	}
	if dups > 0 {
		t.Errorf("%d ids processed more than once", dups)
	}
	if badDL > 0 {
		t.Errorf("%d calls ran in a handler whose r.Context() deadline was missing or over %v later than the caller's", badDL, relDeadlineTolerance)
	}
	if by1 == 0 || (child2 != nil && by2 == 0) {
		t.Errorf("expected calls answered by both servers (server#1 %d, server#2 %d)", by1, by2)
	}
	if t.Failed() && child2 != nil {
		t.Logf("%s output:\n%s", child2.name, child2.output())
	}
}

// ---------------------------------------------------------------------
// 4. Cancelling the caller's context reaches the handler.

func TestRelCancelReachesHandler(t *testing.T) {
	const rounds = 20
	quit := make(chan struct{})
	entered := make(chan int, 1)
	type doneMsg struct {
		round int
		at    time.Time
	}
	handlerDone := make(chan doneMsg, rounds)
	mux := http.NewServeMux()
	mux.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		round, _ := strconv.Atoi(r.URL.Query().Get("round"))
		entered <- round
		select {
		case <-r.Context().Done():
			handlerDone <- doneMsg{round, time.Now()}
		case <-quit:
		case <-time.After(30 * time.Second):
		}
	})
	ts := startServer(t, "tcp", mux)
	t.Cleanup(func() { close(quit) }) // runs before the server's cleanup
	client, tr := newClient(t, ts.L.Endpoint())

	var delays []time.Duration
	misses := 0
	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://svc/wait?round=%d", round), nil)
		errc := make(chan error, 1)
		go func() {
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		select {
		case got := <-entered:
			if got != round {
				cancel()
				t.Fatalf("round %d: handler entered for round %d", round, got)
			}
		case <-time.After(10 * time.Second):
			cancel()
			t.Fatalf("round %d: the handler was not entered within 10s", round)
		}
		time.Sleep(100 * time.Millisecond)
		cancelAt := time.Now()
		cancel()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("round %d: client got %v, want an error wrapping context.Canceled", round, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the cancelled call did not return within 5s", round)
		}
		select {
		case d := <-handlerDone:
			if d.round != round {
				t.Fatalf("round %d: handler of round %d reported", round, d.round)
			}
			delays = append(delays, d.at.Sub(cancelAt))
		case <-time.After(time.Second):
			misses++
			t.Errorf("round %d: the handler's r.Context() was not cancelled within 1s of the caller's cancel", round)
			if misses >= 2 {
				t.Logf("Listener stats: %+v; Transport stats: %+v", ts.L.Stats(), tr.Stats())
				t.Fatalf("giving up after %d misses", misses)
			}
			// The handler of this round is still waiting: drain its
			// report later, if it ever comes, without confusing the next
			// round.
			go func() {
				select {
				case <-handlerDone:
				case <-quit:
				}
			}()
		}
	}
	t.Logf("cancel → handler's r.Context().Done() over %d rounds: %s (target 50ms)", rounds, relDurations(delays))
	settle := time.Now().Add(3 * time.Second)
	for ts.L.Stats().InFlight != 0 && time.Now().Before(settle) {
		time.Sleep(10 * time.Millisecond)
	}
	st := ts.L.Stats()
	t.Logf("Listener stats: %+v", st)
	if st.InFlight != 0 {
		t.Errorf("Listener still counts %d requests in flight 3s after every cancelled handler returned", st.InFlight)
	}
	if st.Canceled != rounds {
		t.Errorf("Listener counted %d cancels, want %d", st.Canceled, rounds)
	}
}

// ---------------------------------------------------------------------
// 5. The caller's deadline reaches the handler.

func TestRelDeadlineReachesHandler(t *testing.T) {
	for _, withCallerDeadline := range []bool{true, false} {
		name := "with-CallerDeadline"
		if !withCallerDeadline {
			name = "without-CallerDeadline"
		}
		t.Run(name, func(t *testing.T) { relDeadline(t, withCallerDeadline) })
	}
}

func relDeadline(t *testing.T, withCallerDeadline bool) {
	const (
		timeout     = 300 * time.Millisecond
		rounds      = 3
		dlTolerance = 100 * time.Millisecond // handler's Deadline() vs the caller's
		lateMargin  = 200 * time.Millisecond // handler's Done() after the caller's deadline
		earlyMargin = 100 * time.Millisecond // handler's Done() before the caller's deadline
	)
	type report struct {
		dl     time.Time
		hasDL  bool
		doneAt time.Time
		done   bool
	}
	quit := make(chan struct{})
	reports := make(chan report, rounds)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var rep report
		rep.dl, rep.hasDL = r.Context().Deadline()
		select {
		case <-r.Context().Done():
			rep.doneAt, rep.done = time.Now(), true
		case <-quit:
		case <-time.After(10 * time.Second):
		}
		reports <- rep
	})
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	if withCallerDeadline {
		srv.Handler = CallerDeadline(h)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	t.Cleanup(func() {
		close(quit)
		srv.Close()
		select {
		case <-serveErr:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	client, _ := newClient(t, l.Endpoint())

	for round := 0; round < rounds; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		callerDL, _ := ctx.Deadline()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/deadline", nil)
		resp, err := client.Do(req)
		cancel()
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// The handler only returns when its r.Context() is done, so
			// a reply here is the implicit empty 200 net/http writes
			// after it: the handler's context ended before the caller's
			// and the reply outran the caller's own timer.
			t.Errorf("round %d: got a %d reply with body %q, %v before the caller's deadline; want the deadline error",
				round, resp.StatusCode, body, callerDL.Sub(time.Now()).Round(time.Microsecond))
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("round %d: got %v, want an error wrapping context.DeadlineExceeded", round, err)
		}
		var rep report
		select {
		case rep = <-reports:
		case <-time.After(2 * time.Second):
			t.Fatalf("round %d: the handler's r.Context() was not done within 2s of the caller's deadline", round)
		}
		switch {
		case !rep.hasDL:
			t.Logf("round %d: handler saw no Deadline()", round)
		default:
			t.Logf("round %d: handler's Deadline() is %v from the caller's", round, rep.dl.Sub(callerDL))
		}
		if withCallerDeadline {
			if !rep.hasDL {
				t.Errorf("round %d: with CallerDeadline the handler's r.Context() has no deadline", round)
			} else if d := rep.dl.Sub(callerDL); d > dlTolerance || d < -dlTolerance {
				t.Errorf("round %d: handler's deadline is %v from the caller's, want within ±%v", round, d, dlTolerance)
			}
		}
		if !rep.done {
			t.Errorf("round %d: the handler's r.Context() was never done", round)
			continue
		}
		d := rep.doneAt.Sub(callerDL)
		t.Logf("round %d: handler's r.Context() done %v after the caller's deadline", round, d)
		if d > lateMargin {
			t.Errorf("round %d: handler's r.Context() done %v after the caller's deadline, want within %v", round, d, lateMargin)
		}
		if d < -earlyMargin {
			t.Errorf("round %d: handler's r.Context() done %v before the caller's deadline", round, -d)
		}
	}
}
