package zmqhttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
	"golang.org/x/crypto/curve25519"
)

// This file holds the security settings of both sides: which ZMTP
// mechanism a connection's handshake runs (NULL unless an option says
// otherwise), and the authorizer that accepts or refuses a client.

// Peer describes the client at the other end of a Listener's connection,
// as its handshake established it.
type Peer struct {
	// Mechanism is the ZMTP security mechanism: "NULL", "PLAIN" or
	// "CURVE".
	Mechanism string
	// PublicKey is, for CURVE, the client's long-term public key as 40
	// characters of Z85 text: what libzmq's ZAP handler gets as User-Id.
	PublicKey string
	// Username and Password are, for PLAIN, the credentials the client
	// sent.
	Username, Password string
	// Addr is the client's address (its IP and port for tcp).
	Addr net.Addr
}

// WithCurveServer makes a Listener speak CURVE (ZeroMQ RFC 25/26) with the
// server's long-term secret key (40 characters of Z85, from
// NewCurveKeyPair or libzmq): every connection is encrypted, and only
// clients that know the matching public key can connect. Without
// WithAuthorizer every such client is accepted. Listener only; Listen
// fails if the key is malformed.
func WithCurveServer(secret string) Option {
	return func(c *config) { c.curveServer = &secret }
}

// WithCurveClient makes a Transport speak CURVE to a server whose
// long-term public key is serverPublic, with the client's own key pair
// (public, secret). All keys are 40 characters of Z85. A server whose key
// is not serverPublic cannot complete the handshake. Transport only;
// NewTransport fails if a key is malformed.
func WithCurveClient(serverPublic, public, secret string) Option {
	return func(c *config) { c.curveClient = &[3]string{serverPublic, public, secret} }
}

// WithAuthorizer has a Listener ask authorize about each client once its
// handshake established who it is (for CURVE, its proven public key);
// a non-nil error refuses it. A refused CURVE client is told so in the
// handshake (an ERROR command with the error's text) and never gets to
// send a request; a NULL client's connection is closed. authorize runs on
// the connection's own goroutine, one call per connection, and should not
// block for long. Listener only.
func WithAuthorizer(authorize func(p Peer) error) Option {
	return func(c *config) { c.authorizer = authorize }
}

// PeerFromContext returns the client a request came from, for a handler
// served through a Listener: r.Context() of any request the http.Server
// read from one (no wrapper or hook needed) answers ok, with Mechanism
// "NULL" when the Listener has no security option. Other contexts answer
// false.
func PeerFromContext(ctx context.Context) (Peer, bool) {
	a, ok := ctx.Value(http.LocalAddrContextKey).(*connAddr)
	if !ok {
		return Peer{}, false
	}
	return a.p.info, true
}

// WithPlainServer makes a Listener speak PLAIN (ZeroMQ RFC 24): each
// client sends a user name and a password, in clear, which the authorizer
// (WithAuthorizer, required) accepts or refuses; a refused client is told
// so in the handshake. PLAIN authenticates but does not encrypt: over an
// untrusted network use CURVE. Listener only.
func WithPlainServer() Option { return func(c *config) { c.plainServer = true } }

// WithPlainClient makes a Transport speak PLAIN with the given credentials
// (each at most 255 bytes). Transport only.
func WithPlainClient(username, password string) Option {
	return func(c *config) { c.plainClient = &[2]string{username, password} }
}

// checkSecurity reports settings that cannot work, for Listen and
// NewTransport to fail with.
func (c *config) checkSecurity(server bool) error {
	if err := c.checkOptions(); err != nil {
		return err
	}
	// An option for the other side would be ignored without a word (and
	// a security one would leave this side open or in clear): refuse it.
	switch {
	case server && c.curveClient != nil:
		return errors.New("zmqhttp: WithCurveClient is a Transport option; a Listener takes WithCurveServer")
	case server && c.plainClient != nil:
		return errors.New("zmqhttp: WithPlainClient is a Transport option; a Listener takes WithPlainServer")
	case !server && c.curveServer != nil:
		return errors.New("zmqhttp: WithCurveServer is a Listener option; a Transport takes WithCurveClient")
	case !server && (c.plainServer || c.authorizer != nil):
		return errors.New("zmqhttp: WithPlainServer and WithAuthorizer are Listener options")
	case server && c.maxPending != 0:
		return errors.New("zmqhttp: WithMaxPending is a Transport option")
	case server && c.maxReplays != 0:
		return errors.New("zmqhttp: WithMaxReplays is a Transport option")
	case server && c.disableCompress:
		return errors.New("zmqhttp: WithDisableCompression is a Transport option")
	case !server && c.workers != 0:
		return errors.New("zmqhttp: WithWorkers is a Listener option")
	case !server && c.queueSize != 0:
		return errors.New("zmqhttp: WithQueueSize is a Listener option")
	case !server && c.retryAfter != 0:
		return errors.New("zmqhttp: WithRetryAfter is a Listener option")
	case !server && len(c.services) > 0:
		return errors.New("zmqhttp: WithServices is a Listener option")
	}
	keys, err := c.curveSettings(server)
	if err != nil {
		return err
	}
	c.curve = keys // parsed once, for every connection
	if server && c.plainServer {
		if c.curveServer != nil {
			return errors.New("zmqhttp: WithPlainServer and WithCurveServer together: a connection has one mechanism")
		}
		if c.authorizer == nil {
			return errors.New("zmqhttp: WithPlainServer needs WithAuthorizer to check the credentials")
		}
	}
	if !server && c.plainClient != nil {
		if c.curveClient != nil {
			return errors.New("zmqhttp: WithPlainClient and WithCurveClient together: a connection has one mechanism")
		}
		if len(c.plainClient[0]) > 255 || len(c.plainClient[1]) > 255 {
			return errors.New("zmqhttp: PLAIN user name and password are at most 255 bytes each")
		}
	}
	return nil
}

// curveKeys is one side's parsed CURVE settings.
type curveKeys struct {
	public, secret *[32]byte
	serverKey      *[32]byte // client side: the server's public key
}

// curveSettings parses the CURVE option of the given side; nil without
// one.
func (c *config) curveSettings(server bool) (*curveKeys, error) {
	if server {
		if c.curveServer == nil {
			return nil, nil
		}
		sec, err := parseCurveKey(*c.curveServer, "server secret key")
		if err != nil {
			return nil, err
		}
		pub, err := curve25519.X25519(sec[:], curve25519.Basepoint)
		if err != nil {
			return nil, fmt.Errorf("zmqhttp: CURVE server secret key: %w", err)
		}
		k := &curveKeys{secret: sec, public: new([32]byte)}
		copy(k.public[:], pub)
		return k, nil
	}
	if c.curveClient == nil {
		return nil, nil
	}
	var k curveKeys
	var err error
	if k.serverKey, err = parseCurveKey(c.curveClient[0], "server public key"); err != nil {
		return nil, err
	}
	if k.public, err = parseCurveKey(c.curveClient[1], "client public key"); err != nil {
		return nil, err
	}
	if k.secret, err = parseCurveKey(c.curveClient[2], "client secret key"); err != nil {
		return nil, err
	}
	pub, err := curve25519.X25519(k.secret[:], curve25519.Basepoint)
	if err != nil || string(pub) != string(k.public[:]) {
		return nil, errors.New("zmqhttp: CURVE client keys: the public key is not the secret key's")
	}
	return &k, nil
}

// connSecurity runs the handshake of one connection with the side's
// mechanism, then (for CURVE) puts the encryption between nc and the
// link. addr names the peer for the authorizer (server side). It returns
// what handshake does, and the Peer the connection belongs to.
func (c *config) connSecurity(nc *liveConn, typ zmq4.SocketType, server bool, addr net.Addr) (*bufio.Reader, zmq4.SocketType, Peer, error) {
	p := Peer{Mechanism: "NULL", Addr: addr}
	keys := c.curve
	timeout := c.handshakeTimeoutOrDefault()
	if plain := c.plainMech(server, addr); plain != nil {
		p.Mechanism = "PLAIN"
		br, peerType, err := handshakeWith(nc, typ, server, timeout, plain)
		p.Username, p.Password = plain.gotUser, plain.gotPass
		return br, peerType, p, err
	}
	if keys == nil {
		br, peerType, err := handshakeWith(nc, typ, server, timeout, null.Security())
		if err == nil && server && c.authorizer != nil {
			if aerr := c.authorizer(p); aerr != nil {
				err = fmt.Errorf("zmqhttp: client %s refused: %w", addr, aerr)
			}
		}
		return br, peerType, p, err
	}
	p.Mechanism = "CURVE"
	m := &curveMech{server: server, public: keys.public, secret: keys.secret, serverKey: keys.serverKey}
	if server && c.authorizer != nil {
		m.authorize = func(clientKey *[32]byte) error {
			q := p
			q.PublicKey = z85Encode(clientKey[:])
			return c.authorizer(q)
		}
	}
	// The session reads and writes the connection itself (nc reads and
	// writes through it once set up below).
	raw := nc.Conn
	br, peerType, err := handshakeWith(raw, typ, server, timeout, m)
	if err != nil {
		return nil, "", p, err
	}
	if m.codec == nil {
		return nil, "", p, errors.New("zmqhttp: CURVE handshake did not complete")
	}
	if server {
		p.PublicKey = z85Encode(m.clientKey[:])
	}
	// Frames up to the link's largest, plus what a chunk adds.
	limit := max(c.limits.maxFrameBytes(), maxChunk+4096) + routingAllowance
	nc.Conn = newCurveConn(raw, br, m.codec, int(limit))
	return bufio.NewReaderSize(nc, readBufSize), peerType, p, nil
}

// plainMech returns a PLAIN mechanism for one connection of this side,
// or nil if it does not speak PLAIN.
func (c *config) plainMech(server bool, addr net.Addr) *plainMech {
	switch {
	case server && c.plainServer:
		return &plainMech{server: true, authorize: func(user, pass string) error {
			return c.authorizer(Peer{Mechanism: "PLAIN", Username: user, Password: pass, Addr: addr})
		}}
	case !server && c.plainClient != nil:
		return &plainMech{username: c.plainClient[0], password: c.plainClient[1]}
	}
	return nil
}

// isRefusal reports a handshake that failed because of the peers'
// security settings (a refusal, a wrong key, mechanisms that differ):
// trying again will fail the same way.
func isRefusal(err error) bool {
	var se *securityError
	var nz *notZMTPError
	return errors.As(err, &se) || errors.Is(err, errMechanismMismatch) || errors.As(err, &nz)
}

// errMechanismMismatch stands for zmq4's error for greetings that name
// different mechanisms.
var errMechanismMismatch = errors.New("the peers use different security mechanisms (NULL, PLAIN, CURVE)")
