package record

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ParseSize reads 1048576, 512K, 100M or 2G (powers of 1024).
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	arg := s
	s = strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I") // 100MB, 100MiB
	if s == "" {
		return 0, fmt.Errorf("invalid --max-size %q: want a size such as 100M or 2G", arg)
	}
	mult := int64(1)
	switch s[len(s)-1:] {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid --max-size %q: want a size such as 100M or 2G", arg)
	}
	return n * mult, nil
}

// ReadsInto reports whether writing path would change what reading in
// reads: the same file, or a file in that directory.
func ReadsInto(in, path string) bool {
	inSt, err := os.Stat(in)
	if err != nil {
		return false
	}
	if st, err := os.Stat(path); err == nil && os.SameFile(inSt, st) {
		return true
	}
	if !inSt.IsDir() {
		return false
	}
	dir, err := os.Stat(filepath.Dir(path))
	return err == nil && os.SameFile(inSt, dir)
}
