package manager

import (
	_ "embed"
	"encoding/json"
	"net/http"

	"github.com/megacomet/megacomet/ipc"
)

// statusPage is the live status page, fed by GET /status/events
// (statusfeed.go).
//
//go:embed status.html
var statusPage []byte

func stopFrame(dst []byte) []byte { return ipc.AppendFrame(dst, ipc.TypeStop, nil) }

// apiHandler serves the publish and admin API on api.listen, every endpoint
// behind the browser guard (apiguard.go) and api.token.
func (m *Manager) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /publish", m.handlePublish)
	mux.HandleFunc("/publish", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", "POST")
		writeError(w, http.StatusMethodNotAllowed, "use POST /publish")
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.Snapshot())
	})
	mux.Handle("GET /metrics", m.metricsHandler())
	mux.HandleFunc("GET /presence", m.handlePresence)
	mux.HandleFunc("GET /presence/{id}", m.handlePresence)
	mux.HandleFunc("GET /history", m.handleHistory)
	mux.HandleFunc("POST /disconnect", m.handleDisconnect)
	mux.HandleFunc("GET /channels", m.handleChannels)
	mux.HandleFunc("POST /subscribe", m.handleChannel(true))
	mux.HandleFunc("POST /unsubscribe", m.handleChannel(false))
	mux.HandleFunc("POST /revoke", m.handleRevoke)
	mux.HandleFunc("GET /revoke", m.handleRevocations)
	mux.HandleFunc("GET /status/events", m.handleStatusEvents)
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(statusPage)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	})
	return guardAPI(&m.opts.API, m.requireToken(mux))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
