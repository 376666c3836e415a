package zmqhttp

// A server process killed behind the proxy: three server children connect
// to an in-process Proxy (Listen(">"+backend)), 64 callers send mixed GETs
// and POSTs through it, and one child gets SIGKILL mid-run.

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestProxyKillServer: 0 replayable requests lost, non-replayable ones in
// flight on the killed server fail with ErrConnectionLost within 1 s of
// the kill, no POST runs twice (the children's logs), the survivors keep
// serving, and a fourth server that joins a second after the kill serves
// at least 15% of the requests of its first 2 s.
func TestProxyKillServer(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process")
	}
	const (
		callers  = 64
		runFor   = 6 * time.Second
		killAt   = 2 * time.Second
		handleMs = 10
	)
	p := startProxy(t, "", "", WithHeartbeat(relHBInterval, relHBTimeout))
	dir := t.TempDir()
	var children []*relChild
	for i := 0; i < 3; i++ {
		c, err := relStartChild(t, fmt.Sprintf("server#%d", i+1), ">"+backendOf(p), filepath.Join(dir, fmt.Sprintf("log%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		children = append(children, c)
	}
	waitServers(t, p, 3)
	_, tr := newClient(t, frontendOf(p), WithHeartbeat(relHBInterval, relHBTimeout))
	c := &http.Client{Transport: tr}

	type failure struct {
		method string
		at     time.Time
		err    error
	}
	var (
		mu       sync.Mutex
		failures []failure
		okPosts  = map[string]bool{}
		gets     atomic.Int64
		posts    atomic.Int64
		killTime atomic.Int64
	)
	start := time.Now()
	stop := time.Now().Add(runFor)
	var wg sync.WaitGroup
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; time.Now().Before(stop); i++ {
				post := (g+i)%2 == 0
				var req *http.Request
				id := fmt.Sprintf("c%d-%d", g, i)
				if post {
					req, _ = http.NewRequest("POST", fmt.Sprintf("http://svc/slow?ms=%d", handleMs), strings.NewReader("payload"))
					req.Header.Set("X-Req-Id", id)
				} else {
					req, _ = http.NewRequest("GET", fmt.Sprintf("http://svc/slow?ms=%d", handleMs), nil)
				}
				resp, err := c.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				mu.Lock()
				switch {
				case err != nil:
					failures = append(failures, failure{req.Method, time.Now(), err})
				case post:
					okPosts[id] = true
					posts.Add(1)
				default:
					gets.Add(1)
				}
				mu.Unlock()
			}
		}(g)
	}
	time.Sleep(killAt)
	killTime.Store(time.Now().UnixNano())
	if err := children[0].kill(); err != nil {
		t.Fatal(err)
	}
	// A fourth server joins a second later and takes its share within
	// 2 s.
	time.Sleep(time.Second)
	served := map[string]uint64{}
	for _, s := range p.Stats().Servers {
		served[s.Addr] = s.Served
	}
	if _, err := relStartChild(t, "server#4", ">"+backendOf(p), filepath.Join(dir, "log3")); err != nil {
		t.Fatal(err)
	}
	waitServers(t, p, 3)
	joined := p.Stats()
	time.Sleep(2 * time.Second)
	var total, newcomer uint64
	for _, s := range p.Stats().Servers {
		total += s.Served - served[s.Addr]
		if _, old := served[s.Addr]; !old {
			newcomer = s.Served
		}
	}
	for _, s := range joined.Servers {
		if _, old := served[s.Addr]; !old {
			total -= s.Served // counted from the moment it announced itself
			newcomer -= s.Served
		}
	}
	wg.Wait()
	if total == 0 || newcomer*100 < total*15 {
		t.Errorf("the fourth server served %d of %d requests in its first 2 s, want >= 15%%", newcomer, total)
	} else {
		t.Logf("the fourth server served %d of %d requests (%d%%) in its first 2 s", newcomer, total, newcomer*100/total)
	}
	kill := time.Unix(0, killTime.Load())
	t.Logf("%v: %d GETs and %d POSTs served, %d failures; proxy %+v", time.Since(start).Round(time.Millisecond),
		gets.Load(), posts.Load(), len(failures), p.Stats())
	lost := 0
	for _, f := range failures {
		switch {
		case f.method != "POST":
			t.Errorf("a GET failed: %v", f.err)
		case !errors.Is(f.err, ErrConnectionLost):
			t.Errorf("a POST failed with %v, want ErrConnectionLost", f.err)
		case f.at.Sub(kill) > time.Second || f.at.Before(kill):
			t.Errorf("a POST failed %v after the kill", f.at.Sub(kill))
		default:
			lost++
		}
	}
	t.Logf("%d POSTs lost (ErrConnectionLost)", lost)
	runs := map[string]int{}
	for i := 0; i < 4; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("log%d", i)))
		if err != nil && i != 0 {
			t.Fatal(err)
		}
		for _, id := range strings.Fields(string(b)) {
			runs[id]++
		}
	}
	for id, n := range runs {
		if n > 1 {
			t.Errorf("POST %s ran %d times", id, n)
		}
	}
	for id := range okPosts {
		if runs[id] != 1 {
			t.Errorf("POST %s answered but logged %d times", id, runs[id])
		}
	}
	if st := p.Stats(); len(st.Servers) != 3 || st.Evictions != 1 {
		t.Errorf("at the end: %d servers, %d evictions", len(st.Servers), st.Evictions)
	}
	if gets.Load() == 0 || posts.Load() == 0 {
		t.Error("nothing served")
	}
}
