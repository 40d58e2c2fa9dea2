package manager

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/megacomet/megacomet/config"
)

// Without XDG_RUNTIME_DIR the runtime directory is $TMPDIR/megacomet-<uid>:
// a name anyone can guess, in a directory anyone can write. Another user
// who makes it first owns what the manager then keeps there - the history
// it restores and serves to clients, the pid file systemd signals, the
// stats socket. So the manager makes the directory itself, 0700, or uses
// one that exists only if this user owns it, it is a directory (not a
// symlink to one) and no one else can write it. Files in it and in
// manager.state_dir are read with O_NOFOLLOW and only if this user owns
// them; they are written as a new file (O_EXCL) renamed into place
// (writeFileSync, and tableflip's pid file), which replaces a planted
// symlink instead of writing through it.

// privateDir makes dir (mode 0700) or accepts it as it is when this user
// owns it, it is a real directory and only its owner can write it. Every
// error is one line naming dir and why.
func privateDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return cleanPathErr(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return cleanPathErr(err)
	}
	// Lstat, not Stat: a symlink could point anywhere its maker likes.
	fi, err := os.Lstat(dir)
	if err != nil {
		return cleanPathErr(err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("%s is a symlink, not a directory: remove it, or set XDG_RUNTIME_DIR or TMPDIR to a directory of your own", dir)
	case !fi.IsDir():
		return fmt.Errorf("%s is not a directory: remove it, or set XDG_RUNTIME_DIR or TMPDIR to a directory of your own", dir)
	}
	if uid := fileOwner(fi); uid != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by this user (uid %d): another user may have planted files in it; set XDG_RUNTIME_DIR or TMPDIR to a directory of your own, or have it removed", dir, uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %04o): chmod 700 it, or remove it", dir, fi.Mode().Perm())
	}
	return nil
}

// checkRuntimeDir applies privateDir to the runtime directory when any
// file of opts lives in it; a runtime directory nothing uses is left alone.
func checkRuntimeDir(opts *config.Options) error {
	dir := config.RuntimeDir()
	m := &opts.Manager
	for _, p := range []string{filepath.Dir(m.Socket), filepath.Dir(m.PidFile), m.StateDir} {
		if filepath.Clean(p) == dir {
			if err := privateDir(dir); err != nil {
				return fmt.Errorf("runtime dir: %w", err)
			}
			return nil
		}
	}
	return nil
}

// readOwnFile reads path, refusing a symlink (O_NOFOLLOW), anything but a
// regular file (O_NONBLOCK: a planted FIFO cannot hang the open) and a
// file another user owns. A missing file is fs.ErrNotExist, unwrapped
// enough for errors.Is.
func readOwnFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symlink: not following it; remove it", path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file: remove it", path)
	}
	if uid := fileOwner(fi); uid != os.Geteuid() {
		return nil, fmt.Errorf("%s is owned by uid %d, not by this user (uid %d): not reading it; remove it", path, uid, os.Geteuid())
	}
	return io.ReadAll(f)
}

func fileOwner(fi fs.FileInfo) int {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid)
	}
	return -1
}
