package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/zmqhttp/zmqhttp"
)

// serveCmd is the subcommand the parent runs in its server children.
const serveCmd = "serve"

// serve runs one echo server until stdin closes (the parent exited or
// closed it) or the process is killed. It writes the endpoint to dial as
// one line on out once it is listening.
func serve(args []string, stdin io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet(serveCmd, flag.ContinueOnError)
	proto := fs.String("proto", "", "protocol to serve: http or zmqhttp")
	addr := fs.String("addr", "", "listen address (default: an ephemeral loopback port)")
	workers := fs.Int("workers", 512, "zmqhttp: WithWorkers")
	queue := fs.Int("queue", 4096, "zmqhttp: WithQueueSize")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, endpoint, err := listen(*proto, *addr, *workers, *queue)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:  http.HandlerFunc(echo),
		ErrorLog: log.New(os.Stderr, "zmqhttp-bench serve "+*proto+": ", 0),
	}
	go exitOnEOF(stdin)
	if _, err := fmt.Fprintln(out, endpoint); err != nil {
		return err
	}
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listen opens the listener for proto and returns the endpoint a client
// dials: "host:port" for http, "tcp://host:port" for zmqhttp.
func listen(proto, addr string, workers, queue int) (net.Listener, string, error) {
	switch proto {
	case protoHTTP:
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, "", err
		}
		return ln, ln.Addr().String(), nil
	case protoZMQ, "zmq":
		if addr == "" {
			addr = "tcp://127.0.0.1:0"
		}
		ln, err := zmqhttp.Listen(addr, zmqhttp.WithWorkers(workers), zmqhttp.WithQueueSize(queue))
		if err != nil {
			return nil, "", err
		}
		return ln, ln.Endpoint(), nil
	}
	return nil, "", fmt.Errorf("-proto: want %s or %s, got %q", protoHTTP, protoZMQ, proto)
}

// exitOnEOF ends the process when r reaches EOF, so a child never outlives
// its parent even if the parent is killed without cleaning up.
func exitOnEOF(r io.Reader) {
	io.Copy(io.Discard, r)
	os.Exit(0)
}

// echo writes the request body back with a Content-Length.
func echo(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if r.ContentLength > 0 && r.ContentLength <= 64<<20 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(r.Body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.Write(buf.Bytes())
}
