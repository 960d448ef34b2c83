package diskemu

import (
	"fmt"
	"path/filepath"
	"strings"
)

func relUnder(dir, path string) (string, error) {
	rel, err := filepath.Rel(dir, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("%s is not under %s", path, dir)
	}
	return rel, nil
}
