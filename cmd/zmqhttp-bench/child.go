package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// child is a server process started by the parent.
type child struct {
	proto    string
	endpoint string
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	cancel   context.CancelFunc // kills the process (exec.CommandContext)
	done     chan struct{}      // closed once the process has been waited for
	waitErr  error              // set before done is closed
	stopOnce sync.Once
}

// startChild re-executes exe as a server for proto, with extra serve
// flags args, and waits for the endpoint it prints. The child dies with
// ctx, with stop, or when the parent's end of its stdin closes.
func startChild(ctx context.Context, exe, proto string, wait time.Duration) (*child, error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, exe, serveCmd, "-proto", proto)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = 2 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start %s server: %w", proto, err)
	}
	c := &child{proto: proto, cmd: cmd, stdin: stdin, cancel: cancel, done: make(chan struct{})}
	line, err := readLine(ctx, stdout, wait)
	// Wait closes stdout, so it may only start once the line has been read.
	go c.wait()
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%s server did not report its endpoint: %w (%s)", proto, err, c.status())
	}
	c.endpoint = line
	return c, nil
}

func (c *child) wait() {
	c.waitErr = c.cmd.Wait()
	close(c.done)
}

// readLine reads the first line of r, trimmed, giving up after timeout.
func readLine(ctx context.Context, r io.Reader, timeout time.Duration) (string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		ch <- result{strings.TrimSpace(line), err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case res := <-ch:
		if res.err != nil {
			return "", res.err
		}
		if res.line == "" {
			return "", errors.New("empty line")
		}
		return res.line, nil
	case <-timer.C:
		return "", fmt.Errorf("timed out after %v", timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports an error if the process has ended.
func (c *child) exited() error {
	select {
	case <-c.done:
		return fmt.Errorf("%s server exited: %s", c.proto, c.status())
	default:
		return nil
	}
}

// status describes how the process ended, or that it is still running.
func (c *child) status() string {
	select {
	case <-c.done:
		if c.waitErr != nil {
			return c.waitErr.Error()
		}
		return "exit status 0"
	default:
		return "running"
	}
}

// stop closes the process's stdin (it exits, writing its profile if it
// makes one), kills it if it is still there 2 s later, and waits for it.
// It is idempotent.
func (c *child) stop() {
	c.stopOnce.Do(func() {
		c.stdin.Close()
		select {
		case <-c.done:
		case <-time.After(2 * time.Second):
			c.cancel()
			<-c.done
		}
	})
}
