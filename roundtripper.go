package zmqhttp

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Transport is an http.RoundTripper that carries requests to a ZeroMQ
// server over a single shared connection (the client end of a DEALER ↔
// ROUTER pair), or to several servers over one connection each, sending
// each request to the least busy (see NewTransport). It is safe for
// concurrent use; create one per server or group of servers and reuse it,
// as with http.Transport.
//
// The URL's scheme may be "http" or "zmq" (see RegisterProtocol); its host
// does not choose the server — the endpoint does — but travels as the
// request's Host. Requests made while no connection is up wait for one, as
// long as their context allows.
//
// Compression: like http.Transport with DisableCompression unset, a request
// without Accept-Encoding (and not a HEAD or Range request) asks for gzip,
// and a gzip reply is decompressed transparently: Content-Encoding and
// Content-Length are removed, ContentLength is -1 and Uncompressed is true.
// WithDisableCompression turns this off.
type Transport struct {
	// Set once by NewTransport, read-only after.
	endpoint string
	cfg      config
	dialer   net.Dialer

	ctx    context.Context    // done when Close starts; nil in a Transport not made by NewTransport
	cancel context.CancelFunc // cancels ctx
	wg     sync.WaitGroup     // the members' connection loops, the resolve loops, and their links' goroutines
	nextID atomic.Uint64
	stats  transportCounters

	// mu guards the following fields, and the fields of the members and
	// clientLinks that their docs say it guards.
	mu      sync.Mutex
	pending map[uint64]*call // unresolved calls; whoever deletes one resolves it
	waiting []*call          // calls waiting for a connection, oldest first
	members []*member        // one per server address, in the order they were added
	turn    uint             // where pickLocked starts looking, to spread ties
	linkUp  chan struct{}    // closed and replaced when a member's connection comes up
	lastErr error            // why the last connection attempt (of any member) failed or ended
	closed  bool
}

// transportCounters are updated atomically.
type transportCounters struct {
	requests        atomic.Uint64
	dialFailures    atomic.Uint64
	connects        atomic.Uint64
	lateReplies     atomic.Uint64
	badReplies      atomic.Uint64
	connectionsLost atomic.Uint64
	replays         atomic.Uint64
}

// TransportStats is a snapshot of a Transport's counters.
type TransportStats struct {
	Requests        uint64 // calls of RoundTrip (a request sent again counts once)
	Connects        uint64 // connections established
	DialFailures    uint64 // failed attempts to connect or handshake
	ConnectionsLost uint64 // established connections that broke
	LateReplies     uint64 // replies (of any kind, with any id) for which no caller was waiting: cancelled, timed out, or unknown
	BadReplies      uint64 // messages that could not be decoded, were over the size limit, or are of a kind a client does not take
	Replays         uint64 // requests sent again: replayable ones after a lost connection, and ones a draining server returned unprocessed
	Pending         int    // calls queued or awaiting a reply now

	// Servers describes each server address now known, in the order they
	// were added: the endpoint list's items, a tcp host name's addresses.
	Servers []ServerStats
}

// Stats returns a snapshot of the Transport's counters.
func (t *Transport) Stats() TransportStats {
	t.mu.Lock()
	n := len(t.pending)
	servers := t.serversLocked()
	t.mu.Unlock()
	return TransportStats{
		Requests:        t.stats.requests.Load(),
		Connects:        t.stats.connects.Load(),
		DialFailures:    t.stats.dialFailures.Load(),
		ConnectionsLost: t.stats.connectionsLost.Load(),
		LateReplies:     t.stats.lateReplies.Load(),
		BadReplies:      t.stats.badReplies.Load(),
		Replays:         t.stats.replays.Load(),
		Pending:         n,
		Servers:         servers,
	}
}

// NewTransport returns a Transport for the server at endpoint
// ("tcp://host:port" or "ipc:///path"), or for several servers given as a
// comma-separated list without spaces, as CZMQ takes them
// ("tcp://a:5555,tcp://b:5555"). A malformed list fails, naming the bad
// item; so does an empty item.
//
// The Transport keeps one connection per server address: per item of the
// list, and, for a tcp host name, per address the name resolves to (it is
// looked up again every 5 s, and within 1 s when a dial to one of its
// addresses fails; connections to addresses that went away close once
// their calls are answered, new addresses get connections).
// It starts connecting in the background and keeps reconnecting for its
// whole life; it does not fail when no server is listening yet.
//
// Each request goes to the live connection with the fewest requests in
// flight; a connection that is down, still connecting, or draining (its
// server is shutting down) gets none while another is up. A request that
// finds none up waits for the first to come up, as long as its context
// allows. When a connection breaks, its replayable requests (see
// WithMaxReplays) and those its server returned unprocessed go to another
// live connection at once; the others fail with ErrConnectionLost.
func NewTransport(endpoint string, opts ...Option) (*Transport, error) {
	items, err := parseEndpointList(endpoint)
	if err != nil {
		return nil, err
	}
	cfg := newConfig(opts)
	if err := cfg.checkSecurity(false); err != nil {
		return nil, err
	}
	t := &Transport{
		endpoint: endpoint,
		cfg:      cfg,
		pending:  make(map[uint64]*call),
		linkUp:   make(chan struct{}),
	}
	t.dialer.Timeout = t.cfg.dialTimeoutOrDefault()
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.mu.Lock()
	for _, it := range items {
		if it.host == "" {
			t.addMemberLocked(it.raw, it.ep.network, it.ep.addr, nil)
		} else {
			t.wg.Add(1)
			go t.resolveLoop(it)
		}
	}
	t.mu.Unlock()
	return t, nil
}

// errNotCreated is returned by a Transport that NewTransport did not make.
var errNotCreated = errors.New("zmqhttp: Transport used without NewTransport (it has no endpoint)")

// Endpoint returns the endpoint (or endpoint list) given to NewTransport.
func (t *Transport) Endpoint() string { return t.endpoint }

// Close fails every pending request with ErrTransportClosed, closes the
// connections and waits for the Transport's goroutines to end. It is
// idempotent.
func (t *Transport) Close() error {
	if t.cancel == nil {
		return nil // a zero Transport has nothing to close
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return nil
	}
	t.closed = true
	for id, c := range t.pending {
		delete(t.pending, id)
		if c.resendTimer != nil {
			c.resendTimer.Stop()
		}
		c.end()
		c.deliver(callResult{err: ErrTransportClosed})
	}
	t.waiting = nil
	var links []*clientLink
	for _, m := range t.members {
		if m.cur != nil {
			links = append(links, m.cur)
		}
	}
	t.mu.Unlock()
	t.cancel()
	for _, cl := range links {
		cl.close(ErrTransportClosed)
	}
	t.wg.Wait()
	return nil
}

// CloseIdleConnections is part of the interface http.Client uses. The
// Transport keeps exactly one connection per server address, never idle
// in the HTTP sense, so it does nothing; use Close to release the
// Transport.
func (t *Transport) CloseIdleConnections() {}

// RoundTrip implements http.RoundTripper. It sends req and waits for the
// response head, for req's context, or for Close. It returns an error only
// when no response was obtained; it never modifies req and always closes
// req.Body (a streamed body possibly after RoundTrip returns, as
// http.Transport may). When the context ends first, the error wraps
// ctx.Err() and a reply arriving later is dropped.
//
// A body of at most 64 KiB with a known length travels inside the request
// message; a larger one, or one of unknown length, streams in chunks with
// flow control to a server that supports it (and is read whole, within
// Limits, for one that does not). A response body streams the same way:
// resp.Body delivers it as it arrives.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.ctx == nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, errNotCreated
	}
	t.stats.requests.Add(1)
	orig := req
	for attempt := 0; ; attempt++ {
		resp, err := t.roundTrip(req)
		if resp != nil {
			resp.Request = orig
		}
		// A streamed request the server provably did not run is started
		// again with a fresh body, if the request can make one.
		if err == nil || !errors.Is(err, ErrNotProcessed) || req.GetBody == nil ||
			attempt >= maxResends || req.Context().Err() != nil ||
			!streamsBody(req) {
			return resp, err
		}
		body, gerr := req.GetBody()
		if gerr != nil {
			return nil, err
		}
		r2 := *req
		r2.Body = body
		req = &r2
		t.stats.replays.Add(1)
	}
}

// streamsBody reports whether req's body is streamed to a server that
// supports it: larger than wholeBodyMax, or of unknown length.
func streamsBody(req *http.Request) bool {
	if req.Body == nil || req.Body == http.NoBody {
		return false
	}
	switch {
	case req.ContentLength > wholeBodyMax:
		return true
	case req.ContentLength <= 0:
		// Unknown length. http.Transport probes the body of a method
		// that usually has none and sends an empty one as no body: such
		// bodies are read whole, which tells the same.
		return !bodylessMethod(req.Method)
	}
	return false
}

func (t *Transport) roundTrip(req *http.Request) (*http.Response, error) {
	if err := t.checkRequest(req); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	ctx := req.Context()
	if streamsBody(req) {
		cl, err := t.readyLink(ctx)
		if err != nil {
			req.Body.Close()
			return nil, t.ctxError(err, nil)
		}
		if cl.has(capStream) {
			return t.roundTripStreamed(req, cl)
		}
	}
	body, err := t.readBody(req)
	if err != nil {
		return nil, err
	}
	c := &call{res: make(chan struct{}, 1), replayable: replayable(req)}
	env := &c.reqEnv
	gzipAsked, err := t.fillRequest(env, req, body, false)
	if err != nil {
		return nil, err
	}
	c.id = env.ID
	if dl, ok := ctx.Deadline(); ok {
		now := time.Now()
		if !now.Before(dl) {
			return nil, t.ctxError(context.Cause(ctx), context.DeadlineExceeded)
		}
		c.deadline, c.encodedAt = dl, now
		env.Timeout = timeoutMicros(dl, now)
	}
	if len(env.Body) >= refMin {
		// The body goes into the message as it is, not copied into the
		// encoding (see outMsg.body).
		c.body, env.Body = env.Body, nil
	}
	c.msg, err = appendEnvelope(getBuf(), env) // back to the pool once answered (await)
	if len(env.Body) > 0 {
		// Copied into the message: a small body's buffer (readBody's,
		// from the buffer pool) goes back now.
		putBuf(env.Body)
	}
	*env = envelope{} // keeps nothing of req's
	if err != nil {
		return nil, err
	}
	stop := ctx.Done()
	if stop == nil {
		// A context that never ends still waits for room in the queue.
		c.stop = make(chan struct{})
		stop = c.stop
	}
	c.trace = newCallTrace(req, t)
	c.trace.getConn(req)
	err = t.enqueue(c, stop)
	c.trace.wrote(err)
	if err != nil {
		return nil, err
	}
	return t.await(req, c, gzipAsked)
}

// await waits for c's result and makes the response.
func (t *Transport) await(req *http.Request, c *call, gzipAsked bool) (*http.Response, error) {
	ctx := req.Context()
	select {
	case <-c.res:
		r := c.result
		c.trace.firstByte()
		if r.err != nil {
			t.endUpload(c, r.err)
			return nil, prefixed(r.err)
		}
		if !c.shared && c.attempts == 0 && c.resends == 0 {
			// Answered: the server read all of it, so the writer is done
			// with it, and it is not sent again. (A call sent again
			// through a device while unacknowledged may still have a
			// copy queued, and one sent again after a lost connection
			// may still be in the old writer's hands: their buffers are
			// left to the garbage collector.)
			if c.body != nil {
				wholeBodies.put(c.body)
				c.body = nil
			}
			putBuf(c.msg)
			c.msg = nil
		}
		return t.buildResponse(req, c, &r, gzipAsked)
	case <-ctx.Done():
		t.mu.Lock()
		_, mine := t.pending[c.id]
		var sentOn *clientLink
		if mine {
			delete(t.pending, c.id)
			sentOn = c.link
			if sentOn == nil {
				// Still waiting for a connection: take it out now, so
				// abandoned calls do not pile up.
				if i := slices.Index(t.waiting, c); i >= 0 {
					t.waiting = slices.Delete(t.waiting, i, i+1)
				}
			}
			t.unlinkLocked(c)
		}
		t.mu.Unlock()
		c.end()
		if sentOn != nil {
			if c.seq.Load() != 0 {
				sentOn.cancel(c.id) // so the handler's r.Context() ends too
			}
			t.maybeCloseDrained(sentOn)
		}
		if !mine { // resolved meanwhile: the result is ours after all
			<-c.res
			r := c.result
			if r.err == nil {
				if r.body == nil {
					return t.buildResponse(req, c, &r, gzipAsked)
				}
				// A streamed response nobody will read.
				(&streamBody{t: t, c: c, cl: r.link, rs: r.body, ctx: ctx, trailer: http.Header{}}).abandon(context.Cause(ctx))
			}
		}
		t.endUpload(c, ctx.Err())
		return nil, t.ctxError(context.Cause(ctx), nil)
	}
}

// readyLink waits for a live connection whose peer's capabilities are
// known.
func (t *Transport) readyLink(ctx context.Context) (*clientLink, error) {
	for {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil, ErrTransportClosed
		}
		cl, up := t.pickLocked(), t.linkUp
		t.mu.Unlock()
		if cl != nil {
			select {
			case <-cl.ready:
				if !cl.isDead() {
					return cl, nil
				}
				continue
			case <-cl.dead:
				continue
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-t.ctx.Done():
			return nil, ErrTransportClosed
		}
	}
}

// ctxError is the error of a call its context ended: the context's cause
// (fallback if none), saying what the connection was doing if it was down.
func (t *Transport) ctxError(err, fallback error) error {
	if err == nil {
		err = fallback
	}
	if errors.Is(err, ErrTransportClosed) {
		return prefixed(err)
	}
	t.mu.Lock()
	connected, last := t.anyLiveLocked(), t.lastErr
	t.mu.Unlock()
	msg := "zmqhttp: " + bare(err)
	switch {
	case !connected && last != nil:
		msg = fmt.Sprintf("zmqhttp: %s (not connected: %s)", bare(err), bare(last))
	case !connected:
		msg = fmt.Sprintf("zmqhttp: %s (not connected yet: the first attempt to connect to %s, dial and ZMTP handshake, has not ended)", bare(err), t.endpoint)
	}
	return &contextError{msg: msg, err: err}
}

// timeoutMicros is the Timeout field for a caller's deadline dl: the
// remaining time in microseconds, at least 1.
func timeoutMicros(dl, now time.Time) int64 {
	return max(int64(dl.Sub(now)/time.Microsecond), 1)
}

// contextError ends a call whose context ended first. It wraps the
// context's error and, like net/http's, reports Timeout() for a deadline,
// so url.Error.Timeout() is true for an http.Client caller.
type contextError struct {
	msg string
	err error
}

func (e *contextError) Error() string { return e.msg }
func (e *contextError) Unwrap() error { return e.err }

// Timeout reports whether the call ended because its deadline passed.
func (e *contextError) Timeout() bool { return errors.Is(e.err, context.DeadlineExceeded) }

// checkRequest rejects a request that cannot be sent at all.
func (t *Transport) checkRequest(req *http.Request) error {
	if req.URL == nil {
		return errors.New("zmqhttp: nil Request.URL")
	}
	if req.Header == nil {
		return errors.New("zmqhttp: nil Request.Header")
	}
	switch req.URL.Scheme {
	case "http", "zmq":
	default:
		return fmt.Errorf("zmqhttp: unsupported protocol scheme %q (want http or zmq)", req.URL.Scheme)
	}
	if req.Method != "" && !validMethod(req.Method) {
		return fmt.Errorf("zmqhttp: invalid method %q", req.Method)
	}
	return nil
}

// buildRequest turns req into a request envelope carrying body whole, or,
// with streamed set, the head of a request whose body follows in chunks.
// It does not modify req.
func (t *Transport) buildRequest(req *http.Request, body []byte, streamed bool) (*envelope, bool, error) {
	env := new(envelope)
	gzipAsked, err := t.fillRequest(env, req, body, streamed)
	if err != nil {
		return nil, false, err
	}
	return env, gzipAsked, nil
}

// fillRequest is buildRequest, filling in env.
func (t *Transport) fillRequest(env *envelope, req *http.Request, body []byte, streamed bool) (bool, error) {
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	// Framing, decided as http.Transport decides it: a known length is
	// sent with Content-Length (and req.Trailer is dropped); a body of
	// unknown length that turns out empty is no body; anything else, or
	// an explicit chunked TransferEncoding, is chunked, with trailers.
	cl := int64(len(body))
	chunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
	unknown := req.ContentLength < 0 || req.ContentLength == 0 && hasBody
	switch {
	case streamed && unknown:
		chunked = true
	case streamed:
		cl = req.ContentLength
	case req.ContentLength > 0 && req.ContentLength != cl:
		return false, fmt.Errorf("zmqhttp: ContentLength=%d with Body length %d", req.ContentLength, cl)
	case unknown && cl > 0:
		chunked = true
	case unknown && hasBody && !bodylessMethod(method):
		chunked = true // http.Transport probes only bodyless methods' bodies
	}
	if chunked {
		cl = -1
	}
	header := make([]string, 0, 2*len(req.Header)+6)
	skip := requestSkip
	if conn := req.Header["Connection"]; len(conn) > 0 {
		// Headers the Connection header names are hop-by-hop too: they
		// stop here with it (the server could not tell them from the
		// others once Connection is gone).
		skip = maps.Clone(requestSkip)
		for _, v := range conn {
			for _, name := range strings.Split(v, ",") {
				if name = textproto.TrimString(name); name != "" {
					skip[textproto.CanonicalMIMEHeaderKey(name)] = true
				}
			}
		}
	}
	header = appendHeader(header, req.Header, skip)
	// User-Agent: the default when the caller set none; nothing when the
	// caller set it to "" (the documented way to send none).
	if ua, ok := req.Header["User-Agent"]; !ok {
		header = append(header, "User-Agent", defaultUserAgent)
	} else if len(ua) > 0 && ua[0] != "" {
		header = append(header, "User-Agent", ua[0])
	}
	var trailer []string
	if chunked && len(req.Trailer) > 0 {
		names := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			names = append(names, textproto.CanonicalMIMEHeaderKey(k))
		}
		sort.Strings(names)
		header = append(header, "Trailer", strings.Join(names, ","))
		if !streamed { // a streamed body's trailers go with its last chunk
			trailer = appendHeader(nil, req.Trailer, nil)
		}
	}
	gzipAsked := false
	if !t.cfg.disableCompress && req.Header.Get("Accept-Encoding") == "" &&
		req.Header.Get("Range") == "" && method != http.MethodHead {
		gzipAsked = true
		header = append(header, "Accept-Encoding", "gzip")
	}
	*env = envelope{
		Version:       ProtocolVersion,
		Kind:          KindRequest,
		ID:            t.nextID.Add(1),
		Method:        method,
		URI:           req.URL.RequestURI(),
		Host:          host,
		Header:        header,
		Body:          body,
		Trailer:       trailer,
		ContentLength: cl,
		// Through a device the server that takes the request has seen
		// no HELLO of ours: the request itself says what we take.
		Flags: flagAckWanted | flagNotProcessedOK,
	}
	if streamed {
		env.Flags |= flagStreamed
	}
	if err := validateEnvelope(env, t.cfg.limits); err != nil {
		return false, wrapErr(err, "cannot send request")
	}
	return gzipAsked, nil
}

const defaultUserAgent = "Go-http-client/1.1"

// replayable reports whether req may be sent again after a connection was
// lost with it in flight, by net/http's rule: an idempotent method, or an
// Idempotency-Key (or X-Idempotency-Key) header. The body is held in
// memory, so a request with a body qualifies without GetBody.
func replayable(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, key := req.Header["Idempotency-Key"]
	_, xkey := req.Header["X-Idempotency-Key"]
	return key || xkey
}

// bodylessMethod reports whether http.Transport treats a body of unknown
// length that turns out empty as no body for method (it probes those).
func bodylessMethod(m string) bool {
	switch m {
	case "GET", "HEAD", "DELETE", "OPTIONS", "PROPFIND", "SEARCH":
		return true
	}
	return false
}

// requestSkip lists header fields the envelope carries elsewhere or that
// belong to one HTTP/1.1 hop.
var requestSkip = map[string]bool{
	"Host": true, "Content-Length": true, "Transfer-Encoding": true,
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true,
	"Upgrade": true, "Te": true, "Trailer": true, "User-Agent": true,
}

// appendHeader flattens h into kv, names sorted for a stable encoding,
// values in their order.
// Names are sent in canonical form (a key set directly in the map, such
// as h["content-type"], is canonicalised), so that the skip list and the
// receiver see one spelling.
func appendHeader(kv []string, h http.Header, skip map[string]bool) []string {
	names := make([]string, 0, len(h))
	for name := range h {
		if !skip[textproto.CanonicalMIMEHeaderKey(name)] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		cname := textproto.CanonicalMIMEHeaderKey(name)
		for _, v := range h[name] {
			kv = append(kv, cname, v)
		}
	}
	return kv
}

func (t *Transport) readBody(req *http.Request) ([]byte, error) {
	if req.Body == nil || req.Body == http.NoBody {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, nil
	}
	defer req.Body.Close()
	limit := t.cfg.limits.maxBodyBytes()
	if req.ContentLength > 0 && req.ContentLength <= limit {
		// Known length: read exactly that much into one allocation, then
		// make sure nothing follows.
		var body []byte
		switch {
		case req.ContentLength < refMin:
			// Copied into the request's message, then back to the pool
			// (roundTrip).
			if body = getBuf(); int64(cap(body)) <= req.ContentLength {
				body = make([]byte, 0, req.ContentLength+1)
			}
			body = body[:req.ContentLength]
		case req.ContentLength <= wholeBodyMax:
			body = wholeBodies.get()[:req.ContentLength] // back to the pool once answered (await)
		default:
			body = make([]byte, req.ContentLength, req.ContentLength+1)
		}
		n, err := io.ReadFull(req.Body, body)
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return body[:n], nil // shorter than declared: buildRequest reports it
		}
		if err != nil {
			return nil, wrapErr(err, "reading request body")
		}
		if readsMore(req.Body, body) {
			return nil, fmt.Errorf("zmqhttp: ContentLength=%d with a longer Body", req.ContentLength)
		}
		return body, nil
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(req.Body, limit+1))
	if err != nil {
		return nil, wrapErr(err, "reading request body")
	}
	if n > limit {
		return nil, fmt.Errorf("%w: request body over %d bytes", ErrBodyTooLarge, limit)
	}
	return buf.Bytes(), nil
}

// readsMore reports whether r has more to read, reading one byte into
// body's spare capacity if it has some (an array of its own would escape
// to the heap on every call).
func readsMore(r io.Reader, body []byte) bool {
	one := body[len(body):cap(body)]
	if len(one) == 0 {
		one = make([]byte, 1)
	}
	m, _ := io.ReadFull(r, one[:1])
	return m > 0
}

// buildResponse makes the *http.Response for req from a response envelope,
// with the fields http.Transport would set for the same HTTP/1.1 reply.
func (t *Transport) buildResponse(req *http.Request, c *call, r *callResult, gzipAsked bool) (*http.Response, error) {
	env := &r.env
	if r.frame != nil {
		// The frame goes back to the pool once the body is read: keep
		// nothing else that lies in it.
		env.Header = cloneStrings(env.Header)
		env.Trailer = cloneStrings(env.Trailer)
		env.Message = strings.Clone(env.Message)
	}
	h := headerFromPairs(env.Header)
	status := statusLine(env.Status)
	if env.Message != "" {
		status = strconv.Itoa(env.Status) + " " + env.Message
	}
	resp := &http.Response{
		Status:     status,
		StatusCode: env.Status,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Request:    req,
	}
	if len(env.Trailer) > 0 {
		resp.Trailer = headerFromPairs(env.Trailer)
	}
	// Declared trailers are keys of resp.Trailer even when never sent, and
	// the Trailer field itself is not part of resp.Header (as fixTrailer
	// does in net/http).
	if decl, ok := h["Trailer"]; ok {
		if resp.Trailer == nil {
			resp.Trailer = make(http.Header)
		}
		for _, v := range decl {
			for _, name := range strings.Split(v, ",") {
				name = textproto.CanonicalMIMEHeaderKey(textproto.TrimString(name))
				if _, set := resp.Trailer[name]; name != "" && !set {
					resp.Trailer[name] = nil
				}
			}
		}
		delete(h, "Trailer")
	}
	switch {
	case req.Method == http.MethodHead:
		resp.ContentLength = -1
		if v := h.Get("Content-Length"); v != "" {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				resp.ContentLength = n
			}
		}
	case env.Status/100 == 1, env.Status == http.StatusNoContent, env.Status == http.StatusNotModified:
		resp.ContentLength = 0
	case env.ContentLength < 0 && env.Flags&flagBodyUntilClose != 0:
		resp.ContentLength = -1
		resp.Close = true
	case env.ContentLength < 0:
		resp.ContentLength = -1
		resp.TransferEncoding = []string{"chunked"}
		h.Del("Content-Length")
	default:
		resp.ContentLength = int64(len(env.Body))
	}
	switch {
	case r.body != nil:
		if resp.Trailer == nil {
			resp.Trailer = make(http.Header)
		}
		resp.Body = &streamBody{t: t, c: c, cl: r.link, rs: r.body, ctx: req.Context(), trailer: resp.Trailer}
		if env.ContentLength >= 0 && req.Method != http.MethodHead {
			resp.ContentLength = env.ContentLength
		}
	case len(env.Body) == 0:
		t.endUpload(c, nil)
		resp.Body = http.NoBody
		if r.frame != nil {
			wholeFrames.put(r.frame)
		}
	default:
		t.endUpload(c, nil)
		br := &bodyReader{data: env.Body, frame: r.frame}
		resp.Body = br
	}
	if gzipAsked && (len(env.Body) > 0 || r.body != nil) && strings.EqualFold(h.Get("Content-Encoding"), "gzip") {
		resp.Body = &gzipBody{src: resp.Body}
		h.Del("Content-Encoding")
		h.Del("Content-Length")
		resp.ContentLength = -1
		resp.Uncompressed = true
	}
	return resp, nil
}

// headerFromPairs builds an http.Header from a flattened name/value list,
// with one backing array for all values: a name's values are a subslice
// when they are adjacent, as every sender of this package writes them.
func headerFromPairs(kv []string) http.Header {
	h := make(http.Header, len(kv)/2)
	vals := make([]string, len(kv)/2)
	for i := 0; i < len(kv); {
		name, start := kv[i], i/2
		for ; i < len(kv) && kv[i] == name; i += 2 {
			vals[i/2] = kv[i+1]
		}
		run := vals[start : i/2 : i/2]
		if prev, dup := h[name]; dup { // not adjacent: rare
			run = append(prev[:len(prev):len(prev)], run...)
		}
		h[name] = run
	}
	return h
}

// statusLines caches "200 OK" and the like for every standard code.
var statusLines = func() map[int]string {
	m := make(map[int]string)
	for code := 100; code < 600; code++ {
		if text := http.StatusText(code); text != "" {
			m[code] = strconv.Itoa(code) + " " + text
		}
	}
	return m
}()

// statusLine returns the Status net/http would report for a response with
// code and the standard reason phrase.
func statusLine(code int) string {
	if s, ok := statusLines[code]; ok {
		return s
	}
	return strconv.Itoa(code) + " " + http.StatusText(code)
}

// bodyReader is a response body held in memory, possibly in a pooled
// frame. The frame goes back to the pool at EOF or Close, but never while
// a WriteTo is handing its bytes to a writer: mu is not held across that
// Write (it may block for ever; Close must not wait for it), so busy
// counts such writes and the last one out returns the frame.
type bodyReader struct {
	mu     sync.Mutex
	data   []byte // the unread rest is data[off:]
	off    int
	frame  []byte // the pooled frame data lies in; nil once returned
	busy   int    // WriteTo calls writing from data
	closed bool
}

// Read copies the next bytes of the body; at the end it returns io.EOF
// and gives the frame back.
func (b *bodyReader) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.off >= len(b.data) {
		b.releaseLocked()
		return 0, io.EOF
	}
	n := copy(p, b.data[b.off:])
	b.off += n
	return n, nil
}

// WriteTo writes the rest of the body to w (io.Copy uses it). On a write
// error the unwritten rest stays readable, as with bytes.Reader.
func (b *bodyReader) WriteTo(w io.Writer) (int64, error) {
	b.mu.Lock()
	rest := b.data[b.off:]
	if len(rest) == 0 {
		b.releaseLocked()
		b.mu.Unlock()
		return 0, nil
	}
	b.off = len(b.data) // a concurrent Read gets nothing of what this writes
	b.busy++
	b.mu.Unlock()
	n, err := w.Write(rest)
	if n > len(rest) || n < 0 {
		panic("zmqhttp: invalid Write count")
	}
	if err == nil && n != len(rest) {
		err = io.ErrShortWrite
	}
	b.mu.Lock()
	b.busy--
	if err != nil && !b.closed {
		b.off -= len(rest) - n // the rest is still to be read
	}
	if b.off >= len(b.data) || b.closed {
		b.releaseLocked()
	}
	b.mu.Unlock()
	return int64(n), err
}

// Close ends the body; a later Read returns io.EOF.
func (b *bodyReader) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.data, b.off = nil, 0
	b.releaseLocked()
	return nil
}

// releaseLocked returns the frame unless a WriteTo still writes from it
// (that one returns it when done).
func (b *bodyReader) releaseLocked() {
	if b.busy > 0 || b.frame == nil {
		return
	}
	b.data, b.off = nil, 0
	wholeFrames.put(b.frame)
	b.frame = nil
}

// cloneStrings returns copies of ss, backed by one allocation.
func cloneStrings(ss []string) []string {
	if len(ss) == 0 {
		return ss
	}
	n := 0
	for _, s := range ss {
		n += len(s)
	}
	var sb strings.Builder
	sb.Grow(n)
	for _, s := range ss {
		sb.WriteString(s)
	}
	all := sb.String()
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i], all = all[:len(s)], all[len(s):]
	}
	return out
}

// gzipBody decompresses src lazily, on first Read, like http.Transport.
type gzipBody struct {
	src io.ReadCloser
	zr  *gzip.Reader
	err error
}

func (b *gzipBody) Read(p []byte) (int, error) {
	if b.zr == nil && b.err == nil {
		b.zr, b.err = gzip.NewReader(b.src)
	}
	if b.err != nil {
		return 0, b.err
	}
	return b.zr.Read(p)
}

func (b *gzipBody) Close() error { return b.src.Close() }
