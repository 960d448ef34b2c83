package bench

import (
	"bytes"
	"testing"
)

// TestLineWatch: the measured line is seen whole, in any split of the
// writes, and only as a line of its own; every byte is passed on.
func TestLineWatch(t *testing.T) {
	const line = "guest: measured"
	for _, tc := range []struct {
		writes []string
		want   int
	}{
		{[]string{line + "\n"}, 1},
		{[]string{"warn: x\n", "guest: mea", "sured\nmore\n"}, 1},
		{[]string{"x" + line + "\n"}, 0},
		{[]string{line + "x\n"}, 0},
		{[]string{"a very long line indeed, longer than the one watched for: " + line + "\n", line + "\n"}, 1},
		{[]string{line}, 0}, // not ended: not yet a line
	} {
		var out bytes.Buffer
		n := 0
		w := &lineWatch{w: &out, line: line, seen: func() { n++ }}
		all := ""
		for _, s := range tc.writes {
			if _, err := w.Write([]byte(s)); err != nil {
				t.Fatal(err)
			}
			all += s
		}
		if n != tc.want || out.String() != all {
			t.Errorf("%q: seen %d times (want %d), passed on %q", tc.writes, n, tc.want, out.String())
		}
	}
}

type closeCount struct{ n *int }

func (c closeCount) Close() error { *c.n++; return nil }

// TestVerifyGate: the held inputs are closed once every member arrived,
// a member arriving twice counts once, and a hold after the gate opened is
// closed at once.
func TestVerifyGate(t *testing.T) {
	g := newVerifyGate(2)
	closed := 0
	a, b := g.member(), g.member()
	g.hold(closeCount{&closed})
	g.hold(closeCount{&closed})
	a()
	a()
	if closed != 0 {
		t.Fatalf("%d inputs closed with one member of two arrived", closed)
	}
	b()
	if closed != 2 {
		t.Fatalf("%d inputs closed once both arrived, want 2", closed)
	}
	g.hold(closeCount{&closed})
	if closed != 3 {
		t.Fatal("a hold after the gate opened was not closed at once")
	}
}
