package outstream

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Batched writes wait for Flush, a batch that grows large goes out by
// itself, and turning batching off sends what waits.
func TestBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := New(f, func() { t.Error("stopped") })
	content := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	w.Write([]byte("a\n"))
	w.Batch(true)
	w.Write([]byte("b\n"))
	w.Write([]byte("c\n"))
	if got := content(); got != "a\n" {
		t.Errorf("before Flush: %q", got)
	}
	if err := w.Flush(); err != nil || content() != "a\nb\nc\n" {
		t.Errorf("after Flush: %q, %v", content(), err)
	}
	big := strings.Repeat("x", maxBatch)
	w.Write([]byte(big))
	if got := content(); len(got) != 6+maxBatch {
		t.Errorf("a full batch waits: %d bytes out", len(got))
	}
	w.Write([]byte("d\n"))
	w.Batch(false)
	if got := content(); !strings.HasSuffix(got, "xd\n") || len(got) != 8+maxBatch {
		t.Errorf("Batch(false) left %d bytes out", len(got))
	}
	w.Write([]byte("e\n"))
	if got := content(); !strings.HasSuffix(got, "d\ne\n") {
		t.Errorf("unbatched write: %q", got[len(got)-4:])
	}
}
