package manager

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// POST /disconnect {"id":"alice","reason":"banned","reconnect":false,"ban":3600}
// ends every connection of the id on every worker, each with its
// transport's announced close (worker/kick.go), and answers how many this
// node held. With "reconnect":false and "ban":S the id is refused (403,
// the reason) for S seconds: the hub keeps the bans in force, hands them
// over on a reload, and tells each worker that starts later. Idempotent: a
// second call ends nothing more and sets the same ban.

const (
	maxAdminBody     = 4 << 10
	maxReasonLen     = 100
	maxBanSeconds    = 30 * 24 * 3600
	defaultKickWhy   = "disconnected by the server"
	disconnectFields = `"id", "reason", "reconnect" and "ban"`
)

type disconnectRequest struct {
	ID        string  `json:"id"`
	Reason    *string `json:"reason"`
	Reconnect *bool   `json:"reconnect"`
	Ban       int64   `json:"ban"`
}

// readAdmin decodes a small JSON body into v, strictly; it answers the
// error itself and returns false.
func readAdmin(w http.ResponseWriter, r *http.Request, v any, fields string) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxAdminBody))
		} else {
			writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		}
		return false
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil || d.More() {
		writeError(w, http.StatusBadRequest, "body must be one JSON object with "+fields)
		return false
	}
	return true
}

// printable reports whether s is 1 to max bytes of printable ASCII.
func printable(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func (m *Manager) handleDisconnect(w http.ResponseWriter, r *http.Request) {
	var req disconnectRequest
	if !readAdmin(w, r, &req, disconnectFields) {
		return
	}
	d := ipc.Disconnect{ID: req.ID, Reason: defaultKickWhy, Reconnect: true}
	if req.Reason != nil {
		d.Reason = *req.Reason
	}
	if req.Reconnect != nil {
		d.Reconnect = *req.Reconnect
	}
	switch {
	case !ipc.ValidName([]byte(req.ID)):
		writeError(w, http.StatusBadRequest, "id: use 1 to 64 of A-Z a-z 0-9 _ -")
		return
	case !printable(d.Reason, maxReasonLen):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("reason: 1 to %d printable ASCII characters", maxReasonLen))
		return
	case req.Ban < 0 || req.Ban > maxBanSeconds:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("ban: 0 to %d seconds", maxBanSeconds))
		return
	case req.Ban > 0 && d.Reconnect:
		writeError(w, http.StatusBadRequest, `ban needs "reconnect":false`)
		return
	}
	if req.Ban > 0 {
		d.BanUntil = uint64(time.Now().Unix() + req.Ban)
	}
	out, err := m.actEverywhere(&action{Disconnect: &d}) // control.go
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	m.disconnects.Add(1)
	m.log.Info("disconnect", "connections", out["connections"], "reconnect", d.Reconnect, "ban_s", req.Ban)
	out["disconnected"] = out["connections"]
	delete(out, "connections")
	writeJSON(w, http.StatusOK, out)
}

// disconnect counts id's connections here and keeps d's ban.
func (h *hub) disconnect(d *ipc.Disconnect) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d.BanUntil > 0 {
		if h.bans == nil {
			h.bans = make(map[string]ipc.Disconnect)
		}
		h.bans[d.ID] = *d
	}
	return h.ids.count(h.ids.hashString(d.ID))
}

// bansInForce lists the bans not yet over, forgetting the others.
func (h *hub) bansInForce() []ipc.Disconnect {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := uint64(h.now().Unix())
	var out []ipc.Disconnect
	for id, d := range h.bans {
		if d.BanUntil <= now {
			delete(h.bans, id)
			continue
		}
		out = append(out, d)
	}
	return out
}

// POST /subscribe and /unsubscribe {"id":"alice","channel":"news"}: every
// live connection of the id, on every worker, joins or leaves the channel
// and is told its channels (worker/kick.go). The answer counts the id's
// connections here; a repeat changes nothing.
type channelRequest struct {
	ID      string `json:"id"`
	Channel string `json:"channel"`
}

func (m *Manager) handleChannel(subscribe bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req channelRequest
		if !readAdmin(w, r, &req, `"id" and "channel"`) {
			return
		}
		switch {
		case !ipc.ValidName([]byte(req.ID)):
			writeError(w, http.StatusBadRequest, "id: use 1 to 64 of A-Z a-z 0-9 _ -")
			return
		case !ipc.ValidName([]byte(req.Channel)):
			writeError(w, http.StatusBadRequest, "channel: use 1 to 64 of A-Z a-z 0-9 _ -")
			return
		}
		out, err := m.actEverywhere(&action{Channel: &channelAction{ID: req.ID, Channel: req.Channel, Subscribe: subscribe}})
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		m.channelChanges.Add(1)
		m.log.Info("channel change", "subscribe", subscribe, "connections", out["connections"])
		writeJSON(w, http.StatusOK, out)
	}
}

// connectionsOf counts id's connections here.
func (h *hub) connectionsOf(id string) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ids.count(h.ids.hashString(id))
}
