package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// benchClient is the client side of one run.
type benchClient struct {
	http  *http.Client
	url   string
	close func()
	stats func() string // extra diagnostics for the report, may be nil
}

// newClient builds the client for proto talking to endpoint with conc
// concurrent callers.
func newClient(proto, endpoint string, conc int, timeout time.Duration) (*benchClient, error) {
	switch proto {
	case protoHTTP:
		return newHTTPClient(endpoint, conc, timeout), nil
	case protoZMQ:
		return newZMQClient(endpoint, timeout)
	}
	return nil, fmt.Errorf("unknown protocol %q", proto)
}

// newHTTPClient gives each of the conc callers its own keep-alive
// connection: the pool holds conc idle connections and allows conc open.
func newHTTPClient(hostport string, conc int, timeout time.Duration) *benchClient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conc,
		MaxIdleConnsPerHost: conc,
		MaxConnsPerHost:     conc,
		IdleConnTimeout:     90 * time.Second,
	}
	return &benchClient{
		http:  &http.Client{Transport: tr, Timeout: timeout},
		url:   "http://" + hostport + "/echo",
		close: tr.CloseIdleConnections,
	}
}

// newZMQClient shares one zmqhttp.Transport, hence one connection, between
// all callers.
func newZMQClient(endpoint string, timeout time.Duration) (*benchClient, error) {
	tr, err := zmqhttp.NewTransport(endpoint)
	if err != nil {
		return nil, err
	}
	return &benchClient{
		http:  &http.Client{Transport: tr, Timeout: timeout},
		url:   "http://zmqhttp-bench/echo",
		close: func() { tr.Close() },
		stats: func() string { return fmt.Sprintf("%+v", tr.Stats()) },
	}, nil
}

// post sends body and checks that the reply is a 200 carrying it back.
func (c *benchClient) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return fmt.Errorf("reading reply body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	if n != int64(len(body)) {
		return fmt.Errorf("echo returned %d bytes, want %d", n, len(body))
	}
	return nil
}
