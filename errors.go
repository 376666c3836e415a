package zmqhttp

import (
	"errors"
	"fmt"
	"net"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrTransportClosed is returned by RoundTrip after Close, and fails
	// every call still pending when Close runs.
	ErrTransportClosed = fmt.Errorf("zmqhttp: transport closed: %w", net.ErrClosed)

	// ErrListenerClosed is returned by Accept after Close. It wraps
	// net.ErrClosed, so http.Server.Serve returns http.ErrServerClosed.
	ErrListenerClosed = fmt.Errorf("zmqhttp: listener closed: %w", net.ErrClosed)

	// ErrConnectionLost fails a request that was sent on a connection that
	// then broke before its reply arrived. The server may or may not have
	// run it.
	ErrConnectionLost = errors.New("zmqhttp: connection lost before the reply; the request may or may not have been processed")

	// ErrNotProcessed fails a request that provably did not run but could
	// not be sent again: servers kept returning it unprocessed (they were
	// draining) 16 times, or its body was streamed and cannot be sent
	// twice (no GetBody). It is safe to send again.
	ErrNotProcessed = errors.New("zmqhttp: the server returned the request unprocessed (draining)")

	// ErrTooManyPending is returned at once by RoundTrip when the
	// Transport already holds WithMaxPending requests.
	ErrTooManyPending = errors.New("zmqhttp: too many pending requests")

	// ErrBodyTooLarge is returned when a request or response body exceeds
	// the configured Limits.MaxBodyBytes.
	ErrBodyTooLarge = errors.New("zmqhttp: body exceeds the size limit")
)

// RemoteError is returned by RoundTrip when the server answered the request
// with an error instead of an HTTP response: it could not decode it, or the
// handler ended without a complete response (a panic, a closed connection).
type RemoteError struct {
	Code    int    // 500: no complete response (handler panicked, connection closed); 501: unsupported version or kind
	Message string // the server's explanation
}

// Error returns the code and the server's explanation.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("zmqhttp: server error %d: %s", e.Code, e.Message)
}
