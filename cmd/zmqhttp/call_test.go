package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zmqhttp/zmqhttp"
)

// echoServer serves, over zmqhttp, a handler that answers with what it got
// as JSON (and /status/404 as 404 with a body); it returns its endpoint.
func echoServer(t *testing.T, opts ...zmqhttp.Option) string {
	t.Helper()
	return echoServerAt(t, "tcp://127.0.0.1:0", opts...)
}

func echoServerAt(t *testing.T, endpoint string, opts ...zmqhttp.Option) string {
	t.Helper()
	l, err := zmqhttp.Listen(endpoint, opts...)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/status/404", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Why", "not here")
		http.Error(w, "nothing here", http.StatusNotFound)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(echoed{Method: r.Method, URI: r.RequestURI, Host: r.Host, Header: r.Header, Body: string(b)})
	})
	srv := &http.Server{Handler: mux, ErrorLog: discardLogger()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Endpoint()
}

type echoed struct {
	Method, URI, Host string
	Header            http.Header
	Body              string
}

// call runs "zmqhttp call args..." in this process.
func call(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = runCall(args, strings.NewReader("from stdin"), &out, &errb)
	return code, out.String(), errb.String()
}

// TestCallFlags: -X sets the method; -d DATA, -d @file and -d @- send a
// body (POST unless -X says otherwise); -H adds headers, repeatable, and
// 'Host: x' sets the Host; a path gets the endpoint's host:port as Host, a
// URL its own host; flags may follow the arguments; the body goes to
// stdout, nothing to stderr.
func TestCallFlags(t *testing.T) {
	t.Parallel()
	ep := echoServer(t)
	file := filepath.Join(t.TempDir(), "body.txt")
	os.WriteFile(file, []byte("from a file"), 0o644)
	for _, tc := range []struct {
		args []string
		want echoed
	}{
		{[]string{ep, "/a?b=c"}, echoed{Method: "GET", URI: "/a?b=c", Host: strings.TrimPrefix(ep, "tcp://")}},
		{[]string{"-X", "DELETE", ep, "http://users/u/1"}, echoed{Method: "DELETE", URI: "/u/1", Host: "users"}},
		{[]string{"-d", "x=1", ep, "/post"}, echoed{Method: "POST", URI: "/post", Host: strings.TrimPrefix(ep, "tcp://"), Body: "x=1"}},
		{[]string{"-X", "PUT", "-d", "@" + file, ep, "/put"}, echoed{Method: "PUT", URI: "/put", Host: strings.TrimPrefix(ep, "tcp://"), Body: "from a file"}},
		{[]string{"-d", "@-", ep, "/in"}, echoed{Method: "POST", URI: "/in", Host: strings.TrimPrefix(ep, "tcp://"), Body: "from stdin"}},
		{[]string{"-H", "X-One: 1", "-H", "X-Two:  two words ", "-H", "X-One: again", "-H", "Host: svc.internal", ep, "/h"},
			echoed{Method: "GET", URI: "/h", Host: "svc.internal", Header: http.Header{"X-One": {"1", "again"}, "X-Two": {"two words"}}}},
		{[]string{ep, "/late", "-X", "PATCH", "-H", "X-Late: yes"}, echoed{Method: "PATCH", URI: "/late", Host: strings.TrimPrefix(ep, "tcp://"), Header: http.Header{"X-Late": {"yes"}}}},
	} {
		code, out, errs := call(tc.args...)
		if code != 0 || errs != "" {
			t.Errorf("%q: exit %d, stderr %q", tc.args, code, errs)
			continue
		}
		var got echoed
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Errorf("%q: stdout %q: %v", tc.args, out, err)
			continue
		}
		if got.Method != tc.want.Method || got.URI != tc.want.URI || got.Host != tc.want.Host || got.Body != tc.want.Body {
			t.Errorf("%q: server got %+v, want %+v", tc.args, got, tc.want)
		}
		for k, v := range tc.want.Header {
			if strings.Join(got.Header[k], "|") != strings.Join(v, "|") {
				t.Errorf("%q: header %s = %q, want %q", tc.args, k, got.Header[k], v)
			}
		}
	}
}

// TestCallInclude: -i prints the status line, the headers (Content-Length
// included) and an empty line, then the body; a 404 is still exit 0.
func TestCallInclude(t *testing.T) {
	t.Parallel()
	ep := echoServer(t)
	code, out, errs := call("-i", ep, "/status/404")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	head, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok || body != "nothing here\n" {
		t.Fatalf("stdout %q", out)
	}
	lines := strings.Split(head, "\r\n")
	if lines[0] != "HTTP/1.1 404 Not Found" {
		t.Errorf("status line %q", lines[0])
	}
	for _, want := range []string{"X-Why: not here", "Content-Length: 13", "Content-Type: text/plain; charset=utf-8"} {
		if !strings.Contains(head, "\r\n"+want) {
			t.Errorf("no %q in the head:\n%s", want, head)
		}
	}
	// Without -i: the body only.
	if code, out, _ := call(ep, "/status/404"); code != 0 || out != "nothing here\n" {
		t.Errorf("without -i: exit %d, stdout %q", code, out)
	}
}

// TestCallExitCodes: 0 on any HTTP response; 1 when no response came
// (nothing listening: the error on stderr, nothing on stdout) or -d names a
// missing file; 2 on usage errors; 0 for -h.
func TestCallExitCodes(t *testing.T) {
	t.Parallel()
	ep := echoServer(t)
	dead := "tcp://" + freePort(t)
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{ep, "/status/404"}, 0, ""},
		{[]string{"-timeout", "300ms", dead, "/"}, 1, "zmqhttp call: zmqhttp: cannot reach the endpoint (not connected: dial " + dead},
		{[]string{"-d", "@/nonexistent/file", ep, "/"}, 1, "zmqhttp call: -d: open /nonexistent/file"},
		{[]string{"tcp://127.0.0.1:99999", "/"}, 1, "zmqhttp call: "},
		{[]string{"-h"}, 0, "usage: zmqhttp call"},
		{[]string{}, 2, "want ENDPOINT and PATH"},
		{[]string{ep}, 2, "want ENDPOINT and PATH"},
		{[]string{ep, "/", "extra"}, 2, "want ENDPOINT and PATH"},
		{[]string{ep, "no-slash"}, 2, "want /path or http://host/path"},
		{[]string{"-H", "NoColon", ep, "/"}, 2, "want 'Name: value'"},
		{[]string{"-bogus", ep, "/"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"-X", "BAD METHOD", ep, "/"}, 2, "invalid method"},
	} {
		code, out, errs := call(tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.stderr) {
			t.Errorf("%q: exit %d, stderr %q; want %d with %q", tc.args, code, errs, tc.code, tc.stderr)
		}
		if code != 0 && out != "" {
			t.Errorf("%q: exit %d with stdout %q", tc.args, code, out)
		}
	}
}

// TestCallIPC: call over ipc sends Host "localhost" for a path, and a
// comma-separated endpoint list works.
func TestCallIPC(t *testing.T) {
	t.Parallel()
	ep := echoServerAt(t, "ipc://"+filepath.Join(t.TempDir(), "s.sock"))
	for _, endpoint := range []string{ep, ep + "," + echoServer(t)} {
		code, out, errs := call("-timeout", "5s", endpoint, "/x")
		var got echoed
		if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.URI != "/x" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", endpoint, code, out, errs)
		}
		if endpoint == ep && got.Host != "localhost" {
			t.Errorf("over ipc: Host %q, want localhost", got.Host)
		}
	}
}
