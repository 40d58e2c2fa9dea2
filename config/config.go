package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"
	"github.com/megacomet/megacomet/internal/names"
)

// ErrInvalid marks every configuration error, so callers can tell a bad
// config from an I/O failure.
var ErrInvalid = errors.New("config")

// Options is the whole configuration. The TOML keys are the public contract
// (../shared/CONTRACT.md); etc/megacomet.toml documents each with its default.
type Options struct {
	Server  Server  `toml:"server" json:"server"`
	API     API     `toml:"api" json:"api"`
	Manager Manager `toml:"manager" json:"manager"`
	Comet   Comet   `toml:"comet" json:"comet"`
	Auth    Auth    `toml:"auth" json:"auth"`
	Cluster Cluster `toml:"cluster" json:"cluster"`
	Hooks   Hooks   `toml:"hooks" json:"hooks"`
}

// Auth configures client tokens (JWT, see auth/): one of a shared secret
// (HS256) or a public key file (RS256 or ES256, for an issuer that keeps
// the private key). Required defaults to true once either is set.
type Auth struct {
	Secret    string `toml:"secret" json:"secret"`
	PublicKey string `toml:"public_key" json:"public_key"` // a PEM file
	Required  bool   `toml:"required" json:"required"`
	Cookie    string `toml:"cookie" json:"cookie"` // a cookie that may carry the token
	// Audience and Issuer, when set, are the aud (a token's string, or one
	// of its array) and iss a token must carry.
	Audience string `toml:"audience" json:"audience"`
	Issuer   string `toml:"issuer" json:"issuer"`
	// DefaultChannels is what a token without a channels claim may join
	// (the claim's patterns); "any" is a claim of ["*"].
	DefaultChannels []string `toml:"default_channels" json:"default_channels"`

	// PublicKeyPEM is the public_key file's contents, read by Load, so a
	// worker gets the key with its config instead of reading the file.
	PublicKeyPEM string `toml:"-" json:"public_key_pem"`
}

// On reports whether client tokens are checked.
func (a *Auth) On() bool { return a.Secret != "" || a.PublicKeyPEM != "" }

// MinSecret is the shortest auth.secret accepted: HS256's key should be as
// long as its hash, 256 bits.
const MinSecret = 32

// Server configures the client port and the worker processes behind it.
type Server struct {
	Listen         string   `toml:"listen" json:"listen"`
	Workers        int      `toml:"workers" json:"workers"`
	PinCPUs        bool     `toml:"pin_cpus" json:"pin_cpus"`
	Drain          Duration `toml:"drain" json:"drain"`
	MaxConns       int      `toml:"max_conns" json:"max_conns"`
	AllowedOrigins []string `toml:"allowed_origins" json:"allowed_origins"`
	// Transports are the client transports served: any of lp (also
	// /ID.js), stream, sse and ws; a request for another is 404.
	Transports    []string `toml:"transports" json:"transports"`
	HeaderTimeout Duration `toml:"header_timeout" json:"header_timeout"`
	// MaxHeaderBytes bounds a request head (431 past it); MaxConnsPerIP a
	// source address's connections to one worker (0: no limit; 429 past
	// it); TCPKeepalive is the idle time before keepalive probes on client
	// sockets (0: off).
	MaxHeaderBytes int `toml:"max_header_bytes" json:"max_header_bytes"`
	MaxConnsPerIP  int `toml:"max_conns_per_ip" json:"max_conns_per_ip"`
	// ProxyProtocol: every client connection starts with a PROXY protocol
	// header (v1 or v2, as HAProxy's send-proxy sends it), whose source
	// address is the client's; without it, one that does is refused.
	ProxyProtocol bool `toml:"proxy_protocol" json:"proxy_protocol"`
	// TrustedProxies are the peers (addresses or CIDRs) whose
	// X-Forwarded-For / Forwarded header names the client, for
	// max_conns_per_ip; anyone else's is ignored.
	TrustedProxies []string `toml:"trusted_proxies" json:"trusted_proxies"`
	TCPKeepalive   Duration `toml:"tcp_keepalive" json:"tcp_keepalive"`
}

// ParsePrefixes reads server.trusted_proxies: addresses (one host) or CIDRs.
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, err2 := netip.ParseAddr(s)
			if err2 != nil || a.Zone() != "" {
				return nil, fmt.Errorf("%q is not an address or a CIDR like 10.0.0.0/8", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// AllTransports are the client transports, as server.transports names them.
var AllTransports = []string{"lp", "stream", "sse", "ws"}

// Bounds of server.max_header_bytes.
const (
	MinHeaderBytes = 1 << 10
	MaxHeaderBytes = 1 << 20
)

// API configures the manager's publish and admin HTTP endpoint.
type API struct {
	Listen string `toml:"listen" json:"listen"`
	Token  string `toml:"token" json:"token"`
	// MaxBatch bounds the messages of one publish request (413 past it);
	// MaxConns the API's open connections (more wait to be accepted).
	MaxBatch int `toml:"max_batch" json:"max_batch"`
	MaxConns int `toml:"max_conns" json:"max_conns"`
	// AllowedOrigins are the browser origins whose pages may call the API
	// besides its own; AllowedHosts the names (Host, without the port) it
	// answers to besides localhost and IP addresses: DNS rebinding sends
	// a name of the attacker's.
	AllowedOrigins []string `toml:"allowed_origins" json:"allowed_origins"`
	AllowedHosts   []string `toml:"allowed_hosts" json:"allowed_hosts"`
}

// Manager configures the manager process itself.
type Manager struct {
	Socket   string `toml:"socket" json:"socket"`
	PidFile  string `toml:"pid_file" json:"pid_file"`
	LogLevel string `toml:"log_level" json:"log_level"`
	// StateDir holds what must outlive the manager: the message id
	// high-water mark. Default: $STATE_DIRECTORY (systemd's StateDirectory=),
	// else the runtime directory.
	StateDir string `toml:"state_dir" json:"state_dir"`
	// WorkerStallTimeout is how long a worker may take none of the IPC
	// waiting for it before the manager kills it as stuck; its clients
	// come back with their cursors and lose nothing.
	WorkerStallTimeout Duration `toml:"worker_stall_timeout" json:"worker_stall_timeout"`
}

// Comet configures message delivery.
type Comet struct {
	Heartbeat   Duration `toml:"heartbeat" json:"heartbeat"`
	PollTimeout Duration `toml:"poll_timeout" json:"poll_timeout"`
	HistoryTTL  Duration `toml:"history_ttl" json:"history_ttl"`
	HistorySize int      `toml:"history_size" json:"history_size"`
	// MaxReplay bounds the messages one subscription replays (its id, its
	// channels and the broadcasts together): past it, the newest, and a
	// gap announced. 0: history_size.
	MaxReplay int `toml:"max_replay" json:"max_replay"`
	// HistoryMaxBytes bounds the bodies history keeps in total: past it the
	// oldest messages go first, whatever their TTL.
	HistoryMaxBytes int `toml:"history_max_bytes" json:"history_max_bytes"`
	MaxPending      int `toml:"max_pending" json:"max_pending"`
	// WSMaxMessage bounds a WebSocket frame or message from a client.
	WSMaxMessage int `toml:"ws_max_message" json:"ws_max_message"`
	// WSFragmentTimeout bounds how long a client may take to finish a
	// fragmented WebSocket message it began; past it the connection is
	// closed (1008).
	WSFragmentTimeout Duration `toml:"ws_fragment_timeout" json:"ws_fragment_timeout"`
	// WSPingRate is how many pings a second a WebSocket client may send
	// after a burst of 32; past it the connection is closed (1008).
	WSPingRate int `toml:"ws_ping_rate" json:"ws_ping_rate"`
	// ClientPublish lets WebSocket clients publish to channels
	// ({"publish":"c","data":…}) when auth is off; with auth on, a token's
	// publish claim decides. ClientPublishRate is each connection's
	// publishes a second, after a burst of twice that.
	ClientPublish     bool `toml:"client_publish" json:"client_publish"`
	ClientPublishRate int  `toml:"client_publish_rate" json:"client_publish_rate"`
	// PresenceEvents names the channels (exact, or prefixes ending in
	// '*') whose subscribers are told who joins and leaves, and whose
	// members GET /presence can list.
	PresenceEvents []string `toml:"presence_events" json:"presence_events"`
}

// Announced reports whether channel's members are announced
// (comet.presence_events).
func (c *Comet) Announced(channel string) bool {
	return names.Match(c.PresenceEvents, channel)
}

// Bounds of comet.ws_max_message: at least a control frame's payload (RFC
// 6455 §5.5), at most what one connection may make the worker buffer.
const (
	MinWSMaxMessage = 125
	MaxWSMaxMessage = 16 << 20
)

// Duration is a time.Duration written as "30s" in TOML and JSON.
type Duration time.Duration

// UnmarshalText parses a Go duration string such as "15s" or "1m30s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// MarshalText writes the duration in Go's notation.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// D returns the standard library duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns every option at its built-in value: the developer defaults
// `make run` uses. Nothing else in the code base may invent a default.
func Default() Options {
	dir := RuntimeDir()
	host, _ := os.Hostname()
	if !names.Valid(host) {
		host = "megacomet"
	}
	return Options{
		Cluster: defaultCluster(host),
		Hooks:   defaultHooks(),
		Auth:    Auth{DefaultChannels: []string{}},
		Server: Server{
			Listen:         "0.0.0.0:8000",
			Workers:        0,
			PinCPUs:        true,
			Drain:          Duration(30 * time.Second),
			MaxConns:       0,
			AllowedOrigins: []string{"*"},
			Transports:     slices.Clone(AllTransports),
			TrustedProxies: []string{},
			HeaderTimeout:  Duration(10 * time.Second),
			MaxHeaderBytes: 8 << 10,
			TCPKeepalive:   Duration(60 * time.Second),
		},
		API: API{
			Listen:         "127.0.0.1:9000",
			MaxBatch:       10000,
			MaxConns:       1024,
			AllowedOrigins: []string{},
			AllowedHosts:   []string{},
		},
		Manager: Manager{
			Socket:   filepath.Join(dir, "megacomet.sock"),
			PidFile:  filepath.Join(dir, "megacomet.pid"),
			StateDir: stateDir(dir),
			LogLevel: "info",
			// Longer than any GC pause or busy second; short enough that
			// clients of a stuck worker are not left waiting for long.
			WorkerStallTimeout: Duration(30 * time.Second),
		},
		Comet: Comet{
			Heartbeat:       Duration(15 * time.Second),
			PollTimeout:     Duration(30 * time.Second),
			HistoryTTL:      Duration(60 * time.Second),
			HistorySize:     100,
			HistoryMaxBytes: 256 << 20,
			MaxPending:      1 << 20,
			// Clients only send short commands; 64 KiB is what most
			// WebSocket servers accept by default.
			WSMaxMessage: 64 << 10,
			// A message begun and never finished holds its bytes: a
			// client's message is short, and 10 s is long for one.
			WSFragmentTimeout: Duration(10 * time.Second),
			WSPingRate:        10,
			// A chat's pace; a burst of twice that.
			ClientPublishRate: 10,
			PresenceEvents:    []string{},
		},
	}
}

// stateDir is manager.state_dir's default.
func stateDir(runtime string) string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0]
	}
	return runtime
}

// RuntimeDir is where the default stats socket and pid file live:
// $XDG_RUNTIME_DIR/megacomet when set, else a per-user directory in the
// temp dir, so two users on one box never share a socket.
func RuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "megacomet")
	}
	return filepath.Join(os.TempDir(), "megacomet-"+strconv.Itoa(os.Getuid()))
}

// Load returns Default overlaid with the TOML file at path ("" = defaults
// only), validated. Every error is one line that names the file and the key.
func Load(path string) (Options, error) {
	o := Default()
	if path == "" {
		return o, o.Validate()
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return o, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := o.decode(b); err != nil {
		return o, fmt.Errorf("%w %s: %v", ErrInvalid, path, err)
	}
	if err := o.check(); err != nil {
		return o, fmt.Errorf("%w %s: %v", ErrInvalid, path, err)
	}
	return o, nil
}

func (o *Options) decode(b []byte) error {
	// Lists replace the default rather than merging into it.
	o.Server.AllowedOrigins = nil
	o.Server.Transports = nil
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(o)
	if err != nil {
		return errors.New(strings.TrimPrefix(err.Error(), "toml: "))
	}
	if u := md.Undecoded(); len(u) > 0 {
		return fmt.Errorf("unknown key %s", u[0])
	}
	if !md.IsDefined("server", "allowed_origins") {
		o.Server.AllowedOrigins = Default().Server.AllowedOrigins
	}
	if !md.IsDefined("server", "transports") {
		o.Server.Transports = Default().Server.Transports
	}
	if o.Auth.PublicKey != "" {
		b, err := os.ReadFile(o.Auth.PublicKey)
		if err != nil {
			return fmt.Errorf("auth.public_key: %v", err)
		}
		o.Auth.PublicKeyPEM = string(b)
	}
	if !md.IsDefined("auth", "required") {
		o.Auth.Required = o.Auth.Secret != "" || o.Auth.PublicKey != ""
	}
	return nil
}

// Validate checks every value and names the first bad key.
func (o *Options) Validate() error {
	if err := o.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func (o *Options) check() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...))
	}
	if err := checkHostPort(o.Server.Listen); err != nil {
		return bad("server.listen", "%v", err)
	}
	if o.Server.Workers < 0 || o.Server.Workers > 4096 {
		return bad("server.workers", "must be 0 (one per CPU) to 4096, got %d", o.Server.Workers)
	}
	if o.Server.Drain <= 0 {
		return bad("server.drain", "must be positive, got %s", o.Server.Drain.D())
	}
	if o.Server.MaxConns < 0 {
		return bad("server.max_conns", "must be >= 0, got %d", o.Server.MaxConns)
	}
	if o.Server.MaxHeaderBytes < MinHeaderBytes || o.Server.MaxHeaderBytes > MaxHeaderBytes {
		return bad("server.max_header_bytes", "must be %d to %d, got %d", MinHeaderBytes, MaxHeaderBytes, o.Server.MaxHeaderBytes)
	}
	if o.Server.MaxConnsPerIP < 0 {
		return bad("server.max_conns_per_ip", "must be >= 0 (0: no limit), got %d", o.Server.MaxConnsPerIP)
	}
	if k := o.Server.TCPKeepalive; k != 0 && (k < Duration(time.Second) || k > Duration(32767*time.Second)) {
		return bad("server.tcp_keepalive", "must be 0 (off) or 1s to 32767s, got %s", k.D())
	}
	if o.Server.HeaderTimeout < Duration(10*time.Millisecond) {
		return bad("server.header_timeout", "must be at least 10ms, got %s", o.Server.HeaderTimeout.D())
	}
	for _, origin := range o.Server.AllowedOrigins {
		if origin == "*" {
			continue
		}
		if !isOrigin(origin) {
			return bad("server.allowed_origins", "%q is not \"*\" or an origin like https://example.com", origin)
		}
	}
	if _, err := ParsePrefixes(o.Server.TrustedProxies); err != nil {
		return bad("server.trusted_proxies", "%v", err)
	}
	if len(o.Server.Transports) == 0 {
		return bad("server.transports", "must name at least one of %s", strings.Join(AllTransports, ", "))
	}
	for i, t := range o.Server.Transports {
		if !slices.Contains(AllTransports, t) {
			return bad("server.transports", "%q is not one of %s", t, strings.Join(AllTransports, ", "))
		}
		if slices.Contains(o.Server.Transports[:i], t) {
			return bad("server.transports", "%q is named twice", t)
		}
	}
	if err := checkHostPort(o.API.Listen); err != nil {
		return bad("api.listen", "%v", err)
	}
	if o.API.Token == "" && !isLoopback(o.API.Listen) {
		return bad("api.token", "required when api.listen (%s) is not a loopback address", o.API.Listen)
	}
	for _, origin := range o.API.AllowedOrigins {
		if !isOrigin(origin) {
			return bad("api.allowed_origins", "%q is not an origin like https://ops.example.com (no \"*\": name each)", origin)
		}
	}
	for _, h := range o.API.AllowedHosts {
		if !isHostName(h) {
			return bad("api.allowed_hosts", "%q is not a host name like push.example.com (no port, no scheme)", h)
		}
	}
	if err := checkSocketPath(o.Manager.Socket); err != nil {
		return bad("manager.socket", "%v", err)
	}
	if o.Manager.StateDir == "" {
		return bad("manager.state_dir", "must not be empty")
	}
	if o.Manager.PidFile == "" {
		return bad("manager.pid_file", "must not be empty")
	}
	if o.Manager.WorkerStallTimeout < Duration(time.Second) {
		return bad("manager.worker_stall_timeout", "must be at least 1s, got %v", o.Manager.WorkerStallTimeout.D())
	}
	switch o.Manager.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return bad("manager.log_level", "must be debug, info, warn or error, got %q", o.Manager.LogLevel)
	}
	if o.Comet.Heartbeat < Duration(100*time.Millisecond) {
		return bad("comet.heartbeat", "must be at least 100ms, got %s", o.Comet.Heartbeat.D())
	}
	if o.Comet.PollTimeout <= 0 {
		return bad("comet.poll_timeout", "must be positive, got %s", o.Comet.PollTimeout.D())
	}
	// History is also how a connection gets what was published while its
	// subscription reached the manager: without it a second connection
	// for an id would lose those messages.
	if o.Comet.HistoryTTL < Duration(time.Second) {
		return bad("comet.history_ttl", "must be at least 1s (history carries a new subscription's first messages), got %s", o.Comet.HistoryTTL.D())
	}
	if o.API.MaxBatch < 1 {
		return bad("api.max_batch", "must be at least 1, got %d", o.API.MaxBatch)
	}
	if o.API.MaxConns < 1 {
		return bad("api.max_conns", "must be at least 1, got %d", o.API.MaxConns)
	}
	if o.Comet.HistoryMaxBytes < 1<<20 {
		return bad("comet.history_max_bytes", "must be at least 1048576 (1 MiB), got %d", o.Comet.HistoryMaxBytes)
	}
	if o.Comet.MaxReplay < 0 {
		return bad("comet.max_replay", "must be >= 0 (0: history_size), got %d", o.Comet.MaxReplay)
	}
	if o.Comet.HistorySize < 1 {
		return bad("comet.history_size", "must be at least 1 (history carries a new subscription's first messages), got %d", o.Comet.HistorySize)
	}
	if o.Comet.MaxPending < 4096 {
		return bad("comet.max_pending", "must be at least 4096 bytes, got %d", o.Comet.MaxPending)
	}
	if t := o.Comet.WSFragmentTimeout; t < Duration(100*time.Millisecond) || t > Duration(time.Hour) {
		return bad("comet.ws_fragment_timeout", "must be 100ms to 1h, got %s", t.D())
	}
	if o.Comet.WSPingRate < 1 || o.Comet.WSPingRate > 100 {
		return bad("comet.ws_ping_rate", "must be 1 to 100 pings a second, got %d", o.Comet.WSPingRate)
	}
	for _, p := range o.Comet.PresenceEvents {
		if !names.Valid(strings.TrimSuffix(p, "*")) && p != "*" {
			return bad("comet.presence_events", "%q is not a channel name or a prefix ending in *", p)
		}
	}
	if o.Comet.ClientPublishRate < 1 || o.Comet.ClientPublishRate > 10000 {
		return bad("comet.client_publish_rate", "must be 1 to 10000 publishes a second, got %d", o.Comet.ClientPublishRate)
	}
	if o.Comet.WSMaxMessage < MinWSMaxMessage || o.Comet.WSMaxMessage > MaxWSMaxMessage {
		return bad("comet.ws_max_message", "must be %d to %d bytes, got %d", MinWSMaxMessage, MaxWSMaxMessage, o.Comet.WSMaxMessage)
	}
	if err := o.checkAuth(bad); err != nil {
		return err
	}
	if err := o.checkHooks(bad); err != nil {
		return err
	}
	return o.checkCluster(bad)
}

func (o *Options) checkAuth(bad func(key, format string, args ...any) error) error {
	a := &o.Auth
	switch {
	case a.Secret != "" && (a.PublicKey != "" || a.PublicKeyPEM != ""):
		return bad("auth.secret", "set auth.secret (HS256) or auth.public_key (RS256, ES256), not both")
	case a.Secret != "" && len(a.Secret) < MinSecret:
		return bad("auth.secret", "must be at least %d bytes (HS256 wants 256 bits), got %d", MinSecret, len(a.Secret))
	case a.Required && !a.On():
		return bad("auth.required", "needs auth.secret or auth.public_key to check tokens with")
	case a.Cookie != "" && !a.On():
		return bad("auth.cookie", "needs auth.secret or auth.public_key")
	case a.Cookie != "" && !validCookieName(a.Cookie):
		return bad("auth.cookie", "%q is not a cookie name", a.Cookie)
	case len(a.DefaultChannels) > 0 && !a.On():
		return bad("auth.default_channels", "needs auth.secret or auth.public_key")
	case a.Cookie != "" && slices.Contains(o.Server.AllowedOrigins, "*"):
		// A browser attaches the cookie by itself, to requests that any
		// page may start: only the pages named may use it.
		return bad("auth.cookie", "the browser sends the cookie for any page, so server.allowed_origins must name the origins whose pages may use it, not \"*\" (any)")
	}
	for _, k := range []struct{ key, v string }{{"auth.audience", a.Audience}, {"auth.issuer", a.Issuer}} {
		switch {
		case k.v != "" && !a.On():
			return bad(k.key, "needs auth.secret or auth.public_key")
		case strings.TrimSpace(k.v) != k.v || strings.ContainsFunc(k.v, unicode.IsControl):
			return bad(k.key, "must not have control characters or spaces at its ends")
		}
	}
	for _, p := range a.DefaultChannels {
		if !names.Valid(strings.TrimSuffix(p, "*")) && p != "*" {
			return bad("auth.default_channels", "%q is not a channel name or a prefix ending in *", p)
		}
	}
	if a.PublicKeyPEM != "" {
		if _, err := ParsePublicKey([]byte(a.PublicKeyPEM)); err != nil {
			return bad("auth.public_key", "%v", err)
		}
	}
	return nil
}

// isOrigin: a browser origin, scheme://host[:port].
func isOrigin(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && (u.Path == "" || u.Path == "/")
}

// isHostName: a DNS name (an IPv4 address is one too).
func isHostName(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return s != "" && len(s) <= 253
}

// validCookieName: an RFC 6265 token.
func validCookieName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return s != ""
}

// WorkerCount resolves server.workers = 0 to one worker per usable CPU.
func (o *Options) WorkerCount() int {
	if o.Server.Workers > 0 {
		return o.Server.Workers
	}
	return runtime.NumCPU()
}

func checkHostPort(hp string) error {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("%q is not host:port", hp)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("%q has no valid port (0-65535)", hp)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return fmt.Errorf("%q: host must be an IP address or localhost", hp)
	}
	return nil
}

func isLoopback(hp string) bool {
	host, _, _ := net.SplitHostPort(hp)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// maxSocketPath is the size of sockaddr_un.sun_path minus its NUL.
const maxSocketPath = 107

func checkSocketPath(p string) error {
	switch {
	case p == "":
		return errors.New("must not be empty")
	case len(p) > maxSocketPath:
		return fmt.Errorf("%d bytes is longer than a Unix socket path may be (%d)", len(p), maxSocketPath)
	}
	return nil
}
