package zmqhttp

import (
	"errors"
	"io"

	"github.com/go-zeromq/zmq4"
)

// This file is the PLAIN security mechanism (ZeroMQ RFC 24): the client
// sends a user name and a password in clear, the server's authorizer
// accepts or refuses them. It authenticates; it does not encrypt (use
// CURVE on a network you do not trust).
//
//	client                          server
//	HELLO    user, password    →
//	                           ←    WELCOME (or ERROR: refused)
//	INITIATE metadata          →
//	                           ←    READY metadata

// plainMech is a zmq4.Security running one side of the PLAIN handshake.
// One per connection.
type plainMech struct {
	server   bool
	username string // client side: the credentials to send
	password string
	// authorize, server side, is asked about the client's credentials;
	// an error refuses the client.
	authorize func(username, password string) error

	gotUser, gotPass string // server side: what the client sent
}

// Type is the mechanism's name in the greeting.
func (m *plainMech) Type() zmq4.SecurityType { return zmq4.PlainSecurity }

// Encrypt passes data through: PLAIN does not encrypt.
func (m *plainMech) Encrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }

// Decrypt passes data through.
func (m *plainMech) Decrypt(w io.Writer, data []byte) (int, error) { return w.Write(data) }

// Handshake runs the client's or the server's side.
func (m *plainMech) Handshake(conn *zmq4.Conn, _ bool) error {
	if m.server {
		return m.serverHandshake(conn)
	}
	hello := append([]byte{byte(len(m.username))}, m.username...)
	hello = append(append(hello, byte(len(m.password))), m.password...)
	if err := conn.SendCmd("HELLO", hello); err != nil {
		return err
	}
	if _, err := recvPlainCmd(conn, "WELCOME"); err != nil {
		return err
	}
	meta, err := conn.Meta.MarshalZMTP()
	if err != nil {
		return err
	}
	if err := conn.SendCmd("INITIATE", meta); err != nil {
		return err
	}
	body, err := recvPlainCmd(conn, "READY")
	if err != nil {
		return err
	}
	if err := conn.Peer.Meta.UnmarshalZMTP(body); err != nil {
		return &securityError{mech: "PLAIN", msg: "READY metadata: " + err.Error()}
	}
	return nil
}

func (m *plainMech) serverHandshake(conn *zmq4.Conn) error {
	hello, err := recvPlainCmd(conn, "HELLO")
	if err != nil {
		return err
	}
	user, rest, ok := cutString(hello)
	pass, rest2, ok2 := cutString(rest)
	if !ok || !ok2 || len(rest2) != 0 {
		return &securityError{mech: "PLAIN", msg: "malformed HELLO"}
	}
	m.gotUser, m.gotPass = user, pass
	if err := m.authorize(user, pass); err != nil {
		sendSecurityError(conn, err.Error())
		return &securityError{mech: "PLAIN", msg: "client refused: " + err.Error(), refused: true}
	}
	if err := conn.SendCmd("WELCOME", nil); err != nil {
		return err
	}
	body, err := recvPlainCmd(conn, "INITIATE")
	if err != nil {
		return err
	}
	if err := conn.Peer.Meta.UnmarshalZMTP(body); err != nil {
		return &securityError{mech: "PLAIN", msg: "INITIATE metadata: " + err.Error()}
	}
	meta, err := conn.Meta.MarshalZMTP()
	if err != nil {
		return err
	}
	return conn.SendCmd("READY", meta)
}

// cutString splits a length-prefixed string off b.
func cutString(b []byte) (string, []byte, bool) {
	if len(b) == 0 || int(b[0]) > len(b)-1 {
		return "", nil, false
	}
	return string(b[1 : 1+int(b[0])]), b[1+int(b[0]):], true
}

// recvPlainCmd reads the next command and checks its name. An ERROR, and
// a command zmq4 cannot parse where the server's answer belongs (libzmq
// 4.3.4's PLAIN server sends its ERROR malformed: 04 09 5e 'RROR' 03
// '400'), are refusals.
func recvPlainCmd(conn *zmq4.Conn, want string) ([]byte, error) {
	cmd, err := conn.RecvCmd()
	if errors.Is(err, zmq4.ErrBadCmd) && want != "HELLO" && want != "INITIATE" {
		return nil, &securityError{mech: "PLAIN", msg: "the server refused the credentials (malformed ERROR)", refused: true}
	}
	if err != nil {
		return nil, err
	}
	if cmd.Name == "ERROR" {
		return nil, &securityError{mech: "PLAIN", msg: "the server refused the credentials: " + errorReason(cmd.Body), refused: true}
	}
	if cmd.Name != want {
		return nil, &securityError{mech: "PLAIN", msg: "got " + cmd.Name + ", want " + want}
	}
	return cmd.Body, nil
}
