package zmqhttp

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"golang.org/x/crypto/nacl/box"
)

// curveGreeting is a CURVE client's ZMTP 3.0 greeting.
func curveGreeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10] = 0xff, 0x7f, 3
	copy(g[12:32], "CURVE")
	return g
}

// cmdFrame encodes a ZMTP command frame.
func cmdFrame(name string, body []byte) []byte {
	b := append([]byte{byte(len(name))}, name...)
	return append(appendFrameHeader(nil, flagCommand, len(b)+len(body)), append(b, body...)...)
}

// FuzzCurveHandshake feeds a CURVE server the HELLO and INITIATE bodies
// the fuzzer makes, after a valid greeting: it must fail cleanly (never
// panic, never hang) and never complete.
func FuzzCurveHandshake(f *testing.F) {
	spub, ssec, err := box.GenerateKey(nopRand{})
	if err != nil {
		f.Fatal(err)
	}
	validHello := func() []byte {
		cpub, csec, _ := box.GenerateKey(nopRand{})
		h := make([]byte, 2+72, 194)
		h[0] = 1
		h = append(h, cpub[:]...)
		sn := shortNonce(1)
		h = append(h, sn...)
		return box.Seal(h, make([]byte, 64), nonce24("CurveZMQHELLO---", sn), spub, csec)
	}
	f.Add(validHello(), make([]byte, 248))
	f.Add(validHello(), bytes.Repeat([]byte{0xff}, 400))
	f.Add(make([]byte, 194), []byte{})
	f.Add([]byte{1, 0}, []byte{0})
	f.Fuzz(func(t *testing.T, hello, initiate []byte) {
		cli, srv := net.Pipe()
		done := make(chan error, 1)
		m := &curveMech{server: true, public: spub, secret: ssec}
		go func() {
			_, _, err := handshakeWith(srv, zmq4.Router, true, 2*time.Second, m)
			srv.Close()
			done <- err
		}()
		cli.SetDeadline(time.Now().Add(2 * time.Second))
		go io.Copy(io.Discard, cli) // the server's greeting and WELCOME
		cli.Write(curveGreeting())
		cli.Write(cmdFrame("HELLO", hello))
		cli.Write(cmdFrame("INITIATE", initiate))
		cli.Close()
		select {
		case err := <-done:
			if err == nil || m.codec != nil {
				t.Fatalf("handshake completed on fuzz input")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("handshake did not end")
		}
	})
}

// nopRand is a deterministic stand-in for crypto/rand in the fuzz seeds.
type nopRand struct{}

func (nopRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i * 7)
	}
	return len(p), nil
}

// TestCurveTamper: a MESSAGE altered on the wire, or replayed, closes the
// connection; nothing altered is delivered.
func TestCurveTamper(t *testing.T) {
	var key [32]byte
	mk := func() *curveCodec {
		return &curveCodec{key: key, sendPrefix: "CurveZMQMESSAGEC", recvPrefix: "CurveZMQMESSAGEC", sendNonce: 5, recvNonce: 4}
	}
	var wire bytes.Buffer
	w := &curveConn{Conn: writerConn{w: &wire}, codec: mk()}
	frames := appendFrameHeader(nil, flagMore, 0)
	frames = append(appendFrameHeader(frames, 0, 5), "hello"...)
	if _, err := w.Write(frames); err != nil {
		t.Fatal(err)
	}
	good := wire.Bytes()
	read := func(b []byte) ([]byte, error) {
		r := newCurveConn(nil, bufioReader(b), mk(), 1<<20)
		return io.ReadAll(r)
	}
	if got, err := read(good); !bytes.Equal(got, frames) || err != io.EOF && err != nil {
		t.Fatalf("untouched: %x, %v; want %x", got, err, frames)
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x20
		got, err := read(bad)
		if err == nil || len(got) > 2 { // at most the first (untouched) frame
			t.Fatalf("byte %d altered: read %x, %v", i, got, err)
		}
	}
	// The second MESSAGE again, with the first one's nonce.
	first := good[:2+33]
	replay := append(bytes.Clone(good), first...)
	if got, err := read(replay); err == nil || !bytes.Equal(got, frames) {
		t.Errorf("replayed MESSAGE: read %x, %v; want the frames then an error", got, err)
	}
}

// writerConn is a net.Conn whose writes go to w (nothing else is used).
type writerConn struct {
	net.Conn
	w io.Writer
}

func (c writerConn) Write(p []byte) (int, error) { return c.w.Write(p) }

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
