//go:build linux

// Linux only: peak memory is read from /proc/PID/status (VmHWM), and the
// helper processes are tied to the test process with Pdeathsig, as in
// reliability_test.go.

package zmqhttp

// Streamed bodies in bounded memory.
//
// TestStreamGiBBoundedMemory moves 1 GiB each way between two separate
// processes, both re-executions of the test binary (like the server child
// of reliability_test.go), so that each one's peak RSS is its own:
//
//	server child (ZMQHTTP_STREAM_ROLE=server): an http.Server on a zmqhttp
//	Listener serving
//	    POST /sink            reads the body, replies "BYTES CRC32C"
//	    GET  /source?n=N&cl=B writes N bytes of the test pattern from one
//	                          reused buffer, with Content-Length if B=1
//	client child (ZMQHTTP_STREAM_ROLE=client): one Transport; uploads the
//	pattern from an io.Reader that generates it (never a buffer), with
//	and without a Content-Length, then downloads it in both shapes,
//	checking byte counts and CRCs; prints one STEP line per transfer,
//	its own VmHWM, and RESULT.
//
// The parent watches both processes' RSS while they run and kills them
// when either passes streamAbortRSS (a buffered GiB body), so that today's
// whole-message bodies fail quickly instead of filling the machine.

import (
	"bufio"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	streamEnvRole     = "ZMQHTTP_STREAM_ROLE"
	streamEnvEndpoint = "ZMQHTTP_STREAM_ENDPOINT"
	streamEnvSize     = "ZMQHTTP_STREAM_SIZE"

	// streamMaxRSS is the peak RSS (VmHWM) each process must stay under
	// while streaming 1 GiB each way.
	streamMaxRSS = 64 << 20
	// streamAbortRSS: past this the parent kills both processes: the body
	// is being buffered and the test has failed already.
	streamAbortRSS = 384 << 20
	// streamBodyLimit is what both ends are configured to accept, so that
	// no size limit is what stops the transfer.
	streamBodyLimit = 4 << 30
)

// vmKB reads a "Vm...:" line of /proc/PID/status ("self" for this process)
// in kB.
func vmKB(pid, field string) (int64, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%s/status", field, pid)
}

// ---------------------------------------------------------------------
// The child processes.

// TestStreamHelperProcess is not a test: it is the server or client
// process TestStreamGiBBoundedMemory starts. It runs only when
// ZMQHTTP_STREAM_ROLE is set.
func TestStreamHelperProcess(t *testing.T) {
	role := os.Getenv(streamEnvRole)
	if role == "" {
		t.Skip("helper process for TestStreamGiBBoundedMemory; runs only when it re-executes the test binary")
	}
	// The parent holds the other end of stdin: EOF means it has gone.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		fmt.Fprintln(os.Stderr, "stream helper: stdin closed (parent gone), exiting")
		os.Exit(3)
	}()
	switch role {
	case "server":
		streamServerMain()
	case "client":
		streamClientMain()
	}
	fmt.Fprintln(os.Stderr, "stream helper: unknown role", role)
	os.Exit(2)
}

func streamHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /sink", func(w http.ResponseWriter, r *http.Request) {
		h := crc32.New(streamCRCTable)
		n, err := io.CopyBuffer(h, r.Body, make([]byte, 32<<10))
		if err != nil {
			http.Error(w, fmt.Sprintf("read after %d bytes: %v", n, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %08x", n, h.Sum32())
	})
	mux.HandleFunc("GET /source", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("cl") == "1" {
			w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		pos := 0
		for n > 0 {
			k := min(n, 32<<10)
			if _, err := w.Write(streamPattern[pos : pos+int(k)]); err != nil {
				return
			}
			pos = (pos + int(k)) % streamPatternPeriod
			n -= k
		}
	})
	return mux
}

func streamServerMain() {
	ep := os.Getenv(streamEnvEndpoint)
	l, err := Listen(ep, WithLimits(Limits{MaxBodyBytes: streamBodyLimit}))
	if err != nil {
		fmt.Printf("%s %v\n", relListenErrorLine, err)
		os.Exit(2)
	}
	srv := &http.Server{Handler: streamHandler()}
	fmt.Printf("%s pid=%d endpoint=%s\n", relReadyLine, os.Getpid(), ep)
	err = srv.Serve(l)
	fmt.Fprintln(os.Stderr, "stream server: Serve returned:", err)
	os.Exit(1)
}

func streamClientMain() {
	ep := os.Getenv(streamEnvEndpoint)
	size, err := strconv.ParseInt(os.Getenv(streamEnvSize), 10, 64)
	if err != nil {
		fmt.Println("RESULT FAIL bad size:", err)
		os.Exit(1)
	}
	fail := func(format string, args ...any) {
		fmt.Printf("RESULT FAIL "+format+"\n", args...)
		if kb, err := vmKB("self", "VmHWM"); err == nil {
			fmt.Printf("VMHWM %d\n", kb)
		}
		os.Exit(1)
	}
	tr, err := NewTransport(ep, WithLimits(Limits{MaxBodyBytes: streamBodyLimit}))
	if err != nil {
		fail("NewTransport: %v", err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}
	want := fmt.Sprintf("%d %08x", size, patternCRC(size))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// Connected and at rest: the baseline for -race runs.
	if resp, err := client.Get("http://stream/source?n=0"); err != nil {
		fail("first request: %v", err)
	} else {
		resp.Body.Close()
	}
	if kb, err := vmKB("self", "VmRSS"); err == nil {
		fmt.Printf("IDLE %d\n", kb)
	}

	step := func(name string, start time.Time, n int64) {
		d := time.Since(start)
		fmt.Printf("STEP %s bytes=%d took=%v MiB/s=%.0f\n", name, n, d.Round(time.Millisecond), float64(n)/(1<<20)/d.Seconds())
	}
	for _, withCL := range []bool{false, true} {
		name := "upload-no-content-length"
		if withCL {
			name = "upload-content-length"
		}
		body := &patternReader{n: size}
		req, _ := http.NewRequestWithContext(ctx, "POST", "http://stream/sink", io.NopCloser(body))
		req.ContentLength = -1
		if withCL {
			req.ContentLength = size
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			fail("%s: %v (after the Transport read %d bytes of the body)", name, err, body.read.Load())
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || string(got) != want {
			fail("%s: status %d, reply %q (want %q), read error %v", name, resp.StatusCode, got, want, err)
		}
		step(name, start, size)
	}
	for _, withCL := range []bool{false, true} {
		name, cl := "download-no-content-length", "0"
		if withCL {
			name, cl = "download-content-length", "1"
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://stream/source?n=%d&cl=%s", size, cl), nil)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			fail("%s: %v", name, err)
		}
		if resp.StatusCode != 200 {
			fail("%s: status %d", name, resp.StatusCode)
		}
		if withCL && resp.ContentLength != size {
			fail("%s: resp.ContentLength %d, want %d", name, resp.ContentLength, size)
		}
		h := crc32.New(streamCRCTable)
		n, err := io.CopyBuffer(h, resp.Body, make([]byte, 32<<10))
		resp.Body.Close()
		if err != nil {
			fail("%s: reading the body after %d bytes: %v", name, n, err)
		}
		if got := fmt.Sprintf("%d %08x", n, h.Sum32()); got != want {
			fail("%s: got %s (bytes, crc), want %s", name, got, want)
		}
		step(name, start, size)
	}
	kb, err := vmKB("self", "VmHWM")
	if err != nil {
		fail("%v", err)
	}
	fmt.Printf("VMHWM %d\n", kb)
	fmt.Println("RESULT OK")
	os.Exit(0)
}

// ---------------------------------------------------------------------
// Parent side.

// startTestProcess re-executes the test binary to run only testName, with
// env added. If waitReady it waits for relReadyLine on stdout. Cleanup
// kills the process if it still runs. A -race binary sleeps 1s at exit
// (GORACE atexit_sleep_ms) unless told otherwise; a child's exit time
// after SIGTERM is measured, so it is told.
func startTestProcess(t *testing.T, name, testName string, env []string, waitReady bool) (*relChild, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+testName+"$", "-test.count=1", "-test.timeout=5m")
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(append(os.Environ(), env...), "GORACE="+gorace)
	c := &relChild{
		name: name, cmd: cmd,
		stdout: &relOutput{ready: make(chan struct{})},
		stderr: &relOutput{},
		done:   make(chan struct{}),
	}
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		if !c.exited() {
			if err := c.kill(); err != nil {
				t.Error(err)
			}
		}
		c.stdin.Close()
	})
	if !waitReady {
		return c, nil
	}
	select {
	case <-c.stdout.ready:
		c.readyAt = time.Now()
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s exited (%v) before it was ready\n%s", name, c.waitErr, c.output())
	case <-time.After(30 * time.Second):
		c.kill()
		return nil, fmt.Errorf("%s not ready after 30s\n%s", name, c.output())
	}
}

// TestStreamGiBBoundedMemory: 1 GiB up and 1 GiB down, in each body shape
// (with and without Content-Length), through one Transport, with each
// process's peak RSS under 64 MiB.
func TestStreamGiBBoundedMemory(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	maxRSS := int64(streamMaxRSS)
	if raceEnabled {
		// The race detector's shadow memory and runtime (~30 MiB at rest)
		// come on top of what the code holds, so the bound is on the
		// growth over each process's RSS at rest; and it copies bytes
		// several times slower, so the transfers are smaller (still twice
		// the bound: a buffered body fails).
		size = 128 << 20
		t.Logf("race detector on: %d MiB per transfer; the %d MiB bound applies to RSS growth over each process's RSS at rest", size>>20, maxRSS>>20)
	}
	ep := testEndpoint(t, "ipc")
	server, err := startTestProcess(t, "stream server", "TestStreamHelperProcess",
		[]string{streamEnvRole + "=server", streamEnvEndpoint + "=" + ep}, true)
	if err != nil {
		t.Fatal(err)
	}
	serverPID := strconv.Itoa(server.cmd.Process.Pid)
	serverIdle, _ := vmKB(serverPID, "VmRSS")

	client, err := startTestProcess(t, "stream client", "TestStreamHelperProcess",
		[]string{streamEnvRole + "=client", streamEnvEndpoint + "=" + ep, streamEnvSize + "=" + strconv.FormatInt(size, 10)}, false)
	if err != nil {
		t.Fatal(err)
	}
	clientPID := strconv.Itoa(client.cmd.Process.Pid)

	// Watch both while the client runs.
	// 4 transfers of 1 GiB in 30s is ~140 MiB/s: a loopback stream that
	// cannot do that has a problem of its own.
	const hardLimit = 30 * time.Second
	var (
		clientIdle           int64
		peakSeenS, peakSeenC int64 // largest VmRSS seen by polling, kB
		aborted              string
	)
	start := time.Now()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
watch:
	for {
		select {
		case <-client.done:
			break watch
		case <-tick.C:
		}
		if s, err := vmKB(serverPID, "VmRSS"); err == nil {
			peakSeenS = max(peakSeenS, s)
		}
		if c, err := vmKB(clientPID, "VmRSS"); err == nil {
			peakSeenC = max(peakSeenC, c)
		}
		switch {
		case peakSeenS<<10 > streamAbortRSS:
			aborted = fmt.Sprintf("the server's RSS reached %d MiB (bodies buffered whole?); killed both processes", peakSeenS>>10)
		case peakSeenC<<10 > streamAbortRSS:
			aborted = fmt.Sprintf("the client's RSS reached %d MiB (bodies buffered whole?); killed both processes", peakSeenC>>10)
		case time.Since(start) > hardLimit:
			aborted = fmt.Sprintf("the client had not finished after %v (%d MiB each way and shape); killed both processes", hardLimit, size>>20)
		}
		if aborted != "" {
			client.kill()
			break watch
		}
	}
	elapsed := time.Since(start)
	serverHWM, serr := vmKB(serverPID, "VmHWM")
	server.kill()

	out := client.stdout.String()
	var clientHWM int64 = -1
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "VMHWM "); ok {
			clientHWM, _ = strconv.ParseInt(rest, 10, 64)
		}
		if rest, ok := strings.CutPrefix(line, "IDLE "); ok {
			clientIdle, _ = strconv.ParseInt(rest, 10, 64)
		}
		if strings.HasPrefix(line, "STEP ") || strings.HasPrefix(line, "RESULT ") {
			t.Logf("client: %s", line)
		}
	}
	t.Logf("%d MiB each way and shape in %v; idle RSS: server %d KiB, client %d KiB; RSS seen by polling: server %d KiB, client %d KiB",
		size>>20, elapsed.Round(time.Millisecond), serverIdle, clientIdle, peakSeenS, peakSeenC)
	t.Logf("peak RSS (VmHWM): server %d KiB, client %d KiB (limit %d KiB)", serverHWM, clientHWM, maxRSS>>10)
	if aborted != "" {
		t.Fatalf("%s\nclient output:\n%s\nserver output:\n%s", aborted, client.output(), server.output())
	}
	if !strings.Contains(out, "RESULT OK") {
		t.Fatalf("the client failed (%v):\n%s", client.waitErr, client.output())
	}
	if serr != nil {
		t.Errorf("server VmHWM: %v", serr)
	}
	check := func(who string, hwm, idle int64) {
		used := hwm << 10
		if raceEnabled {
			used = (hwm - idle) << 10
		}
		if hwm < 0 {
			t.Errorf("%s: no VmHWM reported", who)
		} else if used >= maxRSS {
			t.Errorf("%s: peak RSS %d MiB (race-adjusted: %v), want under %d MiB while streaming", who, used>>20, raceEnabled, maxRSS>>20)
		}
	}
	check("server", serverHWM, serverIdle)
	check("client", clientHWM, clientIdle)
}
