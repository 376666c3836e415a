package zmqhttp

import (
	"bufio"
	"container/list"
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
// goroutine of its own, within its timeout, and hands each established
// connection to serve, in that goroutine. At most maxHandshakes run at
// once; a new connection past it ends the oldest, so that peers that
// connect and stay silent (or trickle their greeting) cannot lock others
// out: a real client completes its handshake in a round trip or two.
// Accept errors (EMFILE) pause the loop, 5 ms doubling to 1 s, as
// net/http does, rather than spin.
type acceptor struct {
	// Set before run, read-only after.
	ln        net.Listener
	handshake func(nc *liveConn) (*bufio.Reader, zmq4.SocketType, Peer, error) // one connection's
	failed    *atomic.Uint64                                                   // counts connections dropped during the handshake
	evicted   *atomic.Uint64                                                   // counts handshakes ended to make room (may be nil)
	errs      *atomic.Uint64                                                   // counts failed accepts (may be nil)
	done      <-chan struct{}                                                  // closed when accepting should stop
	wg        *sync.WaitGroup                                                  // counts the per-connection goroutines
	serve     func(nc *liveConn, br *bufio.Reader, peer zmq4.SocketType, info Peer)
	// finish, if set, lets the handshakes in progress when ln closes run
	// to their end (they are bounded by their timeout) instead of ending
	// them; admitted is then called (in run's goroutine) for each
	// connection accepted and failed for each whose handshake fails.
	finish   bool
	admitted func()
	failedHS func()

	// mu guards hs: the connections whose handshake is in progress,
	// oldest first (run adds, start removes).
	mu sync.Mutex
	hs list.List
}

// maxHandshakes bounds the handshakes in progress on one listening socket.
const maxHandshakes = 1024

// run accepts until ln is closed.
func (a *acceptor) run() {
	var delay time.Duration
	for {
		nc, err := a.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				if !a.finish {
					a.endHandshakes()
				}
				return
			}
			if a.errs != nil {
				a.errs.Add(1)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			select {
			case <-a.done:
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		e := a.admit(nc)
		if a.admitted != nil {
			a.admitted()
		}
		a.wg.Add(1)
		go a.start(nc, e)
	}
}

// endHandshakes closes the connections still in their handshake: the
// socket is closed, and its owner's Close must not wait for them.
func (a *acceptor) endHandshakes() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for e := a.hs.Front(); e != nil; e = e.Next() {
		e.Value.(net.Conn).Close()
	}
}

// admit lists nc as handshaking, ending the oldest handshake if
// maxHandshakes are in progress.
func (a *acceptor) admit(nc net.Conn) *list.Element {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hs.Len() >= maxHandshakes {
		oldest := a.hs.Remove(a.hs.Front()).(net.Conn)
		oldest.Close() // its handshake fails and its goroutine ends
		if a.evicted != nil {
			a.evicted.Add(1)
		}
	}
	return a.hs.PushBack(nc)
}

// start handshakes one accepted connection and serves it.
func (a *acceptor) start(raw net.Conn, e *list.Element) {
	defer a.wg.Done()
	nc := newLiveConn(raw)
	br, typ, info, err := a.handshake(nc)
	if hook := testHookHandshook.Load(); err == nil && hook != nil {
		(*hook)()
	}
	a.mu.Lock()
	a.hs.Remove(e) // no-op if evicted already
	a.mu.Unlock()
	if err != nil {
		a.failed.Add(1)
		nc.Close()
		if a.failedHS != nil {
			a.failedHS()
		}
		return
	}
	a.serve(nc, br, typ, info)
}

// testHookHandshook, if set, runs when an accepted connection's handshake
// succeeded, before it is served.
var testHookHandshook atomic.Pointer[func()]

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
