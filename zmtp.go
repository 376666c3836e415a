package zmqhttp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
)

// This file holds the ZeroMQ wire layer. zmq4 performs the ZMTP 3 greeting
// and the NULL security handshake (zmq4.Open); after it, frames are read and
// written here, on our own buffered connection, because zmq4's socket layer
// has no frame size limit, fans a DEALER out to every peer, reports lost
// messages as sent and starts goroutines per Send (see FIELD-NOTES.md).

// ZMTP frame flags (ZMTP 3.0, RFC 23).
const (
	flagMore    = 0x01
	flagLong    = 0x02
	flagCommand = 0x04
)

// maxFramesPerMessage bounds the frames one message may carry: the empty
// delimiter and the envelope, with room for routing frames.
const maxFramesPerMessage = 8

// routingAllowance is what a message may carry beyond its envelope frame
// (delimiter and routing frames, each of which routingOK bounds).
const routingAllowance = 4096

// maxDiscard bounds an oversized frame the receiver reads and drops while
// keeping the connection; a larger one closes it.
const maxDiscard = 1 << 30

// handshakeReadLimit bounds what a peer may send during the handshake.
const handshakeReadLimit = 16 << 10

// readBufSize is the size of a connection's read buffer from the
// handshake on (the link reads through the handshake's reader) until
// requests or replies flow: a peer that connects and stays idle holds it
// for as long as it stays, so it is small.
const readBufSize = 4 << 10

// busyReadBufSize is the size of the read buffer a link switches to once
// requests or replies flow on it: fewer reads for many small messages.
const busyReadBufSize = 32 << 10

// hsConn is the net.Conn zmq4 sees during the handshake. Its reads follow
// the ZMTP stream — the 64-byte greeting, then frames — and refuse a frame
// that announces more than handshakeReadLimit bytes before zmq4 sees its
// header (zmq4 allocates whatever size a frame announces), and more than
// handshakeReadLimit bytes in all.
type hsConn struct {
	net.Conn
	br       *bufio.Reader
	greeting int    // greeting bytes still to pass
	left     uint64 // bytes of the current frame (header and body) still to pass
	total    int    // bytes passed so far
}

func (c *hsConn) Read(p []byte) (int, error) {
	if c.total >= handshakeReadLimit {
		return 0, fmt.Errorf("zmqhttp: ZMTP handshake longer than %d bytes", handshakeReadLimit)
	}
	var n int
	var err error
	switch {
	case c.greeting == 64:
		// A ZMTP greeting starts with ff: anything else is some other
		// protocol (an HTTP server answering our greeting with 400, an
		// SSH banner): say so, with what it sent.
		b, err := c.br.Peek(1)
		if err != nil {
			return 0, err
		}
		if b[0] != 0xff {
			sent, _ := c.br.Peek(min(c.br.Buffered(), 64))
			return 0, &notZMTPError{sent: string(sent)}
		}
		n, err = c.br.Read(p[:min(len(p), c.greeting)])
		c.greeting -= n
	case c.greeting > 0:
		n, err = c.br.Read(p[:min(len(p), c.greeting)])
		c.greeting -= n
	default:
		if c.left == 0 {
			hdr, err := c.br.Peek(2)
			if err != nil {
				return 0, err
			}
			size, hlen := uint64(hdr[1]), uint64(2)
			if hdr[0]&flagLong != 0 {
				if hdr, err = c.br.Peek(9); err != nil {
					return 0, err
				}
				size, hlen = binary.BigEndian.Uint64(hdr[1:]), 9
			}
			if size > handshakeReadLimit {
				return 0, fmt.Errorf("zmqhttp: ZMTP handshake frame of %d bytes", size)
			}
			c.left = hlen + size
		}
		n, err = c.br.Read(p[:min(uint64(len(p)), c.left)])
		c.left -= uint64(n)
	}
	c.total += n
	return n, err
}

// notZMTPError reports a peer that does not speak ZeroMQ: its first byte
// is not a ZMTP greeting's.
type notZMTPError struct{ sent string }

func (e *notZMTPError) Error() string {
	const msg = "zmqhttp: the peer does not speak ZeroMQ (ZMTP)"
	for _, r := range e.sent {
		if r == unicode.ReplacementChar || (!unicode.IsPrint(r) && !unicode.IsSpace(r)) {
			return fmt.Sprintf("%s: it sent % x", msg, e.sent)
		}
	}
	return fmt.Sprintf("%s: it sent %q", msg, e.sent)
}

// handshake runs the ZMTP greeting and READY exchange on nc as a socket of
// type typ, within timeout. It returns the buffered reader to continue with
// (it may already hold frames the peer sent after READY) and the peer's
// socket type. A panic inside zmq4 on malformed input becomes an error.
func handshake(nc net.Conn, typ zmq4.SocketType, server bool, timeout time.Duration) (br *bufio.Reader, peer zmq4.SocketType, err error) {
	return handshakeWith(nc, typ, server, timeout, null.Security())
}

// handshakeWith is handshake with the security mechanism mech: NULL, or a
// *curveMech, whose codec is then set (see secure).
func handshakeWith(nc net.Conn, typ zmq4.SocketType, server bool, timeout time.Duration, mech zmq4.Security) (br *bufio.Reader, peer zmq4.SocketType, err error) {
	if err := nc.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, "", err
	}
	br = bufio.NewReaderSize(nc, readBufSize)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("zmqhttp: ZMTP handshake: malformed peer input (%v)", r)
		}
	}()
	hc := &hsConn{Conn: nc, br: br, greeting: 64}
	zc, err := zmq4.Open(hc, mech, typ, zmq4.SocketIdentity(""), server, nil)
	var se *securityError
	if errors.As(err, &se) {
		return nil, "", se // says all there is to say
	}
	var nz *notZMTPError
	if errors.As(err, &nz) {
		return nil, "", nz
	}
	if err != nil && isTimeout(err) && hc.total == 0 && br.Buffered() == 0 {
		return nil, "", fmt.Errorf("zmqhttp: ZMTP handshake: the peer sent nothing within %v: is it a ZeroMQ endpoint? (an HTTP server, for one, waits silently)", timeout)
	}
	if err != nil && strings.Contains(err.Error(), "invalid or unsupported security mechanism") {
		return nil, "", fmt.Errorf("zmqhttp: ZMTP handshake: %w (this side: %s)", errMechanismMismatch, mech.Type())
	}
	if err != nil {
		return nil, "", wrapErr(err, "ZMTP handshake")
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, "", err
	}
	return br, zmq4.SocketType(zc.Peer.Meta["Socket-Type"]), nil
}

// oversizeError reports a message over the receiver's size limit. The
// receiver reads and discards it without holding it in memory, so the
// connection and every other request on it survive; head holds the first
// bytes of the oversized frame, enough to find the envelope's id.
type oversizeError struct {
	head  []byte
	size  uint64
	limit int64
}

func (e *oversizeError) Error() string {
	return fmt.Sprintf("zmqhttp: message frame of %d bytes exceeds the limit of %d", e.size, e.limit)
}

// oversizeHead is how much of an oversized frame is kept: room for the
// envelope's array header, version, kind and id.
const oversizeHead = 32

// discardOversized reads and drops the rest of a message whose frame of
// size bytes (flags already read) is over limit, keeping its first bytes.
// early, if not nil, is told of the oversized frame as soon as its first
// bytes are read, before the rest is discarded (which takes as long as
// the peer takes to send it).
func discardOversized(br *bufio.Reader, flags byte, size uint64, limit int64, early func(*oversizeError)) error {
	head := make([]byte, min(size, oversizeHead))
	if _, err := io.ReadFull(br, head); err != nil {
		return unexpectedEOF(err)
	}
	if early != nil {
		early(&oversizeError{head: head, size: size, limit: limit})
	}
	if err := discardN(br, size-uint64(len(head))); err != nil {
		return err
	}
	for flags&flagMore != 0 {
		var n uint64
		var err error
		if flags, n, err = readFrameHeader(br); err != nil {
			return unexpectedEOF(err)
		}
		if err := discardN(br, n); err != nil {
			return err
		}
	}
	return &oversizeError{head: head, size: size, limit: limit}
}

func discardN(br *bufio.Reader, n uint64) error {
	for n > 0 {
		chunk := int(min(n, 1<<30))
		m, err := br.Discard(chunk)
		n -= uint64(m)
		if err != nil {
			return unexpectedEOF(err)
		}
	}
	return nil
}

// readMessage reads one ZeroMQ message (all frames up to the last without
// MORE) from br into frames, reusing its backing array. Each frame is at
// most maxFrame bytes; the message at most maxFramesPerMessage frames. A
// message over the size limit is discarded and reported as an
// *oversizeError; the stream stays usable.
// Command frames (PING and others) are returned as a single-frame message
// with isCmd set.
func readMessage(br *bufio.Reader, maxFrame int64, frames [][]byte) (_ [][]byte, isCmd bool, err error) {
	return readMessageEarly(br, maxFrame, frames, nil)
}

// readMessageEarly is readMessage, telling early (if not nil) of an
// oversized message as soon as its head is read (see discardOversized).
func readMessageEarly(br *bufio.Reader, maxFrame int64, frames [][]byte, early func(*oversizeError)) (_ [][]byte, isCmd bool, err error) {
	frames = frames[:0]
	var total uint64
	for {
		flags, size, err := readFrameHeader(br)
		if err != nil {
			if len(frames) > 0 {
				err = unexpectedEOF(err)
			}
			return frames, false, err
		}
		if flags&^(flagMore|flagLong|flagCommand) != 0 {
			return frames, false, protoErr(reasonFraming, "reserved frame flag bits 0x%02x", flags)
		}
		total += size
		if len(frames) == maxFramesPerMessage {
			return frames, false, protoErr(reasonFraming, "more than %d frames in one message", maxFramesPerMessage)
		}
		if size > uint64(maxFrame) || total > uint64(maxFrame)+routingAllowance {
			if flags&flagCommand != 0 {
				return frames, false, protoErr(reasonFraming, "command frame of %d bytes", size)
			}
			if size > maxDiscard {
				// Not a body somebody meant to send: reading it to the
				// end would keep the connection busy for ever.
				return frames, false, protoErr(reasonFraming, "frame of %d bytes", size)
			}
			return frames, false, discardOversized(br, flags, size, maxFrame, early)
		}
		buf, err := readFrameBody(br, size)
		if err != nil {
			return frames, false, err
		}
		if flags&flagCommand != 0 {
			if len(frames) > 0 || flags&flagMore != 0 {
				return frames, false, protoErr(reasonFraming, "command frame inside a message")
			}
			return append(frames, buf), true, nil
		}
		frames = append(frames, buf)
		if flags&flagMore == 0 {
			return frames, false, nil
		}
	}
}

// errNotEnvelope reports a message that is not routing frames, an empty
// delimiter frame and one envelope frame. Receivers drop it and count it;
// the stream goes on.
var errNotEnvelope = errors.New("zmqhttp: message is not an empty delimiter and one envelope frame")

// readEnvelopeFrame reads messages until one carries an envelope, and
// returns its envelope frame and its routing frames: the frames before the
// empty delimiter, which a device such as libzmq's zmq_proxy puts there
// (none from a direct peer). A ZMTP PING on the way is handed to pong
// (with the context its PONG must carry); other commands are skipped. The
// error is an *oversizeError or errNotEnvelope for a message dropped (the
// stream goes on), or what ended the stream; with an *oversizeError, route
// holds the routing frames read before it. early, if not nil, is told of
// an oversized message once its head is read, before the rest of it is
// discarded. frames is scratch space, reused; route is a slice of its own.
func readEnvelopeFrame(br *bufio.Reader, maxFrame int64, frames [][]byte, pong func([]byte), early func(*oversizeError)) (env []byte, route, _ [][]byte, err error) {
	for {
		var isCmd bool
		frames, isCmd, err = readMessageEarly(br, maxFrame, frames, early)
		switch {
		case err != nil:
			var oe *oversizeError
			if errors.As(err, &oe) {
				if d := delimiter(frames); d > 0 && routingOK(frames[:d]) {
					route = slices.Clone(frames[:d])
				}
			}
			return nil, route, frames, err
		case isCmd:
			if commandName(frames[0]) == "PING" {
				pong(pongBody(frames[0]))
			}
		default:
			d := delimiter(frames)
			if d < 0 || d != len(frames)-2 || !routingOK(frames[:d]) {
				return nil, nil, frames, errNotEnvelope
			}
			if d > 0 {
				route = slices.Clone(frames[:d])
			}
			return frames[d+1], route, frames, nil
		}
	}
}

// maxRoutingFrame bounds one routing frame: libzmq's routing ids are at
// most 255 bytes.
const maxRoutingFrame = 255

// routingOK reports whether routing frames are within maxRoutingFrame
// each (their count is bounded by maxFramesPerMessage).
func routingOK(route [][]byte) bool {
	for _, f := range route {
		if len(f) > maxRoutingFrame {
			return false
		}
	}
	return true
}

// delimiter returns the index of the first empty frame, or -1.
func delimiter(frames [][]byte) int {
	for i, f := range frames {
		if len(f) == 0 {
			return i
		}
	}
	return -1
}

// readFrameHeader reads a frame's flags and body size. An io.EOF means the
// stream ended cleanly before the frame; one inside the header is
// io.ErrUnexpectedEOF.
func readFrameHeader(br *bufio.Reader) (flags byte, size uint64, err error) {
	if flags, err = br.ReadByte(); err != nil {
		return 0, 0, err
	}
	if flags&flagLong != 0 {
		// Peeked, not read into an array of ours (which would escape
		// through io.ReadFull's interface).
		hdr, err := br.Peek(8)
		if err != nil {
			return 0, 0, unexpectedEOF(err)
		}
		size := binary.BigEndian.Uint64(hdr)
		br.Discard(8)
		return flags, size, nil
	}
	b, err := br.ReadByte()
	if err != nil {
		return 0, 0, unexpectedEOF(err)
	}
	return flags, uint64(b), nil
}

// readFrameBody reads a frame body of size bytes. A large one is read in
// pieces into a buffer that grows as the bytes arrive, so that a peer that
// announces a large frame and sends little costs little memory.
func readFrameBody(br *bufio.Reader, size uint64) ([]byte, error) {
	const step = 1 << 20
	if pool := framePool(br, size); pool != nil {
		buf := pool.get()[:size]
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		return buf, nil
	}
	if size <= step {
		buf := make([]byte, size)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, unexpectedEOF(err)
		}
		return buf, nil
	}
	buf := make([]byte, 0, step)
	for uint64(len(buf)) < size {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(size, uint64(2*cap(buf))))
			copy(grown, buf)
			buf = grown
		}
		n, err := br.Read(buf[len(buf):min(uint64(cap(buf)), size)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	return buf, nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// commandName returns the name of a ZMTP command frame.
func commandName(b []byte) string {
	if len(b) == 0 || int(b[0]) > len(b)-1 {
		return ""
	}
	return string(b[1 : 1+int(b[0])])
}

// writeFrame appends one frame, with MORE set when more is true, to w.
func writeFrame(w *bufio.Writer, b []byte, more bool) error {
	var flags byte
	if more {
		flags = flagMore
	}
	return writeFlagged(w, flags, b)
}

// writeCommand writes a ZMTP command frame (e.g. PONG) to w.
func writeCommand(w *bufio.Writer, name string, body []byte) error {
	cmd := make([]byte, 0, 1+len(name)+len(body))
	cmd = append(cmd, byte(len(name)))
	cmd = append(cmd, name...)
	cmd = append(cmd, body...)
	return writeFlagged(w, flagCommand, cmd)
}

// writeFlagged writes one frame with the given flags (LONG is added when
// the body needs it).
func writeFlagged(w *bufio.Writer, flags byte, b []byte) error {
	var hdr [9]byte
	if _, err := w.Write(appendFrameHeader(hdr[:0], flags, len(b))); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// appendFrameHeader appends the header of a frame of n bytes with flags
// (LONG added when needed).
func appendFrameHeader(dst []byte, flags byte, n int) []byte {
	if n > 255 {
		dst = append(dst, flags|flagLong, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(dst[len(dst)-8:], uint64(n))
		return dst
	}
	return append(dst, flags, byte(n))
}

// frameWriter gathers the frames of one writer round and writes them with
// one vectored write: small pieces are copied into its buffer, large ones
// (bodies) are referenced where they are, so a body is copied only by the
// kernel. Referenced bytes must stay unchanged until flush returns.
type frameWriter struct {
	nc   *liveConn
	buf  []byte      // copied bytes; vec's pieces of it are before mark
	mark int         // start of the bytes of buf not yet in vec
	vec  net.Buffers // the pieces to write, in order
	n    int         // bytes gathered
}

// refMin is the size from which a piece is referenced, not copied.
const refMin = 16 << 10

func (w *frameWriter) copy(b []byte) {
	w.buf = append(w.buf, b...)
	w.n += len(b)
}

func (w *frameWriter) ref(b []byte) {
	if len(b) < refMin {
		w.copy(b)
		return
	}
	if w.mark < len(w.buf) {
		w.vec = append(w.vec, w.buf[w.mark:len(w.buf):len(w.buf)])
	}
	w.vec = append(w.vec, b)
	w.mark = len(w.buf)
	w.n += len(b)
}

// frame adds one frame.
func (w *frameWriter) frame(flags byte, b []byte) {
	w.header(flags, len(b))
	w.ref(b)
}

// header adds the header of a frame of n bytes, which the caller adds.
func (w *frameWriter) header(flags byte, n int) {
	w.buf = appendFrameHeader(w.buf, flags, n)
	w.n += frameHeaderLen(n)
}

func frameHeaderLen(n int) int {
	if n > 255 {
		return 9
	}
	return 2
}

// envelopeMsg adds one REQ/REP-style message: an empty delimiter frame,
// then the envelope frame.
func (w *frameWriter) envelopeMsg(env []byte) {
	w.frame(flagMore, nil)
	w.frame(0, env)
}

// command adds a ZMTP command frame (e.g. PONG).
func (w *frameWriter) command(name string, body []byte) {
	w.buf = appendFrameHeader(w.buf, flagCommand, 1+len(name)+len(body))
	w.buf = append(w.buf, byte(len(name)))
	w.buf = append(w.buf, name...)
	w.buf = append(w.buf, body...)
	w.n += frameHeaderLen(1+len(name)+len(body)) + 1 + len(name) + len(body)
}

// flush writes what was gathered.
func (w *frameWriter) flush() error {
	if w.mark < len(w.buf) {
		w.vec = append(w.vec, w.buf[w.mark:])
	}
	base := w.vec
	err := w.nc.writeBuffers(&w.vec) // consumes w.vec
	clear(base)
	w.vec = base[:0]
	if cap(w.buf) > 1<<20 {
		w.buf = nil // do not keep a large buffer for ever
	}
	w.buf, w.mark, w.n = w.buf[:0], 0, 0
	return err
}

// pongBody answers a ZMTP PING: the PONG carries the ping's context bytes
// (after the 2-byte TTL).
func pongBody(ping []byte) []byte {
	body := ping[1+len("PING"):]
	if len(body) >= 2 {
		return body[2:]
	}
	return nil
}

// endpoint is a parsed ZeroMQ endpoint.
type endpoint struct {
	scheme  string // "tcp" or "ipc"
	network string // net package network: "tcp" or "unix"
	addr    string // net package address
}

// parseEndpoint parses "tcp://host:port" or "ipc://path". With listen set,
// "*" as host means all interfaces and "*" or "0" as port an ephemeral one.
func parseEndpoint(ep string, listen bool) (endpoint, error) {
	e, err := parseEndpointItem(ep, listen)
	if err != nil {
		return endpoint{}, fmt.Errorf("zmqhttp: endpoint %q: %w", ep, err)
	}
	return e, nil
}

// parseEndpointItem is parseEndpoint with errors that do not repeat ep.
func parseEndpointItem(ep string, listen bool) (endpoint, error) {
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		return endpoint{}, errors.New("want tcp://host:port or ipc://path")
	}
	switch scheme {
	case "tcp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return endpoint{}, err
		}
		if listen {
			if host == "*" {
				host = ""
			}
			if port == "*" {
				port = "0"
			}
		} else if host == "" || host == "*" || port == "" || port == "*" || port == "0" {
			return endpoint{}, errors.New("a dial endpoint needs a host and a port")
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && !listen) {
			return endpoint{}, fmt.Errorf("port %q: want a number from 1 to 65535", port)
		}
		return endpoint{scheme: "tcp", network: "tcp", addr: net.JoinHostPort(host, port)}, nil
	case "ipc":
		if rest == "" || rest == "*" {
			return endpoint{}, errors.New("ipc needs a socket path")
		}
		return endpoint{scheme: "ipc", network: "unix", addr: rest}, nil
	case "inproc":
		return endpoint{}, errors.New("inproc is not supported (go-zeromq's inproc corrupts frames over 255 bytes); use ipc:// or tcp://")
	}
	return endpoint{}, fmt.Errorf("unsupported transport %q (want tcp or ipc)", scheme)
}

// liveConn wraps a connection for heartbeats: once armed with a timeout,
// it lets a read or a write fail only when no byte moved for that long —
// so a large message on a slow link is progress, while a peer that stopped
// is dead.
// Writes go out in pieces of at most liveWriteChunk bytes, each given at
// least the timeout (see moveWriteDeadline).
type liveConn struct {
	net.Conn
	timeout atomic.Int64 // nanoseconds without progress before a read or write fails; 0: none

	readDeadlineSet int64 // the reading goroutine's: when it last moved the read deadline
	// writeDeadlineSet is when a write last moved the write deadline
	// (unix nanoseconds), to the timeout and an eighth beyond.
	writeDeadlineSet atomic.Int64
}

// moveWriteDeadline gives a write that starts now at least the timeout
// to make progress (at most an eighth more). Moving the deadline costs a
// timer update: it is moved when an eighth of the timeout has passed
// since the last move, not for every write.
func (c *liveConn) moveWriteDeadline(to int64) {
	if now := time.Now().UnixNano(); now-c.writeDeadlineSet.Load() > to/8 {
		c.Conn.SetWriteDeadline(time.Unix(0, now+to+to/8))
		c.writeDeadlineSet.Store(now)
	}
}

const liveWriteChunk = 64 << 10

func newLiveConn(nc net.Conn) *liveConn { return &liveConn{Conn: nc} }

// arm makes reads and writes fail after timeout without progress.
func (c *liveConn) arm(timeout time.Duration) { c.timeout.Store(int64(timeout)) }

func (c *liveConn) Read(p []byte) (int, error) {
	if to := c.timeout.Load(); to > 0 {
		// Moving the deadline costs a timer update: do it when an
		// eighth of the timeout has passed since the last move.
		// The deadline is set an eighth beyond the timeout, so that a
		// silent peer is declared dead after between 1 and 1⅛ timeouts.
		if now := time.Now().UnixNano(); now-c.readDeadlineSet > to/8 {
			c.Conn.SetReadDeadline(time.Unix(0, now+to+to/8))
			c.readDeadlineSet = now
		}
	}
	return c.Conn.Read(p)
}

// writeBuffers writes v with one vectored write (as few as it takes). On
// an armed connection each write may take the timeout; one that moved
// bytes before it timed out goes on.
func (c *liveConn) writeBuffers(v *net.Buffers) error {
	to := c.timeout.Load()
	w := c.Conn
	if cc, ok := w.(*curveConn); ok {
		v, w = cc.seal(v), cc.Conn
		defer cc.sent()
	}
	for len(*v) > 0 {
		if to > 0 {
			c.moveWriteDeadline(to)
		}
		n, err := v.WriteTo(w)
		if err != nil {
			if to > 0 && n > 0 && isTimeout(err) {
				continue // progress: a slow link, not a dead peer
			}
			return err
		}
	}
	return nil
}

func (c *liveConn) Write(p []byte) (int, error) {
	to := c.timeout.Load()
	if to == 0 {
		return c.Conn.Write(p)
	}
	written := 0
	for written < len(p) {
		c.moveWriteDeadline(to)
		n, err := c.Conn.Write(p[written:min(len(p), written+liveWriteChunk)])
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}
