package zmqhttp

import (
	"bufio"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

type nopHandler struct{}

func (nopHandler) handle(*link, *envelope, []byte, [][]byte) {}
func (nopHandler) bad(*link, [][]byte, error)                {}

// link.send bounds the queue by len(m.b) only: a whole body spliced in
// (outMsg.body, >= 16 KiB) is not counted, so a peer that does not read
// lets any number of large replies pile up without the sender waiting.
func TestReviewSendQueueIgnoresSplicedBodies(t *testing.T) {
	a, b := net.Pipe() // b is never read
	defer b.Close()
	nc := newLiveConn(a)
	l := newLink(nc, bufio.NewReader(nc), zmq4.Dealer, nopHandler{}, linkConfig{hbInterval: time.Hour, hbTimeout: 3 * time.Hour, server: true})
	l.start()
	defer func() { l.close(errLinkFinished); l.wait() }()
	body := make([]byte, 1<<20)
	queued := 0
	for i := 0; i < 200; i++ {
		env, _ := appendEnvelope(nil, &envelope{Version: ProtocolVersion, Kind: KindResponse, ID: uint64(i + 1), Status: 200, ContentLength: int64(len(body))})
		done := make(chan error, 1)
		go func() { done <- l.send(outMsg{b: env, body: body}, make(chan struct{}), time.Hour) }()
		select {
		case <-done:
			queued++
		case <-time.After(200 * time.Millisecond):
			t.Logf("send waited after %d MiB queued", queued)
			return
		}
	}
	t.Fatalf("%d MiB of replies queued to a peer that reads nothing; the queue bound is %d MiB", queued, linkQueueBytes>>20)
}
