package manager

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/megacomet/megacomet/ipc"
)

const (
	// maxPublishBody bounds one POST /publish request.
	maxPublishBody = 16 << 20
	// maxMessageData bounds one message's data (ipc.MaxData).
	maxMessageData = ipc.MaxData
	// maxTargets bounds the ids of one message.
	maxTargets = 10000
)

// publishReq is one message as the API accepts it.
type publishReq struct {
	To        json.RawMessage `json:"to"`
	Channel   *string         `json:"channel"`
	Broadcast *bool           `json:"broadcast"`
	Data      json.RawMessage `json:"data"`
}

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// parsePublish decodes and validates a publish body: one message or a
// batch. Nothing is published unless every message is valid.
func parsePublish(body []byte, maxBatch int) (items []pubItem, batch bool, err error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, false, badRequest("empty body: send a JSON message or an array of them")
	}
	var raws []json.RawMessage
	if body[0] == '[' {
		batch = true
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, true, badRequest("body is not JSON: %v", jsonErr(err))
		}
		if len(raws) == 0 {
			return nil, true, badRequest("empty batch")
		}
		if len(raws) > maxBatch {
			return nil, true, &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("batch of %d messages; api.max_batch is %d", len(raws), maxBatch)}
		}
	} else {
		var raw json.RawMessage
		if err := json.Unmarshal(body, &raw); err != nil {
			return nil, false, badRequest("body is not JSON: %v", jsonErr(err))
		}
		raws = []json.RawMessage{raw}
	}
	items = make([]pubItem, len(raws))
	for i, raw := range raws {
		it, err := parseItem(raw)
		if err != nil {
			if batch {
				return nil, true, badRequest("item %d: %s", i, err.Error())
			}
			return nil, false, badRequest("%s", err.Error())
		}
		items[i] = it
	}
	return items, batch, nil
}

func parseItem(raw json.RawMessage) (pubItem, error) {
	var it pubItem
	var r publishReq
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return it, fmt.Errorf("body is not a message object: %v", jsonErr(err))
	}
	targets := 0
	if r.To != nil {
		targets++
		var one string
		if err := json.Unmarshal(r.To, &one); err == nil {
			it.to = []string{one}
		} else if err := json.Unmarshal(r.To, &it.to); err != nil {
			return it, errors.New("to must be an id or an array of ids")
		}
		if len(it.to) == 0 || len(it.to) > maxTargets {
			return it, fmt.Errorf("to must name 1 to %d ids", maxTargets)
		}
		for _, id := range it.to {
			if !ipc.ValidName(id) {
				return it, fmt.Errorf("bad id %q: use 1 to 64 of A-Z a-z 0-9 _ -", truncate(id))
			}
		}
	}
	if r.Channel != nil {
		targets++
		if !ipc.ValidName(*r.Channel) {
			return it, fmt.Errorf("bad channel %q: use 1 to 64 of A-Z a-z 0-9 _ -", truncate(*r.Channel))
		}
		it.channel = *r.Channel
	}
	if r.Broadcast != nil {
		targets++
		if !*r.Broadcast {
			return it, errors.New("broadcast must be true when given")
		}
		it.broadcast = true
	}
	if targets != 1 {
		return it, errors.New("give exactly one of to, channel or broadcast")
	}
	if r.Data == nil {
		return it, errors.New("data is required")
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, r.Data); err != nil {
		return it, fmt.Errorf("data is not JSON: %v", err)
	}
	if !utf8.Valid(buf.Bytes()) {
		// JSON is UTF-8 (RFC 8259 §8.1); a WebSocket client would close
		// on the text frame carrying it (RFC 6455 §8.1), again on every
		// replay.
		return it, errors.New("data is not valid UTF-8")
	}
	if buf.Len() > maxMessageData {
		return it, fmt.Errorf("data is %d bytes; the limit is %d", buf.Len(), maxMessageData)
	}
	it.data = buf.Bytes()
	return it, nil
}

func truncate(s string) string {
	if len(s) > 70 {
		return s[:70] + "…"
	}
	return s
}

// jsonErr keeps encoding/json's message but drops its Go type names.
func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%s (at byte %d)", se.Error(), se.Offset)
	}
	var ue *json.UnmarshalTypeError
	if errors.As(err, &ue) {
		if ue.Field != "" {
			return fmt.Sprintf("field %q has the wrong type (%s)", ue.Field, ue.Value)
		}
		return fmt.Sprintf("wrong type (%s)", ue.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func (m *Manager) handlePublish(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPublishBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxPublishBody))
			return
		}
		writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return
	}
	key := r.Header.Get("Idempotency-Key")
	if len(key) > maxIdemKeyLen {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Idempotency-Key over %d bytes", maxIdemKeyLen))
		return
	}
	items, batch, err := parsePublish(body, m.opts.API.MaxBatch)
	if err != nil {
		ae := err.(*apiError)
		writeError(w, ae.status, ae.msg)
		return
	}
	if p, queued := m.behind(); p != nil {
		// Taking more would only grow what that worker has not read; the
		// publisher waits instead, and nothing is lost.
		m.publishRefused.Add(1)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("worker %d is behind: %d MiB of messages not yet taken; retry", p.slot.idx, queued>>20))
		return
	}
	var ids []uint64
	var replayed bool
	if m.cluster != nil {
		ids, replayed, err = m.publishCluster(items, key, bodySum(body))
	} else {
		ids, replayed, err = m.hub.publish(items, key, bodySum(body))
	}
	if isUnavailable(err) {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err == errHandingOver {
		w.Header().Set("Retry-After", "0")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	type answer struct {
		ID uint64 `json:"id"`
	}
	if !batch {
		writeJSON(w, http.StatusOK, answer{ids[0]})
		return
	}
	out := make([]answer, len(ids))
	for i, id := range ids {
		out[i].ID = id
	}
	writeJSON(w, http.StatusOK, out)
}

// requireToken guards the API with api.token when one is set: the
// Authorization: Bearer header (the scheme in any case, RFC 7235 §2.1), or
// access_token in the query (RFC 6750 §2.3, for the status page in a
// browser).
func (m *Manager) requireToken(next http.Handler) http.Handler {
	token := m.opts.API.Token
	if token == "" {
		return next
	}
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.URL.Query().Get("access_token")
		if h := r.Header.Get("Authorization"); h != "" {
			got = h
			if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
				got = h[7:]
			}
		}
		if subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="megacomet"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}
