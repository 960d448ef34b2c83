package prio

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Min and Max bound a nice value (Linux: -20, the highest priority, to 19).
const (
	Min = -20
	Max = 19
)

// Check says whether nice is a nice value.
func Check(nice int) error {
	if nice < Min || nice > Max {
		return fmt.Errorf("nice value %d is outside %d..%d", nice, Min, Max)
	}
	return nil
}

// Raise sets every thread of this process to nice value nice. Threads
// created afterwards inherit it from the thread that creates them (every
// one of the Go runtime's, once all existing threads have it); call it
// again after starting a library that makes threads of its own outside the
// runtime. A value below the current one needs CAP_SYS_NICE (or an
// RLIMIT_NICE that allows it): without it the error says so.
func Raise(nice int) error {
	if err := Check(nice); err != nil {
		return err
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		err = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
		switch {
		case errors.Is(err, unix.ESRCH):
			// The thread ended since the listing.
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			return fmt.Errorf("setting this process's threads to nice %d needs CAP_SYS_NICE (run as root, or leave the nice value at 0): %w", nice, err)
		case err != nil:
			return fmt.Errorf("setting thread %d to nice %d: %w", tid, nice, err)
		}
	}
	return nil
}

// Of returns thread tid's nice value (tid 0: the calling thread).
func Of(tid int) (int, error) {
	// getpriority(2) returns 20 - nice for the raw system call; x/sys/unix
	// hands that value back as it is.
	v, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, err
	}
	return 20 - v, nil
}
