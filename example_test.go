package zmqhttp_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// The whole package in a few lines: a standard http.Server and mux served
// through a Listener, and an http.Client whose Transport is a Transport.
func Example() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "user %s\n", r.PathValue("id"))
	})
	l, err := zmqhttp.Listen("tcp://127.0.0.1:*")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())

	t, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	c := &http.Client{Transport: t}
	resp, err := c.Get("http://api/users/42")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(os.Stdout, resp.Body)
	// Output: user 42
}

// An http.Client whose Transport is a zmqhttp.Transport sends its requests
// to a ZeroMQ endpoint instead of dialing the URL's host.
func ExampleNewTransport() {
	// A server to talk to (see ExampleListen).
	l, err := zmqhttp.Listen("tcp://127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello, %s (Host: %s)\n", r.URL.Query().Get("name"), r.Host)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		<-served
	}()

	t, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	client := &http.Client{Transport: t, Timeout: 5 * time.Second}

	// The endpoint picks the server; the URL's host is sent as Host.
	resp, err := client.Get("http://greeter/hello?name=gopher")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status)
	fmt.Print(string(body))
	// Output:
	// 200 OK
	// hello, gopher (Host: greeter)
}

// A Listener is a net.Listener: a standard http.Server serves an ordinary
// handler over ZeroMQ, and Shutdown drains it gracefully.
func ExampleListen() {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		io.Copy(w, r.Body)
	})

	// Port 0 picks a free port; Endpoint tells clients which.
	l, err := zmqhttp.Listen("tcp://127.0.0.1:0",
		zmqhttp.WithWorkers(16),    // at most 16 requests in handlers at once
		zmqhttp.WithQueueSize(256), // 256 more may wait; past that, 503
	)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	t, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	client := &http.Client{Transport: t, Timeout: 5 * time.Second}
	resp, err := client.Post("http://svc/echo", "text/plain", strings.NewReader("ping over ZeroMQ"))
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("%s %s: %s\n", resp.Status, resp.Header.Get("Content-Type"), body)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println("shutdown:", srv.Shutdown(ctx))
	fmt.Println("serve:", <-served)
	fmt.Println("served over ZeroMQ:", l.Stats().Requests)
	// Output:
	// 200 OK text/plain: ping over ZeroMQ
	// shutdown: <nil>
	// serve: http: Server closed
	// served over ZeroMQ: 1
}

// RegisterProtocol on an *http.Transport lets one http.Client send zmq://
// URLs over ZeroMQ while http:// URLs keep going over TCP, so callers can
// move to ZeroMQ one URL at a time. Here the same handler is served both
// ways.
func Example_registerProtocol() {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "user %s\n", strings.TrimPrefix(r.URL.Path, "/users/"))
	})

	// The existing plain HTTP server.
	legacy := httptest.NewServer(handler)
	defer legacy.Close()

	// The same handler over ZeroMQ.
	l, err := zmqhttp.Listen("tcp://127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() {
		srv.Close()
		<-served
	}()

	zt, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		log.Fatal(err)
	}
	defer zt.Close()
	tr := &http.Transport{}
	tr.RegisterProtocol("zmq", zt)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	for _, url := range []string{legacy.URL + "/users/42", "zmq://users/users/42"} {
		resp, err := client.Get(url)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s: %s %s", resp.Request.URL.Scheme, resp.Status, body)
	}
	fmt.Println("requests over ZeroMQ:", l.Stats().Requests)
	// Output:
	// http: 200 OK user 42
	// zmq: 200 OK user 42
	// requests over ZeroMQ: 1
}

// A broker between clients and servers: servers connect to its backend
// with a ">" endpoint, clients send to its frontend, and each request goes
// to a server that serves its Host.
func ExampleNewProxy() {
	p, err := zmqhttp.NewProxy("tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	// A server for api.example joins the broker by itself.
	l, err := zmqhttp.Listen(">tcp://"+p.BackendAddr().String(),
		zmqhttp.WithWorkers(8), zmqhttp.WithServices("api.example"))
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", r.Host)
	})}
	go srv.Serve(l)
	defer srv.Close()

	t, err := zmqhttp.NewTransport("tcp://" + p.FrontendAddr().String())
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	client := &http.Client{Transport: t, Timeout: 5 * time.Second}
	for _, url := range []string{"http://api.example/", "http://other.example/"} {
		resp, err := client.Get(url) // waits for the server to join, if need be
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %s", resp.Status, body)
	}
	// Output:
	// 200 OK hello from api.example
	// 502 Bad Gateway Bad Gateway: zmqhttp proxy: no server serves host "other.example"
}
