// Command secure shows an internal service over CURVE: a gorilla/mux API
// whose Listener encrypts every connection and accepts only clients whose
// public keys are on an allow-list, with a bearer-token middleware that
// answers 403 as such services do. It runs the server and three clients in
// one process, on loopback, and prints what each got:
//
//	go run ./examples/secure
//
// In a real deployment each side keeps its own secret key (make pairs with
// zmqhttp.NewCurveKeyPair, or libzmq's zmq_curve_keypair: the keys work
// with both), the server's public key goes to its clients, and the clients'
// public keys go to the server's allow-list.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"time"

	"github.com/gorilla/mux"
	"github.com/zmqhttp/zmqhttp"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("secure: ")
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// keyPair is a public and a secret CURVE key, Z85 text.
type keyPair struct{ public, secret string }

func newKeyPair() keyPair {
	pub, sec, err := zmqhttp.NewCurveKeyPair()
	if err != nil {
		log.Fatal(err)
	}
	return keyPair{pub, sec}
}

func run() error {
	server, alice, mallory := newKeyPair(), newKeyPair(), newKeyPair()
	allowed := map[string]string{alice.public: "alice"} // client key → name

	// The server: CURVE with its secret key, and an authorizer that
	// refuses any client whose key is not on the list, during the
	// handshake (before a single request is read).
	l, err := zmqhttp.Listen("tcp://127.0.0.1:*",
		zmqhttp.WithCurveServer(server.secret),
		zmqhttp.WithAuthorizer(func(p zmqhttp.Peer) error {
			if _, ok := allowed[p.PublicKey]; !ok {
				return errors.New("key not on the allow-list")
			}
			return nil
		}))
	if err != nil {
		return err
	}
	r := mux.NewRouter()
	r.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		p, _ := zmqhttp.PeerFromContext(r.Context())
		fmt.Fprintf(w, "hello %s (%s key %.8s…)\n", allowed[p.PublicKey], p.Mechanism, p.PublicKey)
	})
	r.Use(bearerToken("s3cret-token"))
	srv := &http.Server{Handler: r}
	go srv.Serve(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	// Clients: alice with the token, alice without it, and mallory, whose
	// key is not on the list.
	call := func(who string, keys keyPair, token string) {
		t, err := zmqhttp.NewTransport(l.Endpoint(), zmqhttp.WithCurveClient(server.public, keys.public, keys.secret))
		if err != nil {
			log.Fatal(err)
		}
		defer t.Close()
		c := &http.Client{Transport: t, Timeout: 5 * time.Second}
		req, _ := http.NewRequest("GET", "http://svc/whoami", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			fmt.Printf("%-22s error: %v\n", who+":", err)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%-22s %s %s", who+":", resp.Status, body)
	}
	call("alice with token", alice, "s3cret-token")
	call("alice without token", alice, "")
	call("mallory", mallory, "s3cret-token")
	return nil
}

// bearerToken answers 403 to requests without the expected bearer token.
func bearerToken(token string) mux.MiddlewareFunc {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer "+token {
				http.Error(w, "forbidden", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
