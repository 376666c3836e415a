package zmqhttp

import (
	"testing"
	"time"
)

// Accept blocked when Close runs wakes on l.done before Close sets
// l.closed, marks drainGiven and returns ErrListenerClosed: the drain
// connection is never handed out.
func TestReviewAcceptLosesDrainConn(t *testing.T) {
	lost := 0
	for i := 0; i < 20; i++ {
		l, err := Listen("tcp://127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() {
			c, err := l.Accept()
			if c != nil {
				c.Close()
			}
			got <- err
		}()
		time.Sleep(20 * time.Millisecond)
		l.Close()
		if err := <-got; err != nil {
			lost++
		}
	}
	if lost > 0 {
		t.Fatalf("%d/20: the Accept pending at Close returned an error instead of the drain connection", lost)
	}
}
