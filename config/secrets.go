package config

import "net/url"

// SecretKeys names the keys of o that hold a secret itself, not the path
// of a file with one: whoever reads the config file has them. A NATS URL
// with user info (nats://user:password@host) counts. Add a key here when
// you add a secret to Options.
func (o *Options) SecretKeys() []string {
	var keys []string
	for _, k := range []struct{ key, v string }{
		{"auth.secret", o.Auth.Secret},
		{"api.token", o.API.Token},
		{"cluster.password", o.Cluster.Password},
		{"cluster.token", o.Cluster.Token},
	} {
		if k.v != "" {
			keys = append(keys, k.key)
		}
	}
	for _, u := range o.Cluster.NATS {
		if p, err := url.Parse(u); err == nil && p.User != nil {
			keys = append(keys, "cluster.nats")
			break
		}
	}
	return keys
}
