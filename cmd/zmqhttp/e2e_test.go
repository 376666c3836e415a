package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const python = "/usr/bin/python3"

// pyServer is Python's http.server serving a directory (GET and HEAD, 404
// for a missing file: the standard library's own code) plus a POST that
// echoes its body, which http.server lacks. It prints its port.
const pyServer = `
import http.server, socketserver, sys, hashlib

class Handler(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.send_response(200 if self.path == "/echo" else 201)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Body-Sha256", hashlib.sha256(body).hexdigest())
        self.send_header("X-Request-Content-Length", self.headers.get("Content-Length", "none"))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    allow_reuse_address = True

def handler(*args, **kw):
    return Handler(*args, directory=sys.argv[1], **kw)

with Server(("127.0.0.1", 0), handler) as s:
    print(s.server_address[1], flush=True)
    s.serve_forever()
`

// proc is a child process whose stderr is collected.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

// start runs name with args; it is killed at cleanup if still running.
func start(t *testing.T, stdout io.Writer, name string, args ...string) *proc {
	t.Helper()
	return startWith(t, nil, stdout, name, args...)
}

// startEnv runs name with args and env added to the environment, stdout
// discarded.
func startEnv(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	return startWith(t, env, nil, name, args...)
}

func startWith(t *testing.T, env []string, stdout io.Writer, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(name, args...), stderr: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = stdout
	p.cmd.Stderr = p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", filepath.Base(name)+" "+args[0], p.stderr)
		}
	})
	return p
}

// waitFor waits until the process's stderr matches re and returns the
// first submatch.
func (p *proc) waitFor(t *testing.T, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := rx.FindStringSubmatch(p.stderr.String()); m != nil {
			return m[1]
		}
		select {
		case err := <-p.done:
			t.Fatalf("%v exited (%v) before printing %q:\n%s", p.cmd.Args, err, re, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("%v did not print %q within 10s:\n%s", p.cmd.Args, re, p.stderr)
	return ""
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop(t *testing.T) int {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait(t)
}

// wait waits for the process to exit and returns the exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
		p.done <- nil // for cleanup
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(10 * time.Second):
		t.Fatalf("%v did not exit within 10s", p.cmd.Args)
		return -1
	}
}

var (
	buildOnce sync.Once
	builtBin  string // the built command, shared by the tests that run it
	buildErr  error
	buildDir  string // removed by TestMain
)

// buildCommand builds the command once per test binary, into a temporary
// directory that TestMain removes.
func buildCommand(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the command with")
	}
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "zmqhttp-cmd-test-"); buildErr != nil {
			return
		}
		bin := filepath.Join(buildDir, "zmqhttp")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		builtBin = bin
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// hopByHop are the headers a proxy drops (RFC 9110 7.6.1), and Date,
// which differs by the second between two responses.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Date"}

// exchange is one response, normalised for comparison.
type exchange struct {
	status int
	header http.Header
	body   []byte
}

func do(t *testing.T, method, url string, body []byte) exchange {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, url, err)
	}
	if resp.Header.Get("Date") == "" {
		t.Errorf("%s %s: no Date", method, url)
	}
	for _, h := range hopByHop {
		resp.Header.Del(h)
	}
	return exchange{resp.StatusCode, resp.Header, b}
}

// TestMigrationEndToEnd runs the README's migration: a Python http.server
// (with an echoing POST) behind "zmqhttp sidecar", "zmqhttp gateway" in
// front, both as built commands. Through the gateway, a GET of a small and
// of a 3 MiB file, a POST of 10 MiB and a 404 answer exactly as Python does
// directly (status, headers but hop-by-hop ones and Date, body; the POST
// reaches Python with its Content-Length); "zmqhttp call" against the
// sidecar prints the same bodies and, with -i, the same status line;
// /metrics on both counts exactly the requests made; both exit 0 on SIGTERM.
func TestMigrationEndToEnd(t *testing.T) {
	if _, err := os.Stat(python); err != nil {
		t.Skipf("%s not found", python)
	}
	bin := buildCommand(t)
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	os.Mkdir(www, 0o755)
	os.WriteFile(filepath.Join(www, "hello.txt"), []byte("hello from python\n"), 0o644)
	big := make([]byte, 3<<20)
	rand.Read(big)
	os.WriteFile(filepath.Join(www, "big.bin"), big, 0o644)
	post := make([]byte, 10<<20)
	rand.Read(post)
	postFile := filepath.Join(dir, "post.bin")
	os.WriteFile(postFile, post, 0o644)
	script := filepath.Join(dir, "server.py")
	os.WriteFile(script, []byte(pyServer), 0o644)

	pr, pw := io.Pipe()
	start(t, pw, python, script, www)
	port, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	direct := "http://127.0.0.1:" + strings.TrimSpace(port)

	sidecar := start(t, nil, bin, "sidecar", "-listen", "tcp://127.0.0.1:0", "-to", direct, "-metrics", "127.0.0.1:0")
	endpoint := sidecar.waitFor(t, `listening on (tcp://\S+),`)
	sidecarMetrics := sidecar.waitFor(t, `metrics on (http://\S+)`)
	gateway := start(t, nil, bin, "gateway", "-listen", "127.0.0.1:0", "-to", endpoint, "-metrics", "127.0.0.1:0")
	gw := gateway.waitFor(t, `listening on (http://\S+),`)
	gatewayMetrics := gateway.waitFor(t, `metrics on (http://\S+)`)

	cases := []struct {
		method, path string
		body         []byte
		status       int
	}{
		{"GET", "/hello.txt", nil, 200},
		{"GET", "/big.bin", nil, 200},
		{"POST", "/echo", post, 200},
		{"GET", "/missing", nil, 404},
	}
	for _, c := range cases {
		want := do(t, c.method, direct+c.path, c.body)
		got := do(t, c.method, gw+c.path, c.body)
		if want.status != c.status {
			t.Fatalf("%s %s: Python answered %d, want %d", c.method, c.path, want.status, c.status)
		}
		if got.status != want.status {
			t.Errorf("%s %s: gateway %d, Python %d", c.method, c.path, got.status, want.status)
		}
		if !equalHeaders(got.header, want.header) {
			t.Errorf("%s %s: headers differ:\ngateway %v\nPython  %v", c.method, c.path, got.header, want.header)
		}
		if !bytes.Equal(got.body, want.body) {
			t.Errorf("%s %s: bodies differ: gateway %d bytes, Python %d", c.method, c.path, len(got.body), len(want.body))
		}
		if c.method == "POST" && got.header.Get("X-Request-Content-Length") != strconv.Itoa(len(c.body)) {
			t.Errorf("POST reached Python with Content-Length %q, want %d", got.header.Get("X-Request-Content-Length"), len(c.body))
		}
	}

	// zmqhttp call against the sidecar.
	callOut := func(args ...string) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append([]string{"call"}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("zmqhttp call %v: %v\n%s", args, err, stderr.String())
		}
		return out
	}
	if got := callOut(endpoint, "/hello.txt"); string(got) != "hello from python\n" {
		t.Errorf("call /hello.txt printed %q", got)
	}
	if got := callOut(endpoint, "/big.bin"); !bytes.Equal(got, big) {
		t.Errorf("call /big.bin printed %d bytes, want the file's %d", len(got), len(big))
	}
	if got := callOut("-d", "@"+postFile, endpoint, "/echo"); !bytes.Equal(got, post) {
		t.Errorf("call -d @post.bin /echo printed %d bytes, want the %d sent", len(got), len(post))
	}
	head := callOut("-i", endpoint, "/missing")
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 404 Not Found\r\n")) || !bytes.Contains(head, []byte("\r\nServer: SimpleHTTP/")) ||
		!bytes.Contains(head, []byte("\r\n\r\n<!DOCTYPE HTML>")) {
		t.Errorf("call -i /missing printed:\n%s", head)
	}
	const calls = 4

	// The counts: 3 answered 200 and 1 404 by the gateway; the sidecar got
	// those and the calls.
	page := metricsPage(t, gatewayMetrics)
	for sample, want := range map[string]string{
		`zmqhttp_gateway_requests_total{code="200"}`: "3",
		`zmqhttp_gateway_requests_total{code="404"}`: "1",
		`zmqhttp_gateway_in_flight`:                  "0",
		`zmqhttp_transport_pending`:                  "0",
		`zmqhttp_transport_connects_total`:           "1",
		`zmqhttp_transport_requests_total`:           "4",
	} {
		if got := page[sample]; got != want {
			t.Errorf("gateway %s = %q, want %s", sample, got, want)
		}
	}
	page = metricsPage(t, sidecarMetrics)
	for sample, want := range map[string]string{
		`zmqhttp_listener_requests_total`:            strconv.Itoa(len(cases) + calls),
		`zmqhttp_sidecar_requests_total{code="200"}`: strconv.Itoa(3 + 3),
		`zmqhttp_sidecar_requests_total{code="404"}`: strconv.Itoa(1 + 1),
		`zmqhttp_listener_in_flight`:                 "0",
	} {
		if got := page[sample]; got != want {
			t.Errorf("sidecar %s = %q, want %s", sample, got, want)
		}
	}

	if code := gateway.stop(t); code != 0 {
		t.Errorf("gateway exited %d after SIGTERM", code)
	}
	if code := sidecar.stop(t); code != 0 {
		t.Errorf("sidecar exited %d after SIGTERM", code)
	}
}

// equalHeaders compares two headers, names and values in order.
func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, va := range a {
		if !slices.Equal(va, b[k]) {
			return false
		}
	}
	return true
}
