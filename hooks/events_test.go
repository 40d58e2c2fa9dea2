package hooks

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/megacomet/megacomet/config"
)

// eventSink is an application that takes batches, or refuses them while
// down.
type eventSink struct {
	mu      sync.Mutex
	down    bool
	batches [][]Event
	sigs    []string
	bodies  [][]byte
}

func (k *eventSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.down {
		w.WriteHeader(500)
		return
	}
	var b batch
	json.Unmarshal(body, &b)
	k.batches = append(k.batches, b.Events)
	k.sigs = append(k.sigs, r.Header.Get(SignatureHeader))
	k.bodies = append(k.bodies, body)
}

func (k *eventSink) seqs() (out []uint64, types []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, b := range k.batches {
		for _, e := range b {
			out = append(out, e.Seq)
			types = append(types, e.Type)
		}
	}
	return
}

func newTestSender(t *testing.T, url string, queue, batchSize int) *Sender {
	cfg := config.Default().Hooks
	cfg.Events, cfg.Secret, cfg.EventsQueue, cfg.EventsBatch = url, "0123456789abcdef", queue, batchSize
	return NewSender(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func waitSeqs(t *testing.T, k *eventSink, n int) ([]uint64, []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		seqs, types := k.seqs()
		if len(seqs) >= n || time.Now().After(deadline) {
			return seqs, types
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Batches are numbered 1, 2, … in the order added, at most events_batch
// events each, signed over the exact body.
func TestSenderBatchesInOrderSigned(t *testing.T) {
	k := &eventSink{}
	srv := httptest.NewServer(k)
	defer srv.Close()
	s := newTestSender(t, srv.URL, 1000, 10)
	go s.Run()
	defer s.Stop()
	for i := range 25 {
		s.Add(Event{Type: "connect", ID: string(rune('a' + i)), Time: time.Now().UnixMilli()})
	}
	seqs, _ := waitSeqs(t, k, 25)
	for i, q := range seqs {
		if q != uint64(i+1) {
			t.Fatalf("seqs %v", seqs)
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for i, b := range k.batches {
		if len(b) > 10 {
			t.Errorf("batch %d has %d events, over events_batch 10", i, len(b))
		}
		if k.sigs[i] != Sign("0123456789abcdef", k.bodies[i]) || len(k.sigs[i]) != len("sha256=")+64 {
			t.Errorf("batch %d signed %q", i, k.sigs[i])
		}
	}
}

// While the application is down the queue holds events_queue; past it
// the oldest go and the next batch opens with how many.
func TestSenderDropsOldestAndSaysSo(t *testing.T) {
	k := &eventSink{down: true}
	srv := httptest.NewServer(k)
	defer srv.Close()
	s := newTestSender(t, srv.URL, 100, 1000)
	go s.Run()
	defer s.Stop()
	now := time.Now().UnixMilli()
	s.Add(Event{Type: "connect", ID: "first", Time: now})
	for s.Stats().Failed == 0 { // the first batch is on its way, and refused
		time.Sleep(5 * time.Millisecond)
	}
	for range 150 {
		s.Add(Event{Type: "connect", ID: "x", Time: now})
	}
	if st := s.Stats(); st.Dropped != 50 || st.Queued != 100 {
		t.Errorf("stats %+v: want 50 dropped, 100 queued", st)
	}
	k.mu.Lock()
	k.down = false
	k.mu.Unlock()
	seqs, types := waitSeqs(t, k, 102)
	if len(seqs) != 102 || types[0] != "connect" || types[1] != "dropped" || seqs[1] != 2 || seqs[101] != 102 {
		t.Errorf("got %d events, types %v…, seqs %v…", len(seqs), types[:min(3, len(types))], seqs[:min(3, len(seqs))])
	}
	k.mu.Lock()
	if d := k.batches[1][0]; d.Count != 50 {
		t.Errorf("dropped event %+v, want count 50", d)
	}
	k.mu.Unlock()
}

// Stop hands over the batch not acknowledged, the queue and the
// numbering; the next Sender sends that batch again as it was, then
// numbers on.
func TestSenderHandsOver(t *testing.T) {
	k := &eventSink{down: true}
	srv := httptest.NewServer(k)
	defer srv.Close()
	s := newTestSender(t, srv.URL, 1000, 2)
	go s.Run()
	for _, id := range []string{"a", "b", "c"} {
		s.Add(Event{Type: "connect", ID: id, Time: time.Now().UnixMilli()})
	}
	for s.Stats().Failed == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	st := s.Stop()
	if st.Seq != 2 || st.InFlight == nil || len(st.Queue) != 1 {
		t.Fatalf("handed over %+v", st)
	}
	k.mu.Lock()
	k.down = false
	k.mu.Unlock()
	next := newTestSender(t, srv.URL, 1000, 2)
	next.Restore(st)
	next.Add(Event{Type: "connect", ID: "d", Time: time.Now().UnixMilli()})
	go next.Run()
	defer next.Stop()
	seqs, _ := waitSeqs(t, k, 4)
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(seqs) != 4 || seqs[0] != 1 || seqs[3] != 4 || string(k.bodies[0]) != string(st.InFlight) {
		t.Errorf("after the hand-over: seqs %v, first body %s", seqs, k.bodies[0])
	}
}
