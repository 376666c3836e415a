package zmqhttp

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
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
)

func TestZ85(t *testing.T) {
	// The test vector of ZeroMQ RFC 32.
	b, _ := hex.DecodeString("864FD26FB559F75B")
	if got := z85Encode(b); got != "HelloWorld" {
		t.Errorf("z85Encode = %q, want HelloWorld", got)
	}
	back, err := z85Decode("HelloWorld")
	if err != nil || hex.EncodeToString(back) != "864fd26fb559f75b" {
		t.Errorf("z85Decode = %x, %v", back, err)
	}
	for _, bad := range []string{"Hell", "Hell\"World", "%%%%%"} {
		if _, err := z85Decode(bad); err == nil {
			t.Errorf("z85Decode(%q) accepted", bad)
		}
	}
	pub, sec, err := NewCurveKeyPair()
	if err != nil || len(pub) != 40 || len(sec) != 40 || pub == sec {
		t.Fatalf("NewCurveKeyPair = %q, %q, %v", pub, sec, err)
	}
	if _, err := Listen("tcp://127.0.0.1:0", WithCurveServer(sec[:39]+"\"")); err == nil || !strings.Contains(err.Error(), "server secret key") {
		t.Errorf("Listen with a malformed key: %v", err)
	}
	spub, _, _ := NewCurveKeyPair()
	if _, err := NewTransport("tcp://127.0.0.1:1", WithCurveClient(spub, spub, sec)); err == nil || !strings.Contains(err.Error(), "not the secret key's") {
		t.Errorf("NewTransport with a public key not the secret's: %v", err)
	}
}

// curveServer serves a handler that reports the request's path over CURVE.
func curveServer(t *testing.T, opts ...Option) (ep, public string) {
	public, secret, err := NewCurveKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if p, ok := PeerFromContext(r.Context()); !ok || p.Mechanism != "CURVE" || len(p.PublicKey) != 40 || p.Addr == nil {
			http.Error(w, fmt.Sprintf("PeerFromContext: %+v %v", p, ok), 500)
			return
		}
		fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.Path, len(body))
	}), append([]Option{WithCurveServer(secret)}, opts...)...)
	return ts.L.Endpoint(), public
}

func TestCurveGoToGo(t *testing.T) {
	var mu sync.Mutex
	var seen []Peer
	ep, spub := curveServer(t, WithAuthorizer(func(p Peer) error {
		mu.Lock()
		seen = append(seen, p)
		mu.Unlock()
		return nil
	}))
	cpub, csec, _ := NewCurveKeyPair()
	c, _ := newClient(t, ep, WithCurveClient(spub, cpub, csec))
	big := strings.Repeat("x", 300<<10) // chunks, long frames
	for _, body := range []string{"", "small", big} {
		resp, err := c.Post("http://svc/p", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("POST /p %d", len(body)); string(got) != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0].Mechanism != "CURVE" || seen[0].PublicKey != cpub || seen[0].Addr == nil {
		t.Errorf("authorizer saw %+v, want one CURVE peer with key %s", seen, cpub)
	}
}

// TestCurveRefused: a client the authorizer refuses, a NULL client of a
// CURVE server and a CURVE client of a NULL server fail at once with a
// clear error; a client given the wrong server key fails by its deadline.
func TestCurveRefused(t *testing.T) {
	ep, spub := curveServer(t, WithAuthorizer(func(p Peer) error { return errors.New("not on the list") }))
	cpub, csec, _ := NewCurveKeyPair()
	nullEP := startServer(t, "tcp", http.NotFoundHandler()).L.Endpoint()
	otherPub, _, _ := NewCurveKeyPair()
	cases := []struct {
		name, ep string
		opts     []Option
		want     string
		within   time.Duration
	}{
		{"refused", ep, []Option{WithCurveClient(spub, cpub, csec)}, "not on the list", 2 * time.Second},
		{"null client", ep, nil, "different security mechanisms", 2 * time.Second},
		{"curve client", nullEP, []Option{WithCurveClient(spub, cpub, csec)}, "different security mechanisms", 2 * time.Second},
		{"wrong server key", ep, []Option{WithCurveClient(otherPub, cpub, csec)}, "deadline", 3 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newClient(t, tc.ep, tc.opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
			start := time.Now()
			_, err := c.Do(req)
			if err == nil || !strings.Contains(err.Error(), tc.want) || time.Since(start) > tc.within {
				t.Errorf("after %v: %v; want an error saying %q within %v", time.Since(start), err, tc.want, tc.within)
			}
		})
	}
}

// pyCurve runs peers/python/curve_peer.py.
func pyCurve(t *testing.T, args ...string) *exec.Cmd {
	pyCheck(t)
	cmd := exec.Command(pyInterpreter, append([]string{"peers/python/curve_peer.py"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func pyKeyPair(t *testing.T) (string, string) {
	out, err := pyCurve(t, "keypair").Output()
	f := strings.Fields(string(out))
	if err != nil || len(f) != 2 {
		t.Fatalf("python keypair: %q %v", out, err)
	}
	return f[0], f[1]
}

// TestCurveLibzmqClient: libzmq CURVE clients (keys from libzmq and from
// us, with and without ZMTP heartbeats inside the session) against a Go
// CURVE Listener.
func TestCurveLibzmqClient(t *testing.T) {
	var mu sync.Mutex
	var keys []string
	ep, spub := curveServer(t, WithAuthorizer(func(p Peer) error {
		mu.Lock()
		keys = append(keys, p.PublicKey)
		mu.Unlock()
		return nil
	}))
	pypub, pysec := pyKeyPair(t)
	gopub, gosec, _ := NewCurveKeyPair()
	for _, tc := range []struct {
		name     string
		pub, sec string
		extra    []string
	}{
		{"libzmq keys", pypub, pysec, nil},
		{"our keys, heartbeats", gopub, gosec, []string{"hb"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := pyCurve(t, append([]string{"client", ep, spub, tc.pub, tc.sec}, tc.extra...)...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("python CURVE client: %v\n%s\n%s", err, out, stderr.String())
			}
			var r pyReply
			if err := json.Unmarshal(out, &r); err != nil || r.Status != 200 || r.Body != "GET /curve 0" {
				t.Fatalf("reply %s (%v)", out, err)
			}
			// One handshake per client: a libzmq client whose PINGs got
			// no PONG would have dropped the session (after 400 ms) and
			// come back with a second one.
			mu.Lock()
			n := 0
			for _, k := range keys {
				if k == tc.pub {
					n++
				}
			}
			mu.Unlock()
			if n != 1 {
				t.Errorf("authorizer saw key %s %d times, want once", tc.pub, n)
			}
		})
	}
}

// TestCurveLibzmqServer: the Go Transport over CURVE to a libzmq REP
// worker with a key pair made by libzmq.
func TestCurveLibzmqServer(t *testing.T) {
	spub, ssec := pyKeyPair(t)
	cmd := pyCurve(t, "rep", "tcp://127.0.0.1:*", ssec)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "READY ") {
		t.Fatalf("python REP did not start: %q", sc.Text())
	}
	ep := strings.TrimPrefix(sc.Text(), "READY ")
	cpub, csec, _ := NewCurveKeyPair()
	c, _ := newClient(t, ep, WithCurveClient(spub, cpub, csec))
	for i := 0; i < 3; i++ {
		resp, err := c.Post("http://svc/echo", "text/plain", strings.NewReader(strings.Repeat("y", 1000*i)))
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			Method string `json:"method"`
			Body   string `json:"body"`
		}
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil || doc.Method != "POST" || len(doc.Body) != 1000*i {
			t.Fatalf("reply %+v (%v)", doc, err)
		}
	}
}

// plainServer serves over PLAIN, accepting user/pass only.
func plainServer(t *testing.T, user, pass string) string {
	return startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := PeerFromContext(r.Context())
		fmt.Fprintf(w, "%s %s %v", p.Mechanism, p.Username, ok)
	}), WithPlainServer(), WithAuthorizer(func(p Peer) error {
		if p.Mechanism != "PLAIN" || p.Username != user || p.Password != pass || p.Addr == nil {
			return errors.New("bad credentials")
		}
		return nil
	})).L.Endpoint()
}

func TestPlain(t *testing.T) {
	if _, err := Listen("tcp://127.0.0.1:0", WithPlainServer()); err == nil || !strings.Contains(err.Error(), "WithAuthorizer") {
		t.Errorf("WithPlainServer without an authorizer: %v", err)
	}
	ep := plainServer(t, "alice", "s3cret")
	for _, tc := range []struct {
		name, user, pass, want string
	}{
		{"accepted", "alice", "s3cret", "PLAIN alice true"},
		{"refused", "alice", "wrong", "refused the credentials: bad credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newClient(t, ep, WithPlainClient(tc.user, tc.pass))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
			start := time.Now()
			resp, err := c.Do(req)
			var got string
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got = string(b)
			} else {
				got = err.Error()
			}
			if !strings.Contains(got, tc.want) || time.Since(start) > 2*time.Second {
				t.Errorf("after %v: %q, want %q", time.Since(start), got, tc.want)
			}
		})
	}
}

// TestPlainLibzmq: libzmq PLAIN clients against a Go PLAIN Listener, and
// the Go Transport against a libzmq PLAIN REP worker whose ZAP handler
// accepts one user (libzmq 4.3.4 refuses with a malformed ERROR).
func TestPlainLibzmq(t *testing.T) {
	ep := plainServer(t, "bob", "pw")
	out, err := pyCurve(t, "plain-client", ep, "bob", "pw").Output()
	var r pyReply
	if err != nil || json.Unmarshal(out, &r) != nil || r.Body != "PLAIN bob true" {
		t.Errorf("libzmq PLAIN client: %q %v", out, err)
	}
	if out, err := pyCurve(t, "plain-client", ep, "bob", "nope").Output(); err == nil {
		t.Errorf("libzmq PLAIN client with a bad password got %q", out)
	}

	cmd := pyCurve(t, "plain-rep", "tcp://127.0.0.1:*", "carol", "pw2")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "READY ") {
		t.Fatalf("python PLAIN REP did not start: %q", sc.Text())
	}
	rep := strings.TrimPrefix(sc.Text(), "READY ")
	good, _ := newClient(t, rep, WithPlainClient("carol", "pw2"))
	if resp, err := good.Get("http://svc/plain"); err != nil {
		t.Errorf("to libzmq PLAIN with good credentials: %v", err)
	} else {
		resp.Body.Close()
	}
	bad, _ := newClient(t, rep, WithPlainClient("carol", "nope"))
	start := time.Now()
	_, err = bad.Get("http://svc/plain")
	if err == nil || !strings.Contains(err.Error(), "refused") || time.Since(start) > 2*time.Second {
		t.Errorf("to libzmq PLAIN with a bad password, after %v: %v; want a refusal within 2s", time.Since(start), err)
	}
}

// TestCurveListenerDropsBadGreetings: a connection whose greeting names
// another mechanism, or whose CURVE HELLO does not open, is closed at once
// (well within 1 s), and counted.
func TestCurveListenerDropsBadGreetings(t *testing.T) {
	_, ssec, _ := NewCurveKeyPair()
	ts := startServer(t, "tcp", http.NotFoundHandler(), WithCurveServer(ssec))
	nullGreeting := curveGreeting()
	copy(nullGreeting[12:32], "NULL\x00")
	badHello := append(curveGreeting(), cmdFrame("HELLO", append([]byte{1, 0}, make([]byte, 192)...))...)
	for name, send := range map[string][]byte{"NULL greeting": nullGreeting, "CURVE HELLO that does not open": badHello} {
		t.Run(name, func(t *testing.T) {
			before := ts.L.Stats().HandshakeFailed
			nc, err := net.Dial("tcp", strings.TrimPrefix(ts.L.Endpoint(), "tcp://"))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.Write(send)
			nc.SetReadDeadline(time.Now().Add(time.Second))
			start := time.Now()
			_, err = io.Copy(io.Discard, nc) // until the server closes
			if err != nil {
				t.Errorf("not closed within 1s (%v)", err)
			}
			t.Logf("closed after %v", time.Since(start))
			waitFor(t, time.Second, "handshake failure counted", func() bool { return ts.L.Stats().HandshakeFailed > before })
		})
	}
}

// tamperRelay relays TCP between a client and addr; once armed, it flips a
// byte in the next bytes the server sends.
type tamperRelay struct {
	ln    net.Listener
	armed atomic.Bool
}

func newTamperRelay(t *testing.T, addr string) *tamperRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &tamperRelay{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := s.Read(buf)
					if n > 0 && n > 20 && r.armed.CompareAndSwap(true, false) {
						buf[n-1] ^= 0x01 // inside a MESSAGE's box
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return r
}

// TestCurveTamperedOnTheWire: a reply altered on the wire ends the
// connection; the POST in flight fails as lost (it ran), never with the
// altered bytes, and is not run again.
func TestCurveTamperedOnTheWire(t *testing.T) {
	spub, ssec, _ := NewCurveKeyPair()
	var runs atomic.Int32
	ts := startServer(t, "tcp", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, strings.Repeat("reply ", 100))
	}), WithCurveServer(ssec))
	relay := newTamperRelay(t, strings.TrimPrefix(ts.L.Endpoint(), "tcp://"))
	cpub, csec, _ := NewCurveKeyPair()
	c, _ := newClient(t, "tcp://"+relay.ln.Addr().String(), WithCurveClient(spub, cpub, csec))
	warm, err := c.Get("http://svc/warm") // the session is up
	if err != nil {
		t.Fatal(err)
	}
	warm.Body.Close()
	runs.Store(0)
	go func() { time.Sleep(100 * time.Millisecond); relay.armed.Store(true) }()
	start := time.Now()
	resp, err := c.Post("http://svc/p", "text/plain", strings.NewReader("x"))
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("the POST succeeded with %q, through a tampered reply", b)
	}
	if !errors.Is(err, ErrConnectionLost) || time.Since(start) > 2*time.Second {
		t.Errorf("after %v: %v; want ErrConnectionLost within 2s", time.Since(start), err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := runs.Load(); n != 1 {
		t.Errorf("the POST ran %d times, want once", n)
	}
}
