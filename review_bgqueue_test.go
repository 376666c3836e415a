package zmqhttp

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// A caller whose context can never end (context.Background(), as
// http.NewRequest and http.Client without Timeout give) passes stop == nil
// to link.send, which then never waits: the client's send queue has no
// byte bound for such callers.
func TestReview2BackgroundCtxBypassesQueueBound(t *testing.T) {
	for _, bg := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		hold := make(chan net.Conn, 1)
		go func() {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			if _, _, err := handshake(nc, zmq4.Router, true, 5*time.Second); err != nil {
				nc.Close()
				return
			}
			hold <- nc // never read again
		}()
		tr, _ := NewTransport("tcp://"+ln.Addr().String(), WithHeartbeat(time.Hour, 3*time.Hour))
		for i := 0; i < 200; i++ { // connected first: no call goes through t.waiting
			tr.mu.Lock()
			up := tr.curLocked() != nil
			tr.mu.Unlock()
			if up {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		body := bytes.Repeat([]byte("x"), 60<<10)
		ctx := context.Background()
		var cancel context.CancelFunc = func() {}
		if !bg {
			ctx, cancel = context.WithCancel(ctx)
		}
		for i := 0; i < 400; i++ { // 24 MiB of whole bodies
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://x/", bytes.NewReader(body))
			go tr.RoundTrip(req)
		}
		time.Sleep(1500 * time.Millisecond)
		tr.mu.Lock()
		cl := tr.curLocked()
		tr.mu.Unlock()
		var q int64
		if cl != nil {
			cl.mu.Lock()
			q = cl.queued
			cl.mu.Unlock()
		}
		t.Logf("background ctx=%v: %.1f MiB queued on the link (bound %d MiB)", bg, float64(q)/(1<<20), linkQueueBytes>>20)
		if bg && q > 2*linkQueueBytes {
			t.Errorf("background ctx: %d bytes queued, bound %d", q, linkQueueBytes)
		}
		cancel()
		tr.Close()
		ln.Close()
		select {
		case nc := <-hold:
			nc.Close()
		default:
		}
	}
}
