package cli

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// parseSize parses sizes such as 4096, 512MiB, 1GiB, 2M, 64k.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	units := []struct {
		suf string
		m   uint64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"k", 1 << 10}, {"B", 1}}
	for _, u := range units {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suf)), u.m
			break
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q (examples: 4096, 64KiB, 512MiB, 1GiB)", s)
	}
	if n != 0 && n*mult/mult != n {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return n * mult, nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// parsePageSize parses a guest page size flag: 4KiB or 2MiB (or 4096,
// 2097152, 2M).
func parsePageSize(flag, s string) (uint32, error) {
	n, err := parseSize(s)
	if err != nil || (n != 4096 && n != 2<<20) {
		return 0, fmt.Errorf("--%s %q: a guest page size is 4KiB or 2MiB", flag, s)
	}
	return uint32(n), nil
}
