package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

var keygenText = regexp.MustCompile(`^public: (\S{40})\nsecret: (\S{40})\n$`)

// keygen runs "zmqhttp keygen args..." and returns its stdout.
func keygen(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := runKeygen(args, &out, &errb); code != 0 || errb.Len() > 0 {
		t.Fatalf("keygen %q: exit %d, stderr %q", args, code, errb.String())
	}
	return out.String()
}

// sourceEnv sources env-format output in /bin/sh and returns the values
// of the variables names.
func sourceEnv(t *testing.T, env string, names ...string) []string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "keys.env")
	os.WriteFile(file, []byte(env), 0o600)
	script := ". " + file
	for _, n := range names {
		script += `; printf '%s\n' "$` + n + `"`
	}
	out, err := exec.Command("/bin/sh", "-c", script).Output()
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
}

// TestKeygen: the text format is two lines "public: KEY" and "secret: KEY"
// of 40 characters; "-format env" (client names) and "-format env -server"
// (server names) are shell assignments that /bin/sh sources to the same
// kind of keys; every run makes a new pair; the pairs work with
// WithCurveServer and WithCurveClient, and the server sees the client's
// public key.
func TestKeygen(t *testing.T) {
	t.Parallel()
	m := keygenText.FindStringSubmatch(keygen(t))
	if m == nil {
		t.Fatal("text output does not parse")
	}
	clientPub, clientSec := m[1], m[2]
	if m2 := keygenText.FindStringSubmatch(keygen(t, "-format", "text")); m2 == nil || m2[1] == clientPub || m2[2] == clientSec {
		t.Errorf("a second pair %q is not new", m2)
	}
	server := sourceEnv(t, keygen(t, "-format", "env", "-server"), envServerKey, envServerSecret)
	client2 := sourceEnv(t, keygen(t, "-format", "env"), envPublic, envSecret)
	for _, k := range append(server, client2...) {
		if len(k) != 40 {
			t.Fatalf("sourced key %q: want 40 characters", k)
		}
	}
	serverPub, serverSec := server[0], server[1]

	l, err := zmqhttp.Listen("tcp://127.0.0.1:0", zmqhttp.WithCurveServer(serverSec))
	if err != nil {
		t.Fatalf("WithCurveServer(keygen's secret): %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := zmqhttp.PeerFromContext(r.Context())
		io.WriteString(w, p.Mechanism+" "+p.PublicKey)
	}), ErrorLog: discardLogger()}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	for _, pair := range [][2]string{{clientPub, clientSec}, {client2[0], client2[1]}} {
		tr, err := zmqhttp.NewTransport(l.Endpoint(), zmqhttp.WithCurveClient(serverPub, pair[0], pair[1]))
		if err != nil {
			t.Fatalf("WithCurveClient(keygen's keys): %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatalf("over CURVE: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		tr.Close()
		if string(b) != "CURVE "+pair[0] {
			t.Errorf("the server saw %q, want CURVE %s", b, pair[0])
		}
	}

	// call's CURVE flags against the same server: with the client's pair,
	// and with only the server's key (a fresh pair).
	for _, args := range [][]string{
		{"-curve-server-key", serverPub, "-curve-public", clientPub, "-curve-secret", clientSec},
		{"-curve-server-key", serverPub},
	} {
		code, out, errs := call(append(args, "-timeout", "5s", l.Endpoint(), "/")...)
		if code != 0 || !strings.HasPrefix(out, "CURVE ") || (len(args) > 2 && out != "CURVE "+clientPub) {
			t.Errorf("call %q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	// Half a pair, or a pair without the server's key, is a usage error.
	for _, args := range [][]string{
		{"-curve-server-key", serverPub, "-curve-public", clientPub},
		{"-curve-public", clientPub, "-curve-secret", clientSec},
	} {
		if code, _, errs := call(append(args, l.Endpoint(), "/")...); code != 2 {
			t.Errorf("call %q: exit %d (%s), want 2", args, code, errs)
		}
	}
	// A malformed key fails at NewTransport: exit 1.
	if code, _, errs := call("-curve-server-key", "short", l.Endpoint(), "/"); code != 1 || errs == "" {
		t.Errorf("a malformed key: exit %d (%s), want 1", code, errs)
	}
}

// TestKeygenUsage: -h is 0; an unknown format or an argument is 2.
func TestKeygenUsage(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]int{"-h": 0, "-format xml": 2, "extra": 2, "-bogus": 2} {
		var out, errb bytes.Buffer
		if code := runKeygen(strings.Fields(args), &out, &errb); code != want || out.Len() > 0 {
			t.Errorf("keygen %s: exit %d, stdout %q; want %d", args, code, out.String(), want)
		}
	}
}

// TestCurveSidecarGateway: the built sidecar takes its secret key from
// $ZMQHTTP_CURVE_SERVER_SECRET, the gateway the server's public key from
// $ZMQHTTP_CURVE_SERVER_KEY (keys from "keygen -format env -server"), and a
// request goes through both to an HTTP upstream; a gateway without the key
// is refused (502, saying why) without reaching the upstream.
func TestCurveSidecarGateway(t *testing.T) {
	t.Parallel()
	bin := buildCommand(t)
	keys := sourceEnv(t, keygen(t, "-format", "env", "-server"), envServerKey, envServerSecret)
	hits := make(chan string, 10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits <- r.URL.Path
		io.WriteString(w, "upstream "+r.URL.Path)
	}))
	t.Cleanup(up.Close)

	sidecar := startEnv(t, []string{envServerSecret + "=" + keys[1]}, bin, "sidecar", "-listen", "tcp://127.0.0.1:0", "-to", up.URL)
	endpoint := sidecar.waitFor(t, `listening on (tcp://\S+),`)
	gw := startEnv(t, []string{envServerKey + "=" + keys[0]}, bin, "gateway", "-listen", "127.0.0.1:0", "-to", endpoint, "-timeout", "5s")
	gwURL := gw.waitFor(t, `listening on (http://\S+),`)
	if code, body := get(t, "GET", gwURL+"/secret", nil); code != 200 || body != "upstream /secret" {
		t.Errorf("through CURVE: %d %q", code, body)
	}
	<-hits

	plain := startEnv(t, nil, bin, "gateway", "-listen", "127.0.0.1:0", "-to", endpoint, "-timeout", "5s")
	plainURL := plain.waitFor(t, `listening on (http://\S+),`)
	if code, body := get(t, "GET", plainURL+"/nokey", nil); code != 502 || !strings.Contains(body, "zmqhttp gateway: 502 Bad Gateway: ") {
		t.Errorf("without the key: %d %q", code, body)
	}
	select {
	case p := <-hits:
		t.Errorf("%s reached the upstream without the key", p)
	default:
	}
}
