package zmqhttp_test

// Differential tests: the same handler is served by httptest.NewServer (real
// HTTP/1.1 over TCP, reached through an http.Transport) and by an http.Server
// on a zmqhttp Listener (reached through a zmqhttp Transport), over both
// zmqhttp transports (tcp and ipc). Every case builds the same request for
// both sides through an http.Client with its own cookie jar, and compares
// what the client sees field by field: StatusCode, Status, Proto,
// ContentLength, TransferEncoding, Uncompressed, Header, the body (or its
// sha256 when large), Trailer after the body was read, the final request of
// redirects, the cookie jar, and any case-specific observation.
//
// Normalisation (everything else must be equal):
//   - Response header "Date" is dropped: the server stamps each response
//     with the current second, so two responses may legitimately differ.
//   - Response headers "Connection" and "Keep-Alive" are dropped: they are
//     hop-by-hop and describe the TCP connection between the http.Transport
//     and the server; zmqhttp has no such connection to describe and by
//     design never relays them (responseSkip in httpwire.go).
//   - The echo handler leaves hop-by-hop request headers (Connection,
//     Keep-Alive, Proxy-Connection, Te, Upgrade) out of the header it echoes,
//     for the same reason (requestSkip in roundtripper.go).
//   - The echo handler reports only whether r.RemoteAddr is non-empty: a TCP
//     peer address and a ZeroMQ peer name legitimately differ.
//   - Both clients use the httptest server's URL (same host:port) so r.Host,
//     cookie domains and redirect targets are equal without normalisation;
//     the zmqhttp Transport ignores the URL's host for routing (its endpoint
//     chooses the server) and sends it as Host. The final URL of a redirect
//     is still compared by path and query only.
//   - Error texts are not compared (each transport words them its own way),
//     only whether an error happened and whether it is a timeout.
//   - Cases marked errAnywhere compare only "the exchange failed" (an error
//     from Do or from reading the body): a zmqhttp Transport buffers whole
//     responses and by design (RoundTrip docs, RemoteError) reports an
//     incomplete response as an error from Do, where http.Transport returns
//     the response and fails the body read.
//
// Cases whose comparison currently finds a library difference carry a
// knownDiff text: the assertion still runs, and the case is skipped with
// "KNOWN DIFF: ..." plus the mismatches; once the difference is fixed the
// case fails to say the marker is stale.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

const diffClientTimeout = 20 * time.Second

// ---------------------------------------------------------------------------
// Servers

// diffSockPath returns a short unix socket path for an ipc endpoint.
func diffSockPath(t testing.TB) string {
	p := filepath.Join(t.TempDir(), "s.sock")
	if len(p) <= 100 {
		return p
	}
	d, err := os.MkdirTemp("", "zh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "s.sock")
}

// diffServeZMQ serves h, unchanged, with a standard http.Server on a
// zmqhttp Listener bound on network ("tcp" or "ipc"), and returns the
// Listener and a Transport connected to it. Everything is released by
// t.Cleanup: the Transport, then the server (Shutdown, which closes the
// Listener), then the Listener again (idempotent).
func diffServeZMQ(t testing.TB, network string, h http.Handler) (*zmqhttp.Listener, *zmqhttp.Transport) {
	t.Helper()
	return diffServeZMQMode(t, network, false, h)
}

// diffServeZMQMode is diffServeZMQ on the standard path (direct false:
// srv.Serve(l)) or on the direct one (zmqhttp.Serve(l, srv)).
func diffServeZMQMode(t testing.TB, network string, direct bool, h http.Handler) (*zmqhttp.Listener, *zmqhttp.Transport) {
	t.Helper()
	ep := "tcp://127.0.0.1:0"
	if network == "ipc" {
		ep = "ipc://" + diffSockPath(t)
	}
	l, err := zmqhttp.Listen(ep)
	if err != nil {
		t.Fatalf("Listen(%s): %v", ep, err)
	}
	srv := &http.Server{Handler: h}
	served := make(chan error, 1)
	go func() {
		if direct {
			served <- zmqhttp.Serve(l, srv)
		} else {
			served <- srv.Serve(l)
		}
	}()
	tr, err := zmqhttp.NewTransport(l.Endpoint())
	if err != nil {
		l.Close()
		t.Fatalf("NewTransport(%s): %v", l.Endpoint(), err)
	}
	t.Cleanup(func() {
		tr.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("zmqhttp server Shutdown: %v", err)
			srv.Close()
		}
		select {
		case err := <-served:
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("zmqhttp server Serve returned %v, want http.ErrServerClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("zmqhttp server Serve did not return after Shutdown")
		}
		l.Close()
	})
	return l, tr
}

// ---------------------------------------------------------------------------
// The handler both sides serve

var diffBigPayload = sync.OnceValue(func() []byte {
	block := make([]byte, 64<<10)
	for i := range block {
		block[i] = byte(i*31 + i>>8 + i>>13)
	}
	return bytes.Repeat(block, 8<<20/len(block)) // 8 MiB
})

func diffSHA(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// diffEcho is what the echo handler reports about the request it received.
type diffEcho struct {
	DiffEcho         bool        `json:"diffEcho"`
	Method           string      `json:"method"`
	RequestURI       string      `json:"requestURI"`
	URL              string      `json:"url"`
	Path             string      `json:"path"`
	RawPath          string      `json:"rawPath"`
	RawQuery         string      `json:"rawQuery"`
	Host             string      `json:"host"`
	Proto            string      `json:"proto"`
	ProtoMajor       int         `json:"protoMajor"`
	ProtoMinor       int         `json:"protoMinor"`
	ContentLength    int64       `json:"contentLength"`
	TransferEncoding []string    `json:"transferEncoding"`
	Close            bool        `json:"close"`
	Header           http.Header `json:"header"`
	Trailer          http.Header `json:"trailer"`
	BodyLen          int64       `json:"bodyLen"`
	BodySHA256       string      `json:"bodySHA256"`
	BodyPrefix       string      `json:"bodyPrefix"`
	BodyErr          string      `json:"bodyErr"`
	RemoteAddrSet    bool        `json:"remoteAddrSet"`
}

// diffHopByHop are request headers that describe one HTTP/1.1 hop; zmqhttp
// deliberately does not carry them, so the echo leaves them out.
var diffHopByHop = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Upgrade": true,
}

func diffServeEcho(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	var prefix bytes.Buffer
	n, err := io.Copy(io.MultiWriter(h, &diffPrefixWriter{buf: &prefix, max: 64}), r.Body)
	e := diffEcho{
		DiffEcho:         true,
		Method:           r.Method,
		RequestURI:       r.RequestURI,
		URL:              r.URL.String(),
		Path:             r.URL.Path,
		RawPath:          r.URL.RawPath,
		RawQuery:         r.URL.RawQuery,
		Host:             r.Host,
		Proto:            r.Proto,
		ProtoMajor:       r.ProtoMajor,
		ProtoMinor:       r.ProtoMinor,
		ContentLength:    r.ContentLength,
		TransferEncoding: r.TransferEncoding,
		Close:            r.Close,
		Header:           http.Header{},
		Trailer:          r.Trailer, // read after the body, so it is filled in
		BodyLen:          n,
		BodySHA256:       hex.EncodeToString(h.Sum(nil)),
		BodyPrefix:       prefix.String(),
		RemoteAddrSet:    r.RemoteAddr != "",
	}
	if err != nil {
		e.BodyErr = err.Error()
	}
	for k, v := range r.Header {
		if !diffHopByHop[k] {
			e.Header[k] = v
		}
	}
	b, _ := json.Marshal(e)
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

type diffPrefixWriter struct {
	buf *bytes.Buffer
	max int
}

func (p *diffPrefixWriter) Write(b []byte) (int, error) {
	if room := p.max - p.buf.Len(); room > 0 {
		p.buf.Write(b[:min(room, len(b))])
	}
	return len(b), nil
}

var diffModTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

const diffContent = "0123456789abcdefghijklmnopqrstuvwxyz\n"

// diffHandler returns a fresh handler (each server gets its own, so the
// per-server state of /cancel-probe does not mix).
func diffHandler() http.Handler {
	var probes sync.Map // id -> chan string
	probe := func(id string) chan string {
		c, _ := probes.LoadOrStore(id, make(chan string, 1))
		return c.(chan string)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seg := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
		q := r.URL.Query()
		switch seg[0] {
		case "status":
			code, _ := strconv.Atoi(seg[1])
			switch {
			case code == http.StatusNoContent || code == http.StatusNotModified:
				w.Header().Set("X-Status", seg[1])
				w.Header().Set("Etag", `"abc"`)
				w.WriteHeader(code)
			case code >= 400:
				if code == http.StatusServiceUnavailable {
					w.Header().Set("Retry-After", "7")
				}
				http.Error(w, fmt.Sprintf("status %d body", code), code)
			default:
				w.Header().Set("Content-Type", "text/plain")
				w.WriteHeader(code)
				fmt.Fprintf(w, "status %d body\n", code)
			}
		case "early-hints":
			w.Header().Add("Link", "</style.css>; rel=preload; as=style")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("X-Final", "yes")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "after early hints\n")
		case "large":
			data := diffBigPayload()
			if q.Get("cl") == "1" {
				w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(data)
		case "stream":
			w.Header().Set("Content-Type", "text/plain")
			f := w.(http.Flusher)
			for i := 0; i < 5; i++ {
				fmt.Fprintf(w, "chunk %d of 5\n", i)
				f.Flush()
			}
		case "trailers":
			body := "body with trailers\n"
			switch q.Get("mode") {
			case "declared":
				w.Header().Set("Trailer", "X-Checksum, X-Count")
				io.WriteString(w, body)
				w.Header().Set("X-Checksum", diffSHA([]byte(body)))
				w.Header().Set("X-Count", "1")
			case "prefix":
				io.WriteString(w, body)
				w.(http.Flusher).Flush()
				w.Header().Set(http.TrailerPrefix+"X-Late", "late-value")
				w.Header().Add(http.TrailerPrefix+"X-Late-Multi", "a")
				w.Header().Add(http.TrailerPrefix+"X-Late-Multi", "b")
			case "both":
				w.Header().Set("Trailer", "X-Declared")
				io.WriteString(w, body)
				w.Header().Set("X-Declared", "d")
				w.Header().Set(http.TrailerPrefix+"X-Undeclared", "u")
			case "never":
				w.Header().Set("Trailer", "X-Never")
				io.WriteString(w, body)
			}
		case "redirect":
			code, _ := strconv.Atoi(seg[1])
			http.Redirect(w, r, q.Get("to"), code)
		case "chain":
			n, _ := strconv.Atoi(seg[1])
			switch n {
			case 3:
				http.SetCookie(w, &http.Cookie{Name: "chain", Value: "3", Path: "/"})
				http.Redirect(w, r, "/chain/2", http.StatusFound)
			case 2:
				http.Redirect(w, r, "/chain/1?from=2", http.StatusTemporaryRedirect)
			case 1:
				http.Redirect(w, r, "/echo/chain-end?from=1", http.StatusPermanentRedirect)
			}
		case "cookie":
			http.SetCookie(w, &http.Cookie{Name: "session", Value: "abc123", Path: "/", HttpOnly: true})
			http.SetCookie(w, &http.Cookie{Name: "pref", Value: "dark", Path: "/", MaxAge: 3600, SameSite: http.SameSiteLaxMode})
			http.SetCookie(w, &http.Cookie{Name: "scoped", Value: "x", Path: "/echo/scoped"})
			if next := q.Get("next"); next != "" {
				http.Redirect(w, r, next, http.StatusFound)
				return
			}
			io.WriteString(w, "cookies set\n")
		case "resource":
			body := "resource body: " + diffContent
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Header().Set("Etag", `"r1"`)
			if r.Method != http.MethodHead {
				io.WriteString(w, body)
			}
		case "content":
			w.Header().Set("Etag", `"c1"`)
			http.ServeContent(w, r, "doc.txt", diffModTime, strings.NewReader(strings.Repeat(diffContent, 10)))
		case "gzip":
			var payload strings.Builder
			for i := 0; i < 2000; i++ {
				fmt.Fprintf(&payload, "gzip payload line %d\n", i)
			}
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Vary", "Accept-Encoding")
			if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
				io.WriteString(w, payload.String())
				return
			}
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			if q.Get("stream") == "1" {
				s := payload.String()
				for i := 0; i < 4; i++ {
					io.WriteString(zw, s[i*len(s)/4:(i+1)*len(s)/4])
					zw.Flush()
					w.(http.Flusher).Flush()
				}
			} else {
				io.WriteString(zw, payload.String())
			}
			zw.Close()
		case "until-close":
			// HTTP/1.1 "Transfer-Encoding: identity" with no length: the
			// server delimits the body by closing the connection.
			w.Header().Set("Transfer-Encoding", "identity")
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "part one\n")
			w.(http.Flusher).Flush()
			io.WriteString(w, "part two\n")
		case "headers":
			h := w.Header()
			h.Add("X-Multi", "one")
			h.Add("X-Multi", "two")
			h.Add("X-Multi", "three")
			h["x-raw-lower"] = []string{"raw"} // written as is, canonicalised by the reader
			h.Set("X-Empty", "")
			h.Set("X-Utf8", "héllo wörld")
			h.Set("X-Latin1", "caf\xe9")
			h.Set("X-Spaces", "a  b\tc")
			h.Set("Content-Type", "application/x-diff")
			h.Set("Cache-Control", "no-store")
			io.WriteString(w, "header shapes\n")
		case "many-headers":
			for i := 0; i < 1100; i++ {
				w.Header().Add("X-Many", strconv.Itoa(i))
			}
			io.WriteString(w, "many headers\n")
		case "empty":
			// nothing: 200 with Content-Length: 0
		case "flush-empty":
			w.(http.Flusher).Flush() // chunked, no data
		case "sniff":
			io.WriteString(w, "<html><body>sniff me</body></html>")
		case "abort":
			panic(http.ErrAbortHandler) // not logged by net/http
		case "short":
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, "only 10 b!")
		case "slow":
			select {
			case <-r.Context().Done():
			case <-time.After(time.Second):
			}
			io.WriteString(w, "slow done\n")
		case "cancel-probe":
			res := "handler context not cancelled within 3s"
			select {
			case <-r.Context().Done():
				res = "handler context cancelled"
			case <-time.After(3 * time.Second):
			}
			probe(q.Get("id")) <- res
		case "cancel-result":
			select {
			case res := <-probe(q.Get("id")):
				io.WriteString(w, res)
			case <-time.After(8 * time.Second):
				http.Error(w, "no probe result", http.StatusGatewayTimeout)
			}
		default:
			diffServeEcho(w, r)
		}
	})
}

// ---------------------------------------------------------------------------
// Cases

// diffCall is what a case's do function gets: one side's client.
type diffCall struct {
	Client *http.Client
	Base   string // http://127.0.0.1:PORT, the same for both sides
	notes  map[string]string
}

// Note records an observation that is compared between the two sides.
func (c *diffCall) Note(k, v string) { c.notes[k] = v }

type diffCase struct {
	name string
	// req builds the request (called once per side). Used by the default
	// do: one Client.Do.
	req func(base string) (*http.Request, error)
	// do replaces the default exchange (several requests, a trace...). It
	// returns the response that is compared.
	do func(c *diffCall) (*http.Response, error)
	// errAnywhere: compare only whether the exchange failed (see the
	// normalisation notes at the top of the file).
	errAnywhere bool
	// check makes absolute assertions on each side's result, on top of
	// the comparison.
	check func(t *testing.T, side string, s *diffSnap)
	// knownDiff describes a library difference this case exposes.
	knownDiff string
	// knownDiffRacy: the difference does not show on every run, so a
	// run where both sides agree does not mean the marker is stale.
	knownDiffRacy bool
}

// diffReq returns a request builder: body (may be nil) is called per side.
func diffReq(method, path string, body func() io.Reader, mods ...func(*http.Request)) func(string) (*http.Request, error) {
	return func(base string) (*http.Request, error) {
		var b io.Reader
		if body != nil {
			b = body()
		}
		req, err := http.NewRequest(method, base+path, b)
		if err != nil {
			return nil, err
		}
		for _, m := range mods {
			m(req)
		}
		return req, nil
	}
}

func diffStr(s string) func() io.Reader { return func() io.Reader { return strings.NewReader(s) } }

// diffPipe returns a body of unknown length fed by a goroutine in 16 KiB
// writes; after (if not nil) runs once all data was consumed, before EOF.
// The goroutine ends when the transport closes the body, which both
// transports always do.
func diffPipe(data []byte, after func()) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		for off := 0; off < len(data); off += 16 << 10 {
			if _, err := pw.Write(data[off:min(off+16<<10, len(data))]); err != nil {
				return
			}
		}
		if after != nil {
			after()
		}
		pw.Close()
	}()
	return pr
}

func diffHeaderMod(f func(h http.Header)) func(*http.Request) {
	return func(r *http.Request) { f(r.Header) }
}

// diffEchoOf decodes an echo body, failing the test if it is not one.
func diffEchoOf(t *testing.T, side string, s *diffSnap) *diffEcho {
	t.Helper()
	var e diffEcho
	if err := json.Unmarshal(s.Body, &e); err != nil || !e.DiffEcho {
		t.Errorf("%s: body is not an echo: %v: %.200q", side, err, s.Body)
		return nil
	}
	return &e
}

func diffCases() []diffCase {
	big := diffBigPayload()
	bigSHA := diffSHA(big)
	payload64k := big[:64<<10]
	checkBigEcho := func(t *testing.T, side string, s *diffSnap) {
		if e := diffEchoOf(t, side, s); e != nil && (e.BodyLen != int64(len(big)) || e.BodySHA256 != bigSHA) {
			t.Errorf("%s: server saw %d bytes sha %s, want %d bytes sha %s", side, e.BodyLen, e.BodySHA256, len(big), bigSHA)
		}
	}
	checkBigBody := func(t *testing.T, side string, s *diffSnap) {
		if len(s.Body) != len(big) || diffSHA(s.Body) != bigSHA {
			t.Errorf("%s: got %d bytes sha %s, want %d bytes sha %s", side, len(s.Body), diffSHA(s.Body), len(big), bigSHA)
		}
	}
	redirect := func(name, method string, code int, body bool) diffCase {
		var b func() io.Reader
		if body {
			b = diffStr("redirected body")
		}
		return diffCase{
			name: name,
			req: diffReq(method, "/redirect/"+strconv.Itoa(code)+"?to="+url.QueryEscape("/echo/after-"+strconv.Itoa(code)+"?x=1"), b,
				diffHeaderMod(func(h http.Header) { h.Set("X-Carried", "yes") })),
		}
	}
	status := func(code int) diffCase {
		return diffCase{name: "status " + strconv.Itoa(code), req: diffReq("GET", "/status/"+strconv.Itoa(code), nil)}
	}

	return []diffCase{
		// --- methods ---
		{name: "GET echo", req: diffReq("GET", "/echo/plain", nil)},
		{name: "HEAD echo (implicit Content-Length)", req: diffReq("HEAD", "/echo/plain", nil)},
		{name: "POST form body", req: diffReq("POST", "/echo/post", diffStr("a=1&b=two"),
			diffHeaderMod(func(h http.Header) { h.Set("Content-Type", "application/x-www-form-urlencoded") }))},
		{name: "PUT 1-byte body", req: diffReq("PUT", "/echo/put", diffStr("x"))},
		{name: "PATCH json body", req: diffReq("PATCH", "/echo/patch", diffStr(`{"op":"replace","v":1}`),
			diffHeaderMod(func(h http.Header) { h.Set("Content-Type", "application/json") }))},
		{name: "DELETE no body", req: diffReq("DELETE", "/echo/delete", nil)},
		{name: "DELETE with body", req: diffReq("DELETE", "/echo/delete", diffStr("why"))},
		{name: "OPTIONS path", req: diffReq("OPTIONS", "/echo/options", nil)},
		{name: "OPTIONS *", req: diffReq("OPTIONS", "/", nil, func(r *http.Request) { r.URL.Path = ""; r.URL.Opaque = "*" })},
		{name: "custom method PURGE", req: diffReq("PURGE", "/echo/purge", nil)},
		{name: "custom method PROPFIND with body", req: diffReq("PROPFIND", "/echo/dav", diffStr("<propfind/>"),
			diffHeaderMod(func(h http.Header) { h.Set("Depth", "1") }))},

		// --- URLs and request headers ---
		{name: "escaped path and query", req: diffReq("GET", "/a%2Fb/c%20d?q=%26x&q=2&empty=&ü=1", nil)},
		{name: "force query and fragment", req: diffReq("GET", "/echo/fq?#frag", nil)},
		{name: "repeated request headers", req: diffReq("GET", "/echo/headers", nil, diffHeaderMod(func(h http.Header) {
			h.Add("X-Order", "c")
			h.Add("X-Order", "a")
			h.Add("X-Order", "b")
			h["x-order"] = []string{"lower-1", "lower-2"} // non-canonical spelling, merged by the server
			h["x-raw"] = []string{"raw"}
			h.Set("X-Empty", "")
			h.Set("X-Latin1", "caf\xe9")
			h.Set("X-Utf8", "ünïcode")
			h.Set("X-Padded", "  padded  ")
			h.Set("User-Agent", "diff-agent/1.0")
			h.Set("Accept", "text/plain, */*;q=0.1")
		}))},
		{
			name: "empty User-Agent suppresses the header",
			req:  diffReq("GET", "/echo/ua", nil, diffHeaderMod(func(h http.Header) { h.Set("User-Agent", "") })),
		},
		{name: "Host header in req.Header is ignored", req: diffReq("GET", "/echo/host-header", nil,
			diffHeaderMod(func(h http.Header) { h.Set("Host", "ignored.example") }))},
		{name: "dot segments and double slashes", req: diffReq("GET", "/echo//double/./dot/../x?a=b%20c", nil)},
		{name: "Host override", req: diffReq("GET", "/echo/host", nil, func(r *http.Request) { r.Host = "virtual.example:8080" })},
		{name: "userinfo becomes basic auth", req: func(base string) (*http.Request, error) {
			return http.NewRequest("GET", strings.Replace(base, "http://", "http://user:p%40ss@", 1)+"/echo/auth", nil)
		}},

		// --- request bodies ---
		{name: "POST nil body", req: diffReq("POST", "/echo/nil", nil)},
		{name: "POST ContentLength -1 empty body", req: diffReq("POST", "/echo/unknown-empty", func() io.Reader { return io.MultiReader() },
			func(r *http.Request) { r.ContentLength = -1 })},
		{
			name: "GET ContentLength -1 empty body",
			req: diffReq("GET", "/echo/get-unknown-empty", func() io.Reader { return io.MultiReader() },
				func(r *http.Request) { r.ContentLength = -1 }),
		},
		{name: "POST unknown length (MultiReader, ContentLength 0)", req: diffReq("POST", "/echo/multi", func() io.Reader {
			return io.MultiReader(strings.NewReader("part1-"), strings.NewReader("part2"))
		})},
		{name: "PUT unknown length (io.Pipe, 64 KiB)", req: diffReq("PUT", "/echo/pipe", nil, func(r *http.Request) {
			r.Body = diffPipe(payload64k, nil)
			r.ContentLength = -1
		})},
		{name: "PUT 8 MiB known length", req: diffReq("PUT", "/echo/big", func() io.Reader { return bytes.NewReader(big) }), check: checkBigEcho},
		{name: "POST 8 MiB unknown length (io.Pipe)", req: diffReq("POST", "/echo/big-pipe", nil, func(r *http.Request) {
			r.Body = diffPipe(big, nil)
			r.ContentLength = -1
		}), check: checkBigEcho},
		{name: "request trailers (io.Pipe, values set after the body)", req: func(base string) (*http.Request, error) {
			req, err := http.NewRequest("PUT", base+"/echo/req-trailers", nil)
			if err != nil {
				return nil, err
			}
			req.Trailer = http.Header{"X-Body-Sha256": nil, "X-Multi": nil}
			req.ContentLength = -1
			req.Body = diffPipe(payload64k, func() {
				req.Trailer.Set("X-Body-Sha256", diffSHA(payload64k))
				req.Trailer["X-Multi"] = []string{"m1", "m2"}
			})
			return req, nil
		}},
		{
			name: "request trailers with a known-length body",
			req: diffReq("POST", "/echo/req-trailers-known", diffStr("known length"), func(r *http.Request) {
				r.Trailer = http.Header{"X-Known": {"v"}}
			}),
		},
		{
			name: "request trailer declared but never set",
			req: diffReq("POST", "/echo/req-trailer-never", diffStr("abc"), func(r *http.Request) {
				r.ContentLength = -1
				r.Trailer = http.Header{"X-Never": nil}
			}),
		},
		{
			name: "req.TransferEncoding chunked with a known-length body",
			req: diffReq("POST", "/echo/te-chunked", diffStr("chunk me"), func(r *http.Request) {
				r.TransferEncoding = []string{"chunked"}
			}),
		},
		{name: "Expect: 100-continue", req: diffReq("POST", "/echo/expect", diffStr("continue body"),
			diffHeaderMod(func(h http.Header) { h.Set("Expect", "100-continue") }))},
		{name: "ContentLength larger than body fails", req: diffReq("POST", "/echo/cl-mismatch", nil, func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader("12345"))
			r.ContentLength = 10
		})},

		// --- statuses ---
		status(http.StatusNoContent),
		status(http.StatusNotModified),
		status(http.StatusBadRequest),
		status(http.StatusNotFound),
		status(http.StatusTeapot),
		status(http.StatusInternalServerError),
		status(http.StatusServiceUnavailable),
		status(299), // no reason phrase known to net/http: "299 status code 299"
		{name: "103 early hints then 200", req: diffReq("GET", "/early-hints", nil)},
		{
			name: "103 early hints seen by httptrace",
			do: func(c *diffCall) (*http.Response, error) {
				var mu sync.Mutex
				var got []string
				trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
					mu.Lock()
					got = append(got, fmt.Sprintf("%d %v", code, h["Link"]))
					mu.Unlock()
					return nil
				}}
				req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", c.Base+"/early-hints", nil)
				if err != nil {
					return nil, err
				}
				resp, err := c.Client.Do(req)
				mu.Lock()
				c.Note("Got1xxResponse", fmt.Sprint(got))
				mu.Unlock()
				return resp, err
			},
			knownDiff: "httptrace.ClientTrace.Got1xxResponse is called with 103 and its Link header by http.Transport, never by " +
				"the zmqhttp Transport: respParser.parseHeader (httpwire.go) drops 1xx responses on the server side and the " +
				"envelope has no way to carry them",
		},

		// --- response bodies ---
		{name: "large response 8 MiB chunked", req: diffReq("GET", "/large", nil), check: checkBigBody},
		{name: "large response 8 MiB with Content-Length", req: diffReq("GET", "/large?cl=1", nil), check: checkBigBody},
		{name: "streamed flushed chunked response", req: diffReq("GET", "/stream", nil)},
		{name: "empty 200", req: diffReq("GET", "/empty", nil)},
		{name: "flushed empty 200 (chunked, no data)", req: diffReq("GET", "/flush-empty", nil)},
		{name: "content sniffing", req: diffReq("GET", "/sniff", nil)},
		{name: "response header shapes", req: diffReq("GET", "/headers", nil)},
		{
			name: "response with 1100 header values",
			req:  diffReq("GET", "/many-headers", nil),
		},
		{
			name: "body delimited by connection close (Transfer-Encoding: identity)",
			req:  diffReq("GET", "/until-close", nil),
		},

		// --- trailers ---
		{name: "response trailers declared", req: diffReq("GET", "/trailers?mode=declared", nil)},
		{name: "response trailers via TrailerPrefix", req: diffReq("GET", "/trailers?mode=prefix", nil)},
		{name: "response trailers declared and via TrailerPrefix", req: diffReq("GET", "/trailers?mode=both", nil)},
		{
			name: "response trailer declared but never set",
			req:  diffReq("GET", "/trailers?mode=never", nil),
		},

		// --- redirects ---
		redirect("redirect 301 GET", "GET", http.StatusMovedPermanently, false),
		redirect("redirect 302 POST becomes GET", "POST", http.StatusFound, true),
		redirect("redirect 303 POST becomes GET", "POST", http.StatusSeeOther, true),
		redirect("redirect 307 POST keeps method and body", "POST", http.StatusTemporaryRedirect, true),
		redirect("redirect 308 PUT keeps method and body", "PUT", http.StatusPermanentRedirect, true),
		{name: "redirect chain 302-307-308 with a cookie", req: diffReq("POST", "/chain/3", diffStr("chain body"))},

		// --- cookies ---
		{name: "cookies set then sent back by the Jar", do: func(c *diffCall) (*http.Response, error) {
			resp, err := c.Client.Get(c.Base + "/cookie/set")
			if err != nil {
				return nil, err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			c.Note("first Set-Cookie", fmt.Sprint(resp.Header["Set-Cookie"]))
			return c.Client.Get(c.Base + "/echo/scoped/x")
		}},
		{name: "cookie set on a redirect", req: diffReq("GET", "/cookie/set?next="+url.QueryEscape("/echo/after-cookie"), nil)},

		// --- HEAD, conditional, range ---
		{name: "HEAD without Content-Length", req: diffReq("HEAD", "/empty", nil)},
		{name: "HEAD 404", req: diffReq("HEAD", "/status/404", nil)},
		{name: "HEAD resource with explicit Content-Length", req: diffReq("HEAD", "/resource", nil)},
		{name: "GET resource with explicit Content-Length", req: diffReq("GET", "/resource", nil)},
		{name: "ServeContent Range 206", req: diffReq("GET", "/content", nil, diffHeaderMod(func(h http.Header) { h.Set("Range", "bytes=5-20") }))},
		{name: "ServeContent If-None-Match 304", req: diffReq("GET", "/content", nil, diffHeaderMod(func(h http.Header) { h.Set("If-None-Match", `"c1"`) }))},
		{name: "ServeContent HEAD", req: diffReq("HEAD", "/content", nil)},

		// --- compression ---
		{name: "gzip decompressed transparently", req: diffReq("GET", "/gzip", nil), check: func(t *testing.T, side string, s *diffSnap) {
			if !s.Uncompressed || !bytes.HasPrefix(s.Body, []byte("gzip payload line 0\n")) {
				t.Errorf("%s: Uncompressed=%v body %.40q, want decompressed text", side, s.Uncompressed, s.Body)
			}
		}},
		{name: "gzip streamed and decompressed transparently", req: diffReq("GET", "/gzip?stream=1", nil)},
		{name: "caller's Accept-Encoding gets raw gzip", req: diffReq("GET", "/gzip", nil,
			diffHeaderMod(func(h http.Header) { h.Set("Accept-Encoding", "gzip") })), check: func(t *testing.T, side string, s *diffSnap) {
			if s.Uncompressed || s.Header.Get("Content-Encoding") != "gzip" || !bytes.HasPrefix(s.Body, []byte{0x1f, 0x8b}) {
				t.Errorf("%s: Uncompressed=%v Content-Encoding=%q body %.4q, want raw gzip", side, s.Uncompressed, s.Header.Get("Content-Encoding"), s.Body)
			}
		}},
		{name: "HEAD gzip resource asks for no gzip", req: diffReq("HEAD", "/gzip", nil)},
		{name: "Range request asks for no gzip", req: diffReq("GET", "/gzip", nil, diffHeaderMod(func(h http.Header) { h.Set("Range", "bytes=0-9") }))},

		// --- failures ---
		{name: "handler aborts (ErrAbortHandler)", req: diffReq("GET", "/abort", nil)},
		{name: "handler writes less than its Content-Length", req: diffReq("GET", "/short", nil), errAnywhere: true},
		{
			name: "Client.Timeout",
			do: func(c *diffCall) (*http.Response, error) {
				cl := *c.Client
				cl.Timeout = 200 * time.Millisecond
				return cl.Get(c.Base + "/slow")
			},
		},
		{
			name: "request context deadline",
			do: func(c *diffCall) (*http.Response, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, "GET", c.Base+"/slow", nil)
				if err != nil {
					return nil, err
				}
				return c.Client.Do(req)
			},
		},
		{
			name: "caller's deadline cancels the handler's context",
			do: func(c *diffCall) (*http.Response, error) {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, "GET", c.Base+"/cancel-probe?id=1", nil)
				if err != nil {
					return nil, err
				}
				resp, err := c.Client.Do(req)
				if err == nil {
					resp.Body.Close()
				}
				c.Note("probe error", fmt.Sprint(err != nil))
				return c.Client.Get(c.Base + "/cancel-result?id=1")
			},
		},
		{
			name: "request header over 1 MiB",
			req: diffReq("GET", "/echo/huge-header", nil, diffHeaderMod(func(h http.Header) {
				h.Set("X-Huge", strings.Repeat("h", 3<<19))
			})),
		},
	}
}

// ---------------------------------------------------------------------------
// Snapshots and comparison

// diffSnap is what one side observed.
type diffSnap struct {
	Err              error
	Timeout          bool // err.(net.Error).Timeout(), i.e. the *url.Error's Timeout()
	Deadline         bool // errors.Is(err, context.DeadlineExceeded)
	BodyErr          error
	StatusCode       int
	Status           string
	Proto            string
	ProtoMajor       int
	ProtoMinor       int
	ContentLength    int64
	TransferEncoding []string
	Uncompressed     bool
	Header           http.Header
	Body             []byte
	Trailer          http.Header
	FinalMethod      string
	FinalPath        string
	FinalQuery       string
	Cookies          string
	Notes            map[string]string
}

func diffRun(c diffCase, client *http.Client, jar http.CookieJar, base string) *diffSnap {
	call := &diffCall{Client: client, Base: base, notes: map[string]string{}}
	var resp *http.Response
	var err error
	if c.do != nil {
		resp, err = c.do(call)
	} else {
		var req *http.Request
		req, err = c.req(base)
		if err == nil {
			resp, err = client.Do(req)
		}
	}
	s := &diffSnap{Notes: call.notes}
	if u, perr := url.Parse(base + "/echo/scoped/"); perr == nil {
		var cs []string
		for _, ck := range jar.Cookies(u) {
			cs = append(cs, ck.Name+"="+ck.Value)
		}
		sort.Strings(cs)
		s.Cookies = strings.Join(cs, "; ")
	}
	if err != nil {
		s.Err = err
		var te interface{ Timeout() bool }
		s.Timeout = errors.As(err, &te) && te.Timeout()
		s.Deadline = errors.Is(err, context.DeadlineExceeded)
		return s
	}
	s.Body, s.BodyErr = io.ReadAll(resp.Body)
	resp.Body.Close()
	s.StatusCode = resp.StatusCode
	s.Status = resp.Status
	s.Proto, s.ProtoMajor, s.ProtoMinor = resp.Proto, resp.ProtoMajor, resp.ProtoMinor
	s.ContentLength = resp.ContentLength
	s.TransferEncoding = resp.TransferEncoding
	s.Uncompressed = resp.Uncompressed
	s.Header = resp.Header.Clone()
	// Normalisation: see the top of the file.
	for _, k := range []string{"Date", "Connection", "Keep-Alive"} {
		s.Header.Del(k)
	}
	s.Trailer = resp.Trailer
	if resp.Request != nil && resp.Request.URL != nil {
		s.FinalMethod = resp.Request.Method
		s.FinalPath = resp.Request.URL.EscapedPath()
		s.FinalQuery = resp.Request.URL.RawQuery
	}
	return s
}

func diffFmt(v any) string {
	switch v := v.(type) {
	case error:
		if v == nil {
			return "<nil>"
		}
		return "error(" + v.Error() + ")"
	case string:
		return strconv.Quote(v)
	case []byte:
		return strconv.Quote(string(v))
	}
	return fmt.Sprintf("%#v", v)
}

// diffCompare returns one line per mismatch: field, http value, zmq value.
func diffCompare(c diffCase, h, z *diffSnap) []string {
	var out []string
	add := func(field string, hv, zv any) {
		out = append(out, fmt.Sprintf("%s: http=%s zmq=%s", field, diffFmt(hv), diffFmt(zv)))
	}
	eq := func(field string, hv, zv any) {
		if !reflect.DeepEqual(hv, zv) {
			add(field, hv, zv)
		}
	}
	if c.errAnywhere {
		hf, zf := h.Err != nil || h.BodyErr != nil, z.Err != nil || z.BodyErr != nil
		if hf != zf {
			add("failed (Do or body read)", fmt.Sprint(hf, " ", h.Err, " / ", h.BodyErr), fmt.Sprint(zf, " ", z.Err, " / ", z.BodyErr))
		}
		if hf && zf {
			return out
		}
	}
	if (h.Err != nil) != (z.Err != nil) || h.Timeout != z.Timeout || h.Deadline != z.Deadline {
		add("Do error", h.Err, z.Err)
		eq("Do error: url.Error.Timeout()", h.Timeout, z.Timeout)
		eq("Do error: errors.Is(err, context.DeadlineExceeded)", h.Deadline, z.Deadline)
	}
	diffCompareMaps("Notes", h.Notes, z.Notes, add)
	eq("jar cookies", h.Cookies, z.Cookies)
	if h.Err != nil || z.Err != nil {
		return out
	}
	if (h.BodyErr != nil) != (z.BodyErr != nil) {
		add("body read error", h.BodyErr, z.BodyErr)
	}
	eq("StatusCode", h.StatusCode, z.StatusCode)
	eq("Status", h.Status, z.Status)
	eq("Proto", fmt.Sprintf("%s %d.%d", h.Proto, h.ProtoMajor, h.ProtoMinor), fmt.Sprintf("%s %d.%d", z.Proto, z.ProtoMajor, z.ProtoMinor))
	eq("ContentLength", h.ContentLength, z.ContentLength)
	if len(h.TransferEncoding) != 0 || len(z.TransferEncoding) != 0 {
		eq("TransferEncoding", h.TransferEncoding, z.TransferEncoding)
	}
	eq("Uncompressed", h.Uncompressed, z.Uncompressed)
	diffCompareHeader("Header", h.Header, z.Header, add)
	diffCompareBody(h.Body, z.Body, add)
	diffCompareHeader("Trailer", h.Trailer, z.Trailer, add)
	eq("Request.Method (final)", h.FinalMethod, z.FinalMethod)
	eq("Request.URL.Path (final)", h.FinalPath, z.FinalPath)
	eq("Request.URL.RawQuery (final)", h.FinalQuery, z.FinalQuery)
	return out
}

// diffCompareHeader compares per name; a name present with no values and
// an absent name are different, nil and empty maps are not.
func diffCompareHeader(field string, h, z http.Header, add func(string, any, any)) {
	keys := map[string]bool{}
	for k := range h {
		keys[k] = true
	}
	for k := range z {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		hv, hok := h[k]
		zv, zok := z[k]
		if hok != zok || !reflect.DeepEqual(hv, zv) {
			add(fmt.Sprintf("%s[%q]", field, k), diffHeaderValue(hv, hok), diffHeaderValue(zv, zok))
		}
	}
}

func diffHeaderValue(v []string, ok bool) string {
	if !ok {
		return "<absent>"
	}
	return fmt.Sprintf("%q", v)
}

func diffCompareMaps(field string, h, z map[string]string, add func(string, any, any)) {
	keys := map[string]bool{}
	for k := range h {
		keys[k] = true
	}
	for k := range z {
		keys[k] = true
	}
	for k := range keys {
		if h[k] != z[k] {
			add(field+"["+k+"]", h[k], z[k])
		}
	}
}

func diffCompareBody(h, z []byte, add func(string, any, any)) {
	if bytes.Equal(h, z) {
		return
	}
	var he, ze map[string]any
	if json.Unmarshal(h, &he) == nil && json.Unmarshal(z, &ze) == nil && he["diffEcho"] == true && ze["diffEcho"] == true {
		diffJSON("body(echo)", he, ze, add)
		return
	}
	if len(h) <= 4096 && len(z) <= 4096 {
		add("body", h, z)
		return
	}
	add("body (len, sha256)", fmt.Sprint(len(h), " ", diffSHA(h)), fmt.Sprint(len(z), " ", diffSHA(z)))
}

// diffJSON reports differing leaves of two decoded JSON values.
func diffJSON(path string, h, z any, add func(string, any, any)) {
	hm, hok := h.(map[string]any)
	zm, zok := z.(map[string]any)
	if !hok || !zok {
		if !reflect.DeepEqual(h, z) {
			hb, _ := json.Marshal(h)
			zb, _ := json.Marshal(z)
			add(path, string(hb), string(zb))
		}
		return
	}
	keys := map[string]bool{}
	for k := range hm {
		keys[k] = true
	}
	for k := range zm {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		hv, hok := hm[k]
		zv, zok := zm[k]
		if hok != zok {
			hb, _ := json.Marshal(hv)
			zb, _ := json.Marshal(zv)
			add(path+"."+k, fmt.Sprint(hok, " ", string(hb)), fmt.Sprint(zok, " ", string(zb)))
			continue
		}
		diffJSON(path+"."+k, hv, zv, add)
	}
}

// ---------------------------------------------------------------------------
// The test

func TestDifferential(t *testing.T) {
	cases := diffCases()
	if len(cases) < 30 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, mode := range []string{"tcp", "ipc", "tcp-direct", "ipc-direct"} {
		network, direct := strings.CutSuffix(mode, "-direct")
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			hs := httptest.NewServer(diffHandler())
			t.Cleanup(hs.Close)
			zl, zt := diffServeZMQMode(t, network, direct, diffHandler())
			// Runs after every case (cleanups run after parallel subtests):
			// each response the zmq client got really went through the
			// Listener.
			var zmqResponses atomic.Uint64
			t.Cleanup(func() {
				if st := zl.Stats(); st.Requests < zmqResponses.Load() {
					t.Errorf("zmqhttp Listener received %d requests for %d responses: %+v", st.Requests, zmqResponses.Load(), st)
				}
			})
			httpRT := hs.Client().Transport
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					hjar, _ := cookiejar.New(nil)
					zjar, _ := cookiejar.New(nil)
					hc := &http.Client{Transport: httpRT, Jar: hjar, Timeout: diffClientTimeout}
					zc := &http.Client{Transport: zt, Jar: zjar, Timeout: diffClientTimeout}
					var hsnap, zsnap *diffSnap
					var wg sync.WaitGroup
					wg.Add(2)
					go func() { defer wg.Done(); hsnap = diffRun(c, hc, hjar, hs.URL) }()
					go func() { defer wg.Done(); zsnap = diffRun(c, zc, zjar, hs.URL) }()
					wg.Wait()
					if zsnap.Err == nil {
						zmqResponses.Add(1)
					}
					if c.check != nil {
						if hsnap.Err == nil {
							c.check(t, "http", hsnap)
						}
						if zsnap.Err == nil {
							c.check(t, "zmq", zsnap)
						}
					}
					mismatches := diffCompare(c, hsnap, zsnap)
					if c.knownDiff != "" {
						if len(mismatches) > 0 {
							t.Skipf("KNOWN DIFF: %s\n  %s", c.knownDiff, strings.Join(mismatches, "\n  "))
						}
						if c.knownDiffRacy {
							t.Logf("KNOWN DIFF (racy) did not show this time: %s", c.knownDiff)
							return
						}
						t.Errorf("stale KNOWN DIFF marker (both sides now agree; remove knownDiff): %s", c.knownDiff)
						return
					}
					for _, m := range mismatches {
						t.Errorf("case %q: %s", c.name, m)
					}
				})
			}
		})
	}
}
