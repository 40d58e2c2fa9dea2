package manager

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/megacomet/megacomet/config"
)

// What a browser's page can make of the API: the guard's answer for each
// Host, Origin, method and Content-Type a page (or a script) sends.
func TestAPIGuard(t *testing.T) {
	served := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	plain := guardAPI(&config.API{}, served)
	named := guardAPI(&config.API{AllowedOrigins: []string{"https://ops.example/"}, AllowedHosts: []string{"push-api.internal"}}, served)
	const json = "application/json"
	for _, tc := range []struct {
		name                       string
		h                          http.Handler
		method, host, origin, ctyp string
		want                       int
	}{
		{"curl", plain, "GET", "127.0.0.1:9000", "", "", 299},
		{"localhost, another port (a tunnel)", plain, "GET", "localhost:19000", "", "", 299},
		{"IPv6 loopback", plain, "GET", "[::1]:9000", "", "", 299},
		{"another IP address", plain, "GET", "10.0.0.5:9000", "", "", 299},
		{"no Host (HTTP/1.0)", plain, "GET", "", "", "", 299},
		{"DNS rebinding", plain, "GET", "evil.example:9000", "", "", 421},
		{"a name of localhost's", plain, "GET", "localhost.evil.example:9000", "", "", 421},
		{"a listed name", named, "GET", "PUSH-API.internal", "", "", 299},
		{"an unlisted name", named, "GET", "push.internal:9000", "", "", 421},
		{"publish", plain, "POST", "127.0.0.1:9000", "", json, 299},
		{"publish with a charset", plain, "POST", "127.0.0.1:9000", "", "application/json; charset=utf-8", 299},
		{"publish, type in capitals", plain, "POST", "127.0.0.1:9000", "", "Application/JSON", 299},
		{"text/plain (a form's fetch)", plain, "POST", "127.0.0.1:9000", "", "text/plain", 415},
		{"a form", plain, "POST", "127.0.0.1:9000", "", "application/x-www-form-urlencoded", 415},
		{"no type", plain, "POST", "127.0.0.1:9000", "", "", 415},
		{"a page elsewhere", plain, "POST", "127.0.0.1:9000", "http://evil.example", json, 403},
		{"a page elsewhere, GET", plain, "GET", "127.0.0.1:9000", "http://evil.example", "", 403},
		{"a sandboxed page", plain, "GET", "127.0.0.1:9000", "null", "", 403},
		{"another port of the same host", plain, "GET", "127.0.0.1:9000", "http://127.0.0.1:8080", "", 403},
		{"the status page", plain, "GET", "127.0.0.1:9000", "http://127.0.0.1:9000", "", 299},
		{"the status page behind TLS", named, "GET", "push-api.internal", "https://push-api.internal", "", 299},
		{"a listed origin", named, "POST", "127.0.0.1:9000", "https://ops.example", json, 299},
		{"a listed origin's preflight", named, "OPTIONS", "127.0.0.1:9000", "https://ops.example", "", 204},
		{"a listed origin's form", named, "POST", "127.0.0.1:9000", "https://ops.example", "text/plain", 415},
	} {
		r := httptest.NewRequest(tc.method, "/publish", strings.NewReader("{}"))
		r.Host = tc.host
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		if tc.ctyp != "" {
			r.Header.Set("Content-Type", tc.ctyp)
		}
		w := httptest.NewRecorder()
		tc.h.ServeHTTP(w, r)
		body := w.Body.String()
		if w.Code != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.name, w.Code, body, tc.want)
		}
		if w.Code >= 400 && (!strings.HasPrefix(body, `{"error":"`) || strings.Count(body, "\n") != 1 || tc.host != "" && strings.Contains(body, tc.host) || tc.origin != "" && strings.Contains(body, tc.origin)) {
			t.Errorf("%s: the refusal %q should be one line echoing nothing", tc.name, body)
		}
		if acao := w.Header().Get("Access-Control-Allow-Origin"); (acao != "") != (tc.origin == "https://ops.example") {
			t.Errorf("%s: Access-Control-Allow-Origin %q", tc.name, acao)
		}
	}
}

// api.token's scheme is case-insensitive (RFC 7235 §2.1).
func TestAPITokenScheme(t *testing.T) {
	m := &Manager{opts: config.Default()}
	m.opts.API.Token = "s3cret"
	h := m.requireToken(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) }))
	for auth, want := range map[string]int{
		"Bearer s3cret": 299,
		"bearer s3cret": 299,
		"BEARER s3cret": 299,
		"Bearer nope":   401,
		"Basic s3cret":  401,
		"":              401,
	} {
		r := httptest.NewRequest("GET", "/stats", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Authorization %q: %d, want %d", auth, w.Code, want)
		}
	}
}
