// Command demo runs a zmqhttp server and client in one process on loopback
// and prints what they exchanged.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello/{name}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello, %s (from %s via %s)\n", r.PathValue("name"), r.RemoteAddr, r.Proto)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
		io.Copy(w, r.Body)
	})

	l, err := zmqhttp.Listen("tcp://127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	fmt.Println("server: listening on", l.Endpoint())

	t, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	client := &http.Client{Transport: t, Timeout: 5 * time.Second}

	resp, err := client.Get("http://demo/hello/world")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("client: GET /hello/world -> %s: %s", resp.Status, body)

	resp, err = client.Post("http://demo/echo", "text/plain", strings.NewReader("ping over ZeroMQ"))
	if err != nil {
		log.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("client: POST /echo -> %s: %q\n", resp.Status, body)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("server: shut down cleanly")
}
