package zmqhttp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/textproto"
	"slices"
	"sync"

	"github.com/ugorji/go/codec"
)

// ProtocolVersion is the envelope version this package speaks. A peer that
// receives an envelope with another version rejects it (see PROTOCOL.md).
const ProtocolVersion = 1

// Kind is the type of an envelope.
type Kind uint8

// Message kinds. Values not listed are invalid; kinds marked reserved are
// defined by PROTOCOL.md for later versions of the protocol and are rejected
// by this implementation with a clear error rather than misread.
const (
	KindRequest  Kind = 1  // client → server: one HTTP request
	KindResponse Kind = 2  // server → client: one HTTP response
	KindError    Kind = 3  // server → client: the request with this id failed without an HTTP response
	KindCancel   Kind = 4  // client → server: the caller gave up on request id
	KindPing     Kind = 5  // either way: heartbeat
	KindPong     Kind = 6  // either way: heartbeat answer
	KindDraining Kind = 7  // server → client: send no new requests
	KindChunk    Kind = 8  // either way: the next piece of a streamed body (seq, flags bit 0 = last)
	KindCredit   Kind = 9  // either way: flow-control credit (bytes) for a streamed body
	KindHello    Kind = 10 // client → server, and the answer: capabilities
	KindAccepted Kind = 11 // server → client, through a device: the server took request id
	maxKnownKind      = KindAccepted
)

var kindNames = [...]string{
	KindRequest: "request", KindResponse: "response", KindError: "error",
	KindCancel: "cancel", KindPing: "ping", KindPong: "pong", KindDraining: "draining",
	KindChunk: "chunk", KindCredit: "credit", KindHello: "hello", KindAccepted: "accepted",
}

// String returns the kind's name as PROTOCOL.md spells it ("request", ...).
func (k Kind) String() string {
	if k > 0 && k <= maxKnownKind {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// supported reports whether this version of the package implements k.
func (k Kind) supported() bool {
	return k >= KindRequest && k <= KindAccepted
}

// Error codes carried by a KindError envelope in its Status field.
const (
	errCodeUnsupported  = 501 // unknown kind or version
	errCodeNotProcessed = 503 // the server did not run the request (draining): the client may send it again
	errCodeInternal     = 500 // the server failed to produce a response
	errCodeTooLarge     = 413 // the response body was over the server's limit (ErrBodyTooLarge)
	// errCodeLost: a proxy passed the request on to a server whose
	// connection then broke before the reply; it may have run. The client
	// fails it with ErrConnectionLost, as if its own connection had
	// broken (the proxy already re-sent what was safe to re-send).
	errCodeLost = 502
)

// envelope is the single message layout of the protocol: a msgpack array
// whose fields are positional (see PROTOCOL.md, "Envelope"). Fields a kind
// does not use are encoded as their zero value.
type envelope struct {
	_struct bool `codec:",toarray"` //nolint:unused // tells codec to encode as an array

	Version uint8  // 0
	Kind    Kind   // 1
	ID      uint64 // 2: request id chosen by the client, echoed in the reply
	Method  string // 3: request
	URI     string // 4: request: request-target as sent on the request line
	Host    string // 5: request
	Status  int    // 6: response status; error code for KindError
	// Header holds name/value pairs flattened: [n0, v0, n1, v1, ...], in
	// the order the values were added, names in canonical form.
	Header []string // 7
	Body   []byte   // 8
	// Trailer is flattened like Header.
	Trailer []string // 9
	// ContentLength is the body length the sender declared: len(Body), or
	// -1 when the sender did not know it in advance (chunked).
	ContentLength int64 // 10
	// Timeout is, in a request, the caller's remaining time in
	// microseconds when the request was sent; 0 means no deadline.
	Timeout int64  // 11
	Message string // 12: human-readable text for KindError
	Seq     uint64 // 13: chunk: its number in the stream, from 1
	Flags   uint64 // 14: bit flags: flagLast, flagBodyUntilClose, flagStreamed; hello: capabilities
	Credit  uint64 // 15: credit: bytes granted; hello: the sender's window per stream
}

const envelopeFields = 16

// Envelope flags (field 14).
const (
	// flagBodyUntilClose marks a response whose HTTP/1.1 body was
	// delimited by the server closing the connection (neither chunked
	// nor with a Content-Length); ContentLength is then -1.
	flagBodyUntilClose = 1 << 1
	// flagLast marks the last CHUNK of a stream.
	flagLast = 1 << 0
	// flagStreamed marks a request or response whose body follows in
	// CHUNK envelopes (Body is then empty).
	flagStreamed = 1 << 2
	// flagAckWanted, in a request: if it comes through a device, the
	// server answers ACCEPTED when it takes it (PROTOCOL.md 4.7).
	flagAckWanted = 1 << 3
	// flagNotProcessedOK, in a request: the client takes a not-processed
	// error (code 503) for it; through a device, where the server saw no
	// HELLO of the client's, this is what says so.
	flagNotProcessedOK = 1 << 4
)

// Limits bounds what a peer accepts from the network. The zero value of a
// field means its default; see the field docs.
type Limits struct {
	// MaxBodyBytes bounds a request or response body. A body sent whole
	// (to or from a peer that does not stream, or small enough to travel
	// in one message) is bounded by 32 MiB when this is 0; a streamed
	// body is unbounded when this is 0, as over net/http. Unlimited lifts
	// both bounds (a whole body is then bounded only by the largest
	// frame a peer reads, 512 MiB). Past the limit the request fails with
	// ErrBodyTooLarge on the side that hit it. A negative value other
	// than Unlimited is an error.
	MaxBodyBytes int64
	// MaxHeaderBytes bounds the sum of the lengths of all header and
	// trailer names and values, plus method, URI and host. Default 2 MiB,
	// above http.Server's default MaxHeaderBytes (1 MiB), so that by
	// default the server's own limit applies, as over TCP.
	MaxHeaderBytes int
	// MaxHeaderFields bounds the number of header plus trailer values.
	// Default 8192.
	MaxHeaderFields int
}

const (
	defaultMaxBodyBytes    = 32 << 20
	defaultMaxHeaderBytes  = 2 << 20
	defaultMaxHeaderFields = 8192
)

func (l Limits) maxBodyBytes() int64 {
	switch {
	case l.MaxBodyBytes == Unlimited:
		return maxDiscard / 2 // a whole body is held in memory: bounded by the largest frame read
	case l.MaxBodyBytes > 0:
		return l.MaxBodyBytes
	}
	return defaultMaxBodyBytes
}

// maxStreamBytes bounds a streamed body; 0 means no bound.
func (l Limits) maxStreamBytes() int64 {
	return max(l.MaxBodyBytes, 0)
}

func (l Limits) maxHeaderBytes() int {
	if l.MaxHeaderBytes > 0 {
		return l.MaxHeaderBytes
	}
	return defaultMaxHeaderBytes
}

func (l Limits) maxHeaderFields() int {
	if l.MaxHeaderFields > 0 {
		return l.MaxHeaderFields
	}
	return defaultMaxHeaderFields
}

// maxFrameBytes is the largest envelope frame these limits admit: the body,
// the header bytes, and room for msgpack overhead of every field.
func (l Limits) maxFrameBytes() int64 {
	return l.maxBodyBytes() + int64(l.maxHeaderBytes()) + int64(l.maxHeaderFields())*10 + 4096
}

// The envelope goes through the codec's reflective struct path on purpose.
// codecgen (generated codec.Selfer methods) no longer exists for this
// version of the codec: it was dropped in v1.3.0, and v1.2's codecgen emits
// code that needs codec.GenHelper, which v1.3 removed. A Selfer written
// against the public API (Encoder.MustEncode of the fields as one array)
// gives the same bytes but measured 2.4x slower to encode and 3.7x slower
// to decode, with 11 and 5 allocations; anything faster would write the
// msgpack by hand, which issue 11 rules out.
var mh = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	h.WriteExt = true // new spec: str and bin are distinct types
	h.RawToString = true
	h.MaxInitLen = 4096
	// Decoded strings and bytes point into the frame: no second copy of
	// each body. A frame is never modified while anything decoded from it
	// is in use; pooled frames (chunks, whole requests and responses) go
	// back to their pool only once nothing refers to them (bufpool.go).
	h.ZeroCopy = true
	return h
}()

// encoderPool reuses codec encoders, each with the slice it encodes into
// (so that the slice, whose address the encoder keeps, is not allocated
// per call); each is reset onto the destination.
var encoderPool = sync.Pool{New: func() any {
	pe := &pooledEncoder{}
	pe.enc = codec.NewEncoderBytes(&pe.out, mh)
	return pe
}}

type pooledEncoder struct {
	enc *codec.Encoder
	out []byte
}

// appendEnvelope appends the msgpack encoding of e to dst, growing dst
// once to the size the encoding needs.
func appendEnvelope(dst []byte, e *envelope) ([]byte, error) {
	if need := encodedSizeHint(e); cap(dst)-len(dst) < need {
		dst = append(make([]byte, 0, len(dst)+need), dst...)
	}
	pe := encoderPool.Get().(*pooledEncoder)
	pe.out = dst
	pe.enc.ResetBytes(&pe.out)
	err := pe.enc.Encode(e)
	out := pe.out
	pe.out = nil
	pe.enc.ResetBytes(&pe.out)
	encoderPool.Put(pe)
	if err != nil {
		return dst, fmt.Errorf("zmqhttp: encode %s envelope: %w", e.Kind, err)
	}
	return out, nil
}

// timeoutField is the index of the Timeout field in an envelope.
const timeoutField = 11

// setTimeout returns msg, an encoded envelope, with its Timeout field set
// to micros: rewritten in place if inPlace, else in a copy. The rest of
// the envelope is unchanged (no re-encoding). It reports false if msg is
// not a whole envelope (it then returns msg as it is).
func setTimeout(msg []byte, micros int64, inPlace bool) ([]byte, bool) {
	if len(msg) < 3 || msg[0] != 0xdc || msg[1] != 0 || msg[2] != envelopeFields {
		return msg, false
	}
	p := 3
	for i := 0; i < timeoutField; i++ {
		n, err := walk(msg[p:], 1, 1<<30)
		if err != nil {
			return msg, false
		}
		p += n
	}
	old, err := walk(msg[p:], 1, 1<<30)
	if err != nil || !isMsgpackInt(msg[p]) {
		return msg, false
	}
	var enc [9]byte
	v := appendMsgpackInt(enc[:0], micros)
	if !inPlace {
		msg = append(make([]byte, 0, len(msg)-old+len(v)), msg...)
	}
	return slices.Replace(msg, p, p+old, v...), true
}

// appendMsgpackInt appends the shortest msgpack encoding of v >= 0.
func appendMsgpackInt(dst []byte, v int64) []byte {
	switch {
	case v < 0:
		return binary.BigEndian.AppendUint64(append(dst, 0xd3), uint64(v))
	case v <= 0x7f:
		return append(dst, byte(v))
	case v <= 0xff:
		return append(dst, 0xcc, byte(v))
	case v <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, 0xcd), uint16(v))
	case v <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0xcf), uint64(v))
}

// encodedSizeHint is an upper bound, give or take, of e's encoded size.
func encodedSizeHint(e *envelope) int {
	n := 64 + len(e.Method) + len(e.URI) + len(e.Host) + len(e.Message) + len(e.Body)
	for _, s := range e.Header {
		n += len(s) + 5
	}
	for _, s := range e.Trailer {
		n += len(s) + 5
	}
	return n
}

var decoderPool = sync.Pool{New: func() any { return codec.NewDecoderBytes(nil, mh) }}

// ProtocolError reports an envelope that this peer cannot accept: malformed,
// of another version, of a kind it does not implement, or over a limit.
type ProtocolError struct {
	Reason string // short, stable reason, also used as a counter name
	Detail string
}

// Error returns "zmqhttp: protocol error: " with the reason and detail.
func (e *ProtocolError) Error() string {
	if e.Detail == "" {
		return "zmqhttp: protocol error: " + e.Reason
	}
	return "zmqhttp: protocol error: " + e.Reason + ": " + e.Detail
}

// Reasons carried by ProtocolError.
const (
	reasonMalformed   = "malformed envelope"
	reasonVersion     = "unsupported version"
	reasonKind        = "unsupported kind"
	reasonHeaderLarge = "header over limit"
	reasonBodyLarge   = "body over limit"
	reasonInvalidHTTP = "invalid HTTP field"
	reasonFraming     = "bad framing"
)

func protoErr(reason, format string, args ...any) *ProtocolError {
	return &ProtocolError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// decodeEnvelope decodes one envelope frame, enforcing lim. The returned
// envelope's byte slices may alias b.
//
// Before the codec sees the bytes, a shape check walks them: the top level
// must be an array, nesting is at most three deep and no array or map may
// declare more elements than lim admits. So a small frame can never make the
// decoder allocate much more than its own size.
func decodeEnvelope(b []byte, lim Limits, e *envelope) error {
	if len(b) == 0 {
		return protoErr(reasonMalformed, "empty frame")
	}
	n, err := arrayHeader(b)
	if err != nil {
		return err
	}
	if n < 3 {
		return protoErr(reasonMalformed, "array of %d fields, want at least 3", n)
	}
	// Read version and kind before anything else so that a peer of
	// another version gets "unsupported version", not a field error.
	ver, kind, id, ok := peekHead(b)
	if !ok {
		return protoErr(reasonMalformed, "version, kind and id must be unsigned integers")
	}
	if ver != ProtocolVersion {
		return &idError{id: id, kind: kindOf(kind), err: protoErr(reasonVersion, "version %d, this peer speaks %d", ver, ProtocolVersion)}
	}
	if !kindOf(kind).supported() {
		return &idError{id: id, kind: kindOf(kind), err: protoErr(reasonKind, "kind %d", kind)}
	}
	var offs fieldOffsets
	if err := checkShape(b, 2*lim.maxHeaderFields(), &offs); err != nil {
		return &idError{id: id, kind: Kind(kind), err: err}
	}
	if err := checkTypes(b, &offs); err != nil {
		return &idError{id: id, kind: Kind(kind), err: err}
	}
	*e = envelope{}
	dec := decoderPool.Get().(*codec.Decoder)
	dec.ResetBytes(b)
	err = dec.Decode(e)
	dec.ResetBytes(nil)
	decoderPool.Put(dec)
	if err != nil {
		return &idError{id: id, kind: Kind(kind), err: protoErr(reasonMalformed, "%v", err)}
	}
	if err := validateEnvelope(e, lim); err != nil {
		return &idError{id: id, kind: e.Kind, err: err}
	}
	// Names are canonical on the wire; a peer that sends "content-length"
	// must not slip a framing header past the receiver's checks.
	canonicalNames(e.Header)
	canonicalNames(e.Trailer)
	return nil
}

func canonicalNames(kv []string) {
	for i := 0; i < len(kv); i += 2 {
		kv[i] = textproto.CanonicalMIMEHeaderKey(kv[i])
	}
}

// kindOf is the Kind of the kind field's value k: 0 (invalid) for one
// that does not fit in a Kind, rather than its low byte.
func kindOf(k uint64) Kind {
	if k > 255 {
		return 0
	}
	return Kind(k)
}

// fieldTypes is the msgpack type each field of a v1 envelope must have
// (nil is accepted in every field: it reads as the zero value); fields
// after these are skipped whatever they hold.
var fieldTypes = [envelopeFields]byte{
	'u', 'u', 'u', // version, kind, id (checked by peekHead)
	's', 's', 's', // method, uri, host
	'i',      // status
	'l',      // header
	'b',      // body
	'l',      // trailer
	'i', 'i', // content_length, timeout
	's',           // message
	'u', 'u', 'u', // seq, flags, credit
}

// fieldOffsets holds where each of the first envelopeFields top-level
// fields of a frame starts, as checkShape found them: checkTypes then need
// not walk the frame a second time.
type fieldOffsets [envelopeFields]int

// checkTypes checks that each field of the envelope at b (whose shape
// checkShape accepted, recording offs) has its msgpack type: an integer
// where an integer goes, a str for a string, bin for the body, an array of
// str for a header list. The codec alone would take a float for an integer (200.0 as 200)
// and a map for a list; PROTOCOL.md section 3 forbids both. Negative
// values of unsigned fields are left to the codec, which refuses them.
func checkTypes(b []byte, offs *fieldOffsets) error {
	n, _ := arrayHeader(b)
	for i := 0; i < n && i < envelopeFields; i++ {
		p := offs[i]
		c := b[p]
		var ok bool
		want := fieldTypes[i]
		switch {
		case c == 0xc0:
			ok = true
		case want == 'u' || want == 'i':
			ok = isMsgpackInt(c)
		case want == 's':
			ok = isMsgpackStr(c)
		case want == 'b':
			ok = c == 0xc4 || c == 0xc5 || c == 0xc6
		case want == 'l':
			ok = checkStrList(b[p:]) == nil
		}
		if !ok {
			return protoErr(reasonMalformed, "field %d (%s): msgpack type 0x%02x, want %s", i, fieldNames[i], c, typeNames[want])
		}
	}
	return nil
}

var fieldNames = [envelopeFields]string{"version", "kind", "id", "method", "uri", "host", "status", "header", "body",
	"trailer", "content_length", "timeout", "message", "seq", "flags", "credit"}

var typeNames = map[byte]string{'u': "an unsigned integer", 'i': "an integer", 's': "str", 'b': "bin", 'l': "an array of str"}

// checkStrList checks that b starts with an array whose elements are all
// str.
func checkStrList(b []byte) error {
	c := b[0]
	var n, p int
	switch {
	case c&0xf0 == 0x90:
		n, p = int(c&0x0f), 1
	case c == 0xdc:
		n, p = int(binary.BigEndian.Uint16(b[1:])), 3
	case c == 0xdd:
		n, p = int(binary.BigEndian.Uint32(b[1:])), 5
	default:
		return errShape
	}
	for range n {
		if !isMsgpackStr(b[p]) {
			return errShape
		}
		m, _ := walk(b[p:], 2, 1<<30)
		p += m
	}
	return nil
}

func isMsgpackInt(c byte) bool {
	return c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)
}

func isMsgpackStr(c byte) bool {
	return c&0xe0 == 0xa0 || c == 0xd9 || c == 0xda || c == 0xdb
}

// idError carries the id and kind of an envelope that failed to decode when
// they could be read, so the receiver can answer that request with an error.
type idError struct {
	id   uint64
	kind Kind
	err  error
}

func (e *idError) Error() string { return e.err.Error() }
func (e *idError) Unwrap() error { return e.err }

func validateEnvelope(e *envelope, lim Limits) error {
	if int64(len(e.Body)) > lim.maxBodyBytes() && e.Kind != KindChunk { // a stream's limit is the stream's
		return protoErr(reasonBodyLarge, "body of %d bytes exceeds %d", len(e.Body), lim.maxBodyBytes())
	}
	if len(e.Header)%2 != 0 || len(e.Trailer)%2 != 0 {
		return protoErr(reasonMalformed, "header list of odd length")
	}
	if len(e.Header)/2+len(e.Trailer)/2 > lim.maxHeaderFields() {
		return protoErr(reasonHeaderLarge, "%d header fields exceed %d", len(e.Header)/2+len(e.Trailer)/2, lim.maxHeaderFields())
	}
	size := len(e.Method) + len(e.URI) + len(e.Host)
	for _, s := range e.Header {
		size += len(s)
	}
	for _, s := range e.Trailer {
		size += len(s)
	}
	if size > lim.maxHeaderBytes() {
		return protoErr(reasonHeaderLarge, "header bytes %d exceed %d", size, lim.maxHeaderBytes())
	}
	if e.ContentLength < -1 {
		return protoErr(reasonMalformed, "content length %d", e.ContentLength)
	}
	if e.ContentLength >= 0 && e.ContentLength != int64(len(e.Body)) && e.Flags&flagStreamed == 0 && e.Kind != KindChunk {
		return protoErr(reasonMalformed, "content length %d but body of %d bytes", e.ContentLength, len(e.Body))
	}
	if e.Timeout < 0 {
		return protoErr(reasonMalformed, "negative timeout")
	}
	switch e.Kind {
	case KindRequest:
		if !validMethod(e.Method) {
			return protoErr(reasonInvalidHTTP, "method %q", e.Method)
		}
		if !validRequestURI(e.URI) {
			return protoErr(reasonInvalidHTTP, "request URI %q", e.URI)
		}
		if !validHeaderValue(e.Host) {
			return protoErr(reasonInvalidHTTP, "host %q", e.Host)
		}
	case KindResponse:
		if e.Status < 100 || e.Status > 999 {
			return protoErr(reasonInvalidHTTP, "status %d", e.Status)
		}
	case KindChunk, KindCredit:
		if e.ID == 0 {
			return protoErr(reasonMalformed, "%s with id 0", e.Kind)
		}
	}
	if e.Flags&flagStreamed != 0 && len(e.Body) > 0 {
		return protoErr(reasonMalformed, "streamed %s with a body of its own", e.Kind)
	}
	if err := validHeaderList(e.Header); err != nil {
		return err
	}
	return validHeaderList(e.Trailer)
}

func validHeaderList(kv []string) error {
	for i := 0; i < len(kv); i += 2 {
		if !validHeaderName(kv[i]) {
			return protoErr(reasonInvalidHTTP, "header name %q", kv[i])
		}
		if !validHeaderValue(kv[i+1]) {
			return protoErr(reasonInvalidHTTP, "value of header %q", kv[i])
		}
	}
	return nil
}

// validMethod reports whether m is a non-empty HTTP token.
func validMethod(m string) bool { return validHeaderName(m) }

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// validHeaderValue rejects control characters other than horizontal tab,
// which would let a peer inject header lines into the HTTP/1.1 stream.
func validHeaderValue(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validRequestURI accepts a request-target with no spaces or control bytes.
func validRequestURI(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// arrayHeader reads the msgpack array header at b[0].
func arrayHeader(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, protoErr(reasonMalformed, "empty envelope")
	}
	c := b[0]
	switch {
	case c&0xf0 == 0x90:
		return int(c & 0x0f), nil
	case c == 0xdc && len(b) >= 3:
		return int(binary.BigEndian.Uint16(b[1:])), nil
	case c == 0xdd && len(b) >= 5:
		return int(binary.BigEndian.Uint32(b[1:])), nil
	}
	return 0, protoErr(reasonMalformed, "envelope is not a msgpack array (first byte 0x%02x)", c)
}

// peekHead reads the first three array elements as unsigned integers.
func peekHead(b []byte) (ver, kind, id uint64, ok bool) {
	if _, err := arrayHeader(b); err != nil || len(b) == 0 {
		return 0, 0, 0, false
	}
	p := 1
	if b[0] == 0xdc {
		p = 3
	} else if b[0] == 0xdd {
		p = 5
	}
	var vals [3]uint64
	for i := range vals {
		v, n, good := readUint(b[p:])
		if !good {
			return 0, 0, 0, false
		}
		vals[i] = v
		p += n
	}
	return vals[0], vals[1], vals[2], true
}

func readUint(b []byte) (v uint64, n int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	c := b[0]
	switch {
	case c <= 0x7f:
		return uint64(c), 1, true
	case c == 0xcc && len(b) >= 2:
		return uint64(b[1]), 2, true
	case c == 0xcd && len(b) >= 3:
		return uint64(binary.BigEndian.Uint16(b[1:])), 3, true
	case c == 0xce && len(b) >= 5:
		return uint64(binary.BigEndian.Uint32(b[1:])), 5, true
	case c == 0xcf && len(b) >= 9:
		return binary.BigEndian.Uint64(b[1:]), 9, true
	// Signed encodings of non-negative values are accepted: some
	// msgpack libraries encode small ints that way.
	case c == 0xd0 && len(b) >= 2 && int8(b[1]) >= 0:
		return uint64(b[1]), 2, true
	case c == 0xd1 && len(b) >= 3 && int16(binary.BigEndian.Uint16(b[1:])) >= 0:
		return uint64(binary.BigEndian.Uint16(b[1:])), 3, true
	case c == 0xd2 && len(b) >= 5 && int32(binary.BigEndian.Uint32(b[1:])) >= 0:
		return uint64(binary.BigEndian.Uint32(b[1:])), 5, true
	case c == 0xd3 && len(b) >= 9 && int64(binary.BigEndian.Uint64(b[1:])) >= 0:
		return binary.BigEndian.Uint64(b[1:]), 9, true
	}
	return 0, 0, false
}

var errShape = errors.New("shape")

// checkShape walks one msgpack value at b[0] and the whole buffer must be
// exactly that value. Arrays and maps may declare at most maxElems elements
// (a flattened header list holds two per field)
// (the top-level array at most envelopeFields*4) and nest at most 3 deep;
// every declared length must fit in the remaining bytes. It records in offs
// where each of the first envelopeFields top-level elements starts.
func checkShape(b []byte, maxElems int, offs *fieldOffsets) error {
	n, err := walkRec(b, 0, maxElems, offs)
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			return pe
		}
		return protoErr(reasonMalformed, "%v", err)
	}
	if n != len(b) {
		return protoErr(reasonMalformed, "%d trailing bytes after envelope", len(b)-n)
	}
	return nil
}

// walk returns the size of the msgpack value at b[0], checking its shape
// as checkShape describes; depth is the nesting level of that value.
func walk(b []byte, depth, maxElems int) (int, error) {
	return walkRec(b, depth, maxElems, nil)
}

// walkRec is walk that also records, when depth is 0 and offs is not nil,
// the offsets of the top-level array's first envelopeFields elements.
func walkRec(b []byte, depth, maxElems int, offs *fieldOffsets) (int, error) {
	if len(b) == 0 {
		return 0, errors.New("truncated")
	}
	c := b[0]
	need := func(k int) error {
		if len(b) < k {
			return errors.New("truncated")
		}
		return nil
	}
	// raw returns the size of a value with a length prefix of hdr bytes.
	raw := func(hdr int, l uint64) (int, error) {
		if uint64(len(b)-hdr) < l {
			return 0, fmt.Errorf("declared length %d exceeds remaining %d bytes", l, len(b)-hdr)
		}
		return hdr + int(l), nil
	}
	container := func(hdr int, count uint64, perElem int) (int, error) {
		if depth >= 3 {
			return 0, errors.New("nested too deep")
		}
		limit := uint64(maxElems)
		if depth == 0 {
			limit = envelopeFields * 4
		}
		if count > limit {
			if depth == 0 {
				return 0, protoErr(reasonMalformed, "array of %d fields exceeds %d", count, limit)
			}
			return 0, protoErr(reasonHeaderLarge, "list of %d elements exceeds %d", count, limit)
		}
		p := hdr
		for i := uint64(0); i < count*uint64(perElem); i++ {
			if depth == 0 && offs != nil && i < envelopeFields {
				offs[i] = p
			}
			m, err := walk(b[p:], depth+1, maxElems)
			if err != nil {
				return 0, err
			}
			p += m
		}
		return p, nil
	}
	switch {
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		return 1, nil
	case c&0xe0 == 0xa0:
		return raw(1, uint64(c&0x1f))
	case c&0xf0 == 0x90:
		return container(1, uint64(c&0x0f), 1)
	case c&0xf0 == 0x80:
		return container(1, uint64(c&0x0f), 2)
	}
	switch c {
	case 0xcc, 0xd0:
		return 2, need(2)
	case 0xcd, 0xd1:
		return 3, need(3)
	case 0xce, 0xd2, 0xca:
		return 5, need(5)
	case 0xcf, 0xd3, 0xcb:
		return 9, need(9)
	case 0xd9, 0xc4:
		if err := need(2); err != nil {
			return 0, err
		}
		return raw(2, uint64(b[1]))
	case 0xda, 0xc5:
		if err := need(3); err != nil {
			return 0, err
		}
		return raw(3, uint64(binary.BigEndian.Uint16(b[1:])))
	case 0xdb, 0xc6:
		if err := need(5); err != nil {
			return 0, err
		}
		return raw(5, uint64(binary.BigEndian.Uint32(b[1:])))
	case 0xdc, 0xde:
		if err := need(3); err != nil {
			return 0, err
		}
		per := 1
		if c == 0xde {
			per = 2
		}
		return container(3, uint64(binary.BigEndian.Uint16(b[1:])), per)
	case 0xdd, 0xdf:
		if err := need(5); err != nil {
			return 0, err
		}
		per := 1
		if c == 0xdf {
			per = 2
		}
		return container(5, uint64(binary.BigEndian.Uint32(b[1:])), per)
	}
	return 0, fmt.Errorf("unsupported msgpack type 0x%02x", c)
}
