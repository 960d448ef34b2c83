package prio

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
)

// TestRaise: every thread of the process takes the value, and a thread the
// runtime creates afterwards inherits it; out-of-range values are refused.
// Raising (a lower value) needs root: without it the test checks lowering
// only.
func TestRaise(t *testing.T) {
	cur, err := Of(0)
	if err != nil {
		t.Fatal(err)
	}
	want := cur + 1
	if os.Geteuid() == 0 {
		want = cur - 1
	}
	if err := Raise(want); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Raise(cur) })
	check := func(when string) {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			if v, err := Of(tid); err == nil && v != want {
				t.Fatalf("%s: thread %d at nice %d, want %d", when, tid, v, want)
			}
		}
	}
	check("after Raise")
	// Threads made now (locked goroutines force new ones) inherit it.
	var wg sync.WaitGroup
	hold := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			<-hold
		}()
	}
	runtime.Gosched()
	check("with new threads")
	close(hold)
	wg.Wait()
	for _, bad := range []int{Min - 1, Max + 1} {
		if err := Raise(bad); err == nil {
			t.Fatalf("nice %d accepted", bad)
		}
	}
}
