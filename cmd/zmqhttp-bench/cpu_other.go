//go:build !linux

package main

import (
	"errors"
	"time"
)

var errNoCPU = errors.New("CPU accounting is only implemented on Linux")

func selfCPU() (time.Duration, error) { return 0, errNoCPU }

func procCPU(pid int) (time.Duration, error) { return 0, errNoCPU }
