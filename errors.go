package zmqhttp

import (
	"errors"
	"fmt"
	"net"
	"strings"
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
// Codes with a meaning of their own match the sentinel errors: 413 is
// ErrBodyTooLarge (errors.Is).
type RemoteError struct {
	Code    int    // 500: no complete response (handler panicked, connection closed); 413: the response body was over the server's limit; 501: unsupported version or kind
	Message string // the server's explanation
}

// Error returns the code and the server's explanation.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("zmqhttp: server error %d: %s", e.Code, e.Message)
}

// Unwrap returns the sentinel error the code stands for, if any.
func (e *RemoteError) Unwrap() error {
	if e.Code == errCodeTooLarge {
		return ErrBodyTooLarge
	}
	return nil
}

// bare is err's text without its leading "zmqhttp: ", to quote it inside
// another of this package's errors: one prefix per error.
func bare(err error) string {
	if err == nil {
		return ""
	}
	return strings.TrimPrefix(err.Error(), "zmqhttp: ")
}

// wrapErr returns err with context before its text, the package's prefix
// once, and errors.Is and errors.As seeing err.
func wrapErr(err error, format string, args ...any) error {
	return &wrappedError{msg: "zmqhttp: " + fmt.Sprintf(format, args...) + ": " + bare(err), err: err}
}

type wrappedError struct {
	msg string
	err error
}

func (e *wrappedError) Error() string { return e.msg }
func (e *wrappedError) Unwrap() error { return e.err }

// prefixed returns err with the package's prefix, once.
func prefixed(err error) error {
	if strings.HasPrefix(err.Error(), "zmqhttp: ") {
		return err
	}
	return &wrappedError{msg: "zmqhttp: " + err.Error(), err: err}
}
