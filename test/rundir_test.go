package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/megacomet/megacomet/internal/testutil"
	"github.com/megacomet/megacomet/manager"
)

// startInTmp starts megacomet with only TMPDIR=tmp saying where its
// runtime directory is ($TMPDIR/megacomet-<uid>: no XDG_RUNTIME_DIR, no
// STATE_DIRECTORY, no manager keys in the config). It returns the process,
// its stderr file and the API address it was given.
func startInTmp(t *testing.T, tmp string) (*exec.Cmd, string, string) {
	t.Helper()
	conf := testutil.ShortTempDir(t)
	api := freeAddr(t)
	cfg := filepath.Join(conf, "megacomet.toml")
	text := fmt.Sprintf("[server]\nlisten = \"127.0.0.1:0\"\ndrain = \"1s\"\n[api]\nlisten = %q\n", api)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != "TMPDIR" && k != "XDG_RUNTIME_DIR" && k != "STATE_DIRECTORY" {
			env = append(env, kv)
		}
	}
	cmd := exec.Command(testutil.Binary(t, "megacomet"), "-config", cfg)
	cmd.Env = append(env, "TMPDIR="+tmp)
	stderr := filepath.Join(conf, "stderr")
	f, err := os.Create(stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stderr, api
}

// A runtime directory another user made first ($TMPDIR/megacomet-<uid> is
// a name anyone can guess, in a directory anyone can write) is refused:
// the manager exits 1 with one line naming it and why, having restored
// and served nothing - not the history.json planted there, not the API,
// not the stats socket. Before, it restored that history and served it to
// clients, and kept its pid file and socket where that user could replace
// them. A directory the manager makes itself is 0700 and served from.
func TestRuntimeDirOfAnotherUserIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("making a directory another user owns needs root")
	}
	const nobody = 65534
	tmp := testutil.ShortTempDir(t)
	dir := filepath.Join(tmp, "megacomet-"+strconv.Itoa(os.Getuid()))
	planted := filepath.Join(dir, "history.json")
	history := `{"messages":[{"id":41,"kind":2,"body":{"id":41,"data":"planted by nobody"},"expires":9000000000000000000}],"last_id":41}`
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(planted, []byte(history), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, planted} {
		if err := os.Chown(p, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}

	cmd, stderr, api := startInTmp(t, tmp)
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	testutil.CheckFor(t, 20*time.Second, func() error {
		select {
		case <-exited:
			return nil
		default:
		}
		b, _ := os.ReadFile(stderr)
		if strings.Contains(string(b), "megacomet ready") {
			restored := strings.Contains(string(b), "history restored from the last stop")
			t.Fatalf("the manager serves from %s, which uid %d owns (its history.json restored: %v):\n%s", dir, nobody, restored, b)
		}
		return fmt.Errorf("still running")
	})
	b, _ := os.ReadFile(stderr)
	out := strings.TrimSpace(string(b))
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if strings.Contains(out, "\n") || !strings.HasPrefix(out, "megacomet: runtime dir: "+dir+" ") || !strings.Contains(out, "owned by uid 65534") {
		t.Errorf("stderr %q, want one line naming %s and its owner", out, dir)
	}
	if got, err := os.ReadFile(planted); err != nil || string(got) != history {
		t.Errorf("the planted history.json was read and removed (%v)", err)
	}
	for _, name := range []string{"megacomet.sock", "megacomet.pid", "last-id"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s made in the refused directory", name)
		}
	}
	if c, err := net.DialTimeout("tcp", api, time.Second); err == nil {
		c.Close()
		t.Errorf("something serves the API address %s", api)
	}

	t.Run("made by the manager", func(t *testing.T) {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		cmd, stderr, _ := startInTmp(t, tmp)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}()
		testutil.CheckFor(t, 20*time.Second, func() error {
			select {
			case <-done:
				b, _ := os.ReadFile(stderr)
				t.Fatalf("the manager exited:\n%s", b)
			default:
			}
			_, err := manager.FetchStats(filepath.Join(dir, "megacomet.sock"), time.Second)
			return err
		})
		fi, err := os.Lstat(dir)
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
			t.Errorf("the runtime dir it made: %v %v, want ours, 0700", fi.Mode(), err)
		}
	})
}
