// Command mux shows an incremental migration to ZeroMQ: one gorilla/mux
// router, a tiny users service, is served at the same time over plain
// HTTP and over ZeroMQ, and one http.Client sends zmq:// URLs through
// zmqhttp and http:// URLs over TCP as before. Callers can move route by
// route, or client by client, without touching the handlers.
//
// Routes:
//
//	GET  /users/{id}  the user with that id, as JSON
//	POST /users       creates a user from {"name": "..."}, answers 201
//
// Run with no flags, it starts both servers on free loopback ports, calls
// the same routes both ways, prints the results and exits. With
// -serve-only it serves until SIGINT or SIGTERM:
//
//	go run ./examples/mux
//	go run ./examples/mux -serve-only -http 127.0.0.1:8080 -zmq tcp://127.0.0.1:5556
//	curl -s http://127.0.0.1:8080/users/1
//	go run ./examples/client -endpoint tcp://127.0.0.1:5556 -url zmq://users/users/1
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/mux"
	"github.com/zmqhttp/zmqhttp"
)

// main parses the flags and runs the servers, and the demo client unless
// -serve-only is set.
func main() {
	httpAddr := flag.String("http", "127.0.0.1:0", "plain HTTP address to listen on (port 0: a free port)")
	zmqEndpoint := flag.String("zmq", "tcp://127.0.0.1:0", "ZeroMQ endpoint to bind (port 0: a free port)")
	serveOnly := flag.Bool("serve-only", false, "serve until SIGINT or SIGTERM instead of running the demo client")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("mux: ")

	if err := run(*httpAddr, *zmqEndpoint, *serveOnly); err != nil {
		log.Fatal(err)
	}
}

// run starts the router on both listeners, then runs the demo client (or
// waits for a signal with serveOnly), then shuts both servers down.
func run(httpAddr, zmqEndpoint string, serveOnly bool) error {
	router := newRouter(newStore())

	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}
	zl, err := zmqhttp.Listen(zmqEndpoint)
	if err != nil {
		hl.Close()
		return err
	}
	// Two servers, one handler. ConnContext records which network carried
	// each request, for the middleware to report.
	httpSrv := &http.Server{Handler: router, ConnContext: tagNetwork, ReadHeaderTimeout: 5 * time.Second}
	zmqSrv := &http.Server{Handler: router, ConnContext: tagNetwork, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 2)
	go func() { served <- httpSrv.Serve(hl) }()
	go func() { served <- zmqSrv.Serve(zl) }()
	httpURL := "http://" + hl.Addr().String()
	fmt.Println("http: listening on", httpURL)
	fmt.Println("zmq:  listening on", zl.Endpoint())

	var runErr error
	if serveOnly {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		select {
		case <-ctx.Done():
		case runErr = <-served:
		}
		stop()
	} else {
		runErr = demo(httpURL, zl.Endpoint())
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = errors.Join(runErr, httpSrv.Shutdown(ctx), zmqSrv.Shutdown(ctx))
	if err != nil {
		return err
	}
	fmt.Println("both servers shut down")
	return nil
}

// demo is a client in the middle of a migration: one http.Client whose
// transport sends zmq:// URLs over ZeroMQ and everything else over TCP.
func demo(httpURL, zmqEndpoint string) error {
	zt, err := zmqhttp.NewTransport(zmqEndpoint)
	if err != nil {
		return err
	}
	defer zt.Close()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.RegisterProtocol("zmq", zt)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	// Create a user over ZeroMQ, read it back both ways.
	created, err := call(client, http.MethodPost, "zmq://users/users", `{"name":"grace"}`)
	if err != nil {
		return err
	}
	var u user
	if err := json.Unmarshal(created, &u); err != nil {
		return fmt.Errorf("decoding the created user: %w", err)
	}
	path := "/users/" + strconv.Itoa(u.ID)
	overHTTP, err := call(client, http.MethodGet, httpURL+path, "")
	if err != nil {
		return err
	}
	overZMQ, err := call(client, http.MethodGet, "zmq://users"+path, "")
	if err != nil {
		return err
	}
	if !bytes.Equal(overHTTP, overZMQ) {
		return fmt.Errorf("the two transports disagree: %q vs %q", overHTTP, overZMQ)
	}
	fmt.Println("same answer over HTTP and over ZeroMQ")

	// A missing user is a 404 either way.
	if _, err := call(client, http.MethodGet, "zmq://users/users/999", ""); err != nil {
		return err
	}
	return nil
}

// call sends one request, prints a line about its response and returns
// the body.
func call(client *http.Client, method, url, body string) ([]byte, error) {
	var r io.Reader
	if body != "" {
		r = bytes.NewBufferString(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		return nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	fmt.Printf("%-4s %-36s -> %s (served over %s) %s\n",
		method, url, resp.Status, resp.Header.Get("X-Served-Over"), b)
	return b, nil
}

// networkKey is the context key of the network that carried a request.
type networkKey struct{}

// tagNetwork is an http.Server ConnContext: it records the connection's
// network, "tcp" for plain HTTP and "zmq+tcp" or "zmq+ipc" for zmqhttp.
func tagNetwork(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, networkKey{}, c.RemoteAddr().Network())
}

// newRouter returns the users service's routes, with a middleware that
// adds headers to every response.
func newRouter(s *store) *mux.Router {
	r := mux.NewRouter()
	r.Use(serviceHeaders)
	r.HandleFunc("/users/{id:[0-9]+}", s.get).Methods(http.MethodGet)
	r.HandleFunc("/users", s.create).Methods(http.MethodPost)
	return r
}

// serviceHeaders is a middleware that names the service and the network
// the request came over.
func serviceHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Service", "users/v1")
		if n, ok := r.Context().Value(networkKey{}).(string); ok {
			w.Header().Set("X-Served-Over", n)
		}
		next.ServeHTTP(w, r)
	})
}

// user is the service's one resource.
type user struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// store keeps users in memory; it is shared by both servers.
type store struct {
	mu    sync.Mutex // guards the following fields
	users map[int]user
	next  int
}

// newStore returns a store holding one user.
func newStore() *store {
	return &store{users: map[int]user{1: {ID: 1, Name: "ada"}}, next: 2}
}

// get answers GET /users/{id}.
func (s *store) get(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.Atoi(mux.Vars(r)["id"])
	if err != nil {
		http.Error(w, "bad id", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	u, ok := s.users[id]
	s.mu.Unlock()
	if !ok {
		http.Error(w, "no such user", http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

// create answers POST /users.
func (s *store) create(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil || in.Name == "" {
		http.Error(w, `want {"name": "..."}`, http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	u := user{ID: s.next, Name: in.Name}
	s.users[u.ID] = u
	s.next++
	s.mu.Unlock()
	w.Header().Set("Location", "/users/"+strconv.Itoa(u.ID))
	writeJSON(w, http.StatusCreated, u)
}

// writeJSON writes v as a JSON response with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
