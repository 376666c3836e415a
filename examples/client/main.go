// Command client sends HTTP requests over ZeroMQ with zmqhttp: a standard
// http.Client whose Transport is a zmqhttp.Transport. Run examples/server
// first:
//
//	go run ./examples/server &
//	go run ./examples/client
//	go run ./examples/client -url http://svc/echo -data 'ping over ZeroMQ'
//	go run ./examples/client -n 1000
//
// The URL's host does not choose the server (the -endpoint does); it is
// sent as the request's Host. The scheme may be http or zmq.
//
// The client prints the first response's status, headers and body, and
// with -n > 1 a summary of all the responses.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/zmqhttp/zmqhttp"
)

// main parses the flags and sends the request.
func main() {
	endpoint := flag.String("endpoint", "tcp://127.0.0.1:5555", "ZeroMQ endpoint of the server: tcp://host:port or ipc:///path")
	url := flag.String("url", "http://svc/hello/world", "URL to request (http:// or zmq://; the host is only sent as Host)")
	method := flag.String("method", "", "request method (default GET, or POST with -data)")
	data := flag.String("data", "", "request body, sent as text/plain")
	n := flag.Int("n", 1, "how many times to send the request")
	timeout := flag.Duration("timeout", 5*time.Second, "timeout of each request, including waiting for the connection")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("client: ")

	if *method == "" {
		*method = http.MethodGet
		if *data != "" {
			*method = http.MethodPost
		}
	}
	if *n < 1 {
		log.Fatal("-n must be at least 1")
	}
	if err := run(*endpoint, *method, *url, *data, *n, *timeout); err != nil {
		log.Fatal(err)
	}
}

// run sends the request n times over one Transport to endpoint.
func run(endpoint, method, url, data string, n int, timeout time.Duration) error {
	t, err := zmqhttp.NewTransport(endpoint)
	if err != nil {
		return err
	}
	defer t.Close()
	client := &http.Client{Transport: t, Timeout: timeout}

	statuses := make(map[string]int)
	start := time.Now()
	for i := 0; i < n; i++ {
		resp, body, err := do(client, method, url, data)
		if err != nil {
			return err
		}
		statuses[resp.Status]++
		if i == 0 {
			printResponse(method, url, resp, body)
		}
	}
	if n > 1 {
		elapsed := time.Since(start)
		var parts []string
		for status, count := range statuses {
			parts = append(parts, fmt.Sprintf("%d × %s", count, status))
		}
		sort.Strings(parts)
		fmt.Printf("\n%d requests in %v (%v each): %s\n",
			n, elapsed.Round(time.Microsecond), (elapsed / time.Duration(n)).Round(time.Microsecond), strings.Join(parts, ", "))
	}
	return nil
}

// do sends one request and reads the whole response body.
func do(client *http.Client, method, url, data string) (*http.Response, []byte, error) {
	var body io.Reader
	if data != "" {
		body = strings.NewReader(data)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return nil, nil, err
	}
	if data != "" {
		req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	}
	resp, err := client.Do(req)
	if err != nil {
		var re *zmqhttp.RemoteError
		if errors.As(err, &re) {
			return nil, nil, fmt.Errorf("the server rejected the request: %w", err)
		}
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the response: %w", err)
	}
	return resp, b, nil
}

// printResponse writes the status line, the headers (sorted) and the body.
func printResponse(method, url string, resp *http.Response, body []byte) {
	fmt.Printf("%s %s\n%s %s\n", method, url, resp.Proto, resp.Status)
	names := make([]string, 0, len(resp.Header))
	for name := range resp.Header {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		for _, v := range resp.Header[name] {
			fmt.Printf("%s: %s\n", name, v)
		}
	}
	fmt.Println()
	os.Stdout.Write(body)
	if len(body) > 0 && body[len(body)-1] != '\n' {
		fmt.Println()
	}
}
