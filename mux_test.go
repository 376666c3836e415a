package zmqhttp_test

// A small gorilla/mux application, written as it would be for net/http, is
// served unchanged over zmqhttp (tcp and ipc) and checked through an
// http.Client. The same checks also run against httptest.NewServer ("http")
// as a baseline, so an expectation that does not hold for real HTTP is
// caught as a mistake in the test rather than blamed on zmqhttp.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/mux"
)

// diffMuxReply is what the app's handlers answer.
type diffMuxReply struct {
	Route      string            `json:"route"`
	Vars       map[string]string `json:"vars"`
	Method     string            `json:"method"`
	Body       string            `json:"body,omitempty"`
	RemoteAddr string            `json:"remoteAddr"`
}

func diffMuxWrite(w http.ResponseWriter, r *http.Request, route string, status int) {
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(diffMuxReply{
		Route:      route,
		Vars:       mux.Vars(r),
		Method:     r.Method,
		Body:       string(body),
		RemoteAddr: r.RemoteAddr,
	})
}

// diffMuxApp is the application, nothing zmqhttp-specific in it.
func diffMuxApp() http.Handler {
	r := mux.NewRouter()
	r.UseEncodedPath() // match and extract variables on the escaped path

	r.HandleFunc("/users/{id:[0-9]+}", func(w http.ResponseWriter, r *http.Request) {
		diffMuxWrite(w, r, "user.get", http.StatusOK)
	}).Methods(http.MethodGet)
	r.HandleFunc("/users/{id:[0-9]+}", func(w http.ResponseWriter, r *http.Request) {
		diffMuxWrite(w, r, "user.update", http.StatusOK)
	}).Methods(http.MethodPut, http.MethodPatch)

	r.HandleFunc("/search", func(w http.ResponseWriter, r *http.Request) {
		diffMuxWrite(w, r, "search", http.StatusOK)
	}).Methods(http.MethodGet).Queries("q", "{q}", "page", "{page:[0-9]+}")

	r.HandleFunc("/files/{name}", func(w http.ResponseWriter, r *http.Request) {
		diffMuxWrite(w, r, "file", http.StatusOK)
	}).Methods(http.MethodGet)

	api := r.PathPrefix("/api/v1").Subrouter()
	api.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Api-Version", "v1")
			next.ServeHTTP(w, r)
		})
	})
	api.HandleFunc("/items/{category}/{name}", func(w http.ResponseWriter, r *http.Request) {
		diffMuxWrite(w, r, "item.get", http.StatusOK)
	}).Methods(http.MethodGet)
	api.HandleFunc("/items", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "/api/v1/items/new/1")
		diffMuxWrite(w, r, "item.create", http.StatusCreated)
	}).Methods(http.MethodPost)

	r.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Custom-404", "yes")
		w.Header().Set("X-Remote-Addr", r.RemoteAddr)
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprintf(w, "custom not found: %s\n", r.URL.Path)
	})
	return r
}

func TestGorillaMux(t *testing.T) {
	type want struct {
		status  int
		route   string            // "" when the reply is not a diffMuxReply
		vars    map[string]string // checked when route != ""
		body    string            // request body echoed back
		header  map[string]string // response headers that must be present with this value
		noHdr   []string          // response headers that must be absent
		custom4 bool              // the custom NotFound handler answered
	}
	cases := []struct {
		name   string
		method string
		path   string
		body   string
		want   want
	}{
		{"path variable", "GET", "/users/42", "", want{status: 200, route: "user.get", vars: map[string]string{"id": "42"}, noHdr: []string{"X-Api-Version"}}},
		{"PUT same path other route", "PUT", "/users/7", `{"name":"x"}`, want{status: 200, route: "user.update", vars: map[string]string{"id": "7"}, body: `{"name":"x"}`}},
		{"PATCH", "PATCH", "/users/8", "patch", want{status: 200, route: "user.update", vars: map[string]string{"id": "8"}, body: "patch"}},
		{"wrong method 405", "DELETE", "/users/42", "", want{status: 405}},
		{"regexp mismatch is 404", "GET", "/users/abc", "", want{status: 404, custom4: true}},
		{"queries", "GET", "/search?q=golang&page=3", "", want{status: 200, route: "search", vars: map[string]string{"q": "golang", "page": "3"}}},
		{"queries reordered and extra", "GET", "/search?page=12&x=1&q=zmq", "", want{status: 200, route: "search", vars: map[string]string{"q": "zmq", "page": "12"}}},
		{"missing query is 404", "GET", "/search?q=golang", "", want{status: 404, custom4: true}},
		{"query regexp mismatch is 404", "GET", "/search?q=golang&page=x", "", want{status: 404, custom4: true}},
		{"encoded path variable", "GET", "/files/a%2Fb%20c.txt", "", want{status: 200, route: "file", vars: map[string]string{"name": "a%2Fb%20c.txt"}}},
		{"subrouter with middleware", "GET", "/api/v1/items/books/dune", "", want{status: 200, route: "item.get",
			vars: map[string]string{"category": "books", "name": "dune"}, header: map[string]string{"X-Api-Version": "v1"}}},
		{"subrouter POST 201", "POST", "/api/v1/items", `{"n":1}`, want{status: 201, route: "item.create", vars: map[string]string{},
			body: `{"n":1}`, header: map[string]string{"X-Api-Version": "v1", "Location": "/api/v1/items/new/1"}}},
		{"subrouter wrong method 405", "PUT", "/api/v1/items", "x", want{status: 405}},
		{"subrouter unknown path 404", "GET", "/api/v1/nothing", "", want{status: 404, custom4: true}},
		{"unknown path uses NotFound handler", "GET", "/no/such/page", "", want{status: 404, custom4: true}},
	}

	for _, network := range []string{"http", "tcp", "ipc"} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			var rt http.RoundTripper
			base := "http://zmq.test"
			if network == "http" {
				hs := httptest.NewServer(diffMuxApp())
				t.Cleanup(hs.Close)
				rt, base = hs.Client().Transport, hs.URL
			} else {
				_, rt = diffServeZMQ(t, network, diffMuxApp())
			}
			client := &http.Client{Transport: rt, Timeout: diffClientTimeout}
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					var body io.Reader
					if c.body != "" {
						body = strings.NewReader(c.body)
					}
					req, err := http.NewRequest(c.method, base+c.path, body)
					if err != nil {
						t.Fatal(err)
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatalf("%s %s: %v", c.method, c.path, err)
					}
					raw, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err != nil {
						t.Fatalf("reading body: %v", err)
					}
					w := c.want
					if resp.StatusCode != w.status {
						t.Errorf("status = %s, want %d; body %q", resp.Status, w.status, raw)
					}
					for k, v := range w.header {
						if got := resp.Header.Get(k); got != v {
							t.Errorf("header %s = %q, want %q", k, got, v)
						}
					}
					for _, k := range w.noHdr {
						if v, ok := resp.Header[k]; ok {
							t.Errorf("header %s = %q, want absent", k, v)
						}
					}
					if w.custom4 {
						if resp.Header.Get("X-Custom-404") != "yes" || !strings.HasPrefix(string(raw), "custom not found: ") {
							t.Errorf("custom NotFound handler not used: headers %v body %q", resp.Header, raw)
						}
						if resp.Header.Get("X-Remote-Addr") == "" {
							t.Errorf("NotFound handler saw an empty r.RemoteAddr")
						}
					} else if resp.Header.Get("X-Custom-404") != "" {
						t.Errorf("custom NotFound handler answered: %q", raw)
					}
					if w.route == "" {
						return
					}
					var got diffMuxReply
					if err := json.Unmarshal(raw, &got); err != nil {
						t.Fatalf("reply %q: %v", raw, err)
					}
					if got.Route != w.route {
						t.Errorf("route = %q, want %q", got.Route, w.route)
					}
					if got.Method != c.method {
						t.Errorf("handler saw method %q, want %q", got.Method, c.method)
					}
					if len(got.Vars) != len(w.vars) {
						t.Errorf("vars = %v, want %v", got.Vars, w.vars)
					}
					for k, v := range w.vars {
						if got.Vars[k] != v {
							t.Errorf("var %s = %q, want %q (all: %v)", k, got.Vars[k], v, got.Vars)
						}
					}
					if got.Body != w.body {
						t.Errorf("handler read body %q, want %q", got.Body, w.body)
					}
					if got.RemoteAddr == "" {
						t.Errorf("handler saw an empty r.RemoteAddr")
					}
				})
			}
		})
	}
}
