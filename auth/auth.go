package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/megacomet/megacomet/config"
	"github.com/megacomet/megacomet/internal/names"
)

// Claims are what a megacomet client token may say.
type Claims struct {
	// Channels the client may join: exact names, or prefixes ending in
	// '*' ("news-*", "*" for any). Absent or null: auth.default_channels,
	// which Verify puts here, so a verified token's is never nil.
	Channels []string `json:"channels,omitempty"`
	// Publish lists the channels the client may publish to over
	// WebSocket: exact names, prefixes ending in '*', or "*". Absent: none.
	Publish []string `json:"publish,omitempty"`
	jwt.RegisteredClaims
}

// MayPublish reports whether a publish claim admits channel: unlike
// channels, no claim is no channel.
func MayPublish(claim []string, channel string) bool {
	return claim != nil && Allows(claim, channel)
}

// Allows reports whether the token lets its holder join channel.
func (c *Claims) Allows(channel string) bool { return Allows(c.Channels, channel) }

// Allows reports whether a channels claim admits channel. nil is no
// token at all (auth off, or optional and not sent): any channel; a
// verified token's claim is never nil.
func Allows(claim []string, channel string) bool {
	return claim == nil || names.Match(claim, channel)
}

// A Refusal is why a token was not accepted: the HTTP status to answer with
// and a one-line reason that carries nothing of the token.
type Refusal struct {
	Status int
	Reason string
}

func (r *Refusal) Error() string { return r.Reason }

// The refusals. Unauthorized (401) ones mean "come back with a (new)
// token"; Forbidden (403) ones, "this token does not give you that".
var (
	ErrNoToken     = &Refusal{401, "no token: send one as ?token=, Authorization: Bearer or the auth cookie"}
	ErrMalformed   = &Refusal{401, "malformed token"}
	ErrSignature   = &Refusal{401, "bad token signature"}
	ErrAlgorithm   = &Refusal{401, "token algorithm not accepted"}
	ErrExpired     = &Refusal{401, "token expired"}
	ErrNoExpiry    = &Refusal{401, "token has no exp"}
	ErrNotYet      = &Refusal{401, "token not valid yet"}
	ErrInvalid     = &Refusal{401, "invalid token"}
	ErrOtherClient = &Refusal{403, "token is for another id"}
	ErrAudience    = &Refusal{401, "token audience not accepted"}
	ErrIssuer      = &Refusal{401, "token issuer not accepted"}
)

// ChannelRefused is the 403 for a channel the token does not allow; it
// names the channel (channel names are from a strict alphabet).
func ChannelRefused(channel string) *Refusal {
	return &Refusal{403, "token does not allow channel " + channel}
}

// Verifier checks tokens against one key.
type Verifier struct {
	parser   *jwt.Parser
	key      any
	alg      string // the one algorithm the key is for
	required bool
	cookie   string
	issuer   string   // auth.issuer, "" = not checked
	defaults []string // auth.default_channels, never nil
}

// errWrongAlg is the key function's answer to any other algorithm.
var errWrongAlg = errors.New("auth: algorithm not accepted")

// New returns the verifier for the [auth] options, or nil when auth is off.
func New(o *config.Auth) (*Verifier, error) {
	if !o.On() {
		return nil, nil
	}
	v := &Verifier{required: o.Required, cookie: o.Cookie, issuer: o.Issuer,
		defaults: append([]string{}, o.DefaultChannels...)}
	if o.Secret != "" {
		v.key, v.alg = []byte(o.Secret), "HS256"
	} else {
		k, err := config.ParsePublicKey([]byte(o.PublicKeyPEM))
		if err != nil {
			return nil, err
		}
		v.key = k
		switch k.(type) {
		case *rsa.PublicKey:
			v.alg = "RS256"
		case *ecdsa.PublicKey:
			v.alg = "ES256"
		}
	}
	opts := []jwt.ParserOption{jwt.WithExpirationRequired(), jwt.WithLeeway(time.Second)}
	// With a shared secret, every app that holds it can sign: aud and iss
	// say which app a token is for, and who made it.
	if o.Audience != "" {
		opts = append(opts, jwt.WithAudience(o.Audience))
	}
	if o.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(o.Issuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Required reports whether a client without a token is refused.
func (v *Verifier) Required() bool { return v.required }

// Cookie is the name of the cookie that may carry the token ("" = none).
func (v *Verifier) Cookie() string { return v.cookie }

// Verify checks token for client id and returns its claims.
func (v *Verifier) Verify(token, id string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	var c Claims
	// Only the one algorithm the key is for: "none", an HMAC made with a
	// public key as its secret, and every other are refused unchecked.
	_, err := v.parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		if t.Method.Alg() != v.alg {
			return nil, errWrongAlg
		}
		return v.key, nil
	})
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, ErrExpired
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && c.ExpiresAt == nil:
		return nil, ErrNoExpiry
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return nil, ErrNotYet
	case errors.Is(err, errWrongAlg):
		return nil, ErrAlgorithm
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return nil, ErrSignature
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, ErrMalformed
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), v.issuer != "" && c.Issuer == "":
		return nil, ErrIssuer
	// exp and iss are there: the missing claim is aud.
	case errors.Is(err, jwt.ErrTokenInvalidAudience), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return nil, ErrAudience
	default:
		return nil, ErrInvalid
	}
	if c.Subject != id {
		return nil, ErrOtherClient
	}
	if c.Channels == nil {
		// "All channels" is said, ["*"], never implied by a token
		// minted for something else.
		c.Channels = v.defaults
	}
	return &c, nil
}

// Mint makes an HS256 token for id, valid for ttl, limited to channels
// when that is not nil: for `megacomet token`, megatest and tests.
func Mint(secret []byte, id string, channels []string, ttl time.Duration, now time.Time) (string, error) {
	return MintClaims(secret, id, Claims{Channels: channels}, ttl, now)
}

// MintClaims signs claims (channels, publish, aud, iss) for id, valid for
// ttl.
func MintClaims(secret []byte, id string, c Claims, ttl time.Duration, now time.Time) (string, error) {
	c.Subject, c.IssuedAt, c.ExpiresAt = id, jwt.NewNumericDate(now), jwt.NewNumericDate(now.Add(ttl))
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}

// MintWith signs with a private key (RS256 for RSA, ES256 for ECDSA), for
// tests of the public-key setup.
func MintWith(key crypto.Signer, id string, channels []string, ttl time.Duration, now time.Time) (string, error) {
	m := jwt.SigningMethod(jwt.SigningMethodRS256)
	if _, ok := key.(*ecdsa.PrivateKey); ok {
		m = jwt.SigningMethodES256
	}
	c := Claims{Channels: channels, RegisteredClaims: jwt.RegisteredClaims{
		Subject: id, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	return jwt.NewWithClaims(m, c).SignedString(key)
}
