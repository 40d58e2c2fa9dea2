package manager

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
)

// plantedHistory is a history.json with one broadcast, as a stop leaves it.
const plantedHistory = `{"messages":[{"id":41,"kind":2,"body":{"id":41,"data":"planted"},"expires":9000000000000000000}],"last_id":41}`

func stateManager(t *testing.T, dir string) *Manager {
	t.Helper()
	opts := config.Default()
	opts.Manager.StateDir = dir
	m := &Manager{opts: opts, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	m.hub = newHub(opts.Comet.HistorySize, time.Minute, m.tell)
	return m
}

// A history.json or last-id that is a symlink is refused, not followed:
// whoever could write the directory could point it at a file they wrote,
// or at one the manager must not read.
func TestStateFilesRefuseSymlinks(t *testing.T) {
	dir := t.TempDir()
	elsewhere := filepath.Join(t.TempDir(), "theirs")
	if err := os.WriteFile(elsewhere, []byte(plantedHistory), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{historyFile, idMarkFile} {
		if err := os.Symlink(elsewhere, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	m := stateManager(t, dir)
	err := m.loadHistory()
	if err == nil || !strings.Contains(err.Error(), "symlink") || !strings.Contains(err.Error(), filepath.Join(dir, historyFile)) {
		t.Errorf("history.json a symlink: %v, want it refused, naming the file", err)
	}
	if got := m.hub.lastID; got != 0 {
		t.Errorf("the symlinked history was restored (last id %d)", got)
	}
	k, _ := newIDMark(dir)
	if v, err := k.load(); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("last-id a symlink: mark %d, %v, want it refused", v, err)
	}
}

// A history.json another user owns is refused (as root, which can make
// one); a FIFO is refused without hanging the start.
func TestStateFilesRefuseOthersAndOddFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, historyFile)
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := stateManager(t, dir).loadHistory(); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("history.json a FIFO: %v", err)
	}
	os.Remove(path)
	if os.Geteuid() != 0 {
		t.Skip("making a file another user owns needs root")
	}
	if err := os.WriteFile(path, []byte(plantedHistory), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	m := stateManager(t, dir)
	if err := m.loadHistory(); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("history.json of uid 65534: %v", err)
	}
	if m.hub.lastID != 0 {
		t.Error("another user's history was restored")
	}
	// Our own is taken, and removed.
	os.Chown(path, os.Geteuid(), os.Getegid())
	if err := m.loadHistory(); err != nil || m.hub.lastID != 41 {
		t.Errorf("our own history.json: %v, last id %d", err, m.hub.lastID)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("history.json left after the restore: %v", err)
	}
}

// privateDir makes the directory 0700, keeps one of ours, and refuses a
// symlink, a file, one others can write and (as root) one another user
// owns, each in one line naming it.
func TestPrivateDir(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "fresh")
	if err := privateDir(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(fresh); err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("made %v, %v; want a directory only its owner can use", fi.Mode(), err)
	}
	if err := privateDir(fresh); err != nil {
		t.Errorf("our own directory again: %v", err)
	}
	link := filepath.Join(base, "link")
	os.Symlink(fresh, link)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	cases := map[string]string{link: "symlink", file: "not a directory", open: "writable by group or others"}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(base, "theirs")
		os.Mkdir(theirs, 0o700)
		os.Chown(theirs, 65534, 65534)
		cases[theirs] = "owned by uid 65534"
	}
	for dir, why := range cases {
		err := privateDir(dir)
		if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), why) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line with %q", dir, err, why)
		}
	}
}
