package zmqhttp

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"time"
)

// This file holds what lets a program see what the transport does: the
// logger of connection events (WithLogger) and the httptrace callbacks
// RoundTrip fires.

// WithLogger sends connection events to logger: connected, connection
// lost and why (a peer declared dead among them), connect attempts that
// failed (a handshake refused and why), a server draining, peers that
// connect and leave a Listener, handshakes that fail, messages dropped and
// why. Both sides. Events are logged at Info (connected, left, draining)
// and Warn (failures, drops); requests themselves are not logged. Default:
// nothing is logged.
func WithLogger(logger *slog.Logger) Option { return func(c *config) { c.logger = logger } }

// logInfo and logWarn log msg with args if a logger was given.
func (c *config) logInfo(msg string, args ...any) {
	if c.logger != nil {
		c.logger.LogAttrs(context.Background(), slog.LevelInfo, msg, attrs(args)...)
	}
}

func (c *config) logWarn(msg string, args ...any) {
	if c.logger != nil {
		c.logger.LogAttrs(context.Background(), slog.LevelWarn, msg, attrs(args)...)
	}
}

// attrs makes attributes of key, value pairs; an error value is logged as
// its text.
func attrs(args []any) []slog.Attr {
	out := make([]slog.Attr, 0, len(args)/2)
	for i := 0; i+1 < len(args); i += 2 {
		key, _ := args[i].(string)
		if err, ok := args[i+1].(error); ok {
			out = append(out, slog.String(key, err.Error()))
			continue
		}
		out = append(out, slog.Any(key, args[i+1]))
	}
	return out
}

// callTrace fires a request's httptrace callbacks, as http.Transport does
// for one on a reused keep-alive connection: GetConn and GotConn when the
// request is handed to the Transport (its connections are shared and
// multiplexed: Reused is true once one was up), WroteHeaders and
// WroteRequest once it is queued on a connection (a whole body goes with
// it; a streamed body follows), and GotFirstResponseByte when the response
// (or the server's error) arrives.
type callTrace struct {
	t  *httptrace.ClientTrace
	tr *Transport
}

func newCallTrace(req *http.Request, t *Transport) callTrace {
	return callTrace{t: httptrace.ContextClientTrace(req.Context()), tr: t}
}

func (c callTrace) getConn(req *http.Request) {
	if c.t == nil {
		return
	}
	reused := c.tr.stats.connects.Load() > 0
	if c.t.GetConn != nil {
		host := req.URL.Host
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(host, "80")
		}
		c.t.GetConn(host)
	}
	if c.t.GotConn != nil {
		c.t.GotConn(httptrace.GotConnInfo{Conn: traceConn{remote: peerAddr{network: "zmq", addr: c.tr.endpoint}}, Reused: reused})
	}
}

func (c callTrace) wrote(err error) {
	if c.t == nil {
		return
	}
	if c.t.WroteHeaders != nil && err == nil {
		c.t.WroteHeaders()
	}
	if c.t.WroteRequest != nil {
		c.t.WroteRequest(httptrace.WroteRequestInfo{Err: err})
	}
}

func (c callTrace) firstByte() {
	if c.t != nil && c.t.GotFirstResponseByte != nil {
		c.t.GotFirstResponseByte()
	}
}

// traceConn is the net.Conn a GotConn callback sees: it names the
// endpoint; reading or writing it fails (the Transport owns the
// connections).
type traceConn struct{ remote net.Addr }

var errTraceConn = errors.New("zmqhttp: the connection shown to httptrace cannot be used")

func (traceConn) Read([]byte) (int, error)         { return 0, errTraceConn }
func (traceConn) Write([]byte) (int, error)        { return 0, errTraceConn }
func (traceConn) Close() error                     { return nil }
func (traceConn) LocalAddr() net.Addr              { return peerAddr{network: "zmq", addr: "local"} }
func (c traceConn) RemoteAddr() net.Addr           { return c.remote }
func (traceConn) SetDeadline(time.Time) error      { return nil }
func (traceConn) SetReadDeadline(time.Time) error  { return nil }
func (traceConn) SetWriteDeadline(time.Time) error { return nil }
