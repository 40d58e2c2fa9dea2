package manager

import (
	"mime"
	"net"
	"net/http"
	"strings"

	"github.com/megacomet/megacomet/config"
)

// guardAPI keeps browsers' pages off the API, which by default listens on
// loopback with no token: any page a browser on the machine opens can
// send it requests.
//
//   - Cross-site request forgery: a page may POST a form or a text/plain
//     fetch anywhere without asking first. So a POST must be
//     application/json, which a page of another origin may send only after
//     a CORS preflight; and a request with an Origin (browsers send one on
//     every cross-origin request and every POST) must come from the API's
//     own page (the status page) or from api.allowed_origins.
//   - DNS rebinding: a page of evil.example points its name at 127.0.0.1
//     and reads the API as its own origin, sending no Origin at all; but
//     its Host is evil.example. So Host must be localhost, an IP address
//     (a name is what rebinding needs) or a name in api.allowed_hosts. The
//     port does not matter: an ssh tunnel or a port mapping changes it.
//
// The answers are one line and echo nothing of the request.
func guardAPI(o *config.API, next http.Handler) http.Handler {
	origins := make(map[string]bool, len(o.AllowedOrigins))
	for _, s := range o.AllowedOrigins {
		origins[strings.ToLower(strings.TrimSuffix(s, "/"))] = true
	}
	hosts := make(map[string]bool, len(o.AllowedHosts))
	for _, s := range o.AllowedHosts {
		hosts[strings.ToLower(s)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hostAccepted(r.Host, hosts) {
			writeError(w, http.StatusMisdirectedRequest, "host not accepted: use the API's address, localhost, or a name in api.allowed_hosts")
			return
		}
		if origin := strings.ToLower(r.Header.Get("Origin")); origin != "" {
			host := strings.ToLower(r.Host)
			switch {
			case origin == "http://"+host || origin == "https://"+host:
				// The API's own page: no CORS needed.
			case !origins[origin]:
				writeError(w, http.StatusForbidden, "origin not accepted: name it in api.allowed_origins")
				return
			case r.Method == http.MethodOptions:
				preflight(w, r.Header.Get("Origin"))
				return
			default:
				w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
				w.Header().Add("Vary", "Origin")
			}
		}
		if r.Method == http.MethodPost {
			if t, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || t != "application/json" {
				writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// hostAccepted: no Host (HTTP/1.0), localhost, an IP address, or a name
// the config lists.
func hostAccepted(hostport string, names map[string]bool) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	return hostport == "" || host == "localhost" || names[host] || net.ParseIP(strings.Trim(host, "[]")) != nil
}

// preflight answers a listed origin's CORS preflight (the Fetch
// standard): what its pages may send.
func preflight(w http.ResponseWriter, origin string) {
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Allow-Methods", "GET, POST")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key")
	h.Set("Access-Control-Max-Age", "600")
	h.Add("Vary", "Origin")
	w.WriteHeader(http.StatusNoContent)
}
