package zmqhttp

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"path"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// This file is the ResponseWriter of the direct path (Serve). It follows
// net/http's response and chunkWriter rule for rule — when the header is
// committed (a flush, or more than 2048 bytes written), what it then
// adds or removes (Date, Content-Length for a body complete at commit,
// sniffed Content-Type, chunked framing, trailers) — and decides whole
// reply or stream as the standard path's vconn does with the bytes
// net/http writes, so that clients get the same envelopes.

// bufferBeforeChunking is net/http's: a handler that ends having written
// at most this much, without flushing, gets a Content-Length.
const bufferBeforeChunking = 2048

// streamFlushAt is how much of a streamed body the writer gathers before
// handing it to the stream (besides Flush and the end).
const streamFlushAt = 32 << 10

// directCall is one request on the direct path: its http.Request, and
// the http.ResponseWriter its handler gets.
type directCall struct {
	// Set before the handler runs, read-only after.
	w      *directWorker
	j      *job
	req    *http.Request
	body   *directBody // nil: http.NoBody; else bodyv
	bodyv  directBody
	cancel context.CancelCauseFunc // ends the request's context
	rdWake chan struct{}           // room for one token: the read deadline changed, or kill; nil unless the body is streamed

	expectFailed bool // an Expect other than 100-continue: answered 417

	killed atomic.Bool // srv.Close: the request fails

	// dlMu guards the deadlines (SetReadDeadline, SetWriteDeadline may be
	// called from any goroutine).
	dlMu     sync.Mutex
	readDL   time.Time
	writeDL  time.Time
	ctxEnded atomic.Bool // cancel was called

	// The response's state, owned by the handler's goroutine (a
	// ResponseWriter is not safe for concurrent use).
	handlerHeader http.Header
	calledHeader  bool
	wroteHeader   bool
	snapTaken     bool
	snap          []string // the header fields (raw names) at WriteHeader
	snapNil       uint8    // nilFields of the header at WriteHeader
	status        int
	contentLength int64 // declared or computed; -1 if none
	written       int64 // body bytes the handler wrote
	pend          int   // of those, bytes net/http's response buffer would hold (see buffered)
	committed     bool  // the header is final (chunkWriter.writeHeader ran)
	noBody        bool  // HEAD, 1xx, 204, 304
	chunking      bool
	untilClose    bool
	declared      []string // trailer names the Trailer field announced
	hdr           []string // the response header fields as sent
	buf           []byte   // body bytes not yet sent (all of them before commit)
	onWire        int      // of buf: bytes net/http would have written to the connection (flushed)
	wire          bool     // the response head was flushed
	sentBody      int64    // body bytes handed on (streamed)
	out           *sendStream
	bufPooled     bool   // buf is from wholeBodies (a declared length to send whole); ownBuf is the worker's
	ownBuf        []byte // the worker's body buffer while bufPooled
	replied       bool   // the reply is decided: sent, streamed to its end, or failed
	bufGiven      bool   // buf went with a reply: not reused
	err           error
	handlerDone   bool
}

// abortCtx is called by job.cancel: the caller gave up.
func (c *directCall) abortCtx() {
	if dl := c.j.deadline; !dl.IsZero() && !time.Now().Before(dl) {
		c.cancelWith(context.DeadlineExceeded)
		return
	}
	c.cancelCtx()
}

// cancelCtx ends the request's context (context.Canceled).
func (c *directCall) cancelCtx() { c.cancelWith(nil) }

func (c *directCall) cancelWith(cause error) {
	if c.cancel != nil && c.ctxEnded.CompareAndSwap(false, true) {
		c.cancel(cause)
	}
}

// kill fails the request (srv.Close): its context ends, its writes fail,
// and its client gets an error unless its response is complete.
func (c *directCall) kill() {
	c.killed.Store(true)
	c.cancelCtx()
	if s := c.streamOut(); s != nil {
		s.abort(net.ErrClosed)
	}
	select {
	case c.rdWake <- struct{}{}:
	default:
	}
}

// streamOut is read by kill from another goroutine.
func (c *directCall) streamOut() *sendStream {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.out
}

func (c *directCall) readDeadline() time.Time {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.readDL
}

func (c *directCall) writeDeadline() time.Time {
	c.dlMu.Lock()
	defer c.dlMu.Unlock()
	return c.writeDL
}

// serve runs the handler on c's job and answers it.
func (c *directCall) serve() {
	w, j := c.w, c.j
	d := w.d
	c.buf = w.body[:0]
	defer func() {
		// The body buffer serves the next request, unless a reply took
		// it or it grew large; a pooled one goes back to its pool
		// unless a reply took it.
		switch {
		case c.bufPooled:
			if !c.bufGiven {
				wholeBodies.put(c.buf)
			}
			w.body = c.ownBuf
		case !c.bufGiven && cap(c.buf) <= wholeBodyMax:
			w.body = c.buf[:0]
		default:
			w.body = nil
		}
	}()
	if frame := j.frame; frame != nil {
		// The request's strings and body lie in this pooled frame. The
		// strings, which the handler may keep, are copied out; the
		// body is only read through r.Body, closed by the time this
		// returns: then the frame goes back to its pool.
		j.frame = nil
		detachStrings(&j.env)
		defer func() {
			j.env.Body = nil
			wholeFrames.put(frame)
		}()
	}
	ref := c.buildRequest()
	j.doneUnread()
	if ref != nil {
		c.refuse(ref)
		return
	}
	ctx := c.newCtx(w.ctxFor(j.peer))
	w.mu.Lock()
	w.cur = c // for kill, once cancel is set
	w.mu.Unlock()
	if d.killed.Load() {
		c.kill() // srv.Close ran while this request was being set up
	}
	c.req = w.tmpl.WithContext(ctx)
	w.tmpl = http.Request{}
	j.call.Store(c)
	if j.canceled() {
		c.abortCtx()
	}
	srv := d.srv
	if t := srv.ReadTimeout; t > 0 {
		c.readDL = w.now.Add(t)
	}
	if t := srv.WriteTimeout; t > 0 {
		c.writeDL = w.now.Add(t)
	}
	c.handlerHeader = make(http.Header)
	if c.expectFailed {
		c.handlerHeader.Set("Connection", "close")
		c.WriteHeader(http.StatusExpectationFailed)
		c.finish()
		return
	}
	if !c.runHandler() {
		return
	}
	c.finish()
}

// runHandler runs the handler; it reports false if it panicked (the
// response was dealt with).
func (c *directCall) runHandler() (ok bool) {
	defer func() {
		if !ok {
			c.panicked(recover())
		}
	}()
	srv := c.w.d.srv
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	if !srv.DisableGeneralOptionsHandler && c.req.RequestURI == "*" && c.req.Method == "OPTIONS" {
		h = http.HandlerFunc(globalOptions)
	}
	h.ServeHTTP(c, c.req)
	return true
}

// globalOptions answers "OPTIONS *" as net/http's server does.
func globalOptions(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Length", "0")
	if r.ContentLength != 0 {
		mb := http.MaxBytesReader(w, r.Body, 4<<10)
		buf := make([]byte, 512)
		for {
			if _, err := mb.Read(buf); err != nil {
				break
			}
		}
	}
}

// refuse answers a request net/http refuses before any handler: its raw
// response, whose body ends with the connection.
func (c *directCall) refuse(ref *statusRefusal) {
	e := &envelope{
		Version:       ProtocolVersion,
		Kind:          KindResponse,
		ID:            c.j.env.ID,
		Status:        ref.code,
		Header:        []string{"Content-Type", "text/plain; charset=utf-8"},
		Body:          []byte(ref.body),
		ContentLength: -1,
		Flags:         flagBodyUntilClose,
	}
	if ref.reason != http.StatusText(ref.code) {
		e.Message = ref.reason
	}
	c.replied = true
	c.replyWhole(e, false)
}

// Header returns the header map the response will send.
func (c *directCall) Header() http.Header {
	if !c.snapTaken && c.wroteHeader && !c.committed {
		// Changes after WriteHeader are not sent (net/http snapshots).
		c.snapshot()
	}
	c.calledHeader = true
	return c.handlerHeader
}

// snapshot takes the header as it stands: what commit will send.
func (c *directCall) snapshot() {
	c.snap = c.flatten(c.handlerHeader, c.w.kv[:0])
	c.snapNil = nilFields(c.handlerHeader)
	c.snapTaken = true
}

// WriteHeader sends the status code (1xx codes other than 101 are
// informational: the standard path does not forward them either).
func (c *directCall) WriteHeader(code int) {
	if c.wroteHeader {
		caller := relevantCaller()
		c.w.d.logf("http: superfluous response.WriteHeader call from %s (%s:%d)", caller.Function, path.Base(caller.File), caller.Line)
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		return
	}
	c.wroteHeader = true
	c.status = code
	if c.calledHeader && !c.snapTaken {
		c.snapshot()
	}
	if cl := c.handlerHeader.Get("Content-Length"); cl != "" {
		v, err := strconv.ParseInt(cl, 10, 64)
		if err == nil && v >= 0 {
			c.contentLength = v
		} else {
			c.w.d.logf("http: invalid Content-Length of %q", cl)
			c.handlerHeader.Del("Content-Length")
		}
	}
}

// relevantCaller returns the first frame outside this package and
// net/http, for log messages about a handler's misuse.
func relevantCaller() runtime.Frame {
	pc := make([]uintptr, 16)
	n := runtime.Callers(1, pc)
	frames := runtime.CallersFrames(pc[:n])
	for {
		f, more := frames.Next()
		if !more || !strings.HasPrefix(f.Function, "net/http.") && !strings.HasPrefix(f.Function, "github.com/zmqhttp/zmqhttp.") {
			return f // the last frame if all are ours
		}
	}
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199, status == 204, status == 304:
		return false
	}
	return true
}

// Write writes body bytes.
func (c *directCall) Write(p []byte) (int, error) { return c.write(p, "") }

// WriteString writes body bytes.
func (c *directCall) WriteString(s string) (int, error) { return c.write(nil, s) }

var errWriteAfterEnd = errors.New("zmqhttp: write after the handler returned")

func (c *directCall) write(p []byte, s string) (int, error) {
	if c.handlerDone {
		return 0, errWriteAfterEnd
	}
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	n := len(p) + len(s)
	if n == 0 {
		return 0, nil
	}
	if !bodyAllowedForStatus(c.status) {
		return 0, http.ErrBodyNotAllowed
	}
	c.written += int64(n)
	if c.contentLength != -1 && c.written > c.contentLength {
		return 0, http.ErrContentLength
	}
	if err := c.writeErr(); err != nil {
		return 0, err
	}
	c.buffered(n)
	if c.committed && c.noBody {
		return n, nil // a HEAD response's body is eaten
	}
	if !c.committed {
		if len(c.buf)+n <= bufferBeforeChunking {
			c.buf = appendData(c.buf, p, s)
			return n, nil
		}
		// Past net/http's buffer: the header is final now, its
		// Content-Type sniffed from the first bytes.
		c.commit(c.sniffData(p, s))
		if c.noBody {
			c.buf = c.buf[:0]
			return n, nil
		}
	}
	if p != nil && len(p) >= streamFlushAt && c.streamsAt(len(c.buf)+n) {
		// A large write to a stream goes as it is, not copied.
		if err := c.writeThrough(p); err != nil {
			return 0, err
		}
		return n, nil
	}
	if !c.bufPooled && c.out == nil && c.contentLength >= refMin && c.contentLength <= wholeBodyMax {
		// Sent whole once complete: gather it in the buffer the reply
		// will take (wholeBodies), rather than copy it there then.
		c.ownBuf = c.buf[:0]
		c.buf = append(wholeBodies.get()[:0], c.buf...)
		c.bufPooled = true
	}
	c.buf = appendData(c.buf, p, s)
	if err := c.push(false, c.out != nil && len(c.buf) >= streamFlushAt); err != nil {
		return 0, err
	}
	return n, nil
}

func appendData(b, p []byte, s string) []byte {
	if p != nil {
		return append(b, p...)
	}
	return append(b, s...)
}

// sniffData returns the first bytes of the body (up to the 512 that
// http.DetectContentType reads): the buffered ones, then p or s.
func (c *directCall) sniffData(p []byte, s string) []byte {
	if len(c.buf) >= 512 {
		return c.buf
	}
	if len(c.buf) == 0 && p != nil {
		return p
	}
	d := append(c.w.sniff[:0], c.buf...)
	if p != nil {
		d = append(d, p[:min(len(p), 512-len(d))]...)
	} else {
		d = append(d, s[:min(len(s), 512-len(d))]...)
	}
	c.w.sniff = d[:0]
	return d
}

// streamsAt reports whether the committed response's body goes (or will
// go) out as a stream once total bytes are buffered.
func (c *directCall) streamsAt(total int) bool {
	if c.replied {
		return false
	}
	return c.out != nil || (c.j.streams() && (c.contentLength > wholeBodyMax || total > wholeBodyMax))
}

// writeThrough sends what is buffered, then p, to the stream (opened if
// need be), and ends the stream if the response is complete.
func (c *directCall) writeThrough(p []byte) error {
	if c.out == nil {
		if err := c.openStream(); err != nil {
			return err
		}
	} else if err := c.streamWrite(); err != nil {
		return err
	}
	buf := c.buf
	c.buf = p
	err := c.streamWrite()
	c.buf = buf[:0]
	if err != nil {
		return err
	}
	if c.complete() {
		return c.push(true, true)
	}
	return nil
}

// writeErr is the error writes fail with: the caller is gone, srv.Close,
// an earlier failure, or the write deadline.
func (c *directCall) writeErr() error {
	switch {
	case c.err != nil:
		return c.err
	case c.killed.Load():
		return net.ErrClosed
	case c.j.canceled():
		return errAborted
	}
	if dl := c.writeDeadline(); !dl.IsZero() && !time.Now().Before(dl) {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Flush sends what was written so far.
func (c *directCall) Flush() { c.FlushError() }

// FlushError sends what was written so far (http.ResponseController).
func (c *directCall) FlushError() error {
	if c.handlerDone {
		return errWriteAfterEnd
	}
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	if err := c.writeErr(); err != nil {
		return err
	}
	if !c.committed {
		c.commit(c.buf)
		if c.noBody {
			c.buf = c.buf[:0]
		}
	}
	c.wire = true
	c.onWire = len(c.buf)
	c.pend = 0
	return c.push(false, true)
}

// SetReadDeadline bounds reading the request body
// (http.ResponseController).
func (c *directCall) SetReadDeadline(t time.Time) error {
	c.dlMu.Lock()
	c.readDL = t
	c.dlMu.Unlock()
	select {
	case c.rdWake <- struct{}{}:
	default:
	}
	return nil
}

// SetWriteDeadline bounds writing the response (http.ResponseController).
func (c *directCall) SetWriteDeadline(t time.Time) error {
	c.dlMu.Lock()
	c.writeDL = t
	c.dlMu.Unlock()
	return nil
}

// EnableFullDuplex is a no-op: the request body can always be read
// while the response is written (http.ResponseController).
func (c *directCall) EnableFullDuplex() error { return nil }

// flatten appends the fields of h as net/http writes them (sorted by
// name, invalid names dropped, newlines in values made spaces, values
// trimmed) to kv, names as the handler wrote them.
func (c *directCall) flatten(h http.Header, kv []string) []string {
	keys := c.w.keys[:0]
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !validHeaderName(k) {
			continue
		}
		for _, v := range h[k] {
			if strings.ContainsAny(v, "\r\n") {
				v = newlineToSpace.Replace(v)
			}
			kv = append(kv, k, textproto.TrimString(v))
		}
	}
	clear(keys)
	c.w.keys = keys[:0]
	return kv
}

// newlineToSpace makes a header value's line breaks spaces, as net/http
// does when it writes the header.
var newlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// The fields whose mere presence in the handler's header, even with a
// nil value, stops net/http from adding them (nilFields).
const (
	nilContentType uint8 = 1 << iota
	nilDate
	nilContentLength
)

// nilFields reports which of Content-Type, Date and Content-Length h
// holds with no value (flatten leaves them out).
func nilFields(h http.Header) uint8 {
	var b uint8
	if v, ok := h["Content-Type"]; ok && len(v) == 0 {
		b |= nilContentType
	}
	if v, ok := h["Date"]; ok && len(v) == 0 {
		b |= nilDate
	}
	if v, ok := h["Content-Length"]; ok && len(v) == 0 {
		b |= nilContentLength
	}
	return b
}

// badResponseTrailer are the fields a Trailer field may not announce
// (RFC 7230 section 4.1.2, as net/http's httpguts.ValidTrailerHeader):
// net/http leaves them out of the trailers it sends.
var badResponseTrailer = map[string]bool{
	"Authorization": true, "Cache-Control": true, "Connection": true,
	"Content-Encoding": true, "Content-Length": true, "Content-Range": true,
	"Content-Type": true, "Expect": true, "Host": true, "Keep-Alive": true,
	"Max-Forwards": true, "Pragma": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Proxy-Connection": true, "Range": true,
	"Realm": true, "Te": true, "Trailer": true, "Transfer-Encoding": true,
	"Www-Authenticate": true,
}

// kvHas reports whether kv has the field name (exact).
func kvHas(kv []string, name string) bool {
	for i := 0; i < len(kv); i += 2 {
		if kv[i] == name {
			return true
		}
	}
	return false
}

func kvGet(kv []string, name string) string {
	for i := 0; i < len(kv); i += 2 {
		if kv[i] == name {
			return kv[i+1]
		}
	}
	return ""
}

func kvDel(kv []string, name string) []string {
	out := kv[:0]
	for i := 0; i < len(kv); i += 2 {
		if kv[i] != name {
			out = append(out, kv[i], kv[i+1])
		}
	}
	return out
}

// commit makes the header final, as net/http's chunkWriter.writeHeader
// does with p, the body's first bytes (all of them once the handler has
// returned).
func (c *directCall) commit(p []byte) {
	c.committed = true
	var hdr []string
	if c.snapTaken {
		hdr = c.snap
	} else {
		hdr = c.flatten(c.handlerHeader, c.w.kv[:0])
	}
	isHEAD := c.j.env.Method == "HEAD"
	// net/http tests these fields for presence: a nil value (flatten
	// drops it) keeps the field out and stops what it would add.
	present := c.snapNil
	if !c.snapTaken {
		present = nilFields(c.handlerHeader)
	}
	has := func(name string, bit uint8) bool { return present&bit != 0 || kvHas(hdr, name) }
	trailers := false
	if c.snapTaken {
		out := hdr[:0]
		for i := 0; i < len(hdr); i += 2 {
			if strings.HasPrefix(hdr[i], http.TrailerPrefix) {
				trailers = true
				continue
			}
			out = append(out, hdr[i], hdr[i+1])
		}
		hdr = out
	}
	for i := 0; i < len(hdr); i += 2 {
		if hdr[i] == "Trailer" {
			trailers = true
			forEachElement(hdr[i+1], func(k string) {
				k = http.CanonicalHeaderKey(k)
				if badResponseTrailer[k] {
					return
				}
				c.declared = append(c.declared, k)
			})
		}
	}
	// Transfer-Encoding is read here; the responseSkip filter at the end
	// drops it (in any spelling) from what is sent.
	te := kvGet(hdr, "Transfer-Encoding")
	hasTE := te != ""
	code := c.status
	bodyOK := bodyAllowedForStatus(code)
	var setCL, setCT string
	if c.handlerDone && !trailers && !hasTE && bodyOK && !has("Content-Length", nilContentLength) && (!isHEAD || len(p) > 0) {
		c.contentLength = int64(len(p))
		setCL = itoa(int64(len(p)))
	}
	hasCL := c.contentLength != -1
	if bodyOK {
		if !has("Content-Type", nilContentType) && kvGet(hdr, "Content-Encoding") == "" && !hasTE && len(p) > 0 {
			setCT = http.DetectContentType(p) // it reads at most 512 bytes
		}
	} else {
		if code == http.StatusNotModified {
			hdr = kvDel(hdr, "Content-Type")
		}
		hdr = kvDel(hdr, "Content-Length")
	}
	setDate := !has("Date", nilDate)
	if hasCL && hasTE && te != "identity" {
		c.w.d.logf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, c.contentLength)
		hdr = kvDel(hdr, "Content-Length")
		hasCL = false
	}
	switch {
	case isHEAD || !bodyOK:
		c.noBody = true
	case hasCL:
	case hasTE && te == "identity":
		c.untilClose = true
	default:
		c.chunking = true
	}
	if c.chunking {
		hdr = kvDel(hdr, "Content-Length")
	}
	if setDate {
		hdr = append(hdr, "Date", c.w.httpDate())
	}
	if setCL != "" {
		hdr = append(hdr, "Content-Length", setCL)
	}
	if setCT != "" {
		hdr = append(hdr, "Content-Type", setCT)
	}
	// As the standard path's parser reads them: canonical names; the
	// fields about the HTTP/1.1 connection dropped.
	out := hdr[:0]
	for i := 0; i < len(hdr); i += 2 {
		name := textproto.CanonicalMIMEHeaderKey(hdr[i])
		if responseSkip[name] {
			continue
		}
		out = append(out, name, hdr[i+1])
	}
	c.hdr = out
	c.w.kv = out[:0] // grown: reused by the next request (the reply is encoded before)
	if c.noBody {
		c.contentLength = -1
	}
}

// complete reports whether the response is complete without the
// handler's return: bodyless, or its declared length written.
func (c *directCall) complete() bool {
	return c.committed && (c.noBody || (c.contentLength >= 0 && !c.chunking && !c.untilClose && c.written >= c.contentLength && c.pend == 0))
}

// buffered follows net/http's 2 KiB response buffer (a bufio.Writer in
// front of the connection) through a write of n body bytes: pend is what
// it holds, which reaches the client only at a flush or the handler's
// return. A response whose last bytes are held there is not complete:
// it is not sent before the handler returns, and a panic fails it.
func (c *directCall) buffered(n int) {
	for n > bufferBeforeChunking-c.pend {
		if c.pend == 0 {
			return // a large write to an empty buffer goes straight through
		}
		n -= bufferBeforeChunking - c.pend
		c.pend = 0
	}
	c.pend += n
}

// push hands on what the committed response has, as the standard path
// does with the bytes that reach its connection: the whole reply once
// complete; a stream for a peer that takes one when the body is
// open-ended or large (and there is something to send: flush); else it
// keeps buffering. end is the handler's return.
func (c *directCall) push(end, flush bool) error {
	if c.replied {
		return nil
	}
	done := end || c.complete()
	switch {
	case c.out != nil:
		if flush || done {
			if err := c.streamWrite(); err != nil {
				return err
			}
		}
	case c.j.streams() && (c.contentLength > wholeBodyMax || len(c.buf) > wholeBodyMax ||
		((c.chunking || c.untilClose) && flush && !done)):
		if err := c.openStream(); err != nil {
			return err
		}
	case done:
		return c.sendWhole()
	case !c.j.streams() && int64(len(c.buf)) > c.w.d.l.cfg.limits.maxBodyBytes():
		return c.fail(ErrBodyTooLarge)
	default:
		return nil // buffering
	}
	if done && !c.replied {
		c.replied = true
		c.out.finish(c.trailerKV())
		c.w.d.l.finished(c.j)
	}
	return nil
}

// fail ends the response with an error envelope (the handler's writes
// fail from now on).
func (c *directCall) fail(err error) error {
	c.err = err
	c.replied = true
	c.w.d.l.stats.noResponse.Add(1)
	if c.out != nil {
		c.out.abort(err)
	}
	code := errCodeInternal
	if errors.Is(err, ErrBodyTooLarge) {
		code = errCodeTooLarge
	}
	c.replyError(errorEnvelope(c.j.env.ID, code, "handler response: "+bare(err)))
	return err
}

// replyError sends e unless the caller is gone, and frees the slot.
func (c *directCall) replyError(e *envelope) {
	if !c.j.canceled() {
		c.j.peer.replyCtrl(c.j.route, e)
	}
	c.w.d.l.finished(c.j)
}

// openStream sends the head and what is buffered as a stream.
func (c *directCall) openStream() error {
	j := c.j
	e := c.renderEnvelope(true)
	head, err := appendEnvelope(getBuf(), e)
	if err != nil {
		return c.fail(err)
	}
	s, err := j.peer.newSendStream(j.env.ID, head, nil)
	if err != nil {
		c.err = err
		c.replied = true
		c.w.d.l.finished(j)
		return err
	}
	c.dlMu.Lock()
	c.out = s
	c.dlMu.Unlock()
	if j.canceled() || c.killed.Load() {
		s.abort(errAborted)
		c.replied = true
		c.err = errAborted
		c.w.d.l.finished(j)
		return errAborted
	}
	return c.streamWrite()
}

// streamWrite writes the buffered body to the stream, checking the
// body limit.
func (c *directCall) streamWrite() error {
	if len(c.buf) == 0 {
		return nil
	}
	j := c.j
	if lim := c.w.d.l.cfg.limits.maxStreamBytes(); lim > 0 && c.sentBody+int64(len(c.buf)) > lim {
		return c.fail(ErrBodyTooLarge)
	}
	_, err := c.out.write(c.buf, j.abort, c.writeDeadline())
	c.sentBody += int64(len(c.buf))
	c.buf = c.buf[:0]
	c.onWire = 0
	if err != nil {
		aborted := j.canceled()
		c.replied = true
		c.w.d.l.finished(j)
		switch {
		case aborted:
			err = errAborted
		case c.killed.Load():
			err = net.ErrClosed
		case err == errStop:
			err = os.ErrDeadlineExceeded
		}
		c.err = err
		return err
	}
	return nil
}

// trailerKV returns the trailers net/http would write at the end of a
// chunked body: the TrailerPrefix fields and the declared ones, sorted.
func (c *directCall) trailerKV() []string {
	if !c.chunking {
		return nil
	}
	var t http.Header
	for k, vv := range c.handlerHeader {
		if kk, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range c.declared {
		if t == nil {
			t = make(http.Header)
		}
		for _, v := range c.handlerHeader[k] {
			t.Add(k, v)
		}
	}
	if len(t) == 0 {
		return nil
	}
	kv := c.flatten(t, nil)
	for i := 0; i < len(kv); i += 2 {
		kv[i] = textproto.CanonicalMIMEHeaderKey(kv[i])
	}
	return kv
}

// renderEnvelope renders the response (whole, or the head of a stream)
// into the worker's envelope.
func (c *directCall) renderEnvelope(streamed bool) *envelope {
	e := &c.w.env
	*e = envelope{
		Version: ProtocolVersion,
		Kind:    KindResponse,
		ID:      c.j.env.ID,
		Status:  c.status,
		Header:  c.hdr,
	}
	if text := http.StatusText(c.status); text == "" {
		e.Message = "status code " + strconv.Itoa(c.status)
	}
	if c.noBody {
		e.setFraming(false, false, streamed, 0, 0)
		return e
	}
	e.setFraming(c.chunking, c.untilClose, streamed, c.contentLength, len(c.buf))
	if !streamed {
		e.Body, e.Trailer = c.buf, c.trailerKV()
	}
	return e
}

// sendWhole sends the complete response in one envelope.
func (c *directCall) sendWhole() error {
	j := c.j
	if (c.untilClose || c.chunking) && int64(len(c.buf)) > c.w.d.l.cfg.limits.maxBodyBytes() && !j.streams() {
		return c.fail(ErrBodyTooLarge)
	}
	c.replied = true
	if dl := c.writeDeadline(); !dl.IsZero() && !time.Now().Before(dl) {
		// The server's write fails: the connection closes without a
		// complete response.
		c.err = os.ErrDeadlineExceeded
		c.w.d.l.verdict(j, false)
		return c.err
	}
	e := c.renderEnvelope(false)
	pooled := false
	if c.bufPooled {
		pooled = true
		c.bufGiven = true // back to the pool once written
	} else if len(e.Body) >= refMin {
		if len(e.Body) <= wholeBodyMax {
			b := wholeBodies.get()[:len(e.Body)]
			copy(b, e.Body)
			e.Body = b
			pooled = true
		} else {
			c.bufGiven = true // handed over with the reply
		}
	}
	c.replyWhole(e, pooled)
	c.buf = c.buf[:0]
	return nil
}

// replyWhole queues a whole response for c's job (unless its caller is
// gone or late) and frees its worker slot.
func (c *directCall) replyWhole(e *envelope, pooled bool) {
	j := c.j
	late := !j.deadline.IsZero() && !time.Now().Before(j.deadline)
	if !j.canceled() && !late {
		j.peer.reply(j.route, e, pooled)
	} else if pooled {
		wholeBodies.put(e.Body)
	}
	c.w.d.l.finished(j)
}

// finish ends the response once the handler has returned, as net/http's
// finishRequest does.
func (c *directCall) finish() {
	c.cancelCtx() // net/http cancels the request's context before finishing
	if !c.wroteHeader {
		c.WriteHeader(http.StatusOK)
	}
	c.handlerDone = true
	if c.body != nil {
		c.body.Close()
	}
	if c.replied {
		return
	}
	if c.killed.Load() {
		c.abandon()
		return
	}
	if !c.committed {
		c.commit(c.buf)
		if c.noBody {
			c.buf = c.buf[:0]
		}
	}
	if !c.noBody && c.contentLength >= 0 && !c.chunking && !c.untilClose && c.written < c.contentLength {
		// Less than its Content-Length: net/http closes the
		// connection; the response is incomplete.
		c.abandon()
		return
	}
	if err := c.writeErr(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.abandon()
		return
	}
	c.push(true, true)
}

// abandon ends a response the handler did not complete (it panicked,
// wrote less than its length, srv.Close): as when the standard path's
// connection closes under it. What was flushed of a body that runs until
// the connection closes is complete; anything else fails.
func (c *directCall) abandon() {
	c.handlerDone = true
	if c.replied {
		return
	}
	j := c.j
	if c.committed && c.untilClose && c.wire && !c.killed.Load() {
		c.buf = c.buf[:c.onWire]
		if c.out != nil {
			c.streamWrite()
			if !c.replied {
				c.replied = true
				c.out.finish(nil)
				c.w.d.l.finished(j)
			}
			return
		}
		c.sendWhole()
		return
	}
	c.replied = true
	if c.out != nil {
		c.out.abort(errAborted)
	}
	c.w.d.l.verdict(j, false)
}
