package zmqhttp

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
)

// Transport is an http.RoundTripper that carries requests to one ZeroMQ
// endpoint over a single shared connection (the client end of a DEALER ↔
// ROUTER pair). It is safe for concurrent use; create one per server and
// reuse it, as with http.Transport.
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
	ep       endpoint
	cfg      config
	dialer   net.Dialer

	ctx    context.Context    // done when Close starts
	cancel context.CancelFunc // cancels ctx
	wg     sync.WaitGroup     // the connection loop and its reader
	nextID atomic.Uint64
	stats  transportCounters

	// wake has room for one token; callers put one after queueing a call
	// so the writer looks at the queue.
	wake chan struct{}

	// mu guards the following fields.
	mu      sync.Mutex
	pending map[uint64]*call // unresolved calls; whoever deletes one resolves it
	queue   []*call          // calls waiting to be written, oldest first
	cur     *clientLink      // the live connection, nil while connecting
	lastErr error            // why the last connection attempt failed or ended
	closed  bool
}

// call is one RoundTrip in flight.
type call struct {
	id  uint64
	msg []byte          // the encoded request envelope; read-only once queued
	res chan callResult // buffered 1; receives exactly once, from whoever removed the call from pending

	link *clientLink // guarded by Transport.mu: the connection it was written on, nil while queued
}

type callResult struct {
	env envelope
	err error
}

// clientLink is one established connection. nc, br are used by the reader
// goroutine only; bw by the writer (the connection loop) only.
type clientLink struct {
	nc   net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	ctrl chan []byte   // ZMTP command frames (PONG) for the writer; buffered
	dead chan struct{} // closed by close
	once sync.Once
	err  error // set once before dead is closed
}

func (l *clientLink) close(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.dead)
		l.nc.Close()
	})
}

// transportCounters are updated atomically.
type transportCounters struct {
	dialFailures    atomic.Uint64
	connects        atomic.Uint64
	lateReplies     atomic.Uint64
	badReplies      atomic.Uint64
	connectionsLost atomic.Uint64
}

// TransportStats is a snapshot of a Transport's counters.
type TransportStats struct {
	Connects        uint64 // connections established
	DialFailures    uint64 // failed attempts to connect or handshake
	ConnectionsLost uint64 // established connections that broke
	LateReplies     uint64 // replies dropped because their caller had gone (cancelled, timed out)
	BadReplies      uint64 // messages dropped because they could not be decoded or matched
	Pending         int    // calls queued or awaiting a reply now
}

// Stats returns a snapshot of the Transport's counters.
func (t *Transport) Stats() TransportStats {
	t.mu.Lock()
	n := len(t.pending)
	t.mu.Unlock()
	return TransportStats{
		Connects:        t.stats.connects.Load(),
		DialFailures:    t.stats.dialFailures.Load(),
		ConnectionsLost: t.stats.connectionsLost.Load(),
		LateReplies:     t.stats.lateReplies.Load(),
		BadReplies:      t.stats.badReplies.Load(),
		Pending:         n,
	}
}

// NewTransport returns a Transport for the server at endpoint
// ("tcp://host:port" or "ipc:///path"). It starts connecting in the
// background and keeps reconnecting for its whole life; it does not fail
// when no server is listening yet.
func NewTransport(endpoint string, opts ...Option) (*Transport, error) {
	ep, err := parseEndpoint(endpoint, false)
	if err != nil {
		return nil, err
	}
	t := &Transport{
		endpoint: endpoint,
		ep:       ep,
		cfg:      newConfig(opts),
		pending:  make(map[uint64]*call),
		wake:     make(chan struct{}, 1),
	}
	t.dialer.Timeout = t.cfg.dialTimeoutOrDefault()
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.wg.Add(1)
	go t.connectLoop()
	return t, nil
}

// Endpoint returns the endpoint the Transport sends to.
func (t *Transport) Endpoint() string { return t.endpoint }

// Close fails every pending request with ErrTransportClosed, closes the
// connection and waits for the Transport's goroutines to end. It is
// idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return nil
	}
	t.closed = true
	for id, c := range t.pending {
		delete(t.pending, id)
		c.res <- callResult{err: ErrTransportClosed}
	}
	t.queue = nil
	l := t.cur
	t.mu.Unlock()
	t.cancel()
	if l != nil {
		l.close(ErrTransportClosed)
	}
	t.wg.Wait()
	return nil
}

// CloseIdleConnections is part of the interface http.Client uses. The
// Transport keeps exactly one connection, which is never idle in the HTTP
// sense, so it does nothing; use Close to release the Transport.
func (t *Transport) CloseIdleConnections() {}

// connectLoop connects, serves the connection until it breaks, and
// reconnects with backoff, until Close.
func (t *Transport) connectLoop() {
	defer t.wg.Done()
	lo, hi := t.cfg.backoff()
	wait := lo
	for t.ctx.Err() == nil {
		l, err := t.connect()
		if err != nil {
			t.stats.dialFailures.Add(1)
			t.mu.Lock()
			t.lastErr = err
			t.mu.Unlock()
			select {
			case <-time.After(wait):
			case <-t.ctx.Done():
				return
			}
			wait = min(wait*2, hi)
			continue
		}
		wait = lo
		t.stats.connects.Add(1)
		t.serve(l)
	}
}

// connect dials and handshakes once.
func (t *Transport) connect() (*clientLink, error) {
	nc, err := t.dialer.DialContext(t.ctx, t.ep.network, t.ep.addr)
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: dial %s: %w", t.endpoint, err)
	}
	br, peer, err := handshake(nc, zmq4.Dealer, false, t.cfg.handshakeTimeoutOrDefault())
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("zmqhttp: connect %s: %w", t.endpoint, err)
	}
	if peer != zmq4.Router && peer != zmq4.Rep {
		nc.Close()
		return nil, fmt.Errorf("zmqhttp: connect %s: peer is a %s socket, want ROUTER or REP", t.endpoint, peer)
	}
	return &clientLink{
		nc:   nc,
		br:   br,
		bw:   bufio.NewWriterSize(nc, 64<<10),
		ctrl: make(chan []byte, 4),
		dead: make(chan struct{}),
	}, nil
}

// serve runs one connection: its reader in a goroutine, its writer here.
// When either fails, every call written on it is resolved.
func (t *Transport) serve(l *clientLink) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		l.close(ErrTransportClosed)
		return
	}
	t.cur = l
	t.mu.Unlock()

	t.wg.Add(1)
	go t.readLoop(l)
	t.writeLoop(l)
	<-l.dead

	t.mu.Lock()
	t.cur = nil
	if !t.closed {
		t.stats.connectionsLost.Add(1)
		t.lastErr = fmt.Errorf("zmqhttp: connection to %s lost: %w", t.endpoint, l.err)
	}
	for id, c := range t.pending {
		if c.link == l {
			delete(t.pending, id)
			c.res <- callResult{err: fmt.Errorf("%w (%v)", ErrConnectionLost, l.err)}
		}
	}
	t.mu.Unlock()
}

// writeLoop writes queued calls to l until l dies. Calls waiting together
// are written with one flush, so under load many requests share a syscall.
func (t *Transport) writeLoop(l *clientLink) {
	maxBatch := t.cfg.writeBatchOrDefault()
	var batch []*call
	yielded := 0
	for {
		// Drain the queue first: calls may have been queued while no
		// connection was up, and their wake token used by a writer of a
		// connection that has since died.
		for {
			batch = batch[:0]
			t.mu.Lock()
			n := 0
			for n < len(t.queue) && len(batch) < maxBatch {
				c := t.queue[n]
				n++
				if t.pending[c.id] == c { // skip calls abandoned by their caller
					c.link = l
					batch = append(batch, c)
				}
			}
			clear(t.queue[:n])
			t.queue = t.queue[n:]
			if len(t.queue) == 0 {
				t.queue = nil
			}
			t.mu.Unlock()
			if n == 0 {
				if l.bw.Buffered() > 0 {
					if err := l.bw.Flush(); err != nil {
						l.close(err)
						return
					}
				}
				break
			}
			for _, c := range batch {
				if err := writeEnvelopeMsg(l.bw, c.msg); err != nil {
					l.close(err)
					return
				}
			}
			if yielded < 1 {
				yielded++
				runtime.Gosched()
				continue
			}
			yielded = 0
			if err := l.bw.Flush(); err != nil {
				l.close(err)
				return
			}
		}
		select {
		case <-t.wake:
		case cmd := <-l.ctrl:
			if err := t.writeCtrl(l, cmd); err != nil {
				l.close(err)
				return
			}
		case <-l.dead:
			return
		}
	}
}

func (t *Transport) writeCtrl(l *clientLink, cmd []byte) error {
	if err := writeCommand(l.bw, "PONG", cmd); err != nil {
		return err
	}
	return l.bw.Flush()
}

// writeEnvelopeMsg writes one REQ/REP-style message: an empty delimiter
// frame, then the envelope frame.
func writeEnvelopeMsg(w *bufio.Writer, env []byte) error {
	if err := writeFrame(w, nil, true); err != nil {
		return err
	}
	return writeFrame(w, env, false)
}

// readLoop reads replies from l and hands each to its waiting caller.
func (t *Transport) readLoop(l *clientLink) {
	defer t.wg.Done()
	maxFrame := t.cfg.limits.maxFrameBytes()
	var frames [][]byte
	for {
		var isCmd bool
		var err error
		frames, isCmd, err = readMessage(l.br, maxFrame, frames)
		var oe *oversizeError
		if errors.As(err, &oe) {
			t.stats.badReplies.Add(1)
			if _, kind, id, ok := peekHead(oe.head); ok && Kind(kind) != KindRequest {
				t.resolve(id, callResult{err: fmt.Errorf("%w: %v", ErrBodyTooLarge, oe)})
			}
			continue
		}
		if err != nil {
			l.close(err)
			return
		}
		if isCmd {
			if commandName(frames[0]) == "PING" {
				select {
				case l.ctrl <- pongBody(frames[0]):
				default:
				}
			}
			continue
		}
		if len(frames) != 2 || len(frames[0]) != 0 {
			t.stats.badReplies.Add(1)
			continue
		}
		var env envelope
		err = decodeEnvelope(frames[1], t.cfg.limits, &env)
		if err != nil {
			var ie *idError
			if errors.As(err, &ie) && ie.kind != KindRequest {
				t.resolve(ie.id, callResult{err: fmt.Errorf("zmqhttp: bad reply from %s: %w", t.endpoint, err)})
			}
			t.stats.badReplies.Add(1)
			continue
		}
		switch env.Kind {
		case KindResponse:
			t.resolve(env.ID, callResult{env: env})
		case KindError:
			t.resolve(env.ID, callResult{err: &RemoteError{Code: env.Status, Message: env.Message}})
		default:
			t.stats.badReplies.Add(1)
		}
	}
}

// resolve delivers r to the caller waiting for id, if it is still waiting.
func (t *Transport) resolve(id uint64, r callResult) {
	t.mu.Lock()
	c, ok := t.pending[id]
	if ok {
		delete(t.pending, id)
	}
	t.mu.Unlock()
	if !ok {
		t.stats.lateReplies.Add(1)
		return
	}
	c.res <- r
}

// RoundTrip implements http.RoundTripper. It sends req as one envelope and
// waits for the reply, for req's context, or for Close. It returns an error
// only when no response was obtained; it never modifies req and always
// closes req.Body. When the context ends first, the error wraps ctx.Err()
// and a reply arriving later is dropped.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	env, gzipAsked, err := t.buildRequest(req)
	if err != nil {
		return nil, err
	}
	ctx := req.Context()
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		if left <= 0 {
			return nil, t.ctxError(req, ctx.Err(), context.DeadlineExceeded)
		}
		env.Timeout = max(int64(left/time.Microsecond), 1)
	}
	c := &call{id: env.ID, res: make(chan callResult, 1)}
	c.msg, err = appendEnvelope(nil, env)
	if err != nil {
		return nil, err
	}
	if err := t.enqueue(c); err != nil {
		return nil, err
	}
	select {
	case r := <-c.res:
		if r.err != nil {
			return nil, fmt.Errorf("zmqhttp: %s %s: %w", req.Method, req.URL.Redacted(), r.err)
		}
		return t.buildResponse(req, &r.env, gzipAsked)
	case <-ctx.Done():
		t.mu.Lock()
		_, mine := t.pending[c.id]
		if mine {
			delete(t.pending, c.id)
		}
		t.mu.Unlock()
		if !mine { // resolved meanwhile: the result is ours after all
			r := <-c.res
			if r.err == nil {
				return t.buildResponse(req, &r.env, gzipAsked)
			}
		}
		return nil, t.ctxError(req, ctx.Err(), nil)
	}
}

func (t *Transport) ctxError(req *http.Request, err, fallback error) error {
	if err == nil {
		err = fallback
	}
	t.mu.Lock()
	connected, last := t.cur != nil, t.lastErr
	t.mu.Unlock()
	msg := fmt.Sprintf("zmqhttp: %s %s: %v", req.Method, req.URL.Redacted(), err)
	if !connected && last != nil {
		msg = fmt.Sprintf("zmqhttp: %s %s: not connected (%v): %v", req.Method, req.URL.Redacted(), last, err)
	}
	return &contextError{msg: msg, err: err}
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

// enqueue registers c as pending and queues it for the writer.
func (t *Transport) enqueue(c *call) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrTransportClosed
	}
	if len(t.pending) >= t.cfg.maxPendingOrDefault() {
		t.mu.Unlock()
		return fmt.Errorf("%w (%d)", ErrTooManyPending, t.cfg.maxPendingOrDefault())
	}
	t.pending[c.id] = c
	t.queue = append(t.queue, c)
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
	return nil
}

// buildRequest turns req into a request envelope, reading and closing its
// body. It does not modify req.
func (t *Transport) buildRequest(req *http.Request) (*envelope, bool, error) {
	closeBody := func() {
		if req.Body != nil {
			req.Body.Close()
		}
	}
	if req.URL == nil {
		closeBody()
		return nil, false, errors.New("zmqhttp: nil Request.URL")
	}
	if req.Header == nil {
		closeBody()
		return nil, false, errors.New("zmqhttp: nil Request.Header")
	}
	switch req.URL.Scheme {
	case "http", "zmq":
	default:
		closeBody()
		return nil, false, fmt.Errorf("zmqhttp: unsupported protocol scheme %q (want http or zmq)", req.URL.Scheme)
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validMethod(method) {
		closeBody()
		return nil, false, fmt.Errorf("zmqhttp: invalid method %q", method)
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	hasBody := req.Body != nil && req.Body != http.NoBody
	body, err := t.readBody(req)
	if err != nil {
		return nil, false, err
	}
	// Framing, decided as http.Transport decides it: a known length is
	// sent with Content-Length (and req.Trailer is dropped); a body of
	// unknown length that turns out empty is no body; anything else, or
	// an explicit chunked TransferEncoding, is chunked, with trailers.
	cl := int64(len(body))
	chunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
	unknown := req.ContentLength < 0 || req.ContentLength == 0 && hasBody
	switch {
	case req.ContentLength > 0 && req.ContentLength != cl:
		return nil, false, fmt.Errorf("zmqhttp: ContentLength=%d with Body length %d", req.ContentLength, cl)
	case unknown && cl > 0:
		chunked = true
	case unknown && hasBody && !bodylessMethod(method):
		chunked = true // http.Transport probes only bodyless methods' bodies
	}
	if chunked {
		cl = -1
	}
	header := make([]string, 0, 2*len(req.Header)+6)
	header = appendHeader(header, req.Header, requestSkip)
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
		trailer = appendHeader(nil, req.Trailer, nil)
	}
	gzipAsked := false
	if !t.cfg.disableCompress && req.Header.Get("Accept-Encoding") == "" &&
		req.Header.Get("Range") == "" && method != http.MethodHead {
		gzipAsked = true
		header = append(header, "Accept-Encoding", "gzip")
	}
	env := &envelope{
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
	}
	if err := validateEnvelope(env, t.cfg.limits); err != nil {
		return nil, false, fmt.Errorf("zmqhttp: cannot send request: %w", err)
	}
	return env, gzipAsked, nil
}

const defaultUserAgent = "Go-http-client/1.1"

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
	var buf bytes.Buffer
	if req.ContentLength > 0 && req.ContentLength <= limit {
		buf.Grow(int(req.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(req.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("zmqhttp: reading request body: %w", err)
	}
	if n > limit {
		return nil, fmt.Errorf("%w: request body over %d bytes", ErrBodyTooLarge, limit)
	}
	return buf.Bytes(), nil
}

// buildResponse makes the *http.Response for req from a response envelope,
// with the fields http.Transport would set for the same HTTP/1.1 reply.
func (t *Transport) buildResponse(req *http.Request, env *envelope, gzipAsked bool) (*http.Response, error) {
	h := make(http.Header, len(env.Header)/2)
	for i := 0; i < len(env.Header); i += 2 {
		h[env.Header[i]] = append(h[env.Header[i]], env.Header[i+1])
	}
	reason := env.Message
	if reason == "" {
		reason = http.StatusText(env.Status)
	}
	resp := &http.Response{
		Status:     strconv.Itoa(env.Status) + " " + reason,
		StatusCode: env.Status,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Request:    req,
	}
	if len(env.Trailer) > 0 {
		resp.Trailer = make(http.Header, len(env.Trailer)/2)
		for i := 0; i < len(env.Trailer); i += 2 {
			resp.Trailer[env.Trailer[i]] = append(resp.Trailer[env.Trailer[i]], env.Trailer[i+1])
		}
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
	if len(env.Body) == 0 {
		resp.Body = http.NoBody
	} else {
		resp.Body = io.NopCloser(bytes.NewReader(env.Body))
	}
	if gzipAsked && len(env.Body) > 0 && strings.EqualFold(h.Get("Content-Encoding"), "gzip") {
		resp.Body = &gzipBody{src: env.Body}
		h.Del("Content-Encoding")
		h.Del("Content-Length")
		resp.ContentLength = -1
		resp.Uncompressed = true
	}
	return resp, nil
}

// gzipBody decompresses src lazily, on first Read, like http.Transport.
type gzipBody struct {
	src []byte
	zr  *gzip.Reader
	err error
}

func (b *gzipBody) Read(p []byte) (int, error) {
	if b.zr == nil && b.err == nil {
		b.zr, b.err = gzip.NewReader(bytes.NewReader(b.src))
	}
	if b.err != nil {
		return 0, b.err
	}
	return b.zr.Read(p)
}

func (b *gzipBody) Close() error { return nil }
