// Command server serves a small HTTP API over ZeroMQ: a standard
// http.Server and http.ServeMux whose net.Listener is a zmqhttp.Listener.
// The handlers are ordinary net/http code; only the listener changes.
//
// Routes:
//
//	GET  /hello/{name}  greets name
//	POST /echo          returns the request body with its Content-Type
//
// Usage:
//
//	go run ./examples/server [-endpoint tcp://127.0.0.1:5555] [-workers 128]
//
// and, from another terminal, examples/client:
//
//	go run ./examples/client
//	go run ./examples/client -url http://svc/echo -data 'ping over ZeroMQ'
//
// SIGINT or SIGTERM shuts the server down gracefully: requests already
// being handled finish, within -shutdown-timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// main parses the flags and runs the server until a signal stops it.
func main() {
	endpoint := flag.String("endpoint", "tcp://127.0.0.1:5555", "ZeroMQ endpoint to bind: tcp://host:port or ipc:///path")
	workers := flag.Int("workers", 0, "requests handled at once (0: the zmqhttp default)")
	queue := flag.Int("queue", 0, "received requests that may wait for a worker before the server answers 503 (0: the zmqhttp default)")
	shutdownTimeout := flag.Duration("shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("server: ")

	if err := run(*endpoint, *workers, *queue, *shutdownTimeout); err != nil {
		log.Fatal(err)
	}
}

// run serves newMux on endpoint until SIGINT or SIGTERM, then shuts the
// server down gracefully.
func run(endpoint string, workers, queue int, shutdownTimeout time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	l, err := zmqhttp.Listen(endpoint, zmqhttp.WithWorkers(workers), zmqhttp.WithQueueSize(queue))
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           newMux(),
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	fmt.Println("server: listening on", l.Endpoint())

	select {
	case err := <-served:
		return err // Serve failed on its own
	case <-ctx.Done():
	}
	stop() // a second signal kills the process the default way
	fmt.Println("server: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	fmt.Println("server: stopped")
	return nil
}

// newMux returns the service's routes. Nothing here knows about ZeroMQ.
func newMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello/{name}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Served-By", "zmqhttp example server")
		fmt.Fprintf(w, "hello, %s\n", r.PathValue("name"))
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		w.Header().Set("X-Served-By", "zmqhttp example server")
		w.Write(body)
	})
	return mux
}
