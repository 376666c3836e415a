package zmqhttp

import (
	"bufio"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/go-zeromq/zmq4"
	"golang.org/x/crypto/nacl/box"
	"golang.org/x/crypto/nacl/secretbox"
)

// This file is the CURVE security mechanism (ZeroMQ RFC 25, ZMTP-CURVE, on
// RFC 26, CurveZMQ): the handshake, run inside zmq4's greeting as a
// zmq4.Security, and the MESSAGE codec that encrypts every frame after it.
// The keys: the server's long-term pair (S, s), the client's (C, c), and a
// short-term pair on each side for the session (C', c' and S', s').
//
//	client                                  server
//	HELLO    C', Box[64 zeros](C'→S)    →
//	                                    ←   WELCOME  Box[S' + cookie](S→C')
//	INITIATE cookie, Box[C + vouch + metadata](C'→S')   →
//	         (vouch = Box[C' + S](C→S'): C owns C')
//	                                    ←   READY    Box[metadata](S'→C')
//	MESSAGE  Box[flags + frame](C'↔S'), each way, short nonces increasing

// curveOverhead is what a MESSAGE command adds to the frame it carries:
// name (8), short nonce (8), tag (16) and the flags byte.
const curveOverhead = 8 + 8 + box.Overhead + 1

// curveCodec encrypts and decrypts MESSAGE commands for one connection
// after its handshake.
type curveCodec struct {
	key        [32]byte // precomputed from the peer's and our short-term keys
	sendPrefix string   // "CurveZMQMESSAGEC" from the client, "...S" from the server
	recvPrefix string
	sendNonce  uint64 // the writer's: the next short nonce to send
	recvNonce  uint64 // the reader's: the last short nonce received
}

func nonce24(prefix string, short []byte) *[24]byte {
	var n [24]byte
	copy(n[:], prefix)
	copy(n[len(prefix):], short)
	return &n
}

func shortNonce(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// securityError is a failed security handshake; refused is set when the
// server refused the client (it sent an ERROR command).
type securityError struct {
	mech    string
	msg     string
	refused bool
}

func (e *securityError) Error() string { return "zmqhttp: " + e.mech + " handshake: " + e.msg }

func curveFail(format string, args ...any) error {
	return &securityError{mech: "CURVE", msg: fmt.Sprintf(format, args...)}
}

// errorReason reads the reason of an ERROR command's body.
func errorReason(body []byte) string {
	if len(body) > 0 && int(body[0]) <= len(body)-1 {
		return string(body[1 : 1+int(body[0])])
	}
	return "no reason given"
}

// recvCurveCmd reads the next command and checks its name; an ERROR
// command becomes a refusal.
func recvCurveCmd(conn *zmq4.Conn, want string) ([]byte, error) {
	cmd, err := conn.RecvCmd()
	if err != nil {
		return nil, err
	}
	if cmd.Name == "ERROR" {
		return nil, &securityError{mech: "CURVE", msg: "the server refused this client: " + errorReason(cmd.Body), refused: true}
	}
	if cmd.Name != want {
		return nil, curveFail("got %q, want %s", cmd.Name, want)
	}
	return cmd.Body, nil
}

// sendSecurityError sends an ERROR command with reason (at most 255
// bytes).
func sendSecurityError(conn *zmq4.Conn, reason string) {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	conn.SendCmd("ERROR", append([]byte{byte(len(reason))}, reason...))
}

// curveMech is a zmq4.Security running one side of the CURVE handshake;
// after a successful Handshake, codec is set (and, on the server side,
// clientKey). One per connection.
type curveMech struct {
	server    bool
	public    *[32]byte // our long-term key (S, or C)
	secret    *[32]byte
	serverKey *[32]byte // client side: S
	// authorize, server side, is asked about the client's long-term key
	// once it is proven; an error refuses the client.
	authorize func(clientKey *[32]byte) error

	codec     *curveCodec
	clientKey [32]byte
}

// Type is the mechanism's name in the greeting.
func (m *curveMech) Type() zmq4.SecurityType { return zmq4.CurveSecurity }

// Encrypt passes handshake commands through unchanged (they carry their
// own boxes); messages are encrypted by curveConn, not by zmq4.
func (m *curveMech) Encrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }

// Decrypt passes handshake commands through unchanged.
func (m *curveMech) Decrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }

// Handshake runs the client's or the server's side.
func (m *curveMech) Handshake(conn *zmq4.Conn, server bool) error {
	if m.server {
		return m.serverHandshake(conn)
	}
	return m.clientHandshake(conn)
}

func (m *curveMech) clientHandshake(conn *zmq4.Conn) error {
	cpub, csec, err := box.GenerateKey(rand.Reader) // C', c'
	if err != nil {
		return err
	}
	// HELLO: version 1.0, 72 bytes of padding, C', short nonce 1,
	// Box[64 zeros](C'→S).
	hello := make([]byte, 2+72, 194)
	hello[0] = 1
	hello = append(hello, cpub[:]...)
	sn := shortNonce(1)
	hello = append(hello, sn...)
	hello = box.Seal(hello, make([]byte, 64), nonce24("CurveZMQHELLO---", sn), m.serverKey, csec)
	if err := conn.SendCmd("HELLO", hello); err != nil {
		return err
	}

	// WELCOME: long nonce, Box[S' + cookie](S→C').
	welcome, err := recvCurveCmd(conn, "WELCOME")
	if err != nil {
		return err
	}
	if len(welcome) != 16+box.Overhead+128 {
		return curveFail("WELCOME of %d bytes", len(welcome))
	}
	plain, ok := box.Open(nil, welcome[16:], nonce24("WELCOME-", welcome[:16]), m.serverKey, csec)
	if !ok {
		return curveFail("WELCOME does not open: the server's public key is not the one this client was given")
	}
	var sPrime [32]byte
	copy(sPrime[:], plain[:32])
	cookie := plain[32:]
	var key [32]byte
	box.Precompute(&key, &sPrime, csec)

	// INITIATE: cookie, short nonce 2, Box[C + vouch + metadata](C'→S'),
	// vouch = long nonce + Box[C' + S](C→S').
	ln := make([]byte, 16)
	if _, err := rand.Read(ln); err != nil {
		return err
	}
	vouch := box.Seal(ln, append(cpub[:32:32], m.serverKey[:]...), nonce24("VOUCH---", ln), &sPrime, m.secret)
	meta, err := conn.Meta.MarshalZMTP()
	if err != nil {
		return err
	}
	inner := append(append(m.public[:32:32], vouch...), meta...)
	sn = shortNonce(2)
	initiate := append(append([]byte(nil), cookie...), sn...)
	initiate = box.SealAfterPrecomputation(initiate, inner, nonce24("CurveZMQINITIATE", sn), &key)
	if err := conn.SendCmd("INITIATE", initiate); err != nil {
		return err
	}

	// READY: short nonce, Box[metadata](S'→C').
	ready, err := recvCurveCmd(conn, "READY")
	if err != nil {
		return err
	}
	if len(ready) < 8+box.Overhead {
		return curveFail("READY of %d bytes", len(ready))
	}
	meta, ok = box.OpenAfterPrecomputation(nil, ready[8:], nonce24("CurveZMQREADY---", ready[:8]), &key)
	if !ok {
		return curveFail("READY does not open")
	}
	if err := conn.Peer.Meta.UnmarshalZMTP(meta); err != nil {
		return curveFail("READY metadata: %v", err)
	}
	m.codec = &curveCodec{key: key, sendPrefix: "CurveZMQMESSAGEC", recvPrefix: "CurveZMQMESSAGES",
		sendNonce: 3, recvNonce: binary.BigEndian.Uint64(ready[:8])}
	return nil
}

func (m *curveMech) serverHandshake(conn *zmq4.Conn) error {
	// HELLO
	hello, err := recvCurveCmd(conn, "HELLO")
	if err != nil {
		return err
	}
	if len(hello) != 194 {
		return curveFail("HELLO of %d bytes, want 194", len(hello))
	}
	if hello[0] != 1 || hello[1] != 0 {
		return curveFail("CurveZMQ version %d.%d, want 1.0", hello[0], hello[1])
	}
	var cPrime [32]byte
	copy(cPrime[:], hello[74:106])
	helloNonce := binary.BigEndian.Uint64(hello[106:114])
	if _, ok := box.Open(nil, hello[114:], nonce24("CurveZMQHELLO---", hello[106:114]), &cPrime, m.secret); !ok {
		return curveFail("HELLO does not open: the client was not given this server's public key")
	}

	// WELCOME: our short-term S', and a cookie holding C' and s' under a
	// key of this connection's.
	sPub, sSec, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	var cookieKey [32]byte
	ln := make([]byte, 16)
	wn := make([]byte, 16)
	for _, b := range [][]byte{cookieKey[:], ln, wn} {
		if _, err := rand.Read(b); err != nil {
			return err
		}
	}
	cookie := secretbox.Seal(append([]byte(nil), ln...), append(cPrime[:32:32], sSec[:]...), nonce24("COOKIE--", ln), &cookieKey)
	welcome := box.Seal(wn, append(sPub[:32:32], cookie...), nonce24("WELCOME-", wn), &cPrime, m.secret)
	if err := conn.SendCmd("WELCOME", welcome); err != nil {
		return err
	}

	// INITIATE
	initiate, err := recvCurveCmd(conn, "INITIATE")
	if err != nil {
		return err
	}
	if len(initiate) < 96+8+box.Overhead+32+96 {
		return curveFail("INITIATE of %d bytes", len(initiate))
	}
	back, ok := secretbox.Open(nil, initiate[16:96], nonce24("COOKIE--", initiate[:16]), &cookieKey)
	if !ok || subtle.ConstantTimeCompare(back[:32], cPrime[:]) != 1 || subtle.ConstantTimeCompare(back[32:], sSec[:]) != 1 {
		return curveFail("INITIATE carries a cookie this server did not make")
	}
	initNonce := binary.BigEndian.Uint64(initiate[96:104])
	if initNonce <= helloNonce {
		return curveFail("INITIATE's short nonce does not follow HELLO's")
	}
	var key [32]byte
	box.Precompute(&key, &cPrime, sSec)
	inner, ok := box.OpenAfterPrecomputation(nil, initiate[104:], nonce24("CurveZMQINITIATE", initiate[96:104]), &key)
	if !ok || len(inner) < 32+96 {
		return curveFail("INITIATE does not open")
	}
	var cLong [32]byte
	copy(cLong[:], inner[:32])
	vouch := inner[32:128]
	vouched, ok := box.Open(nil, vouch[16:], nonce24("VOUCH---", vouch[:16]), &cLong, sSec)
	if !ok || len(vouched) != 64 || subtle.ConstantTimeCompare(vouched[:32], cPrime[:]) != 1 ||
		subtle.ConstantTimeCompare(vouched[32:], m.public[:]) != 1 {
		return curveFail("INITIATE's vouch does not prove the client's key")
	}
	if err := conn.Peer.Meta.UnmarshalZMTP(inner[128:]); err != nil {
		return curveFail("INITIATE metadata: %v", err)
	}
	m.clientKey = cLong
	if m.authorize != nil {
		if err := m.authorize(&cLong); err != nil {
			sendSecurityError(conn, err.Error())
			return &securityError{mech: "CURVE", msg: "client refused: " + err.Error(), refused: true}
		}
	}

	// READY
	meta, err := conn.Meta.MarshalZMTP()
	if err != nil {
		return err
	}
	sn := shortNonce(1)
	ready := box.SealAfterPrecomputation(append([]byte(nil), sn...), meta, nonce24("CurveZMQREADY---", sn), &key)
	if err := conn.SendCmd("READY", ready); err != nil {
		return err
	}
	m.codec = &curveCodec{key: key, sendPrefix: "CurveZMQMESSAGES", recvPrefix: "CurveZMQMESSAGEC",
		sendNonce: 2, recvNonce: initNonce}
	return nil
}

// curveConn carries the plain ZMTP frame stream the link reads and writes
// over a CURVE session: each frame written travels as one MESSAGE command,
// and each MESSAGE read becomes the frame it carries. Reads are the link
// reader's, writes the link writer's; neither is shared.
type curveConn struct {
	net.Conn               // the connection: Close, deadlines, addresses
	br       *bufio.Reader // its reads (may hold bytes read during the handshake)
	codec    *curveCodec
	limit    int // largest frame body accepted in a MESSAGE

	// The reader's.
	rbuf  []byte // the last MESSAGE read
	plain []byte // decrypted frame bytes (header and body) not yet read
	pbuf  []byte // plain's storage

	// The writer's.
	pend []byte      // plain frame bytes written and not yet a whole frame
	out  []byte      // encrypted commands to write
	outv net.Buffers // out, as seal returns it
}

func newCurveConn(nc net.Conn, br *bufio.Reader, c *curveCodec, limit int) *curveConn {
	return &curveConn{Conn: nc, br: br, codec: c, limit: limit}
}

// errCurveMessage reports a MESSAGE that fails authentication, repeats or
// goes back in nonces, or is not a MESSAGE: the connection ends.
var errCurveMessage = errors.New("zmqhttp: CURVE: a message failed authentication or its nonce did not increase")

// Read returns the plain frame bytes of the MESSAGEs the peer sent.
func (c *curveConn) Read(p []byte) (int, error) {
	for len(c.plain) == 0 {
		if err := c.readMessage(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.plain)
	c.plain = c.plain[n:]
	if len(c.plain) == 0 {
		// Do not keep the buffers of a large message for the
		// connection's life.
		if cap(c.rbuf) > 1<<20 {
			c.rbuf = nil
		}
		if cap(c.pbuf) > 1<<20 {
			c.pbuf = nil
		}
	}
	return n, nil
}

func (c *curveConn) readMessage() error {
	flags, size, err := readFrameHeader(c.br)
	if err != nil {
		return err
	}
	if flags&^(flagLong|flagCommand) != 0 {
		return fmt.Errorf("%w (a MESSAGE frame with flags %#x)", errCurveMessage, flags)
	}
	if size < curveOverhead || size > uint64(c.limit)+curveOverhead {
		return fmt.Errorf("%w (a MESSAGE of %d bytes)", errCurveMessage, size)
	}
	if uint64(cap(c.rbuf)) >= size {
		c.rbuf = c.rbuf[:size]
		if _, err := io.ReadFull(c.br, c.rbuf); err != nil {
			return unexpectedEOF(err)
		}
	} else if c.rbuf, err = readFrameBody(c.br, size); err != nil {
		return err
	}
	m := c.rbuf
	if string(m[:8]) != "\x07MESSAGE" {
		return fmt.Errorf("%w (command %q)", errCurveMessage, commandName(m))
	}
	n := binary.BigEndian.Uint64(m[8:16])
	if n <= c.codec.recvNonce {
		return fmt.Errorf("%w (nonce %d after %d)", errCurveMessage, n, c.codec.recvNonce)
	}
	// Open behind 9 spare bytes, where the frame header goes.
	dst := c.pbuf[:0]
	if cap(dst) < 9+len(m)-16 {
		dst = make([]byte, 0, 9+len(m)-16)
	}
	dst = dst[:9]
	out, ok := box.OpenAfterPrecomputation(dst, m[16:], nonce24(c.codec.recvPrefix, m[8:16]), &c.codec.key)
	if !ok || len(out) < 10 {
		return errCurveMessage
	}
	c.codec.recvNonce = n
	c.pbuf = out[:0]
	mflags, body := out[9], len(out)-10
	var fl byte
	if mflags&0x01 != 0 {
		fl |= flagMore
	}
	if mflags&0x02 != 0 {
		fl |= flagCommand
	}
	var start int
	if body > 255 {
		start = 1
		out[start] = fl | flagLong
		binary.BigEndian.PutUint64(out[2:10], uint64(body))
	} else {
		start = 8
		out[8], out[9] = fl, byte(body)
	}
	c.plain = out[start:]
	return nil
}

// Write encrypts the whole frames in p (and any left from an earlier
// write) and writes them.
func (c *curveConn) Write(p []byte) (int, error) {
	v := net.Buffers{p}
	out := c.seal(&v)
	_, err := out.WriteTo(c.Conn)
	c.sent()
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// seal encrypts the whole frames in v, consumed, into MESSAGE commands
// and returns them, to be written to the connection before sent is
// called. A frame cut at the end of v waits for the next call.
func (c *curveConn) seal(v *net.Buffers) *net.Buffers {
	for _, b := range *v {
		c.pend = append(c.pend, b...)
	}
	*v = (*v)[len(*v):]
	off := 0
	for {
		rest := c.pend[off:]
		if len(rest) < 2 {
			break
		}
		flags, hlen, size := rest[0], 2, uint64(rest[1])
		if flags&flagLong != 0 {
			if len(rest) < 9 {
				break
			}
			hlen, size = 9, binary.BigEndian.Uint64(rest[1:9])
		}
		if uint64(len(rest)-hlen) < size {
			break
		}
		var mflags byte
		if flags&flagMore != 0 {
			mflags |= 0x01
		}
		if flags&flagCommand != 0 {
			mflags |= 0x02
		}
		// The flags byte goes just before the body, over the header's
		// last byte.
		plain := rest[hlen-1 : hlen+int(size)]
		plain[0] = mflags
		// As libzmq does, a MESSAGE travels as a single data frame.
		c.out = appendFrameHeader(c.out, 0, curveOverhead+int(size))
		c.out = append(c.out, "\x07MESSAGE"...)
		c.out = binary.BigEndian.AppendUint64(c.out, c.codec.sendNonce)
		n := nonce24(c.codec.sendPrefix, c.out[len(c.out)-8:])
		c.out = box.SealAfterPrecomputation(c.out, plain, n, &c.codec.key)
		c.codec.sendNonce++
		off += hlen + int(size)
	}
	c.pend = c.pend[:copy(c.pend, c.pend[off:])]
	if cap(c.pend) > 1<<20 && len(c.pend) == 0 {
		c.pend = nil // do not keep a large buffer for ever
	}
	c.outv = append(c.outv[:0], c.out)
	return &c.outv
}

// sent releases what seal returned.
func (c *curveConn) sent() {
	if cap(c.out) > 1<<20 {
		c.out = nil
	} else {
		c.out = c.out[:0]
	}
	c.outv = c.outv[:0]
}
