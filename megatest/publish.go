package megatest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// apiClient posts to the manager's publish API.
type apiClient struct {
	url   string
	token string
	hc    *http.Client
	// Every request carries an Idempotency-Key (a per-process nonce and a
	// counter): when a reload closes a keep-alive connection just as a
	// request goes out, net/http resends it by itself, and the server
	// answers a resend with the first ids instead of publishing twice.
	nonce string
	seq   atomic.Uint64
	// deferred counts publishes the server answered 503 with Retry-After
	// and that were sent again after it.
	deferred atomic.Uint64
}

var errAPI = errors.New("megatest: publish API")

func newAPIClient(addr, token string) (*apiClient, error) {
	u := addr
	if !strings.Contains(u, "://") {
		u = "http://" + u
	}
	u = strings.TrimSuffix(u, "/") + "/publish"
	return &apiClient{
		url: u, token: token, nonce: strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.Itoa(os.Getpid()),
		hc: &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 8, Proxy: nil},
		},
	}, nil
}

type pubAnswer struct {
	ID    uint64 `json:"id"`
	Error string `json:"error"`
}

// publish posts body (an object or a batch array) and returns the ids the
// API gave, in order.
func (a *apiClient) publish(body []byte, batch bool) ([]uint64, error) {
	key := a.nonce + "-" + strconv.FormatUint(a.seq.Add(1), 10)
	for tries := 1; ; tries++ {
		raw, retry, err := a.post(body, key)
		if retry > 0 && tries < maxPublishTries {
			// The server is behind and says when to come back (503 with
			// Retry-After); the same key makes the retry safe.
			a.deferred.Add(1)
			time.Sleep(min(retry, 5*time.Second))
			continue
		}
		if err != nil {
			return nil, err
		}
		return decodeIDs(raw, batch)
	}
}

// maxPublishTries bounds the retries of one publish the server deferred.
const maxPublishTries = 30

// post sends one publish request; retry is the server's Retry-After on a
// 503, when it gave one.
func (a *apiClient) post(body []byte, key string) (raw []byte, retry time.Duration, err error) {
	req, err := http.NewRequest("POST", a.url, bytes.NewReader(body))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", errAPI, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", errAPI, err)
	}
	defer resp.Body.Close()
	raw, err = io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: read answer: %v", errAPI, err)
	}
	if resp.StatusCode != 200 {
		var e pubAnswer
		json.Unmarshal(raw, &e)
		err = fmt.Errorf("%w: status %d %s", errAPI, resp.StatusCode, e.Error)
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode == 503 && perr == nil && s >= 0 {
			retry = max(time.Duration(s)*time.Second, 100*time.Millisecond)
		}
		return nil, retry, err
	}
	return raw, 0, nil
}

// decodeIDs reads the ids of a publish answer.
func decodeIDs(raw []byte, batch bool) ([]uint64, error) {
	if !batch {
		var one pubAnswer
		if err := json.Unmarshal(raw, &one); err != nil || one.ID == 0 {
			return nil, fmt.Errorf("%w: answer without an id", errAPI)
		}
		return []uint64{one.ID}, nil
	}
	var many []pubAnswer
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, fmt.Errorf("%w: answer is not an array of ids", errAPI)
	}
	ids := make([]uint64, len(many))
	for i, m := range many {
		ids[i] = m.ID
	}
	return ids, nil
}

// publisher sends -pub messages to this process's own connections. The
// loop picks the targets (connections the server knows) and hands them
// over in batches on ch; workers stamp the send time, post one batch per
// request and check the answered ids in at the ledger.
type publisher struct {
	api    *apiClient
	letter string
	first  int
	run    string
	rate   float64
	ledger *ledger
	ch     chan []uint32

	inflight  atomic.Int64 // batches queued or being posted
	published atomic.Int64
	errors    atomic.Int64
	skipped   atomic.Int64 // targets dropped because the API fell behind
	seq       atomic.Uint64
	wg        sync.WaitGroup
	logged    atomic.Int64
}

const (
	pubWorkers  = 4
	maxPubBatch = 500
)

func newPublisher(api *apiClient, letter string, first int, run string, rate float64, l *ledger) *publisher {
	return &publisher{api: api, letter: letter, first: first, run: run, rate: rate, ledger: l, ch: make(chan []uint32, 64)}
}

func (p *publisher) start() {
	for range pubWorkers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var body []byte
			for batch := range p.ch {
				for len(batch) > 0 {
					k := min(len(batch), maxPubBatch)
					body = p.post(body[:0], batch[:k])
					batch = batch[k:]
				}
				p.inflight.Add(-1)
			}
		}()
	}
}

// offer hands a batch of targets over without blocking the loop.
func (p *publisher) offer(targets []uint32) {
	p.inflight.Add(1)
	select {
	case p.ch <- targets:
	default:
		p.inflight.Add(-1)
		p.skipped.Add(int64(len(targets)))
	}
}

// stop is called by the loop, the only sender.
func (p *publisher) stop() { close(p.ch) }

func (p *publisher) idle() bool { return p.inflight.Load() == 0 }

func (p *publisher) post(body []byte, targets []uint32) []byte {
	batch := len(targets) > 1
	if batch {
		body = append(body, '[')
	}
	t := time.Now().UnixNano()
	for i, idx := range targets {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"to":"`...)
		body = append(body, p.letter...)
		body = strconv.AppendInt(body, int64(p.first)+int64(idx), 10)
		body = append(body, `","data":{"t":`...)
		body = strconv.AppendInt(body, t, 10)
		body = append(body, `,"k":`...)
		body = strconv.AppendUint(body, p.seq.Add(1), 10)
		body = append(body, `,"r":"`...)
		body = append(body, p.run...)
		body = append(body, `"}}`...)
	}
	if batch {
		body = append(body, ']')
	}
	ids, err := p.api.publish(body, batch)
	if err == nil && len(ids) != len(targets) {
		err = fmt.Errorf("%w: %d ids for %d messages", errAPI, len(ids), len(targets))
	}
	if err != nil {
		n := p.errors.Add(int64(len(targets)))
		if k := p.logged.Add(1); k&(k-1) == 0 { // the 1st, 2nd, 4th … failure
			logger().Warn("publish failed", "err", err, "failed", n)
		}
		return body
	}
	for i, idx := range targets {
		p.ledger.acked(idx, ids[i])
	}
	p.published.Add(int64(len(targets)))
	return body
}

// broadcastBody is one -broadcast round's request.
func broadcastBody(round int, run string, t int64) []byte {
	return fmt.Appendf(nil, `{"broadcast":true,"data":{"t":%d,"b":%d,"r":%q}}`, t, round, run)
}

// channelRoundBody is one round with -channels: a batch of one message to
// each channel, so every connection gets exactly one, as with a broadcast.
func channelRoundBody(o *Options, round int, t int64) []byte {
	b := []byte{'['}
	for k := 0; k < o.Channels; k++ {
		if k > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"channel":"%s","data":{"t":%d,"b":%d,"r":%q}}`, o.appendChannel(nil, k), t, round, o.Run)
	}
	return append(b, ']')
}
