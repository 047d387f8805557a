package main

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// archive is an initramfs being assembled: paths to file contents,
// symlinks and directories, written as a gzipped cpio "newc" archive (what
// the kernel unpacks into its rootfs).
type archive struct {
	files map[string]entry
}

type entry struct {
	mode uint32 // with the file type bits
	data []byte // file contents, or the link target
}

const (
	typeDir  = 0o040000
	typeFile = 0o100000
	typeLink = 0o120000
)

func newArchive() *archive { return &archive{files: map[string]entry{}} }

// dirs adds p's parent directories.
func (a *archive) dirs(p string) {
	for d := parent(p); d != ""; d = parent(d) {
		if _, ok := a.files[d]; !ok {
			a.files[d] = entry{mode: typeDir | 0o755}
		}
	}
}

func parent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return ""
	}
	return p[:i]
}

func (a *archive) dir(p string) {
	a.dirs(p + "/x")
}

func (a *archive) file(p string, data []byte, perm uint32) {
	a.dirs(p)
	a.files[p] = entry{mode: typeFile | perm, data: data}
}

func (a *archive) link(p, target string) {
	a.dirs(p)
	a.files[p] = entry{mode: typeLink | 0o777, data: []byte(target)}
}

// copy adds the host file src as p, keeping its permissions.
func (a *archive) copy(p, src string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	a.file(p, b, uint32(st.Mode().Perm()))
	return nil
}

// write writes the archive, parents before children.
func (a *archive) write(w io.Writer) error {
	zw := gzip.NewWriter(w)
	names := make([]string, 0, len(a.files))
	for n := range a.files {
		names = append(names, n)
	}
	sort.Strings(names)
	ino := 1
	for _, n := range names {
		e := a.files[n]
		if err := writeRecord(zw, strings.TrimPrefix(n, "/"), e.mode, e.data, ino); err != nil {
			return err
		}
		ino++
	}
	if err := writeRecord(zw, "TRAILER!!!", 0, nil, 0); err != nil {
		return err
	}
	return zw.Close()
}

func writeRecord(w io.Writer, name string, mode uint32, data []byte, ino int) error {
	nlink := 1
	if mode&typeDir == typeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	if _, err := io.WriteString(w, hdr+name+"\x00"); err != nil {
		return err
	}
	if err := pad(w, len(hdr)+len(name)+1); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	return pad(w, len(data))
}

// pad aligns to 4 bytes, as newc wants after the name and after the data.
func pad(w io.Writer, n int) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
