package zmqhttp

import (
	"bufio"
	"sync"
)

// This file holds the buffer pools of the hot paths. A pooled buffer goes
// back only once nothing refers to it: decoded envelopes alias their frame
// (zero-copy decoding), and the writer references bodies in its vectored
// writes until they are written.

// bytePool recycles buffers of one capacity.
type bytePool struct {
	size int
	p    sync.Pool
}

// get returns a buffer of length and capacity size.
func (bp *bytePool) get() []byte {
	if p, ok := bp.p.Get().(*[]byte); ok {
		b := (*p)[:bp.size]
		*p = nil
		boxPool.Put(p)
		return b
	}
	return make([]byte, bp.size)
}

// put takes back b, from get, once nothing refers to it. Any other
// buffer (another capacity, nil) is left to the garbage collector.
func (bp *bytePool) put(b []byte) {
	if cap(b) == bp.size {
		bp.p.Put(boxed(b[:bp.size]))
	}
}

var (
	// chunkFrames holds frames of large chunks (half a chunk or more, so
	// that a frame never holds more than twice the body bytes its
	// window counts). The recvStream that reads a chunk returns its frame
	// (putChunkFrame). Smaller chunks (a handler's io.Copy writes 32 KiB
	// at a time) go in the smaller classes of chunkClasses.
	chunkFrames = bytePool{size: maxChunk + 8<<10}
	// wholeFrames holds frames of requests and responses with whole
	// bodies of half its size or more (so that a frame never holds more
	// than twice the bytes it carries: a peer's queued requests cost what
	// they weigh). The Listener returns a request's once the server has
	// read the request; the Transport returns a response's once its body
	// is read or closed.
	wholeFrames = bytePool{size: wholeBodyMax + 16<<10}
	// wholeBodies holds whole bodies of refMin to wholeBodyMax bytes: a
	// handler's response (returned once written) and a caller's request
	// (returned once answered).
	wholeBodies = bytePool{size: wholeBodyMax}
)

// chunkClasses are the pools of chunk frames, smallest first; each takes
// the frames from half its size to its size, so that together they take
// every chunk frame from 20 KiB to chunkFrames' size.
var chunkClasses = [...]*bytePool{
	{size: 32<<10 + 8<<10},
	&wholeFrames,
	{size: 128<<10 + 8<<10},
	{size: 256<<10 + 8<<10},
	&chunkFrames,
}

// chunkPool returns the pool for a chunk frame of size bytes, or nil.
func chunkPool(size uint64) *bytePool {
	for _, p := range chunkClasses {
		if size <= uint64(p.size) {
			if size >= uint64(p.size/2) {
				return p
			}
			return nil
		}
	}
	return nil
}

// putChunkFrame takes back the frame of a chunk once its body is read: to
// the class it came from, if any.
func putChunkFrame(b []byte) {
	for _, p := range chunkClasses {
		if cap(b) == p.size {
			p.put(b)
			return
		}
	}
}

// framePool returns the pool for the frame of size bytes whose body br is
// about to read, or nil for a frame allocated on its own.
func framePool(br *bufio.Reader, size uint64) *bytePool {
	if size < refMin {
		return nil
	}
	b, err := br.Peek(5)
	// An envelope is an array of 16 (dc 00 10), version 1, then its kind.
	if err != nil || b[0] != 0xdc || b[1] != 0 || b[2] != envelopeFields || b[3] != ProtocolVersion {
		return nil
	}
	switch Kind(b[4]) {
	case KindRequest, KindResponse:
		if size >= uint64(wholeFrames.size/2) && size <= uint64(wholeFrames.size) {
			return &wholeFrames
		}
	case KindChunk:
		return chunkPool(size)
	}
	return nil
}

// bufPool recycles the buffers envelopes are encoded into, of any size up
// to maxPooledBuf.
var bufPool sync.Pool

// maxPooledBuf bounds the buffers kept for reuse.
const maxPooledBuf = 256 << 10

// boxPool holds empty *[]byte boxes, so that putting a buffer in bufPool
// allocates no box each time.
var boxPool sync.Pool

func getBuf() []byte {
	if p, ok := bufPool.Get().(*[]byte); ok {
		b := (*p)[:0]
		*p = nil
		boxPool.Put(p)
		return b
	}
	return nil
}

func putBuf(b []byte) {
	if cap(b) > 0 && cap(b) <= maxPooledBuf {
		bufPool.Put(boxed(b))
	}
}

// boxed returns b in a *[]byte from boxPool (a new one if it is empty).
func boxed(b []byte) *[]byte {
	p, ok := boxPool.Get().(*[]byte)
	if !ok {
		p = new([]byte)
	}
	*p = b
	return p
}
