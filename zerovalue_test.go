package zmqhttp

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestZeroValueTransport: a Transport not made by NewTransport fails its
// requests with an error, at once (it has no endpoint to wait for), and
// its methods do not panic.
func TestZeroValueTransport(t *testing.T) {
	// noPanic runs f, turning a panic into an error, and bounds it in time.
	noPanic := func(t *testing.T, what string, f func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			defer func() {
				if p := recover(); p != nil {
					done <- fmt.Errorf("%s panicked: %v", what, p)
				}
			}()
			done <- f()
		}()
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Second):
			t.Fatalf("%s did not return within 2s", what)
			return nil
		}
	}

	t.Run("RoundTrip", func(t *testing.T) {
		var tr Transport
		// The context only bounds a RoundTrip that would wait forever; it
		// must fail before that.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://svc/", nil)
		start := time.Now()
		var resp *http.Response
		var rtErr error
		if err := noPanic(t, "RoundTrip on a zero Transport", func() error {
			resp, rtErr = tr.RoundTrip(req)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("RoundTrip on a zero Transport returned after %v: %v", time.Since(start).Round(time.Microsecond), rtErr)
		if rtErr == nil {
			resp.Body.Close()
			t.Fatalf("RoundTrip on a zero Transport returned a %d response, want an error", resp.StatusCode)
		}
		if ctx.Err() != nil {
			t.Errorf("RoundTrip on a zero Transport waited for the context (%v) instead of failing at once", rtErr)
		}
		// Through an http.Client too.
		if err := noPanic(t, "http.Client.Get on a zero Transport", func() error {
			resp, err := (&http.Client{Transport: &Transport{}, Timeout: 3 * time.Second}).Get("http://svc/")
			if err == nil {
				resp.Body.Close()
				return fmt.Errorf("got a %d response, want an error", resp.StatusCode)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
	t.Run("Close", func(t *testing.T) {
		if err := noPanic(t, "(&Transport{}).Close()", func() error { (&Transport{}).Close(); return nil }); err != nil {
			t.Error(err)
		}
		var tr Transport
		if err := noPanic(t, "Close twice on a zero Transport", func() error { tr.Close(); tr.Close(); return nil }); err != nil {
			t.Error(err)
		}
	})
	t.Run("other methods", func(t *testing.T) {
		var tr Transport
		if err := noPanic(t, "Stats, Endpoint and CloseIdleConnections on a zero Transport", func() error {
			tr.Stats()
			tr.Endpoint()
			tr.CloseIdleConnections()
			return nil
		}); err != nil {
			t.Error(err)
		}
	})
}
