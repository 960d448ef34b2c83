package cli

import (
	"strings"
	"testing"
)

// TestVMRunBadInput: bad flags get clear errors before anything starts.
func TestVMRunBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "run", "--workload", "helloworld", "--strategy", "bogus", "--corpus", dir}, "unknown strategy"},
		{[]string{"bench", "--vmm", "kvm", "--corpus", dir}, "unknown VMM"},
	} {
		_, err := runCLI(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error about %q", c.args, err, c.want)
		}
	}
}
