package main

// What gateway and sidecar share: answering a request that could not be
// forwarded, and the response-head timeout.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"sync"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// errorStatus maps an error from forwarding a request to the status to
// answer it with: 413 for a body over a limit, 504 when no response came
// in time, 502 for everything else.
func errorStatus(err error) int {
	switch {
	case errors.Is(err, zmqhttp.ErrBodyTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// errorHandler returns a ReverseProxy ErrorHandler that answers with
// errorStatus and a text body naming name and the error, and logs the
// error to logger (if not nil). A request whose client went away gets
// nothing: nobody would read it.
func errorHandler(name string, logger *log.Logger) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		if r.Context().Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
			return // the client cancelled
		}
		code := errorStatus(err)
		if logger != nil {
			logger.Printf("%s %s: %d: %v", r.Method, r.URL.RequestURI(), code, err)
		}
		http.Error(w, fmt.Sprintf("%s: %d %s: %v", name, code, http.StatusText(code), err), code)
	}
}

// headTimeout bounds the wait for a response head (status and headers) to
// d; the body may then take as long as it takes, so that server-sent events
// and long downloads are not cut off. A request that times out fails with
// an error matching context.DeadlineExceeded.
type headTimeout struct {
	rt http.RoundTripper
	d  time.Duration // 0: no bound
}

func (h headTimeout) RoundTrip(req *http.Request) (*http.Response, error) {
	if h.d <= 0 {
		return h.rt.RoundTrip(req)
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	t := time.AfterFunc(h.d, func() {
		cancel(fmt.Errorf("no response within %v: %w", h.d, context.DeadlineExceeded))
	})
	resp, err := h.rt.RoundTrip(req.WithContext(ctx))
	if !t.Stop() && err == nil {
		// The timer fired as the head arrived: the body is cut off, so
		// the request timed out after all.
		resp.Body.Close()
		err = context.Cause(ctx)
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: func() { cancel(nil) }}
	return resp, nil
}

// cancelOnClose ends a request's context once its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	once   sync.Once
	cancel func()
}

func (c *cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.once.Do(c.cancel)
	return err
}
