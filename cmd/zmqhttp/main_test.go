package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// The tests run the command as a child process: the test binary itself,
// with ZMQHTTP_CMD_ARGS set, runs main's run on those arguments.
func TestMain(m *testing.M) {
	if args := os.Getenv("ZMQHTTP_CMD_ARGS"); args != "" {
		os.Exit(run(strings.Fields(args), os.Stdout, os.Stderr))
	}
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for the child's writer and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// command starts the command with args; it is killed at cleanup.
func command(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer, chan error) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "ZMQHTTP_CMD_ARGS="+strings.Join(args, " "))
	out := &syncBuffer{}
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, out, done
}

func exitCode(t *testing.T, done chan error, cmd *exec.Cmd) int {
	t.Helper()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not exit")
		return -1
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args string
		code int
	}{
		{"", 2}, {"-h", 0}, {"nope", 2}, {"proxy -h", 0}, {"proxy", 2},
		{"proxy -frontend tcp://127.0.0.1:0", 2}, {"proxy -frontend bad -backend tcp://127.0.0.1:0", 1},
		{"proxy -bogus", 2},
		{"gateway -h", 0}, {"gateway", 2}, {"gateway -listen 127.0.0.1:0", 2}, {"gateway -to tcp://127.0.0.1:1", 2},
		{"gateway -listen 127.0.0.1:0 -to tcp://127.0.0.1:1 extra", 2}, {"gateway -listen 127.0.0.1:0 -to tcp://127.0.0.1:1 -max-body -1", 2},
		{"gateway -listen 127.0.0.1:0 -to nonsense", 1}, {"gateway -listen 256.0.0.1:0 -to tcp://127.0.0.1:1", 1},
		{"gateway -listen 127.0.0.1:0 -to tcp://127.0.0.1:1 -curve-public x -curve-secret y", 2},
		{"sidecar -h", 0}, {"sidecar", 2}, {"sidecar -listen tcp://127.0.0.1:0", 2}, {"sidecar -listen tcp://127.0.0.1:0 -to 127.0.0.1:8081", 2},
		{"sidecar -listen nonsense -to http://127.0.0.1:1", 1}, {"sidecar -listen tcp://127.0.0.1:0 -to http://127.0.0.1:1 -curve-server-secret short", 1},
		{"sidecar -listen tcp://127.0.0.1:0 -to http://127.0.0.1:1 -metrics 256.0.0.1:0", 1},
		{"call -h", 0}, {"call", 2}, {"keygen -h", 0}, {"keygen -format x", 2},
	} {
		if tc.args == "" {
			var b bytes.Buffer
			if got := run(nil, &b, &b); got != tc.code || !strings.Contains(b.String(), "usage") {
				t.Errorf("no args: %d %q", got, b.String())
			}
			continue
		}
		var b bytes.Buffer
		if got := run(strings.Fields(tc.args), &b, &b); got != tc.code {
			t.Errorf("%q: exit %d, want %d (%s)", tc.args, got, tc.code, b.String())
		}
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitAccept waits until addr accepts TCP connections.
func waitAccept(t *testing.T, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept within %v: %v", addr, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestProxyCommand: the proxy binds both ports within a second, survives
// bare TCP connects that never greet, serves a server that connects and a
// client, counts them on -metrics, restarts on the same ports right after
// kill -9, and exits 0 on SIGTERM.
func TestProxyCommand(t *testing.T) {
	front, back := freePort(t), freePort(t)
	metricsAddr := freePort(t)
	args := []string{"proxy", "-frontend", "tcp://" + front, "-backend", "tcp://" + back, "-heartbeat", "200ms", "-metrics", metricsAddr}
	cmd, out, done := command(t, args...)
	waitAccept(t, front, time.Second)
	waitAccept(t, back, time.Second)

	// Health probes: connections that never greet.
	for _, addr := range []string{front, back} {
		for i := 0; i < 5; i++ {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
	}

	l, err := zmqhttp.Listen(">tcp://"+back, zmqhttp.WithHeartbeat(200*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.Host)
	})}
	go srv.Serve(l)
	defer srv.Close()
	tr, err := zmqhttp.NewTransport("tcp://"+front, zmqhttp.WithHeartbeat(200*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	c := &http.Client{Transport: tr}
	get := func(within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "hello svc" {
			return fmt.Errorf("body %q", b)
		}
		return nil
	}
	if err := get(5 * time.Second); err != nil {
		t.Fatalf("through the proxy: %v\n%s", err, out)
	}

	// Its metrics count the request and the server.
	waitAccept(t, metricsAddr, time.Second)
	page := metricsPage(t, "http://"+metricsAddr+"/metrics")
	if page["zmqhttp_proxy_requests_total"] != "1" || page["zmqhttp_proxy_servers"] != "1" || page["zmqhttp_proxy_in_flight"] != "0" {
		t.Errorf("proxy metrics: %v", page)
	}

	// kill -9, then the same ports at once.
	cmd.Process.Kill()
	<-done
	start := time.Now()
	cmd, out, done = command(t, args...)
	waitAccept(t, front, time.Second)
	if err := get(3 * time.Second); err != nil {
		t.Fatalf("after kill -9 and restart: %v\n%s", err, out)
	}
	t.Logf("served %v after the restart", time.Since(start).Round(time.Millisecond))

	cmd.Process.Signal(syscall.SIGTERM)
	if code := exitCode(t, done, cmd); code != 0 {
		t.Errorf("exit %d after SIGTERM\n%s", code, out)
	}
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }
