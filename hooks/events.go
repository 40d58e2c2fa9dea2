package hooks

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/megacomet/megacomet/config"
)

// Events tell the application what happened (hooks.events): the manager
// adds them as they happen, and one goroutine posts them in batches, in
// order, each batch signed. A batch is numbered when it is formed and then
// sent as is until the application answers 2xx: delivery is at least once,
// and a repeated batch repeats its sequence numbers, so the application
// drops what it has seen. While the application is down the batch is
// retried with backoff (EventsBackoffMax at most) and new events queue, up
// to hooks.events_queue; past it the oldest queued are dropped and the next
// batch opens with a "dropped" event that says how many.
//
// The formats are in docs/PROTOCOL.md ("Events").

// EventsWindow is how long the first event of a batch waits for others.
const EventsWindow = 100 * time.Millisecond

// EventsBackoffMax bounds the wait between two tries of a batch.
const EventsBackoffMax = 5 * time.Second

// SignatureHeader carries a batch's signature: "sha256=" and the hex
// HMAC-SHA256 of the body under hooks.secret.
const SignatureHeader = "X-Megacomet-Signature"

// Event is one thing that happened. Seq is given when its batch is formed.
type Event struct {
	Seq     uint64 `json:"seq"`
	Type    string `json:"type"`
	Time    int64  `json:"time"` // unix milliseconds, when it happened
	ID      string `json:"id,omitempty"`
	Channel string `json:"channel,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Count is a "dropped" event's number of events lost.
	Count uint64 `json:"count,omitempty"`
	// A "publish" event's message id and data.
	Message uint64          `json:"message,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	// A "snapshot" event's state.
	*Held
}

// Held is what a snapshot says is held: every id connected, every channel
// occupied, and the members of each presence_events channel.
type Held struct {
	IDs      []string            `json:"ids"`
	Channels []string            `json:"channels"`
	Members  map[string][]string `json:"members"`
}

// batch is the body a request carries.
type batch struct {
	Events []Event `json:"events"`
}

// EventStats are a Sender's counts.
type EventStats struct {
	Queued  uint64 // events waiting now
	Sent    uint64 // events the application acknowledged
	Batches uint64 // batches it acknowledged
	Failed  uint64 // tries that failed (a batch retried counts each time)
	Dropped uint64 // events dropped for a full queue
	// Delay counts acknowledged events by how long after they happened,
	// in the buckets LatencyBounds names (the last one: longer).
	Delay [len(LatencyBounds) + 1]uint64
}

// SenderState is what a reload hands the next manager: the numbering, the
// batch not yet acknowledged and the queue.
type SenderState struct {
	Seq      uint64          `json:"seq"`
	InFlight json.RawMessage `json:"in_flight,omitempty"`
	Queue    []Event         `json:"queue,omitempty"`
	Dropped  uint64          `json:"dropped,omitempty"`
}

// Sender posts events to the application.
type Sender struct {
	url, secret string
	max, size   int
	client      *http.Client
	timeout     time.Duration
	log         *slog.Logger

	mu       sync.Mutex
	queue    []Event // queue[head:] waits
	head     int
	seq      uint64 // the last number given
	dropped  uint64 // dropped since the last "dropped" event
	inFlight []byte // the batch being sent, numbered
	times    []int64
	stats    EventStats
	stopped  bool
	wake     chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
	now      func() time.Time
}

// NewSender makes the Sender of cfg.Events; Run starts it.
func NewSender(cfg config.Hooks, log *slog.Logger) *Sender {
	return &Sender{
		url: cfg.Events, secret: cfg.Secret, max: cfg.EventsQueue, size: cfg.EventsBatch,
		timeout: max(cfg.Timeout.D(), 5*time.Second),
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:               nil,
				DialContext:         (&net.Dialer{Timeout: cfg.Timeout.D(), KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 1,
				IdleConnTimeout:     90 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log:  log,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
		now:  time.Now,
	}
}

// Restore takes over a predecessor's state; call it before Run.
func (s *Sender) Restore(st SenderState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq = max(s.seq, st.Seq)
	s.inFlight = st.InFlight
	s.queue = append(st.Queue, s.queue[s.head:]...)
	s.head = 0
	s.dropped += st.Dropped
}

// Add queues events (their Seq is given later).
func (s *Sender) Add(evs ...Event) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, evs...)
	if over := len(s.queue) - s.head - s.max; over > 0 {
		clear(s.queue[s.head : s.head+over])
		s.head += over
		s.dropped += uint64(over)
		s.stats.Dropped += uint64(over)
	}
	if s.head > len(s.queue)/2 && s.head > 1024 {
		s.queue = append(s.queue[:0], s.queue[s.head:]...)
		s.head = 0
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// AddFirst puts ev before every event queued (a fresh start's snapshot).
func (s *Sender) AddFirst(ev Event) {
	s.mu.Lock()
	s.queue = append([]Event{ev}, s.queue[s.head:]...)
	s.head = 0
	s.mu.Unlock()
}

// Idle reports whether everything added was delivered.
func (s *Sender) Idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight == nil && s.head == len(s.queue) && s.dropped == 0
}

// Stats returns the counts.
func (s *Sender) Stats() EventStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Queued = uint64(len(s.queue) - s.head)
	return st
}

// Stop ends Run (a request on its way is abandoned: its batch is sent
// again) and returns what the next manager continues from.
func (s *Sender) Stop() SenderState {
	s.mu.Lock()
	s.stopped = true
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return SenderState{Seq: s.seq, InFlight: s.inFlight, Queue: s.queue[s.head:], Dropped: s.dropped}
}

// Run sends until Stop.
func (s *Sender) Run() {
	defer close(s.done)
	fails := 0
	for {
		body, wait := s.next()
		if body == nil {
			if wait < 0 {
				return // stopped
			}
			s.sleep(wait, true)
			continue
		}
		err := s.post(body)
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			return
		}
		if err != nil {
			s.stats.Failed++
			s.mu.Unlock()
			fails++
			d := min(EventsBackoffMax, 100*time.Millisecond<<min(fails-1, 10))
			s.log.Warn("events not delivered: retrying", "url", s.url, "err", err, "in", d)
			s.sleep(d, false)
			continue
		}
		fails = 0
		now := s.now().UnixMilli()
		for _, t := range s.times {
			d := time.Duration(now-t) * time.Millisecond
			i := 0
			for i < len(LatencyBounds) && d > LatencyBounds[i] {
				i++
			}
			s.stats.Delay[i]++
		}
		s.stats.Sent += uint64(len(s.times))
		s.stats.Batches++
		s.inFlight, s.times = nil, s.times[:0]
		s.mu.Unlock()
	}
}

// next returns the batch to send (numbering a new one from the queue), or
// how long to wait for one (-1: stopped).
func (s *Sender) next() ([]byte, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, -1
	}
	if s.inFlight != nil {
		return s.inFlight, 0
	}
	n := len(s.queue) - s.head
	if n == 0 && s.dropped == 0 {
		return nil, time.Hour
	}
	if n > 0 && n < s.size {
		if age := s.now().Sub(time.UnixMilli(s.queue[s.head].Time)); age < EventsWindow {
			return nil, EventsWindow - age
		}
	}
	var b batch
	if s.dropped > 0 {
		s.seq++
		b.Events = append(b.Events, Event{Seq: s.seq, Type: "dropped", Time: s.now().UnixMilli(), Count: s.dropped})
		s.dropped = 0
	}
	take := min(n, s.size)
	for _, e := range s.queue[s.head : s.head+take] {
		s.seq++
		e.Seq = s.seq
		b.Events = append(b.Events, e)
		s.times = append(s.times, e.Time)
	}
	clear(s.queue[s.head : s.head+take])
	s.head += take
	body, err := json.Marshal(&b)
	if err != nil { // a publish's data that is not JSON: sent without it
		for i := range b.Events {
			if b.Events[i].Data != nil && !json.Valid(b.Events[i].Data) {
				b.Events[i].Data = nil
			}
		}
		body, _ = json.Marshal(&b)
	}
	s.inFlight = body
	return body, 0
}

// sleep waits d, or less when an event comes and wakeable.
func (s *Sender) sleep(d time.Duration, wakeable bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return
		case <-s.wake:
			s.mu.Lock()
			stopped := s.stopped
			s.mu.Unlock()
			if wakeable || stopped {
				return
			}
		}
	}
}

// post sends one batch; any answer but 2xx is a failure.
func (s *Sender) post(body []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "megacomet-events")
	req.Header.Set(SignatureHeader, Sign(s.secret, body))
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}

// Sign is a body's SignatureHeader value under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}
