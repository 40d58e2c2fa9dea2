package worker

import (
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/megacomet/megacomet/ipc"
)

// bridge carries the manager's IPC frames into the event loop. evio cannot
// serve an inherited descriptor, so the loop also serves a private abstract
// Unix socket; the bridge connects to it, proves itself with the worker's
// random nonce, and copies whole frames from the manager's socket into it.
// The loop therefore learns of new frames the way it learns of any input,
// and no goroutine but the loop touches its state. The manager's EOF
// becomes the control connection's close: the loop's cue that the manager is
// gone.
type bridge struct {
	src     *os.File // the manager's IPC socket (read side)
	pending []byte   // bytes read before the bridge started
	log     *slog.Logger

	mu  sync.Mutex // serialises writes to ctl: whole frames only
	ctl net.Conn
}

func (b *bridge) run(addr string, nonce []byte) {
	ctl, err := net.Dial("unix", addr)
	if err != nil {
		b.log.Error("cannot reach own event loop; exiting", "err", err)
		os.Exit(1)
	}
	b.mu.Lock()
	b.ctl = ctl
	_, err = ctl.Write(nonce)
	b.mu.Unlock()
	if err == nil {
		err = b.copyFrames(ctl)
	}
	if err != nil && err != io.EOF {
		b.log.Warn("IPC from manager ended", "err", err)
	}
	b.mu.Lock()
	ctl.Close()
	b.ctl = nil
	b.mu.Unlock()
}

// copyFrames forwards complete frames only, so frames inject writes never
// land in the middle of one.
func (b *bridge) copyFrames(ctl net.Conn) error {
	buf := append(make([]byte, 0, 64<<10), b.pending...)
	b.pending = nil
	for {
		whole := 0
		for {
			_, _, n, err := ipc.Parse(buf[whole:])
			if err == ipc.ErrNeedMore {
				break
			}
			if err != nil {
				return err
			}
			whole += n
		}
		if whole > 0 {
			b.mu.Lock()
			_, err := ctl.Write(buf[:whole])
			b.mu.Unlock()
			if err != nil {
				return err
			}
			buf = buf[:copy(buf, buf[whole:])]
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := b.src.Read(buf[len(buf):cap(buf)])
		if err != nil {
			return err
		}
		buf = buf[:len(buf)+n]
		if cap(buf) > 1<<20 && len(buf) < 64<<10 {
			buf = append(make([]byte, 0, 64<<10), buf...) // drop a huge batch's buffer
		}
	}
}

// inject hands the loop a frame made in this process (signals).
func (b *bridge) inject(frame []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ctl != nil {
		b.ctl.Write(frame)
	}
}
