package megatest

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Options is every setting of a run, defaults filled in by defaultOptions.
// The first group is the public contract (../shared/CONTRACT.md); the rest
// are additions, and the hidden ones are how a parent instructs its
// children.
type Options struct {
	Letter    string        // id prefix: LETTER0, LETTER1, …
	Host      string        // server host or IP
	N         int           // -n: connections
	Port      int           // -port
	Transport string        // -transport: sse, stream, lp, ws
	Rate      float64       // -rate: new connections per second (≤ 0: unlimited)
	Src       string        // -src: source addresses
	Hold      time.Duration // -hold: how long to hold once all are open and answered (0 = until interrupted)
	Ping      time.Duration // -ping: GET /ping this often once all are open (0 = never)
	Report    time.Duration // -report: progress line interval
	API       string        // -api: manager API host:port (default HOST:9000)
	Pub       float64       // -pub: messages per second to our own ids
	Chat      float64       // -chat: client publishes per second, WebSocket (chat.go)
	Total     int           // -total (children): every process's connections, for -chat
	Broadcast int           // -broadcast: broadcast rounds
	Channels  int           // -channels: connection i subscribes to channel LETTER-c(i mod N); rounds go to the channels
	JSON      string        // -json: summary file

	Token       string        // -token: API bearer token
	TokenSecret string        // -token-secret: mint a client token (HS256) per connection
	TokenTTL    time.Duration // -token-ttl: how long each minted token is valid
	Procs       int           // -procs: processes to split over (0 = as the open-file limit needs)
	Grace       time.Duration // -grace: at the end, how long to wait for published messages still in flight
	RoundWait   time.Duration // -round-wait: how long one broadcast round may take
	RoundEvery  time.Duration // -round-every: rounds start at least this far apart (0 = back to back)
	Quiet       bool          // -q: no progress lines
	Heartbeat   time.Duration // -heartbeat: the server's comet.heartbeat, which heartbeat lateness is measured against (0 = not measured)
	TLS         bool          // -tls: connect through TLS (a terminating proxy in front)
	TLSInsecure bool          // -tls-insecure: do not verify the server's certificate (tests, self-signed)

	// Set by a parent for its children.
	Child bool   // -child: report snapshots as JSON lines on stdout
	First int    // -first: index of our first id
	Run   string // -run: the run tag our messages carry
}

func defaultOptions() Options {
	return Options{
		N:         250000,
		Port:      8000,
		Transport: "sse",
		Rate:      10000,
		Report:    10 * time.Second,
		Grace:     5 * time.Second,
		RoundWait: 10 * time.Second,
		TokenTTL:  time.Hour,
		Heartbeat: 15 * time.Second, // the server's default
	}
}

const tokenEnv = "MEGATEST_TOKEN"

// tokenSecretEnv carries -token-secret to children (and may replace the
// flag): a secret on a command line is there for ps to show.
const tokenSecretEnv = "MEGATEST_TOKEN_SECRET"

// maxChannels bounds -channels: a round is one publish batch of that many
// messages.
const maxChannels = 10000

// appendChannel appends the name of the channel -channels puts connection
// index i on.
func (o *Options) appendChannel(dst []byte, i int) []byte {
	dst = append(append(dst, o.Letter...), "-c"...)
	return strconv.AppendInt(dst, int64(i%o.Channels), 10)
}

var errUsage = errors.New("megatest: usage")

const usage = `usage: megatest LETTER HOST [flags]

Opens -n connections with ids LETTER0, LETTER1, … to HOST and holds them,
reopening every closed one with its cursor. Give each load box its own
LETTER. Flags:
`

// parseArgs reads `LETTER HOST [flags]` (flags may also come first).
func parseArgs(args []string, stderr io.Writer) (*Options, error) {
	o := defaultOptions()
	fs := flag.NewFlagSet("megatest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.N, "n", o.N, "connections")
	fs.IntVar(&o.Port, "port", o.Port, "server port")
	fs.StringVar(&o.Transport, "transport", o.Transport, "sse, ws, stream or lp")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "new connections per second, all processes together (0 = as fast as possible)")
	fs.StringVar(&o.Src, "src", o.Src, "local source addresses: `127.0.1.1-127.0.1.40` or a comma list (on loopback: picked automatically)")
	fs.DurationVar(&o.Hold, "hold", o.Hold, "how long to hold once all are open and the server has answered them (0 = until interrupted)")
	fs.DurationVar(&o.Ping, "ping", o.Ping, "once all are open, GET /ping this often on a new connection and report its latency (0 = never)")
	fs.DurationVar(&o.Report, "report", o.Report, "progress line interval")
	fs.StringVar(&o.API, "api", o.API, "manager API `host:port`, for -pub and -broadcast (default HOST:9000)")
	fs.Float64Var(&o.Pub, "pub", o.Pub, "messages per second published to our own ids; delivery latency is measured")
	fs.Float64Var(&o.Chat, "chat", o.Chat, "WebSocket: messages per second in all that random held clients publish to their channel; fan-out latency and loss at every member are measured")
	fs.IntVar(&o.Total, "total", o.Total, "(children) every process's connections")
	fs.IntVar(&o.Broadcast, "broadcast", o.Broadcast, "broadcast rounds; fan-out latency to every held connection is measured")
	fs.IntVar(&o.Channels, "channels", o.Channels, "subscribe connection i to channel LETTER-c<i mod N>; each -broadcast round is then one message to each of the N channels (at most 10000)")
	fs.StringVar(&o.JSON, "json", o.JSON, "write the summary JSON to this `file`")
	fs.StringVar(&o.Token, "token", o.Token, "API bearer token (or environment MEGATEST_TOKEN)")
	fs.StringVar(&o.TokenSecret, "token-secret", o.TokenSecret, "the server's auth.secret: mint a client token for every connection, ?token= (or environment MEGATEST_TOKEN_SECRET)")
	fs.DurationVar(&o.TokenTTL, "token-ttl", o.TokenTTL, "how long each minted client token is valid; the server ends a connection when it expires and megatest reconnects with a new one")
	fs.IntVar(&o.Procs, "procs", o.Procs, "processes to split over (0 = as many as the open-file limit needs)")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "at the end, how long to wait for published messages still in flight")
	fs.DurationVar(&o.RoundWait, "round-wait", o.RoundWait, "how long one broadcast round may take to reach every connection")
	fs.DurationVar(&o.RoundEvery, "round-every", o.RoundEvery, "start broadcast rounds at least this far apart, for a soak (0 = back to back)")
	fs.BoolVar(&o.Quiet, "q", o.Quiet, "no progress lines")
	fs.DurationVar(&o.Heartbeat, "heartbeat", o.Heartbeat, "the server's comet.heartbeat: heartbeat_lateness_ms is how much longer than this a connection went without a heartbeat (sse, stream: or a message; ws: pings only; lp: not measured; 0 = not measured)")
	fs.BoolVar(&o.TLS, "tls", o.TLS, "connect with TLS (https, wss), as to a proxy that terminates it; ~40 KB and 3 descriptors of megatest per connection")
	fs.BoolVar(&o.TLSInsecure, "tls-insecure", o.TLSInsecure, "with -tls: accept any certificate (a test's self-signed one)")
	fs.BoolVar(&o.Child, "child", false, "internal: run as a child of a split megatest")
	fs.IntVar(&o.First, "first", 0, "internal: index of the first id")
	fs.StringVar(&o.Run, "run", "", "internal: run tag")

	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != 2 {
		fs.Usage()
		return nil, errUsage
	}
	o.Letter, o.Host = pos[0], pos[1]
	if err := o.check(); err != nil {
		return nil, err
	}
	if o.Chat > 0 && o.Channels == 0 {
		o.Channels = 1 // -chat: everyone in LETTER-c0
	}
	if o.TokenSecret == "" {
		o.TokenSecret = os.Getenv(tokenSecretEnv)
	}
	if o.Token == "" {
		o.Token = os.Getenv(tokenEnv)
	}
	if o.API == "" {
		o.API = joinHostPort(o.firstHost(), 9000)
	}
	return &o, nil
}

func (o *Options) check() error {
	if o.Letter == "" || len(o.Letter) > 40 || strings.IndexFunc(o.Letter, func(r rune) bool { return !isIDChar(r) }) >= 0 {
		return fmt.Errorf("megatest: LETTER %q: use 1 to 40 of A-Z a-z 0-9 _ -", o.Letter)
	}
	switch {
	case o.N < 1:
		return fmt.Errorf("megatest: -n %d: need at least one connection", o.N)
	case o.Port < 1 || o.Port > 65535:
		return fmt.Errorf("megatest: -port %d: out of range", o.Port)
	case o.Report <= 0:
		return fmt.Errorf("megatest: -report %s: must be positive", o.Report)
	case o.Hold < 0:
		return fmt.Errorf("megatest: -hold %s: must not be negative", o.Hold)
	case o.TokenTTL <= 0:
		return fmt.Errorf("megatest: -token-ttl %s: must be positive", o.TokenTTL)
	case o.RoundEvery < 0:
		return fmt.Errorf("megatest: -round-every %s: must not be negative", o.RoundEvery)
	case o.Ping < 0:
		return fmt.Errorf("megatest: -ping %s: must not be negative", o.Ping)
	case o.Pub < 0 || o.Broadcast < 0 || o.Chat < 0:
		return fmt.Errorf("megatest: -pub, -broadcast and -chat must not be negative")
	case o.Chat > 0 && o.Transport != "ws":
		return fmt.Errorf("megatest: -chat needs -transport ws: clients publish over their WebSocket")
	case o.Channels < 0 || o.Channels > maxChannels:
		return fmt.Errorf("megatest: -channels %d: use 0 to %d", o.Channels, maxChannels)
	case o.Procs < 0:
		return fmt.Errorf("megatest: -procs %d: must not be negative", o.Procs)
	case o.Heartbeat != 0 && o.Heartbeat < time.Millisecond:
		return fmt.Errorf("megatest: -heartbeat %s: use 0 or at least 1ms", o.Heartbeat)
	}
	switch o.Transport {
	case "sse", "stream", "lp", "ws":
	default:
		return fmt.Errorf("megatest: -transport %q: use sse, ws, stream or lp", o.Transport)
	}
	return nil
}

// measuresHeartbeat: heartbeat lateness is measured (heartbeat.go). A
// long-poll's heartbeat is the empty answer after poll_timeout, a request
// timeout rather than a beat on a held connection: not measured.
func (o *Options) measuresHeartbeat() bool { return o.Heartbeat > 0 && o.Transport != "lp" }

// fmtRate writes a per-child rate share for a command line (ps shows it).
func fmtRate(r float64) string { return strconv.FormatFloat(r, 'f', -1, 32) }

func isIDChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-'
}

// firstHost is HOST's first host, without a port of its own.
func (o *Options) firstHost() string {
	h, _, _ := strings.Cut(o.Host, ",")
	if hh, _, err := net.SplitHostPort(h); err == nil {
		return hh
	}
	return h
}

// targets is HOST with -port added to each host that has none:
// "host:port[,host:port...]", as the summary names it.
func (o *Options) targets() string {
	var hs []string
	for _, h := range strings.Split(o.Host, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = joinHostPort(h, o.Port)
		}
		hs = append(hs, h)
	}
	return strings.Join(hs, ",")
}

// target is the first of targets: the one /ping asks.
func (o *Options) target() string {
	t, _, _ := strings.Cut(o.targets(), ",")
	return t
}

func joinHostPort(host string, port int) string {
	if strings.IndexByte(host, ':') >= 0 {
		return fmt.Sprintf("[%s]:%d", host, port)
	}
	return fmt.Sprintf("%s:%d", host, port)
}

// childArgs is the command line of child k, which takes count ids from
// first on, with its share of the rates.
func (o *Options) childArgs(first, count int, rate, pub float64, src string) []string {
	a := []string{o.Letter, o.Host,
		"-child", "-q",
		"-n", fmt.Sprint(count),
		"-first", fmt.Sprint(first),
		"-port", fmt.Sprint(o.Port),
		"-transport", o.Transport,
		"-rate", fmtRate(rate),
		"-src", src,
		"-api", o.API,
		"-pub", fmtRate(pub),
		"-chat", fmtRate(o.Chat * float64(count) / float64(o.total())),
		"-total", fmt.Sprint(o.total()),
		"-grace", o.Grace.String(),
		"-run", o.Run,
		"-channels", fmt.Sprint(o.Channels),
		"-heartbeat", o.Heartbeat.String(),
		"-token-ttl", o.TokenTTL.String(),
		fmt.Sprintf("-tls=%t", o.TLS),
		fmt.Sprintf("-tls-insecure=%t", o.TLSInsecure),
	}
	return a // the tokens and the secret go by environment, not where ps shows them
}
