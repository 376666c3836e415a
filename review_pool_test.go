package zmqhttp

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func seedBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewSource(seed))
	r.Read(b)
	return b
}

func poolHandler(t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seed, _ := strconv.ParseInt(r.Header.Get("X-Seed"), 10, 64)
		n, _ := strconv.Atoi(r.Header.Get("X-Len"))
		if r.Header.Get("X-Echo") != strings.Repeat(strconv.FormatInt(seed, 10), 20) {
			t.Errorf("server: header X-Echo corrupted for seed %d", seed)
		}
		mode := r.URL.Query().Get("m")
		if mode == "noread" {
			w.Header().Set("X-Seed", strconv.FormatInt(seed, 10))
			w.Write(seedBytes(seed+1, 20000))
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		if !bytes.Equal(body, seedBytes(seed, n)) {
			t.Errorf("server: body corrupted for seed %d (len %d want %d)", seed, len(body), n)
		}
		if d := r.URL.Query().Get("sleep"); d != "" {
			ms, _ := strconv.Atoi(d)
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		w.Header().Set("X-Seed", strconv.FormatInt(seed, 10))
		w.Header().Set("X-Big", strings.Repeat(strconv.FormatInt(seed%97, 10), 6000))
		out := seedBytes(seed+1, n)
		switch mode {
		case "gzip":
			var zb bytes.Buffer
			zw := gzip.NewWriter(&zb)
			zw.Write(out)
			zw.Close()
			w.Header().Set("Content-Encoding", "gzip")
			w.Header().Set("Content-Length", strconv.Itoa(zb.Len()))
			w.Write(zb.Bytes())
		case "empty":
			w.WriteHeader(204)
		default:
			w.Header().Set("Content-Length", strconv.Itoa(len(out)))
			w.Write(out)
		}
	})
}

type keptHeader struct {
	seed int64
	h    http.Header
}

func TestReview3PoolStress(t *testing.T) {
	ts := startServer(t, "tcp", poolHandler(t))
	c, _ := newClient(t, ts.L.Endpoint())
	var mu sync.Mutex
	var kept []keptHeader
	var wg sync.WaitGroup
	var seedCtr int64
	var smu sync.Mutex
	next := func() int64 { smu.Lock(); defer smu.Unlock(); seedCtr++; return seedCtr * 1000 }
	dur := 4 * time.Second
	end := time.Now().Add(dur)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(g)))
			for time.Now().Before(end) {
				seed := next()
				n := 16<<10 + rnd.Intn(48<<10)
				modes := []string{"", "gzip", "empty", "head", "noread", "writeto", "partial", "cancel"}
				mode := modes[rnd.Intn(len(modes))]
				url := "http://x/?m=" + mode
				method := "POST"
				if mode == "head" {
					method = "HEAD"
				}
				ctx := context.Background()
				var cancel context.CancelFunc = func() {}
				if mode == "cancel" {
					url += "&sleep=" + strconv.Itoa(rnd.Intn(4))
					ctx, cancel = context.WithTimeout(ctx, time.Duration(rnd.Intn(3000))*time.Microsecond)
				}
				var body io.Reader = bytes.NewReader(seedBytes(seed, n))
				if method == "HEAD" {
					body = nil
					n = 0
				}
				req, _ := http.NewRequestWithContext(ctx, method, url, body)
				req.Header.Set("X-Seed", strconv.FormatInt(seed, 10))
				req.Header.Set("X-Len", strconv.Itoa(n))
				req.Header.Set("X-Echo", strings.Repeat(strconv.FormatInt(seed, 10), 20))
				if mode == "gzip" {
					_ = 0
				}
				resp, err := c.Do(req)
				if err != nil {
					cancel()
					if mode != "cancel" {
						t.Errorf("seed %d mode %q: %v", seed, mode, err)
					}
					continue
				}
				if got := resp.Header.Get("X-Seed"); got != strconv.FormatInt(seed, 10) {
					t.Errorf("seed %d mode %q: X-Seed %q", seed, mode, got)
				}
				mu.Lock()
				kept = append(kept, keptHeader{seed, resp.Header})
				mu.Unlock()
				want := seedBytes(seed+1, n)
				switch mode {
				case "noread":
					want = seedBytes(seed+1, 20000)
				case "empty", "head":
					want = nil
				}
				var got []byte
				switch mode {
				case "writeto":
					var bb bytes.Buffer
					io.Copy(&bb, resp.Body)
					got = bb.Bytes()
				case "partial":
					buf := make([]byte, 100)
					io.ReadFull(resp.Body, buf)
					resp.Body.Close()
					got = buf
					want = want[:100]
				default:
					got, err = io.ReadAll(resp.Body)
					if err != nil && mode != "cancel" {
						t.Errorf("seed %d: read: %v", seed, err)
					}
				}
				resp.Body.Close()
				cancel()
				if mode != "cancel" && !bytes.Equal(got, want) {
					t.Errorf("seed %d mode %q: body corrupted (len %d want %d)", seed, mode, len(got), len(want))
				}
			}
		}(g)
	}
	wg.Wait()
	for _, k := range kept {
		if k.h.Get("X-Seed") != strconv.FormatInt(k.seed, 10) {
			t.Errorf("kept header of seed %d changed: %q", k.seed, k.h.Get("X-Seed"))
		}
		if b := k.h.Get("X-Big"); b != "" && b != strings.Repeat(strconv.FormatInt(k.seed%97, 10), 6000) {
			t.Errorf("kept X-Big of seed %d changed", k.seed)
		}
	}
	t.Logf("%d requests", len(kept))
	_ = fmt.Sprint
}
