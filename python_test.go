package zmqhttp

// Interoperability with the Python peer in peers/python, which was written
// from PROTOCOL.md alone and runs on libzmq (pyzmq): a Python client
// against a Go Listener, and the Go Transport against a Python REP worker,
// over tcp and ipc.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	pyInterpreter = "/usr/bin/python3" // Debian's, where python3-zmq and python3-msgpack live
	pyTimeout     = 20 * time.Second   // bound on every subprocess
)

var pyScript = filepath.Join("peers", "python", "zmqhttp_peer.py")

// pyCheck skips t unless Debian's python3 with pyzmq and msgpack is there.
func pyCheck(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(pyInterpreter); err != nil {
		pySkip(t, "%s not found: apt-get install python3-zmq python3-msgpack", pyInterpreter)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pyTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, pyInterpreter, "-c", "import zmq, msgpack").CombinedOutput(); err != nil {
		pySkip(t, "python modules missing (%v: %s): apt-get install python3-zmq python3-msgpack", err, strings.TrimSpace(string(out)))
	}
}

// pyEndpoint returns a fresh endpoint of network to bind: port * or 0 for
// tcp, a socket file in t.TempDir() for ipc.
func pyEndpoint(t *testing.T, network, tcpAny string) string {
	if network == "ipc" {
		return "ipc://" + filepath.Join(t.TempDir(), "s.sock")
	}
	return "tcp://127.0.0.1:" + tcpAny
}

// pyReply is what the Python client prints.
type pyReply struct {
	ID            uint64      `json:"id"`
	Status        int         `json:"status"`
	Reason        string      `json:"reason"`
	Headers       [][2]string `json:"headers"`
	Trailers      [][2]string `json:"trailers"`
	ContentLength int64       `json:"content_length"`
	Body          string      `json:"body"`
	Error         *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (r *pyReply) header(name string) []string {
	var vs []string
	for _, kv := range r.Headers {
		if kv[0] == name {
			vs = append(vs, kv[1])
		}
	}
	return vs
}

// pyClient runs the Python client with args and decodes its JSON output.
func pyClient(t *testing.T, args ...string) pyReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, pyInterpreter, append([]string{pyScript, "client", "--timeout", "10"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) { // 1: an error envelope
		t.Fatalf("python client %v: %v\nstdout: %s\nstderr: %s", args, err, out, stderr.String())
	}
	var r pyReply
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("python client output %q: %v\nstderr: %s", out, err, stderr.String())
	}
	return r
}

func TestPythonClientToGoListener(t *testing.T) {
	pyCheck(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/hello/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h := w.Header()
		h.Set("X-Method", r.Method)
		h.Set("X-URI", r.RequestURI)
		h.Set("X-Host", r.Host)
		h.Set("X-Proto", r.Proto)
		h.Set("X-Multi-Seen", strings.Join(r.Header.Values("X-Multi"), "|"))
		h.Set("X-Lower-Seen", r.Header.Get("X-Lower-Case"))
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Add("Set-Cookie", "a=1")
		h.Add("Set-Cookie", "b=2")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "hello %s %q", r.Method, body)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part one, ")
		w.(http.Flusher).Flush() // forces a chunked response
		io.WriteString(w, "part two")
	})
	mux.HandleFunc("/panic", func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler) // the server closes the connection: no response
	})

	for _, network := range []string{"tcp", "ipc"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			l, err := Listen(pyEndpoint(t, network, "0"))
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(l) }()
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := srv.Shutdown(ctx); err != nil {
					t.Errorf("Shutdown: %v", err)
				}
				if err := <-served; !errors.Is(err, http.ErrServerClosed) {
					t.Errorf("Serve returned %v", err)
				}
			})
			ep := l.Endpoint()

			// GET over DEALER: escaping, Host, repeated and lower-case headers.
			r := pyClient(t, "--endpoint", ep, "--host", "py.example",
				"-H", "X-Multi: one", "-H", "X-Multi: two", "-H", "x-lower-case: yes",
				"/hello/a%2Fb?x=1&y=%20")
			if r.Error != nil || r.Status != http.StatusCreated || r.Reason != "Created" {
				t.Fatalf("GET: %+v", r)
			}
			want := map[string]string{
				"X-Method": "GET", "X-Uri": "/hello/a%2Fb?x=1&y=%20", "X-Host": "py.example",
				"X-Proto": "HTTP/1.1", "X-Multi-Seen": "one|two", "X-Lower-Seen": "yes",
				"Content-Type": "text/plain; charset=utf-8",
			}
			for name, v := range want {
				if got := r.header(name); len(got) != 1 || got[0] != v {
					t.Errorf("GET: header %s = %q, want [%q]", name, got, v)
				}
			}
			if got := r.header("Set-Cookie"); strings.Join(got, ",") != "a=1,b=2" {
				t.Errorf("GET: Set-Cookie = %q, want [a=1 b=2] in order", got)
			}
			if r.Body != `hello GET ""` || r.ContentLength != int64(len(r.Body)) {
				t.Errorf("GET: body %q content_length %d", r.Body, r.ContentLength)
			}

			// POST with a body over REQ.
			r = pyClient(t, "--endpoint", ep, "--socket", "req", "--method", "POST",
				"--host", "py.example", "-H", "Content-Type: text/plain", "--data", "ping from python", "/hello/post")
			if r.Error != nil || r.Status != http.StatusCreated {
				t.Fatalf("POST: %+v", r)
			}
			if r.Body != `hello POST "ping from python"` || r.ContentLength != int64(len(r.Body)) {
				t.Errorf("POST: body %q content_length %d", r.Body, r.ContentLength)
			}

			// A chunked response: content_length -1, body de-chunked.
			r = pyClient(t, "--endpoint", ep, "/stream")
			if r.Error != nil || r.Status != http.StatusOK || r.ContentLength != -1 || r.Body != "part one, part two" {
				t.Errorf("stream: %+v", r)
			}
			if len(r.header("Transfer-Encoding")) != 0 {
				t.Errorf("stream: hop-by-hop Transfer-Encoding sent: %q", r.Headers)
			}

			// No response from the handler: an error envelope, code 500.
			r = pyClient(t, "--endpoint", ep, "/panic")
			if r.Error == nil || r.Error.Code != 500 {
				t.Errorf("panic: %+v, want error code 500", r)
			}
		})
	}
}

// pyREP starts the Python REP worker bound at ep and returns the endpoint
// it reports. Cleanup stops it with SIGTERM (SIGKILL after 3s).
func pyREP(t *testing.T, ep string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pyTimeout)
	cmd := exec.CommandContext(ctx, pyInterpreter, pyScript, "rep", "--endpoint", ep)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 3 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	var readerDone sync.WaitGroup
	readerDone.Add(1)
	go func() {
		defer readerDone.Done()
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			ready <- sc.Text()
		}
		io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		cancel() // SIGTERM
		readerDone.Wait()
		err := cmd.Wait()
		if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
			t.Errorf("python REP worker: %v\nstderr: %s", err, stderr.String())
		}
	})
	select {
	case line := <-ready:
		got, ok := strings.CutPrefix(line, "READY ")
		if !ok {
			t.Fatalf("python REP worker said %q", line)
		}
		return got
	case <-time.After(10 * time.Second):
		t.Fatalf("python REP worker not ready after 10s\nstderr: %s", stderr.String())
	}
	return ""
}

// pyEcho is the JSON body the Python echo handler answers with.
type pyEcho struct {
	Method        string      `json:"method"`
	URI           string      `json:"uri"`
	Host          string      `json:"host"`
	Headers       [][2]string `json:"headers"`
	ContentLength int64       `json:"content_length"`
	TimeoutUS     int64       `json:"timeout_us"`
	Body          string      `json:"body"`
}

func (e *pyEcho) header(name string) []string {
	var vs []string
	for _, kv := range e.Headers {
		if kv[0] == name {
			vs = append(vs, kv[1])
		}
	}
	return vs
}

func pyDoEcho(t *testing.T, c *http.Client, req *http.Request) (*http.Response, pyEcho) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ContentLength != int64(len(body)) {
		t.Errorf("ContentLength %d, body of %d bytes", resp.ContentLength, len(body))
	}
	var e pyEcho
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("echo body %q: %v", body, err)
	}
	return resp, e
}

func TestGoTransportToPythonREP(t *testing.T) {
	pyCheck(t)
	for _, network := range []string{"tcp", "ipc"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			ep := pyREP(t, pyEndpoint(t, network, "*"))
			tr, err := NewTransport(ep)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tr.Close() })
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}

			// GET: escaping preserved, Host, a repeated header in order.
			req, _ := http.NewRequest("GET", "http://py.example/a%2Fb?x=1&y=%20", nil)
			req.Header.Add("X-Multi", "one")
			req.Header.Add("X-Multi", "two")
			req.Header.Add("X-Multi", "three")
			resp, e := pyDoEcho(t, c, req)
			if resp.StatusCode != 200 || resp.Header.Get("X-Zmqhttp-Peer") != "python" ||
				resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("GET: %s %v", resp.Status, resp.Header)
			}
			if e.Method != "GET" || e.URI != "/a%2Fb?x=1&y=%20" || e.Host != "py.example" || e.Body != "" || e.ContentLength != 0 {
				t.Errorf("GET echo: %+v", e)
			}
			if got := e.header("X-Multi"); strings.Join(got, ",") != "one,two,three" {
				t.Errorf("GET: X-Multi = %q, want [one two three] in order", got)
			}
			if got := e.header("User-Agent"); len(got) != 1 || got[0] != "Go-http-client/1.1" {
				t.Errorf("GET: User-Agent = %q", got)
			}
			if e.TimeoutUS <= 0 || e.TimeoutUS > 10e6 {
				t.Errorf("GET: timeout %d µs, want in (0, 10s] from the client's deadline", e.TimeoutUS)
			}

			// POST with a body and a Host override.
			req, _ = http.NewRequest("POST", "http://py.example/submit", strings.NewReader("hello from Go"))
			req.Host = "virtual.example"
			req.Header.Set("Content-Type", "text/plain")
			resp, e = pyDoEcho(t, c, req)
			if resp.StatusCode != 200 {
				t.Errorf("POST: %s", resp.Status)
			}
			if e.Method != "POST" || e.URI != "/submit" || e.Host != "virtual.example" ||
				e.Body != "hello from Go" || e.ContentLength != int64(len("hello from Go")) {
				t.Errorf("POST echo: %+v", e)
			}
			if got := e.header("Content-Type"); len(got) != 1 || got[0] != "text/plain" {
				t.Errorf("POST: Content-Type = %q", got)
			}

			// A body a streaming server would get in chunks (300 KiB of
			// unknown length): a REP peer announces no streaming, so it
			// travels whole.
			big := strings.Repeat("z", 300<<10)
			req, _ = http.NewRequest("POST", "http://py.example/big", io.MultiReader(strings.NewReader(big)))
			resp, e = pyDoEcho(t, c, req)
			if resp.StatusCode != 200 || e.Body != big || e.ContentLength != -1 {
				t.Errorf("300 KiB POST of unknown length: %s, body %d bytes, content_length %d", resp.Status, len(e.Body), e.ContentLength)
			}

			// A status chosen by the path, with its standard reason.
			req, _ = http.NewRequest("GET", "http://py.example/status/418", nil)
			resp, _ = pyDoEcho(t, c, req)
			if resp.StatusCode != 418 || resp.Status != "418 I'm a teapot" {
				t.Errorf("status: %q", resp.Status)
			}

			// Requests in flight together: the REP worker answers them
			// in turn and each reply finds its caller by id.
			var wg sync.WaitGroup
			for i := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					uri := fmt.Sprintf("/concurrent/%d", i)
					resp, err := c.Get("http://py.example" + uri)
					if err != nil {
						t.Error(err)
						return
					}
					defer resp.Body.Close()
					var e pyEcho
					if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.URI != uri {
						t.Errorf("%s: echo %+v, %v", uri, e, err)
					}
				}()
			}
			wg.Wait()
		})
	}
}

// pySkip skips the test, or fails it when ZMQHTTP_REQUIRE_PYTHON is set (as
// .ci/run does), so that CI cannot pass without running the interop tests.
func pySkip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("ZMQHTTP_REQUIRE_PYTHON") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
