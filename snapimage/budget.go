package snapimage

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Budget limits how many pages the hot segment holds. The zero Budget is
// unlimited: every touched non-zero page is hot.
type Budget struct {
	// Pages, when non-zero, is an absolute limit.
	Pages uint64
	// Percent, when non-zero, limits the hot segment to this percentage of
	// the guest memory's pages (rounded down).
	Percent float64
}

// ParseBudget parses a --hot-budget value: a page count ("12000") or a
// percentage of the memory's pages ("5.5%"). The empty string and "all" mean
// unlimited.
func ParseBudget(s string) (Budget, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "all" {
		return Budget{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(v) || v <= 0 || v > 100 {
			return Budget{}, fmt.Errorf("hot budget %q: percentage must be in (0, 100]", s)
		}
		return Budget{Percent: v}, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 {
		return Budget{}, fmt.Errorf("hot budget %q: want a positive page count or a percentage like 5%%", s)
	}
	return Budget{Pages: v}, nil
}

// Limit returns the hot page limit for a memory of pages pages.
func (b Budget) Limit(pages uint64) uint64 {
	switch {
	case b.Pages != 0:
		return b.Pages
	case b.Percent != 0:
		return uint64(float64(pages) * b.Percent / 100)
	}
	return math.MaxUint64
}

func (b Budget) String() string {
	switch {
	case b.Pages != 0:
		return strconv.FormatUint(b.Pages, 10)
	case b.Percent != 0:
		return strconv.FormatFloat(b.Percent, 'g', -1, 64) + "%"
	}
	return "all"
}
