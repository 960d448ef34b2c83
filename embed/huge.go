package embed

import (
	"errors"

	"github.com/aquifer-pool/aquifer/hugetlb"
)

// hugePool checks, before the daemon serves anything, that the host's
// hugetlb pool has the 2 MiB huge pages the configuration says this host's
// 2 MiB guests will hold (Config.HugePages), and warms them: pages fresh
// from the pool (or untouched for long) cost milliseconds each on first use
// on virtualised hosts, a cost that would otherwise land on a restore.
func (s *Server) hugePool(n int) error {
	if n == 0 {
		return nil
	}
	if err := hugetlb.Check(n); err != nil {
		var se *hugetlb.ShortError
		if errors.As(err, &se) {
			return fieldErr("huge-pages", "%d: %w", n, err)
		}
		return fieldErr("huge-pages", "%d: 2 MiB guests need a hugetlb pool: %w", n, err)
	}
	d, err := hugetlb.Warm(n)
	if err != nil {
		return fieldErr("huge-pages", "%d: %w", n, err)
	}
	p, _ := hugetlb.Status()
	s.log.Info("hugetlb pool checked and warmed", "huge_pages", n, "warm", d.String(), "pool", p.String())
	return nil
}

func (c *Config) validateHugePages() error {
	if c.HugePages < 0 {
		return fieldErr("huge-pages", "%d: want a number of 2 MiB pages (0: no 2 MiB guests)", c.HugePages)
	}
	return nil
}
