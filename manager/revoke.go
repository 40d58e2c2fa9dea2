package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/megacomet/megacomet/ipc"
)

// POST /revoke {"id":"alice","before":UNIX,"until":UNIX} refuses alice's
// tokens issued (iat) before `before` (default now) and ends her live
// connections as an expired token does: each client comes back with a new
// token, which passes when it is newer. {"jti":"…","until":UNIX} refuses
// one token. A revocation lasts until `until` (an id's: default `before` +
// 7 days; a jti's: required, its token's exp) and then ends by itself.
// GET /revoke lists those in force. They are kept in manager.state_dir
// (revocations.json, written at each change), handed over on a reload,
// and told to every worker, now and when it starts.

const (
	revocationsFile    = "revocations.json"
	maxRevocations     = 100000
	defaultRevokeFor   = 7 * 24 * time.Hour
	maxRevokeFor       = 366 * 24 * time.Hour
	maxJTILen          = 256
	revokeFields       = `"id" (with "before", "until") or "jti" (with "until")`
	revocationKeyID    = "id:"
	revocationKeyToken = "jti:"
)

func revocationKey(r *ipc.Revoke) string {
	if r.JTI != "" {
		return revocationKeyToken + r.JTI
	}
	return revocationKeyID + r.ID
}

func (m *Manager) handleRevoke(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID     string `json:"id"`
		JTI    string `json:"jti"`
		Before *int64 `json:"before"`
		Until  *int64 `json:"until"`
	}
	if !readAdmin(w, r, &req, revokeFields) {
		return
	}
	now := time.Now()
	v := ipc.Revoke{ID: req.ID, JTI: req.JTI}
	switch {
	case (req.ID == "") == (req.JTI == ""):
		writeError(w, http.StatusBadRequest, `give one of "id" and "jti"`)
		return
	case req.ID != "" && !ipc.ValidName([]byte(req.ID)):
		writeError(w, http.StatusBadRequest, "id: use 1 to 64 of A-Z a-z 0-9 _ -")
		return
	case req.JTI != "" && !printable(req.JTI, maxJTILen):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("jti: 1 to %d printable ASCII characters", maxJTILen))
		return
	case req.JTI != "" && req.Before != nil:
		writeError(w, http.StatusBadRequest, `"before" goes with "id"; a jti is one token`)
		return
	case req.JTI != "" && req.Until == nil:
		writeError(w, http.StatusBadRequest, `a jti's revocation needs "until": its token's exp`)
		return
	}
	if req.ID != "" {
		v.Before = now.Unix()
		if req.Before != nil {
			v.Before = *req.Before
		}
		v.Until = time.Unix(v.Before, 0).Add(defaultRevokeFor).Unix()
		if v.Before < 0 || v.Before > now.Add(time.Minute).Unix() {
			writeError(w, http.StatusBadRequest, "before: a unix time, not in the future")
			return
		}
	}
	if req.Until != nil {
		v.Until = *req.Until
	}
	if v.Until <= now.Unix() || v.Until > now.Add(maxRevokeFor).Unix() {
		writeError(w, http.StatusBadRequest, "until: a unix time after now, within a year")
		return
	}
	out, err := m.actEverywhere(&action{Revoke: &v}) // control.go
	if err != nil {
		writeError(w, http.StatusInsufficientStorage, err.Error())
		return
	}
	m.revokes.Add(1)
	m.log.Info("revoke", "by", map[bool]string{true: "id", false: "jti"}[v.ID != ""], "until", v.Until, "connections", out["connections"])
	out["revoked"] = v
	writeJSON(w, http.StatusOK, out)
}

// keepRevocation keeps v (a later one never shortens an earlier: v is
// what is kept) and writes all in force to manager.state_dir.
func (m *Manager) keepRevocation(v *ipc.Revoke) error {
	list, err := m.hub.revoke(v)
	if err != nil {
		return err
	}
	if err := m.storeRevocations(list); err != nil {
		m.log.Error("revocations not written to manager.state_dir: they hold until a restart", "err", err)
	}
	return nil
}

func (m *Manager) handleRevocations(w http.ResponseWriter, r *http.Request) {
	list := m.hub.revocationsInForce()
	if list == nil {
		list = []ipc.Revoke{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"revocations": list})
}

// revoke keeps v; it returns every revocation in force, to store.
func (h *hub) revoke(v *ipc.Revoke) ([]ipc.Revoke, error) {
	h.mu.Lock()
	if h.revs == nil {
		h.revs = make(map[string]ipc.Revoke)
	}
	key := revocationKey(v)
	if _, ok := h.revs[key]; !ok && len(h.revs) >= maxRevocations {
		h.mu.Unlock()
		h.revocationsInForce() // drops the ended ones
		h.mu.Lock()
		if len(h.revs) >= maxRevocations {
			h.mu.Unlock()
			return nil, fmt.Errorf("%d revocations in force, the most kept: wait for some to end", maxRevocations)
		}
	}
	if old, ok := h.revs[key]; ok { // a later one never shortens an earlier
		v.Before, v.Until = max(v.Before, old.Before), max(v.Until, old.Until)
	}
	h.revs[key] = *v
	h.mu.Unlock()
	return h.revocationsInForce(), nil
}

// revocationsInForce lists the revocations not yet ended, in key order,
// forgetting the others.
func (h *hub) revocationsInForce() []ipc.Revoke {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now().Unix()
	var out []ipc.Revoke
	for k, v := range h.revs {
		if v.Until <= now {
			delete(h.revs, k)
			continue
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b ipc.Revoke) int {
		return strings.Compare(revocationKey(&a), revocationKey(&b))
	})
	return out
}

// storeRevocations writes list to manager.state_dir.
func (m *Manager) storeRevocations(list []ipc.Revoke) error {
	b, err := json.Marshal(list)
	if err != nil {
		return err
	}
	m.revMu.Lock()
	defer m.revMu.Unlock()
	return writeFileSync(filepath.Join(m.opts.Manager.StateDir, revocationsFile), b)
}

// loadRevocations reads what manager.state_dir keeps.
func (m *Manager) loadRevocations() error {
	b, err := readOwnFile(filepath.Join(m.opts.Manager.StateDir, revocationsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("manager.state_dir: %w", err)
	}
	var list []ipc.Revoke
	if err := json.Unmarshal(b, &list); err != nil {
		m.log.Error("the revocations file is unreadable: starting without it", "file", revocationsFile, "err", err)
		return nil
	}
	for i := range list {
		m.hub.revoke(&list[i])
	}
	return nil
}

// tellAll sends one frame to every worker that speaks our IPC.
func (m *Manager) tellAll(t ipc.Type, payload []byte) {
	m.mu.Lock()
	procs := m.allProcs()
	m.mu.Unlock()
	for _, p := range procs {
		if !p.foreign {
			m.tell(p, func(dst []byte) []byte { return ipc.AppendFrame(dst, t, payload) })
		}
	}
}

// tellState gives a worker that just started the bans and revocations in
// force.
func (m *Manager) tellState(p *proc) {
	for _, d := range m.hub.bansInForce() {
		frame := ipc.AppendDisconnect(nil, &d)
		m.tell(p, func(dst []byte) []byte { return ipc.AppendFrame(dst, ipc.TypeDisconnect, frame) })
	}
	for _, v := range m.hub.revocationsInForce() {
		frame := ipc.AppendRevoke(nil, &v)
		m.tell(p, func(dst []byte) []byte { return ipc.AppendFrame(dst, ipc.TypeRevoke, frame) })
	}
}
