package bench

import (
	"fmt"

	"github.com/aquifer-pool/aquifer/corpus"
)

// CheckWorkloads refuses a workload name the corpus does not hold, saying
// how to capture it (a built-in by name, or one's own function).
func CheckWorkloads(c *corpus.Corpus, names []string) error {
	for _, n := range names {
		if _, err := c.Get(n); err != nil {
			how := "aquifer corpus capture --function-file FILE.py --name " + n
			if _, berr := corpus.Lookup(n); berr == nil {
				how = "aquifer corpus capture --functions " + n
			}
			return fmt.Errorf("%w (capture it: %s)", err, how)
		}
	}
	return nil
}
