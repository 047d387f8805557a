package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// modules resolves kernel modules and their dependencies in load order,
// from each module's own .modinfo "depends=" (what depmod reads), so the
// host needs no kmod tools.
type modules struct {
	dir     string            // lib/modules/<release>
	path    map[string]string // module name → file
	builtin map[string]bool
}

func modName(file string) string {
	base := filepath.Base(file)
	base = strings.TrimSuffix(strings.TrimSuffix(base, ".xz"), ".zst")
	return strings.ReplaceAll(strings.TrimSuffix(base, ".ko"), "-", "_")
}

func openModules(dir string) (*modules, error) {
	m := &modules{dir: dir, path: map[string]string{}, builtin: map[string]bool{}}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			m.path[modName(p)] = p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			m.builtin[modName(l)] = true
		}
	}
	return m, nil
}

// read returns a module's ELF image, decompressed.
func (m *modules) read(name string) ([]byte, error) {
	p := m.path[name]
	switch {
	case strings.HasSuffix(p, ".xz"):
		return exec.Command("xz", "-dc", p).Output()
	case strings.HasSuffix(p, ".zst"):
		return exec.Command("zstd", "-dc", p).Output()
	}
	return os.ReadFile(p)
}

func depends(image []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return nil, err
	}
	s := f.Section(".modinfo")
	if s == nil {
		return nil, fmt.Errorf("no .modinfo")
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				deps = append(deps, modName(d))
			}
			return deps, nil
		}
	}
	return nil, nil
}

// resolve returns the modules to insmod for wanted, dependencies first,
// each once, with their decompressed images. Built-in modules need nothing.
func (m *modules) resolve(wanted []string) (order []string, images map[string][]byte, err error) {
	images = map[string][]byte{}
	var visit func(name string, depth int) error
	visit = func(name string, depth int) error {
		if _, done := images[name]; done || m.builtin[name] {
			return nil
		}
		if _, ok := m.path[name]; !ok {
			return fmt.Errorf("module %s: not in %s and not built in", name, m.dir)
		}
		if depth > 32 {
			return fmt.Errorf("module %s: dependency loop", name)
		}
		img, err := m.read(name)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		deps, err := depends(img)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		images[name] = nil // mark: in progress
		for _, d := range deps {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		images[name] = img
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		if err := visit(modName(w), 0); err != nil {
			return nil, nil, err
		}
	}
	return order, images, nil
}
