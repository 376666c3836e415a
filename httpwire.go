package zmqhttp

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"sort"
	"strconv"
	"strings"
)

// This file converts between envelopes and the HTTP/1.1 bytes the user's
// http.Server reads and writes on a Listener's connections.

// requestBytes renders a request envelope as HTTP/1.1 request bytes, as a
// few segments so that the body is not copied: head, body, and (for a
// chunked request) the chunk framing around it. A streamed request gets
// its head only (its body follows from the stream, chunked if it has no
// length). It reports whether the request is chunked. The segments are
// appended to parts. The head (parts[0]) is in a buffer from the buffer
// pool, to go back once read (job.release).
func requestBytes(e *envelope, parts [][]byte) ([][]byte, bool) {
	streamed := e.Flags&flagStreamed != 0
	b := bytes.NewBuffer(getBuf())
	b.Grow(headSize(e))
	b.WriteString(e.Method)
	b.WriteByte(' ')
	b.WriteString(e.URI)
	b.WriteString(" HTTP/1.1\r\nHost: ")
	b.WriteString(e.Host)
	b.WriteString("\r\n")
	chunked := e.ContentLength < 0
	declared := false // a Trailer field announces the trailers
	for i := 0; i+1 < len(e.Header); i += 2 {
		switch e.Header[i] {
		case "Host", "Content-Length", "Transfer-Encoding":
			continue // carried by the envelope's own fields
		case "Connection", "Keep-Alive", "Proxy-Connection", "Upgrade", "Te":
			continue // about one HTTP/1.1 hop, which the envelope is not
		case "Trailer":
			if !chunked {
				continue // trailers exist only in a chunked body
			}
			declared = true
		}
		b.WriteString(e.Header[i])
		b.WriteString(": ")
		b.WriteString(e.Header[i+1])
		b.WriteString("\r\n")
	}
	switch {
	case chunked:
		b.WriteString("Transfer-Encoding: chunked\r\n")
		if len(e.Trailer) > 0 && !declared && !streamed {
			b.WriteString("Trailer: ")
			b.WriteString(strings.Join(trailerNames(e.Trailer), ", "))
			b.WriteString("\r\n")
		}
	case streamed:
		b.WriteString("Content-Length: ")
		b.WriteString(strconv.FormatInt(e.ContentLength, 10))
		b.WriteString("\r\n")
	case len(e.Body) > 0 || e.Method == "POST" || e.Method == "PUT" || e.Method == "PATCH":
		b.WriteString("Content-Length: ")
		b.WriteString(strconv.Itoa(len(e.Body)))
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	if streamed {
		return append(parts, b.Bytes()), chunked
	}
	if !chunked {
		if len(e.Body) == 0 {
			return append(parts, b.Bytes()), false
		}
		return append(parts, b.Bytes(), e.Body), false
	}
	if len(e.Body) > 0 {
		b.WriteString(strconv.FormatInt(int64(len(e.Body)), 16))
		b.WriteString("\r\n")
	}
	var tail bytes.Buffer
	if len(e.Body) > 0 {
		tail.WriteString("\r\n")
	}
	tail.WriteString("0\r\n")
	for i := 0; i+1 < len(e.Trailer); i += 2 {
		tail.WriteString(e.Trailer[i])
		tail.WriteString(": ")
		tail.WriteString(e.Trailer[i+1])
		tail.WriteString("\r\n")
	}
	tail.WriteString("\r\n")
	return append(parts, b.Bytes(), e.Body, tail.Bytes()), true
}

// headSize is the size of the request head requestBytes renders for e,
// give or take a few bytes (so that its buffer grows once).
func headSize(e *envelope) int {
	n := len(e.Method) + len(e.URI) + len(e.Host) + 96 // request line, Host, framing fields, chunk size
	for _, s := range e.Header {
		n += len(s) + 2
	}
	for _, s := range e.Trailer {
		n += len(s) + 2
	}
	return n
}

func trailerNames(kv []string) []string {
	seen := map[string]bool{}
	var names []string
	for i := 0; i < len(kv); i += 2 {
		if !seen[kv[i]] {
			seen[kv[i]] = true
			names = append(names, kv[i])
		}
	}
	return names
}

// respParser reads the HTTP/1.1 response an http.Server writes, as it is
// written, and knows when it is complete. It skips 1xx responses. The
// caller owns it and serialises calls.
type respParser struct {
	headReq   bool // the request was HEAD: no body follows the header
	maxBody   int64
	maxHeader int
	written   int64 // bytes the server wrote, in all

	state      int
	pend       []byte // bytes not yet consumed by the state machine
	left       int64  // bytes left in the current body part or chunk
	status     int
	reason     string
	hdr        []string // header fields as written: name, value, ...
	body       []byte
	total      int64 // body bytes taken
	trailer    []string
	chunked    bool
	untilClose bool  // the body ended when the server closed the connection
	declared   int64 // the Content-Length the server wrote; -1 if none
	streaming  bool  // body bytes go to out (aliasing the input) instead of body
	out        [][]byte
	err        error
	renv       envelope // what render fills in (here, not allocated per response)
}

const (
	psHeader = iota
	psBody
	psChunkSize
	psChunkData
	psChunkEnd
	psTrailer
	psUntilClose
	psDone
)

var (
	errHeaderTooLarge   = errors.New("response header too large")
	errMalformedReponse = errors.New("malformed HTTP response from handler")
)

// write consumes p. It returns an error once the response is invalid or
// over a limit; after that the parser takes nothing more.
func (p *respParser) write(b []byte) error {
	p.written += int64(len(b))
	if p.err != nil {
		return p.err
	}
	if p.state == psDone {
		return nil
	}
	// Bytes are parsed where they are; only an unfinished line (a
	// header block, a chunk size) is kept in pend for the next write, so
	// body bytes are copied once, into the body.
	in := b
	usedPend := len(p.pend) > 0
	if usedPend {
		p.pend = append(p.pend, b...)
		in = p.pend
	}
	nout := len(p.out)
	rest, err := p.advance(in)
	if usedPend {
		// out must not alias pend, which is reused.
		for i := nout; i < len(p.out); i++ {
			p.out[i] = bytes.Clone(p.out[i])
		}
	}
	p.err = err
	p.pend = append(p.pend[:0], rest...)
	return err
}

// pooledBody reports whether the body buffer came from wholeBodies.
func (p *respParser) pooledBody() bool {
	return cap(p.body) == wholeBodyMax && p.declared >= refMin && p.declared <= wholeBodyMax
}

// headDone reports whether the response head has been read.
func (p *respParser) headDone() bool { return p.state != psHeader }

// addBody takes body bytes: copied into body, or, streaming, kept as they
// are in out (the caller sends them before its Write returns).
func (p *respParser) addBody(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	p.total += int64(len(b))
	if p.total > p.maxBody {
		return ErrBodyTooLarge
	}
	if p.streaming {
		p.out = append(p.out, b)
	} else {
		p.body = append(p.body, b...)
	}
	return nil
}

// trailerList returns the trailer fields read.
func (p *respParser) trailerList() []string { return p.trailer }

// done reports whether a complete response has been read.
func (p *respParser) done() bool { return p.state == psDone }

// finish is called when the server closes the connection. A response that
// runs until close is complete then; any other unfinished one is not.
func (p *respParser) finish() bool {
	if p.state == psUntilClose {
		p.state = psDone
		p.untilClose = true
	}
	return p.state == psDone
}

// advance runs the state machine over in and returns what it could not
// consume yet.
func (p *respParser) advance(in []byte) ([]byte, error) {
	for {
		switch p.state {
		case psDone:
			in = in[:0]
			return in, nil
		case psHeader:
			i := bytes.Index(in, []byte("\r\n\r\n"))
			if i < 0 {
				if len(in) > p.maxHeader {
					return nil, errHeaderTooLarge
				}
				return in, nil
			}
			if err := p.parseHeader(in[:i+4]); err != nil {
				return nil, err
			}
			in = in[i+4:]
		case psBody, psUntilClose:
			n := int64(len(in))
			if p.state == psBody {
				n = min(n, p.left)
				p.left -= n
			}
			if err := p.addBody(in[:n]); err != nil {
				return nil, err
			}
			in = in[n:]
			if p.state == psBody && p.left == 0 {
				p.state = psDone
			}
			if len(in) == 0 {
				in = in[:0:0]
				return in, nil
			}
		case psChunkSize:
			i := bytes.IndexByte(in, '\n')
			if i < 0 {
				if len(in) > 4096 {
					return nil, errMalformedReponse
				}
				return in, nil
			}
			line := strings.TrimSpace(string(in[:i]))
			if semi := strings.IndexByte(line, ';'); semi >= 0 {
				line = strings.TrimSpace(line[:semi])
			}
			n, err := strconv.ParseInt(line, 16, 64)
			if err != nil || n < 0 {
				return nil, errMalformedReponse
			}
			in = in[i+1:]
			if n == 0 {
				p.state = psTrailer
				continue
			}
			if p.total+n > p.maxBody {
				return nil, ErrBodyTooLarge
			}
			p.left = n
			p.state = psChunkData
		case psChunkData:
			n := min(int64(len(in)), p.left)
			if err := p.addBody(in[:n]); err != nil {
				return nil, err
			}
			in = in[n:]
			p.left -= n
			if p.left > 0 {
				return in, nil
			}
			p.state = psChunkEnd
		case psChunkEnd:
			if len(in) < 2 {
				return in, nil
			}
			if in[0] != '\r' || in[1] != '\n' {
				return nil, errMalformedReponse
			}
			in = in[2:]
			p.state = psChunkSize
		case psTrailer:
			if len(in) >= 2 && in[0] == '\r' && in[1] == '\n' {
				in = in[2:]
				p.state = psDone
				continue
			}
			i := bytes.Index(in, []byte("\r\n\r\n"))
			if i < 0 {
				if len(in) > p.maxHeader {
					return nil, errHeaderTooLarge
				}
				return in, nil
			}
			tr, err := parseFields(string(in[:i+4]), nil)
			if err != nil {
				return nil, err
			}
			p.trailer = tr
			in = in[i+4:]
			p.state = psDone
		}
	}
}

func (p *respParser) parseHeader(block []byte) error {
	text := string(block) // one allocation; names and values share it
	line, rest, _ := strings.Cut(text, "\r\n")
	proto, status, ok := strings.Cut(line, " ")
	if !ok || !strings.HasPrefix(proto, "HTTP/1.") {
		return fmt.Errorf("%w: status line %q", errMalformedReponse, line)
	}
	code, reason, _ := strings.Cut(status, " ")
	n, err := strconv.Atoi(code)
	if err != nil || len(code) != 3 || n < 100 {
		return fmt.Errorf("%w: status line %q", errMalformedReponse, line)
	}
	if p.hdr == nil {
		// One allocation for the fields, not one per doubling.
		p.hdr = make([]string, 0, 2*strings.Count(rest, "\r\n"))
	}
	kv, err := parseFields(rest, p.hdr[:0])
	if err != nil {
		return err
	}
	if n/100 == 1 && n != http.StatusSwitchingProtocols {
		return nil // informational: the final response follows
	}
	p.status, p.reason, p.hdr = n, reason, kv
	var te, cl string
	p.declared = -1
	for i := 0; i < len(kv); i += 2 {
		switch kv[i] {
		case "Transfer-Encoding":
			te = kv[i+1]
		case "Content-Length":
			cl = kv[i+1]
		}
	}
	switch {
	case p.headReq, n/100 == 1, n == http.StatusNoContent, n == http.StatusNotModified:
		p.state = psDone
	case strings.EqualFold(te, "chunked"):
		p.chunked = true
		p.state = psChunkSize
	case cl != "":
		size, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || size < 0 {
			return errMalformedReponse
		}
		if size > p.maxBody {
			return ErrBodyTooLarge
		}
		p.left = size
		p.declared = size
		p.state = psBody
		if size == 0 {
			p.state = psDone
		} else if size >= refMin && size <= wholeBodyMax {
			p.body = wholeBodies.get()[:0]
		} else if size <= wholeBodyMax {
			// Copied into the reply's encoding, then back to the
			// buffer pool (vconn.reply).
			if p.body = getBuf(); int64(cap(p.body)) < size {
				p.body = make([]byte, 0, size)
			}
		}
	default:
		p.state = psUntilClose
	}
	return nil
}

// parseFields parses "Name: value\r\n" lines up to the empty line that
// ends a header or trailer block, appending canonical names and trimmed
// values to kv.
func parseFields(text string, kv []string) ([]string, error) {
	for {
		line, rest, ok := strings.Cut(text, "\r\n")
		if !ok {
			return nil, errMalformedReponse
		}
		if line == "" {
			return kv, nil
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !validHeaderName(name) {
			return nil, fmt.Errorf("%w: header line %q", errMalformedReponse, line)
		}
		kv = append(kv, textproto.CanonicalMIMEHeaderKey(name), textproto.TrimString(value))
		text = rest
	}
}

// responseSkip lists response header fields that describe the HTTP/1.1
// connection rather than the response.
var responseSkip = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Transfer-Encoding": true,
}

// envelope renders the parsed response as a response envelope for id.
func (p *respParser) envelope(id uint64) *envelope { return p.render(id, false) }

// headEnvelope renders the response head as the first envelope of a
// streamed response.
func (p *respParser) headEnvelope(id uint64) *envelope { return p.render(id, true) }

func (p *respParser) render(id uint64, streamed bool) *envelope {
	e := &p.renv
	*e = envelope{
		Version: ProtocolVersion,
		Kind:    KindResponse,
		ID:      id,
		Status:  p.status,
		Header:  skipFields(p.hdr, responseSkip),
	}
	if p.reason != http.StatusText(p.status) {
		e.Message = p.reason
	}
	e.setFraming(p.chunked, p.untilClose || p.state == psUntilClose, streamed, p.declared, len(p.body))
	if !streamed {
		e.Body, e.Trailer = p.body, p.trailer
	}
	return e
}

// setFraming sets a response envelope's ContentLength and Flags (both
// sides' renderers share it): no length for a chunked body or one that
// runs until the connection closes (flagged so), the declared length
// (-1: none) for the head of a stream, else n, the whole body's length.
func (e *envelope) setFraming(chunked, untilClose, streamed bool, declared int64, n int) {
	switch {
	case chunked:
		e.ContentLength = -1
	case untilClose:
		e.ContentLength = -1
		e.Flags |= flagBodyUntilClose
	case streamed:
		e.ContentLength = declared
	default:
		e.ContentLength = int64(n)
	}
	if streamed {
		e.Flags |= flagStreamed
	}
}

// skipFields removes the fields named in skip from kv, in place.
func skipFields(kv []string, skip map[string]bool) []string {
	out := kv[:0]
	for i := 0; i < len(kv); i += 2 {
		if !skip[kv[i]] {
			out = append(out, kv[i], kv[i+1])
		}
	}
	return out
}

// simpleResponse builds a response envelope the Listener sends itself
// (overload, shutting down), without running the handler.
func simpleResponse(id uint64, status int, text string, extra ...string) *envelope {
	body := []byte(text + "\n")
	h := []string{
		"Content-Length", strconv.Itoa(len(body)),
		"Content-Type", "text/plain; charset=utf-8",
	}
	h = append(h, extra...)
	h = append(h, "X-Content-Type-Options", "nosniff")
	sortPairs(h)
	return &envelope{
		Version: ProtocolVersion, Kind: KindResponse, ID: id, Status: status,
		Header: h, Body: body, ContentLength: int64(len(body)),
	}
}

// sortPairs sorts a flattened name/value list by name, stably.
func sortPairs(kv []string) {
	type pair struct{ k, v string }
	ps := make([]pair, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		ps = append(ps, pair{kv[i], kv[i+1]})
	}
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].k < ps[j].k })
	for i, p := range ps {
		kv[2*i], kv[2*i+1] = p.k, p.v
	}
}
