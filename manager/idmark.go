package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Message ids only grow, across restarts too: manager.state_dir holds a
// high-water mark, the highest id this manager (or one before it) may have
// issued. The hub reserves ids ahead in blocks - the file is written
// (atomically, fsynced) before the first id of a block is used - and a
// manager starts above the mark whatever its clock says. A crash, a
// `systemctl restart` or a failed hand-over then cannot issue an id at or
// below one a client holds as its cursor.

// idBlock is how far ahead ids are reserved: ten seconds of time-based
// ids, so the file is written about every ten seconds while publishing.
const idBlock = uint64(10 * time.Second / time.Microsecond)

// idMarkFile is the mark's file in manager.state_dir.
const idMarkFile = "last-id"

// idMark reads and writes the high-water mark.
type idMark struct {
	path string
}

func newIDMark(dir string) (*idMark, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("manager.state_dir %s: %w", dir, err)
	}
	return &idMark{path: filepath.Join(dir, idMarkFile)}, nil
}

// load returns the mark, 0 when none was written yet.
func (k *idMark) load() (uint64, error) {
	b, err := readOwnFile(k.path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("manager.state_dir: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("manager.state_dir: %s does not hold an id (%q): remove it to start from the clock", k.path, truncate(string(b)))
	}
	return v, nil
}

// store writes v durably: a new file, fsynced, renamed over the old one,
// and the directory fsynced, so a crash leaves the old mark or the new.
func (k *idMark) store(v uint64) error {
	return writeFileSync(k.path, []byte(strconv.FormatUint(v, 10)+"\n"))
}

// clockSkew is the test hook MEGACOMET_CLOCK_SKEW (a duration such as
// "-1h"): added to the manager's clock, to step it back or forward.
func clockSkew() (time.Duration, error) {
	s := os.Getenv("MEGACOMET_CLOCK_SKEW")
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("MEGACOMET_CLOCK_SKEW=%q: %v", s, err)
	}
	return d, nil
}

// historyFile, in manager.state_dir, carries the history across a clean
// stop (systemctl restart): the stopping manager writes it once its
// workers are gone, the next one reads it at start and removes it, so a
// crash later cannot bring back a stale copy.
const historyFile = "history.json"

// saveHistory writes the hub's state for the next start.
func (m *Manager) saveHistory() {
	st, _ := m.hub.snapshot(nil)
	st.Members, st.Events = nil, nil // every connection is gone with the workers
	b, err := encodeState(&st)
	if err == nil {
		err = writeFileSync(filepath.Join(m.opts.Manager.StateDir, historyFile), b)
	}
	if err != nil {
		m.log.Error("cannot keep the history for the next start: clients that come back will be told of a gap", "state_dir", m.opts.Manager.StateDir, "err", err)
		return
	}
	m.log.Info("history kept for the next start", "messages", len(st.Messages), "last_id", st.LastID)
}

// encodeState is st as JSON, written by hand for the messages: their
// bodies are our own rendered JSON and are copied as they are, where
// encoding/json validates and compacts each (a stop with 80 MiB of
// history took over 15 s under -race). loadHistory reads it with
// encoding/json.
func encodeState(st *hubState) ([]byte, error) {
	rest := *st
	rest.Messages = nil
	tail, err := json.Marshal(&rest)
	if err != nil || len(st.Messages) == 0 {
		return tail, err
	}
	size := len(tail) + 16
	for i := range st.Messages {
		size += len(st.Messages[i].Body) + 96
	}
	b := append(make([]byte, 0, size), `{"messages":[`...)
	for i := range st.Messages {
		m := &st.Messages[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(append(b, `{"id":`...), m.ID, 10)
		b = strconv.AppendUint(append(b, `,"kind":`...), uint64(m.Kind), 10)
		if m.Channel != "" {
			b = append(append(append(b, `,"channel":"`...), m.Channel...), '"') // names need no escaping
		}
		if len(m.To) > 0 {
			b = append(b, `,"to":[`...)
			for j, id := range m.To {
				if j > 0 {
					b = append(b, ',')
				}
				b = append(append(append(b, '"'), id...), '"')
			}
			b = append(b, ']')
		}
		b = append(append(b, `,"body":`...), m.Body...)
		b = append(strconv.AppendInt(append(b, `,"expires":`...), m.Expires, 10), '}')
	}
	b = append(b, ']')
	if len(tail) > 2 { // more than {}
		b = append(append(b, ','), tail[1:]...)
	} else {
		b = append(b, '}')
	}
	return b, nil
}

// loadHistory takes the history a clean stop left, if any.
func (m *Manager) loadHistory() error {
	path := filepath.Join(m.opts.Manager.StateDir, historyFile)
	b, err := readOwnFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("manager.state_dir: %w", err)
	}
	os.Remove(path)
	var st hubState
	if err := json.Unmarshal(b, &st); err != nil {
		m.log.Error("the history the last stop left is unreadable: starting without it", "path", path, "err", err)
		return nil
	}
	m.hub.restore(&st)
	m.log.Info("history restored from the last stop", "messages", len(st.Messages), "last_id", st.LastID)
	return nil
}

// writeFileSync writes path durably: a temporary file, fsynced, renamed
// over it, and the directory fsynced.
func writeFileSync(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
