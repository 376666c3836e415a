package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// headerFlags collects repeated -H 'Name: value' flags.
type headerFlags []string

func (h *headerFlags) String() string { return strings.Join(*h, ", ") }

func (h *headerFlags) Set(v string) error {
	name, _, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("%q: want 'Name: value'", v)
	}
	*h = append(*h, v)
	return nil
}

// runCall runs "zmqhttp call": one request, the body to stdout.
func runCall(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("call", "[-X METHOD] [-H 'Name: value']... [-d DATA|@file] [-i] [-timeout D] ENDPOINT PATH", stderr)
	method := fs.String("X", "", "request method (default GET, or POST with -d)")
	var headers headerFlags
	fs.Var(&headers, "H", "a request header 'Name: value' (repeatable; 'Host: name' sets the Host)")
	data := fs.String("d", "", "request body: DATA as given, @FILE a file's contents, @- standard input")
	include := fs.Bool("i", false, "print the status line and headers before the body")
	timeout := fs.Duration("timeout", 30*time.Second, "bound on the whole request, body included (0: none)")
	var curve curveClientFlags
	curve.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, `usage: zmqhttp call [-X METHOD] [-H 'Name: value']... [-d DATA|@file] [-i] [-timeout D] ENDPOINT PATH

Sends one request to the zmqhttp server at ENDPOINT (tcp://host:port,
ipc:///path, or a comma-separated list) and writes the response body to
standard output. PATH is a path ("/users/1?x=y"), sent with the
endpoint's host as Host, or a URL ("http://svc/users/1") whose host is
sent as Host. Flags may also follow ENDPOINT and PATH. Exit status: 0 on
any HTTP response, 1 when no response (or not all of its body) was
obtained, 2 on a usage error.

`)
		fs.PrintDefaults()
	}
	// Flags may come before, between or after the two arguments, as curl
	// takes them.
	var pos []string
	for {
		if code, ok := parseFlags(fs, args); !ok {
			return code
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 2 {
		return usageError(fs, stderr, "want ENDPOINT and PATH, got %d arguments", len(pos))
	}
	endpoint, target := pos[0], pos[1]
	const name = "zmqhttp call"
	body, err := readData(*data, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	req, err := newCallRequest(*method, endpoint, target, headers, body)
	if err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	opts, err := curve.options()
	if err != nil {
		return usageError(fs, stderr, "%v", err)
	}
	// Like curl: what the server sent, no transparent gzip.
	tr, err := zmqhttp.NewTransport(endpoint, append(opts, zmqhttp.WithDisableCompression())...)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	defer tr.Close()
	ctx := context.Background()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	// Like curl, fail at once when the endpoint cannot be reached, rather
	// than wait out -timeout while the Transport keeps reconnecting.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		for ctx.Err() == nil {
			if st := tr.Stats(); st.Connects == 0 && st.DialFailures > 0 {
				cancel(errUnreachable)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	resp, err := tr.RoundTrip(req.WithContext(ctx))
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	defer resp.Body.Close()
	if *include {
		writeHead(stdout, resp)
	}
	if _, err := io.Copy(stdout, resp.Body); err != nil {
		fmt.Fprintf(stderr, "%s: reading the body: %v\n", name, err)
		return 1
	}
	return 0
}

// errUnreachable ends a call whose endpoint could not be reached.
var errUnreachable = errors.New("cannot reach the endpoint")

// readData returns the body -d gives: nil for none, DATA as given, the
// contents of a file for @FILE, standard input for @-.
func readData(data string, stdin io.Reader) ([]byte, error) {
	switch {
	case data == "":
		return nil, nil
	case data == "@-":
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("-d @-: %w", err)
		}
		return b, nil
	case strings.HasPrefix(data, "@"):
		b, err := os.ReadFile(data[1:])
		if err != nil {
			return nil, fmt.Errorf("-d: %w", err)
		}
		return b, nil
	}
	return []byte(data), nil
}

// newCallRequest builds call's request. target is a path, sent with
// endpoint's host as Host, or an http URL. A nil body sends none.
func newCallRequest(method, endpoint, target string, headers []string, body []byte) (*http.Request, error) {
	hasBody := body != nil
	if method == "" {
		method = http.MethodGet
		if hasBody {
			method = http.MethodPost
		}
	}
	rawURL := target
	if strings.HasPrefix(target, "/") {
		rawURL = "http://" + endpointHost(endpoint) + target
	} else if !strings.HasPrefix(target, "http://") && !strings.HasPrefix(target, "zmq://") {
		return nil, fmt.Errorf("PATH %q: want /path or http://host/path", target)
	}
	var r io.Reader
	if hasBody {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, rawURL, r)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		name, value = textproto.TrimString(name), textproto.TrimString(value)
		if strings.EqualFold(name, "Host") {
			req.Host = value
			continue
		}
		req.Header.Add(name, value)
	}
	return req, nil
}

// endpointHost returns the Host a path-only call sends: the first
// endpoint's host:port for tcp, "localhost" otherwise.
func endpointHost(endpoint string) string {
	first, _, _ := strings.Cut(endpoint, ",")
	first = strings.TrimLeft(first, "@>")
	if rest, ok := strings.CutPrefix(first, "tcp://"); ok && rest != "" && !strings.ContainsAny(rest, "*/") {
		return rest
	}
	return "localhost"
}

// writeHead writes resp's status line and headers as HTTP/1.1 does, then
// the empty line.
func writeHead(w io.Writer, resp *http.Response) {
	fmt.Fprintf(w, "%s %s\r\n", resp.Proto, resp.Status)
	h := resp.Header.Clone()
	if h.Get("Content-Length") == "" && resp.ContentLength >= 0 && len(resp.TransferEncoding) == 0 {
		h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	if len(resp.TransferEncoding) > 0 && h.Get("Transfer-Encoding") == "" {
		h.Set("Transfer-Encoding", strings.Join(resp.TransferEncoding, ", "))
	}
	h.Write(w)
	io.WriteString(w, "\r\n")
}
