package zmqhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file builds the *http.Request of a job on the direct path (Serve)
// straight from its envelope: the request http.Server would have parsed
// from the bytes requestBytes renders, refused the same way when net/http
// refuses it.

// statusRefusal is a request net/http refuses before the handler, and the
// raw response it writes: "HTTP/1.1 <code> <text>" with a plain text body
// delimited by the connection's close.
type statusRefusal struct {
	code   int
	reason string // the status line's text after the code
	body   string
}

func badRequest(text string) *statusRefusal {
	return &statusRefusal{code: http.StatusBadRequest, reason: "Bad Request: " + text, body: "400 Bad Request: " + text}
}

var (
	refusalBad      = &statusRefusal{code: http.StatusBadRequest, reason: "Bad Request", body: "400 Bad Request"}
	refusalTooLarge = &statusRefusal{code: http.StatusRequestHeaderFieldsTooLarge, reason: "Request Header Fields Too Large", body: "431 Request Header Fields Too Large"}
)

// requestHopSkip are the request header fields requestBytes leaves out
// (carried by the envelope's own fields, or about one HTTP/1.1 hop).
func requestHopSkip(name string) bool {
	switch name {
	case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Proxy-Connection", "Upgrade", "Te":
		return true
	}
	return false
}

// buildRequest builds c's request from its job's envelope, or returns the
// refusal net/http would answer it with.
func (c *directCall) buildRequest() *statusRefusal {
	w, j := c.w, c.j
	e := &j.env
	srv := w.d.srv
	chunked := e.ContentLength < 0
	streamed := e.Flags&flagStreamed != 0

	// The head as requestBytes renders it, for MaxHeaderBytes.
	headLen := len(e.Method) + 1 + len(e.URI) + len(" HTTP/1.1\r\nHost: ") + len(e.Host) + 2 + 2
	n := 0
	declared := false
	for i := 0; i+1 < len(e.Header); i += 2 {
		name := e.Header[i]
		if requestHopSkip(name) || (name == "Trailer" && !chunked) {
			continue
		}
		if name == "Trailer" {
			declared = true
		}
		n++
		headLen += len(name) + 2 + len(e.Header[i+1]) + 2
	}
	// Trailers the envelope carries that no Trailer field announced:
	// requestBytes announces them.
	var undeclared []string
	if chunked && len(e.Trailer) > 0 && !declared && !streamed {
		undeclared = trailerNames(e.Trailer)
	}
	var clValue string
	switch {
	case chunked:
		headLen += len("Transfer-Encoding: chunked\r\n")
		if len(undeclared) > 0 {
			headLen += len("Trailer: \r\n")
			for i, name := range undeclared {
				if i > 0 {
					headLen += 2
				}
				headLen += len(name)
			}
		}
	case streamed:
		clValue = itoa(e.ContentLength)
	case len(e.Body) > 0 || e.Method == "POST" || e.Method == "PUT" || e.Method == "PATCH":
		clValue = itoa(int64(len(e.Body)))
	}
	if clValue != "" {
		headLen += len("Content-Length: \r\n") + len(clValue)
		n++
	}
	maxHeader := srv.MaxHeaderBytes
	if maxHeader <= 0 {
		maxHeader = http.DefaultMaxHeaderBytes
	}
	if headLen > maxHeader+4096 {
		return refusalTooLarge
	}

	rawurl := e.URI
	justAuthority := e.Method == "CONNECT" && !strings.HasPrefix(rawurl, "/")
	if justAuthority {
		rawurl = "http://" + rawurl
	}
	u, err := url.ParseRequestURI(rawurl)
	if err != nil {
		return refusalBad
	}
	if justAuthority {
		u.Scheme = ""
	}

	h := make(http.Header, n)
	vals := make([]string, 0, n)
	var trailer http.Header
	addTrailerKeys := func(v string) *statusRefusal {
		var bad *statusRefusal
		forEachElement(v, func(k string) {
			k = http.CanonicalHeaderKey(k)
			switch k {
			case "Transfer-Encoding", "Trailer", "Content-Length":
				if bad == nil {
					bad = refusalBad
				}
				return
			}
			if trailer == nil {
				trailer = make(http.Header)
			}
			trailer[k] = nil
		})
		return bad
	}
	for i := 0; i+1 < len(e.Header); i += 2 {
		name := e.Header[i]
		if requestHopSkip(name) {
			continue
		}
		if name == "Trailer" {
			if !chunked {
				continue
			}
			// net/http takes the Trailer field out of the header.
			if bad := addTrailerKeys(e.Header[i+1]); bad != nil {
				return bad
			}
			continue
		}
		v := textproto.TrimString(e.Header[i+1])
		start := len(vals)
		vals = append(vals, v)
		if prev, ok := h[name]; ok {
			h[name] = append(prev, v)
		} else {
			h[name] = vals[start : start+1 : start+1]
		}
	}
	for _, name := range undeclared {
		if bad := addTrailerKeys(name); bad != nil {
			return bad
		}
	}
	if clValue != "" {
		vals = append(vals, clValue)
		h["Content-Length"] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	// fixPragmaCacheControl
	if pv, ok := h["Pragma"]; ok && len(pv) > 0 && pv[0] == "no-cache" {
		if _, ok := h["Cache-Control"]; !ok {
			h["Cache-Control"] = []string{"no-cache"}
		}
	}
	if !validHostHeader(e.Host) {
		return badRequest("malformed Host header")
	}
	host := u.Host
	if host == "" {
		host = e.Host
	}

	r := &w.tmpl
	*r = http.Request{
		Method:     e.Method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       host,
		RequestURI: e.URI,
		RemoteAddr: j.peer.addr.String(),
		Trailer:    trailer,
	}
	switch {
	case streamed:
		r.ContentLength = e.ContentLength
		if chunked {
			r.TransferEncoding = []string{"chunked"}
		}
		c.rdWake = make(chan struct{}, 1) // only a streamed body's reads wait
		c.bodyv = directBody{c: c, rs: j.body, left: e.ContentLength, chunked: chunked, trailer: trailer}
		c.body = &c.bodyv
		r.Body = c.body
	case chunked:
		r.ContentLength = -1
		r.TransferEncoding = []string{"chunked"}
		c.bodyv = directBody{c: c, data: e.Body, chunked: true, trailerKV: e.Trailer, trailer: trailer}
		c.body = &c.bodyv
		r.Body = c.body
	case len(e.Body) > 0:
		r.ContentLength = int64(len(e.Body))
		c.bodyv = directBody{c: c, data: e.Body}
		c.body = &c.bodyv
		r.Body = c.body
	default:
		r.Body = http.NoBody
	}
	if ev, ok := h["Expect"]; ok && len(ev) > 0 && ev[0] != "" {
		if !hasToken(ev[0], "100-continue") {
			c.expectFailed = true
		}
	}
	return nil
}

// hasToken reports whether v holds token (ASCII, lower case) as one of
// its comma- or space-separated elements, case-insensitively: net/http's
// test of an Expect field for 100-continue.
func hasToken(v, token string) bool {
	boundary := func(b byte) bool { return b == ' ' || b == ',' || b == '\t' }
	for sp := 0; sp+len(token) <= len(v); sp++ {
		if sp > 0 && !boundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !boundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

// detachStrings copies e's strings (method, URI, host, header and trailer
// fields) into one new string: e's frame can then be reused while the
// handler keeps them.
func detachStrings(e *envelope) {
	n := len(e.Method) + len(e.URI) + len(e.Host)
	for _, s := range e.Header {
		n += len(s)
	}
	for _, s := range e.Trailer {
		n += len(s)
	}
	var b strings.Builder
	b.Grow(n)
	b.WriteString(e.Method)
	b.WriteString(e.URI)
	b.WriteString(e.Host)
	for _, s := range e.Header {
		b.WriteString(s)
	}
	for _, s := range e.Trailer {
		b.WriteString(s)
	}
	all := b.String()
	take := func(s string) string {
		t := all[:len(s)]
		all = all[len(s):]
		return t
	}
	e.Method, e.URI, e.Host = take(e.Method), take(e.URI), take(e.Host)
	h := make([]string, len(e.Header)+len(e.Trailer))
	for i, s := range e.Header {
		h[i] = take(s)
	}
	e.Header = h[:len(e.Header):len(e.Header)]
	if len(e.Trailer) > 0 {
		t := h[len(e.Header):]
		for i, s := range e.Trailer {
			t[i] = take(s)
		}
		e.Trailer = t
	}
}

// smallInts holds the decimal text of 0 to 4095: Content-Length values
// without an allocation each.
var smallInts = func() []string {
	s := make([]string, 4096)
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

// itoa is strconv.FormatInt(n, 10), without allocating for small n.
func itoa(n int64) string {
	if n >= 0 && n < int64(len(smallInts)) {
		return smallInts[n]
	}
	return strconv.FormatInt(n, 10)
}

// forEachElement calls fn for each non-empty element of a comma-separated
// header value.
func forEachElement(v string, fn func(string)) {
	for f := range strings.SplitSeq(v, ",") {
		if f = textproto.TrimString(f); f != "" {
			fn(f)
		}
	}
}

// validHostHeader reports whether h holds only bytes net/http admits in a
// Host header: letters, digits and the punctuation of host names, IP
// literals (IPv6 in brackets, zones) and ports.
func validHostHeader(h string) bool {
	for i := 0; i < len(h); i++ {
		b := h[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
			continue
		}
		if !strings.ContainsRune("!$%&'()*+,-.:;=[]_~", rune(b)) {
			return false
		}
	}
	return true
}

// directBody is a request's Body on the direct path: the envelope's whole
// body, or its stream. Like net/http's, it fills r.Trailer at the end of
// a chunked body and fails reads after Close.
type directBody struct {
	c *directCall

	// mu guards the following fields (a handler may Close it from
	// another goroutine).
	mu        sync.Mutex
	data      []byte
	rs        *recvStream
	left      int64 // a stream with a length: bytes not yet read
	chunked   bool
	trailerKV []string    // a whole chunked body's trailers
	trailer   http.Header // r.Trailer, filled at the end
	closed    bool
	eof       bool
}

// Read reads the body.
func (b *directBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.rs == nil {
		if len(b.data) == 0 {
			b.end(b.trailerKV)
			return 0, io.EOF
		}
		n := copy(p, b.data)
		b.data = b.data[n:]
		if len(b.data) == 0 {
			// As net/http's body does, the end comes with the last
			// bytes (a reader such as bytes.Buffer.ReadFrom then does
			// not grow its buffer for an empty read).
			b.end(b.trailerKV)
			return n, io.EOF
		}
		return n, nil
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !b.chunked {
		if b.left <= 0 {
			b.eof = true
			return 0, io.EOF
		}
		if int64(len(p)) > b.left {
			p = p[:b.left]
		}
	}
	for {
		n, err := b.rs.readSome(p)
		if n > 0 {
			b.left -= int64(n)
			if !b.chunked && b.left == 0 {
				b.eof = true
				return n, io.EOF
			}
			return n, nil
		}
		if err == io.EOF {
			if !b.chunked {
				return 0, io.ErrUnexpectedEOF // shorter than declared
			}
			b.end(b.rs.trailers())
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		if b.c.killed.Load() {
			return 0, net.ErrClosed // srv.Close: the connection is gone
		}
		if err := b.wait(); err != nil {
			return 0, err
		}
	}
}

// wait waits, with b.mu released, for more of the stream, the request's
// end, or the read deadline (srv.ReadTimeout or SetReadDeadline).
func (b *directBody) wait() error {
	dl := b.c.readDeadline()
	b.mu.Unlock()
	defer b.mu.Lock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-b.rs.notify:
	case <-b.c.j.abort:
	case <-b.c.rdWake:
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
	return nil
}

// end records the end of the body and its trailers (b.mu held).
func (b *directBody) end(kv []string) {
	b.eof = true
	if len(kv) == 0 {
		return
	}
	if b.trailer == nil {
		b.trailer = make(http.Header)
		b.c.req.Trailer = b.trailer
	}
	got := headerFromPairs(kv)
	for k, v := range got {
		b.trailer[k] = v
	}
}

// Close ends the body: later reads fail.
func (b *directBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// newCtx makes the context of c's request: the peer's, ended when the
// handler returns, when the caller cancels or its deadline passes. The
// job's own timer ends it at the deadline (abortCtx): no second timer.
func (c *directCall) newCtx(parent context.Context) context.Context {
	ctx, cancel := context.WithCancelCause(parent)
	c.cancel = cancel
	if dl := c.j.deadline; !dl.IsZero() {
		if pdl, ok := parent.Deadline(); !ok || dl.Before(pdl) {
			return &deadlineCtx{Context: ctx, deadline: dl}
		}
	}
	return ctx
}

// deadlineCtx is the context of a request whose caller set a deadline:
// a cancellable context that reports the deadline and, once cancelled
// because it passed, context.DeadlineExceeded. (Contexts derived from it
// see context.Canceled then, with context.Cause DeadlineExceeded.)
type deadlineCtx struct {
	context.Context
	deadline time.Time
}

// Deadline returns the caller's deadline.
func (c *deadlineCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Err returns context.DeadlineExceeded once the deadline ended the
// context.
func (c *deadlineCtx) Err() error {
	err := c.Context.Err()
	if err != nil && context.Cause(c.Context) == context.DeadlineExceeded {
		return context.DeadlineExceeded
	}
	return err
}
