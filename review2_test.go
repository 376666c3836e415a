package zmqhttp

// Review 2 (proxy, balance, security): tests that prove defects. Each
// fails on the code as reviewed.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// TestReview2ProxyIgnoresSecurityOptions: NewProxy takes WithAuthorizer
// (and WithCurveServer) without complaint and then runs NULL with no
// authorizer on its frontend: a client the authorizer refuses gets its
// request served. NewProxy should fail on options it cannot honour.
func TestReview2ProxyIgnoresSecurityOptions(t *testing.T) {
	t.Parallel()
	refuse := WithAuthorizer(func(Peer) error { return errors.New("nobody may connect") })
	p, err := NewProxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", refuse)
	if err != nil {
		return // refused at construction: fixed
	}
	t.Cleanup(func() { p.Close() })
	startServerAt(t, ">"+backendOf(p), nameHandler("served", 0, nil))
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
	resp, err := c.Do(req)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("NewProxy accepted WithAuthorizer and ignored it: a refused client got %d %q", resp.StatusCode, b)
	}
}

// TestReview2CurveConnRetainsLargeBuffers: after one large MESSAGE, the
// reader side of curveConn keeps both its ciphertext buffer (rbuf) and its
// plaintext buffer (pbuf) at that size for the connection's life (the
// writer side drops buffers over 1 MiB). A peer that sends one large
// message per connection pins about twice the frame limit per connection.
func TestReview2CurveConnRetainsLargeBuffers(t *testing.T) {
	var key [32]byte
	rand.Read(key[:])
	wc := &curveConn{codec: &curveCodec{key: key, sendPrefix: "CurveZMQMESSAGEC", sendNonce: 3}}
	const size = 8 << 20
	frame := appendFrameHeader(nil, 0, size)
	frame = append(frame, make([]byte, size)...)
	v := net.Buffers{frame}
	out := wc.seal(&v)
	var wire bytes.Buffer
	out.WriteTo(&wire)
	wc.sent()

	rc := &curveConn{br: bufio.NewReader(&wire), limit: 64 << 20,
		codec: &curveCodec{key: key, recvPrefix: "CurveZMQMESSAGEC", recvNonce: 2}}
	n, err := io.Copy(io.Discard, io.LimitReader(rc, int64(len(frame))))
	if err != nil || n != int64(len(frame)) {
		t.Fatalf("read %d of %d: %v", n, len(frame), err)
	}
	if kept := cap(rc.rbuf) + cap(rc.pbuf); kept > 2<<20 {
		t.Errorf("curveConn reader keeps %d MiB after an %d MiB message (rbuf %d, pbuf %d)",
			kept>>20, size>>20, cap(rc.rbuf), cap(rc.pbuf))
	}
}

// TestReview2CurveSecretKeyInError: a malformed secret key's error quotes
// five characters of it.
func TestReview2CurveSecretKeyInError(t *testing.T) {
	pub, sec, err := NewCurveKeyPair()
	if err != nil {
		t.Fatal(err)
	}
	_ = pub
	// The first group made out of range (85^5 > 2^32); the rest is the
	// real secret.
	bad := "%%%%%" + sec[5:]
	_, err = Listen("tcp://127.0.0.1:0", WithCurveServer(bad))
	if err == nil {
		t.Fatal("bad key accepted")
	}
	if strings.Contains(err.Error(), "%%%%%") {
		t.Errorf("the error quotes part of the secret key: %v", err)
	}
	bad2 := sec[:35] + "~" + sec[36:]
	_, err = Listen("tcp://127.0.0.1:0", WithCurveServer(bad2))
	if err != nil && strings.Contains(err.Error(), sec[30:35]) {
		t.Errorf("the error quotes part of the secret key: %v", err)
	}
}

// stallingBackend is a server on the proxy's backend that takes requests
// and never answers; kill breaks its connection.
func stallingBackend(t *testing.T, backend string) (got chan string, kill func()) {
	t.Helper()
	got = make(chan string, 16)
	raw, err := dialEndpoint(backend)
	if err != nil {
		t.Fatal(err)
	}
	nc := newLiveConn(raw)
	br, typ, err := handshakeAs(nc, zmq4.Router, []zmq4.SocketType{zmq4.Dealer}, false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l := newLink(nc, br, typ, &stallServer{got: got}, linkConfig{hbInterval: time.Second, hbTimeout: 3 * time.Second, server: true,
		hello: []string{"Workers", "1"}})
	l.start()
	t.Cleanup(func() { l.close(errProxyClosed); l.wait() })
	return got, func() { l.close(errors.New("killed")) }
}

type stallServer struct{ got chan string }

func (d *stallServer) handle(l *link, env *envelope, _ []byte, _ [][]byte) {
	if env.Kind == KindRequest {
		d.got <- env.Method
	}
}
func (d *stallServer) bad(*link, [][]byte, error) {}

// TestReview2ProxyShutdownStrandsResend: a GET in flight when Shutdown
// starts, whose server then dies, is re-queued (routeLocked does not look
// at p.closing) in a queue nobody empties any more: Shutdown waits for it
// until its ctx ends, and the client (no deadline) waits for ever. It
// should be answered not processed like the rest of the queue.
func TestReview2ProxyShutdownStrandsResend(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "")
	got, kill := stallingBackend(t, backendOf(p))
	waitServers(t, p, 1)
	c, _ := newClient(t, frontendOf(p), WithMaxReplays(0))
	res := make(chan error, 1)
	go func() {
		resp, err := c.Get("http://svc/")
		if err == nil {
			resp.Body.Close()
		}
		res <- err
	}()
	<-got
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		shut <- p.Shutdown(ctx)
	}()
	waitFor(t, 5*time.Second, "Shutdown to start", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.closing
	})
	kill()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v (stats %+v): the re-sent GET sits in the queue", err, p.Stats())
	}
	// The GET was returned not processed: the client (no deadline) waits
	// for a server to send it to again, as designed.
	if st := p.Stats(); st.NotProcessed == 0 {
		t.Errorf("the re-sent GET was not answered not-processed: %+v", st)
	}
}

// TestReview2ProxySlowClientUnbounded: the proxy queues every response to
// a client without waiting (front.send with a nil stop): a client that
// sends requests and reads slowly (here not at all) makes the proxy hold
// all their responses, far beyond linkQueueBytes; the Listener instead
// holds the handler (peer.reply waits for room).
func TestReview2ProxySlowClientUnbounded(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "", "", WithHeartbeat(time.Second, time.Minute))
	big := bytes.Repeat([]byte("x"), 1<<20)
	startServerAt(t, ">"+backendOf(p), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1048576")
		w.Write(big)
	}), WithWorkers(8))
	waitServers(t, p, 1)
	nc, err := net.Dial("tcp", p.FrontendAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.(*net.TCPConn).SetReadBuffer(4096)
	if _, _, err := handshake(nc, zmq4.Dealer, false, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriter(nc)
	for id := uint64(1); id <= 64; id++ {
		e := envelope{Version: ProtocolVersion, Kind: KindRequest, ID: id, Method: "GET", URI: "/", Host: "svc"}
		b, err := appendEnvelope(nil, &e)
		if err != nil {
			t.Fatal(err)
		}
		writeFrame(bw, nil, true)
		writeFrame(bw, b, false)
	}
	bw.Flush()
	queued := func() int64 {
		p.mu.Lock()
		defer p.mu.Unlock()
		var n int64
		for f := range p.fronts {
			f.link.mu.Lock()
			n += f.link.queued
			f.link.mu.Unlock()
		}
		return n
	}
	var maxQ int64
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		maxQ = max(maxQ, queued())
		if maxQ > 16<<20 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if maxQ > 4*linkQueueBytes {
		t.Errorf("the proxy holds %d MiB of responses for one client that does not read (linkQueueBytes %d MiB)", maxQ>>20, linkQueueBytes>>20)
	}
}

// TestReview2OneRefusalFailsEveryWaitingCall: with several endpoints, a
// refusal by one of them (here a port where something that is not ZeroMQ
// answers) fails every call waiting for a connection at once, though
// another endpoint comes up a moment later and would serve them. With one
// endpoint failing fast is right; with several it should wait while some
// member has not refused.
func TestReview2OneRefusalFailsEveryWaitingCall(t *testing.T) {
	t.Parallel()
	bad, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bad.Close() })
	go func() {
		for {
			c, err := bad.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			c.Close()
		}
	}()
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goodAddr := hold.Addr().String()
	hold.Close()
	c, _ := newClient(t, "tcp://"+bad.Addr().String()+",tcp://"+goodAddr)
	res := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		res <- err
	}()
	time.Sleep(300 * time.Millisecond)
	startServerAt(t, "tcp://"+goodAddr, nameHandler("good", 0, nil))
	if err := <-res; err != nil {
		t.Fatalf("GET failed although the second endpoint came up within 300 ms: %v", err)
	}
}

// TestReview2CloseWaitsForSilentHandshake: a connection that connects and
// says nothing holds Proxy.Close for the whole handshake timeout (5 s):
// the acceptor does not close the connections whose handshake is in
// progress when done closes, and Close waits for their goroutines
// (p.wg). Listener.Close, checked too, returns at once.
func TestReview2CloseWaitsForSilentHandshake(t *testing.T) {
	t.Parallel()
	p, err := NewProxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", p.FrontendAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	p.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Proxy.Close took %v with one silent connection in its handshake", d)
	}
	l, err := Listen("tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nc2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	time.Sleep(50 * time.Millisecond)
	start = time.Now()
	l.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Listener.Close took %v with one silent connection in its handshake", d)
	}
}

// TestReview2ListenTakesClientSecurityOption: Listen accepts
// WithCurveClient (documented "Transport only") and then serves NULL, in
// clear, to anyone: a mix-up of the two options leaves a server open
// without a word. A security option for the other side should fail Listen
// (and NewTransport) as a bad option value does.
func TestReview2ListenTakesClientSecurityOption(t *testing.T) {
	t.Parallel()
	spub, _, _ := NewCurveKeyPair()
	cpub, csec, _ := NewCurveKeyPair()
	l, err := Listen("tcp://127.0.0.1:0", WithCurveClient(spub, cpub, csec))
	if err != nil {
		return // refused: fixed
	}
	l.Close()
	t.Errorf("Listen accepted WithCurveClient and listens with NULL security")
}
