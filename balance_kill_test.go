//go:build linux

package zmqhttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// balanceKillCall is one request of TestBalanceKill and what came of it.
type balanceKillCall struct {
	method, id string
	end        time.Time
	status     int
	body       string
	err        error
}

// TestBalanceKill: three server processes behind one Transport with a
// 3-endpoint list; 64 callers send GETs and plain POSTs (not replayable)
// to a 20 ms handler that logs each request's id; one server is killed
// (SIGKILL) mid-run. Every GET succeeds (replayed on another server);
// every POST either succeeds and ran exactly once, or was in flight on
// the killed server and fails with ErrConnectionLost within 1 s of the
// kill; no POST ran twice (counted from the servers' logs); the other two
// servers take the traffic. The "freeze" variant stops the server
// (SIGSTOP, as a hung machine) instead: only the heartbeat (1 s timeout)
// notices, and the POSTs sent to it fail within 1 s of that.
func TestBalanceKill(t *testing.T) {
	t.Run("kill", func(t *testing.T) { balanceKill(t, false) })
	t.Run("freeze", func(t *testing.T) { balanceKill(t, true) })
}

func balanceKill(t *testing.T, freeze bool) {
	dir := t.TempDir()
	var children []*relChild
	var logs []string
	for i := range 3 {
		logPath := filepath.Join(dir, fmt.Sprintf("server%d.log", i))
		var c *relChild
		var err error
		for attempt := 0; attempt < 4; attempt++ {
			if c, err = relStartChild(t, fmt.Sprintf("server#%d", i), relFreeEndpoint(t), logPath); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, c)
		logs = append(logs, logPath)
	}
	list := children[0].ep + "," + children[1].ep + "," + children[2].ep
	tr, err := NewTransport(list, WithHeartbeat(relHBInterval, relHBTimeout))
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	client := &http.Client{Transport: tr}

	run := 6 * time.Second
	if testing.Short() {
		run = 4 * time.Second
	}
	// Calls lost on the stopped server end within 1 s of its connection
	// closing: at once for a kill, after the heartbeat timeout (and up to
	// an eighth more, see liveConn) for a freeze.
	lostWithin := time.Second
	if freeze {
		lostWithin += relHBTimeout + relHBTimeout/8
	}
	stop := make(chan struct{})
	var mu sync.Mutex
	var calls []balanceKillCall
	var wg sync.WaitGroup
	for k := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := balanceKillCall{method: http.MethodGet, id: fmt.Sprintf("get-%d-%d", k, i)}
				var body io.Reader
				if i%2 == 1 {
					c.method, c.id = http.MethodPost, fmt.Sprintf("post-%d-%d", k, i)
					body = strings.NewReader("payload of " + c.id)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				req, _ := http.NewRequestWithContext(ctx, c.method, "http://x/slow?ms=20", body)
				req.Header.Set("X-Req-Id", c.id)
				resp, err := client.Do(req)
				if err == nil {
					b, rerr := io.ReadAll(resp.Body)
					resp.Body.Close()
					c.status, c.body, err = resp.StatusCode, strings.TrimPrefix(string(b), "slept "), rerr
				}
				cancel()
				c.end, c.err = time.Now(), err
				mu.Lock()
				calls = append(calls, c)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(run / 2)
	killAt := time.Now()
	if freeze {
		if err := children[1].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	} else if err := children[1].kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(run / 2)
	close(stop)
	if !relWaitGroup(balanceCtxTimeout(t, 15*time.Second), &wg) {
		t.Fatal("callers still blocked 15 s after the run ended")
	}

	count, where := relReadLogs(t, logs...)
	var gets, posts, lost, bad, twice int
	var lateLost time.Duration
	for _, c := range calls {
		ok := c.err == nil && c.status == http.StatusOK && c.body == c.id
		switch {
		case c.method == http.MethodGet:
			gets++
			if !ok {
				bad++
				t.Errorf("GET %s: status %d body %q err %v", c.id, c.status, c.body, c.err)
			}
		case ok:
			posts++
			if count[c.id] != 1 {
				twice++
				t.Errorf("POST %s succeeded and ran %d times (logs %v)", c.id, count[c.id], where[c.id])
			}
		case errors.Is(c.err, ErrConnectionLost):
			lost++
			lateLost = max(lateLost, c.end.Sub(killAt))
			if count[c.id] > 1 {
				twice++
				t.Errorf("POST %s failed and ran %d times", c.id, count[c.id])
			}
			if d := c.end.Sub(killAt); d < 0 || d > lostWithin {
				t.Errorf("POST %s failed with ErrConnectionLost %v after the server stopped, want within %v", c.id, d, lostWithin)
			}
		default:
			bad++
			t.Errorf("POST %s: status %d body %q err %v", c.id, c.status, c.body, c.err)
		}
	}
	for id, n := range count {
		if strings.HasPrefix(id, "post-") && n > 1 {
			twice++
			t.Errorf("POST %s ran %d times", id, n)
		}
	}
	perServer := make([]int, 3)
	for _, ws := range where {
		for _, i := range ws {
			perServer[i]++
		}
	}
	t.Logf("%d GETs ok, %d POSTs ok, %d POSTs lost with ErrConnectionLost (latest %v after the server stopped), %d bad, %d run twice; requests run per server %v; stats %+v",
		gets-bad, posts, lost, lateLost.Round(time.Millisecond), bad, twice, perServer, tr.Stats())
	for i, n := range perServer {
		if n < 100 {
			t.Errorf("server %d ran only %d requests", i, n)
		}
	}
	if len(calls) < 1000 {
		t.Errorf("only %d calls in %v", len(calls), run)
	}
}

// balanceCtxTimeout returns a context that ends after d or at the test's end.
func balanceCtxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
