package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// benchClient is the client side of one run.
type benchClient struct {
	http  *http.Client
	base  string // scheme and host the paths are appended to
	close func()
	stats func() string // extra diagnostics for the report, may be nil
}

// newClient builds the client for proto talking to endpoint with conns
// concurrent callers.
func newClient(proto, endpoint string, conns int, timeout time.Duration) (*benchClient, error) {
	switch proto {
	case protoHTTP:
		return newHTTPClient(endpoint, conns, timeout), nil
	case protoZMQ, protoDirect:
		return newZMQClient(endpoint, timeout)
	}
	return nil, fmt.Errorf("unknown protocol %q", proto)
}

// newHTTPClient gives each of the conns callers its own keep-alive
// connection: the pool holds conns idle connections and allows conns open.
func newHTTPClient(hostport string, conns int, timeout time.Duration) *benchClient {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     90 * time.Second,
	}
	return &benchClient{
		http:  &http.Client{Transport: tr, Timeout: timeout},
		base:  "http://" + hostport,
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
		base:  "http://zmqhttp-bench",
		close: func() { tr.Close() },
		stats: func() string { return fmt.Sprintf("%+v", tr.Stats()) },
	}, nil
}

// post sends body and checks that the reply is a 200 carrying it back.
func (c *benchClient) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+pathEcho, bytes.NewReader(body))
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

// get downloads size bytes and checks that the reply is a 200 carrying
// them all.
func (c *benchClient) get(ctx context.Context, size int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+pathBytes+"?n="+strconv.Itoa(size), nil)
	if err != nil {
		return err
	}
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
	if n != int64(size) {
		return fmt.Errorf("download returned %d bytes, want %d", n, size)
	}
	return nil
}

// stream opens an event stream of n events interval apart and reads the
// events as they arrive, passing each one's delay (arrival minus the
// server's send time, on the shared wall clock) to event. It fails unless
// all n events arrive.
func (c *benchClient) stream(ctx context.Context, n int, interval time.Duration, event func(time.Duration)) error {
	url := fmt.Sprintf("%s%s?n=%d&interval=%s", c.base, pathSSE, n, interval)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return fmt.Errorf("status %s", resp.Status)
	}
	br := bufio.NewReader(resp.Body)
	got := 0
	for {
		line, err := br.ReadSlice('\n')
		arrived := time.Now().UnixNano()
		if data, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			sent, perr := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
			if perr != nil {
				return fmt.Errorf("event %d: bad data %q", got, data)
			}
			event(time.Duration(arrived - sent))
			got++
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading event %d: %w", got, err)
		}
	}
	if got != n {
		return fmt.Errorf("stream ended after %d events, want %d", got, n)
	}
	return nil
}
