//go:build !race

package zmqhttp

// raceEnabled reports whether the test binary was built with -race (its
// memory use and speed differ; see TestStreamGiBBoundedMemory).
const raceEnabled = false
