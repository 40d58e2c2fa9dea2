// Package auth checks client tokens: JWTs (github.com/golang-jwt/jwt/v5)
// signed with the config's shared secret (HS256) or by the holder of its
// public key (RS256, ES256).
//
// A token says who may listen (sub: the client id of the URL), until when
// (exp, required), and what else: a channels claim lists the channels the
// client may join, by exact name or by a prefix ending in '*'; a publish
// claim the channels it may publish to over WebSocket (none without it). The worker verifies a token once,
// when a connection subscribes, and keeps only what it needs of it after
// that: when it expires (in a field an idle connection already has) and, for
// a WebSocket connection that may subscribe to more channels later, the
// channels claim. The token itself is never kept, logged or echoed.
//
// The package owns the claim rules and the one-line reasons a refused client
// is told; it knows nothing of transports or connections.
package auth
