package zmqhttp

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// This file holds what the Listener and the Proxy share to get established
// connections: an accept loop whose handshakes are guarded (bounded in
// number and time, each in its own goroutine), a dial-and-handshake step,
// and the reconnect backoff the Transport and a connecting Listener use.

// acceptor accepts connections on ln, runs each one's ZMTP handshake in a
// goroutine of its own (at most maxHandshakes at once, each within
// timeout, so that a peer that never greets holds up nobody), and hands
// each established connection to serve, in that goroutine.
type acceptor struct {
	// Set before run, read-only after.
	ln      net.Listener
	self    zmq4.SocketType   // the socket type we greet as
	accept  []zmq4.SocketType // the peer socket types accepted
	timeout time.Duration     // handshake timeout
	failed  *atomic.Uint64    // counts connections dropped during the handshake
	done    <-chan struct{}   // closed when accepting should stop
	wg      *sync.WaitGroup   // counts the per-connection goroutines
	serve   func(nc *liveConn, br *bufio.Reader, peer zmq4.SocketType)

	slots chan struct{} // bounds handshakes in progress
}

// maxHandshakes bounds the handshakes in progress on one listening socket;
// connections beyond it are closed at once.
const maxHandshakes = 64

// run accepts until ln is closed.
func (a *acceptor) run() {
	a.slots = make(chan struct{}, maxHandshakes)
	for {
		nc, err := a.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-a.done:
				return
			default:
				continue // a timeout, or e.g. EMFILE: keep serving the peers we have
			}
		}
		select {
		case a.slots <- struct{}{}:
		default:
			a.failed.Add(1)
			nc.Close() // too many handshakes in progress
			continue
		}
		a.wg.Add(1)
		go a.start(nc)
	}
}

// start handshakes one accepted connection and serves it.
func (a *acceptor) start(raw net.Conn) {
	defer a.wg.Done()
	nc := newLiveConn(raw)
	br, typ, err := handshakeAs(nc, a.self, a.accept, true, a.timeout)
	<-a.slots
	if err != nil {
		a.failed.Add(1)
		nc.Close()
		return
	}
	a.serve(nc, br, typ)
}

// handshakeAs runs the handshake as a socket of type self and checks that
// the peer is of one of the accepted types.
func handshakeAs(nc net.Conn, self zmq4.SocketType, accept []zmq4.SocketType, server bool, timeout time.Duration) (*bufio.Reader, zmq4.SocketType, error) {
	br, typ, err := handshake(nc, self, server, timeout)
	if err != nil {
		return nil, "", err
	}
	for _, t := range accept {
		if typ == t {
			return br, typ, nil
		}
	}
	return nil, "", fmt.Errorf("zmqhttp: peer is a %s socket, want %v", typ, accept)
}

// backoff is the wait between two attempts to connect: it starts at lo
// (config.backoff) and doubles after each failure up to hi. It belongs to
// the one connect loop that uses it.
type backoff struct {
	lo, hi, cur time.Duration
}

func newBackoff(cfg *config) backoff {
	lo, hi := cfg.backoff()
	return backoff{lo: lo, hi: hi, cur: lo}
}

// wait sleeps for the current wait, then doubles it; it reports false if
// stop closed first.
func (b *backoff) wait(stop <-chan struct{}) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(b.cur*2, b.hi)
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// reset starts the waits again from the shortest, after a success.
func (b *backoff) reset() { b.cur = b.lo }
