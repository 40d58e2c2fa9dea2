package config

import (
	"fmt"
	"github.com/megacomet/megacomet/internal/names"
	"net/url"
	"strings"
	"time"
)

// Cluster joins this node to others through a NATS JetStream stream
// (cluster/). With NATS empty the node is alone and needs nothing else:
// today's in-process hub. Credentials and TLS are nats.go's own options.
type Cluster struct {
	// NATS is one URL, a comma-separated list, or a TOML array of them.
	NATS   URLList `toml:"nats" json:"nats"`
	Node   string  `toml:"node" json:"node"`     // this node's name (default: the host name)
	Stream string  `toml:"stream" json:"stream"` // the JetStream stream every node shares
	// Replicas is the stream's replica count when this node creates it
	// (1, or 3 or 5 on a NATS cluster, so a lost NATS server loses nothing).
	Replicas int `toml:"replicas" json:"replicas"`
	// PublishTimeout bounds the wait for JetStream's ack of a publish;
	// past it the publish is answered 503.
	PublishTimeout Duration `toml:"publish_timeout" json:"publish_timeout"`
	Creds          string   `toml:"creds" json:"creds"`       // a NATS .creds file (JWT + nkey)
	NKey           string   `toml:"nkey" json:"nkey"`         // an nkey seed file
	User           string   `toml:"user" json:"user"`         // with password
	Password       string   `toml:"password" json:"password"` //
	Token          string   `toml:"token" json:"token"`       // a NATS auth token
	TLSCA          string   `toml:"tls_ca" json:"tls_ca"`     // PEM CA file that signs the servers
	TLSCert        string   `toml:"tls_cert" json:"tls_cert"` // PEM client certificate, with tls_key
	TLSKey         string   `toml:"tls_key" json:"tls_key"`
}

// On reports whether this node is part of a cluster.
func (c *Cluster) On() bool { return len(c.NATS) > 0 }

// URLList is a list of URLs written as one string (commas allowed) or as a
// TOML array.
type URLList []string

// UnmarshalTOML takes a string or an array of strings.
func (l *URLList) UnmarshalTOML(v any) error {
	var parts []string
	switch v := v.(type) {
	case string:
		parts = strings.Split(v, ",")
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("want URL strings, got %T", e)
			}
			parts = append(parts, strings.Split(s, ",")...)
		}
	default:
		return fmt.Errorf("want a URL string or an array of them, got %T", v)
	}
	*l = nil
	for _, p := range parts {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

func defaultCluster(host string) Cluster {
	return Cluster{Node: host, Stream: "megacomet", Replicas: 1, PublishTimeout: Duration(5 * time.Second)}
}

func (o *Options) checkCluster(bad func(key, format string, args ...any) error) error {
	c := &o.Cluster
	for _, u := range c.NATS {
		p, err := url.Parse(u)
		if err != nil || p.Host == "" || (p.Scheme != "nats" && p.Scheme != "tls" && p.Scheme != "ws" && p.Scheme != "wss") {
			return bad("cluster.nats", "%q is not a URL like nats://host:4222", u)
		}
	}
	if !names.Valid(c.Node) {
		return bad("cluster.node", "%q: use 1 to 64 of A-Z a-z 0-9 _ -", c.Node)
	}
	if !names.Valid(c.Stream) {
		return bad("cluster.stream", "%q: use 1 to 64 of A-Z a-z 0-9 _ - (a JetStream stream name)", c.Stream)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return bad("cluster.replicas", "must be 1 to 5, got %d", c.Replicas)
	}
	if c.PublishTimeout < Duration(10*time.Millisecond) {
		return bad("cluster.publish_timeout", "must be at least 10ms, got %s", c.PublishTimeout.D())
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return bad("cluster.tls_cert", "tls_cert and tls_key go together")
	}
	if (c.User == "") != (c.Password == "") {
		return bad("cluster.user", "user and password go together")
	}
	return nil
}
